//! The chunks a download is fetching now and how far each fetch is: journalled as they
//! go, and shown in `status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lanspread_catalog::PIECE_SIZE;
use lanspread_peer::ChunkSpec;
use lanspread_proto::chunk_rest;

use super::journal;

/// The chunks being fetched now: where in its chunk each fetch started and how much of
/// it the fetch has verified and handed to the writer (`fetch` updates it piece by piece).
/// The download owns it, so what the fetches got is journalled as they go and when the
/// transfer stops half-way (cancel, shutdown, a failure): a resume re-checks those pieces
/// on disk and keeps what is there.
#[derive(Default)]
pub(super) struct InFlight {
    chunks: HashMap<usize, (u64, Arc<AtomicU64>)>,
    /// What the journal last said of each, from the chunk's start.
    journalled: HashMap<usize, u64>,
}

impl InFlight {
    /// Journals the chunks whose fetch verified at least `step` more since their last line.
    pub(super) fn journal(
        &mut self,
        journal: &mut journal::Journal,
        specs: &[ChunkSpec],
        step: u64,
    ) {
        for (&chunk, (skipped, progress)) in &self.chunks {
            let Some(spec) = specs.get(chunk) else {
                continue;
            };
            let got = skipped + progress.load(Ordering::Relaxed);
            let (_, _, pieces) = chunk_rest(0, spec.len, got);
            let kept = pieces as u64 * PIECE_SIZE;
            let before = self.journalled.get(&chunk).copied().unwrap_or(0);
            if kept >= before + step.max(1) {
                journal.record_kept(chunk, kept);
                self.journalled.insert(chunk, kept);
            }
        }
    }

    /// Bytes the fetches running now verified (beyond what earlier attempts kept).
    pub(super) fn fetched(&self) -> u64 {
        self.chunks
            .values()
            .map(|(_, progress)| progress.load(Ordering::Relaxed))
            .sum()
    }

    pub(super) fn start(&mut self, chunk: usize, skipped: u64) -> Arc<AtomicU64> {
        let progress = Arc::new(AtomicU64::new(0));
        self.chunks.insert(chunk, (skipped, progress.clone()));
        self.journalled.entry(chunk).or_insert(skipped);
        progress
    }

    pub(super) fn end(&mut self, chunk: usize, verified: bool) {
        self.chunks.remove(&chunk);
        if verified {
            self.journalled.remove(&chunk);
        }
    }
}
