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
    /// The most `status` showed of each chunk not yet verified, from its start: what a
    /// failed fetch keeps is whole pieces short of its last, and `status` never goes back.
    shown: HashMap<usize, u64>,
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

    /// What `status` shows of the chunks not yet verified: for each, how far from its
    /// start its pieces are verified — by the fetch running now, or kept (`kept`) of one
    /// that failed (a source that went mid-chunk; a race's loser) — beyond what an
    /// earlier attempt had kept (`resumed`, counted as done from the start). Kept pieces
    /// stay counted while the rest is fetched again, so `status` never goes back, and a
    /// chunk two fetches cover counts once.
    pub(super) fn shown(
        &mut self,
        kept: &HashMap<usize, u64>,
        resumed: &HashMap<usize, u64>,
    ) -> u64 {
        let running = self
            .chunks
            .iter()
            .map(|(&c, (skipped, progress))| (c, skipped + progress.load(Ordering::Relaxed)));
        for (c, r) in kept.iter().map(|(&c, &k)| (c, k)).chain(running) {
            let e = self.shown.entry(c).or_default();
            *e = (*e).max(r);
        }
        self.shown
            .iter()
            .map(|(c, r)| r.saturating_sub(resumed.get(c).copied().unwrap_or(0)))
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
            self.shown.remove(&chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_each_chunk_once_from_what_was_kept_or_is_arriving() {
        let mut f = InFlight::default();
        let resumed = HashMap::from([(1, 2 * PIECE_SIZE)]);
        // Chunk 1: resumed with 2 pieces, fetched from there: 3 more pieces.
        f.start(1, 2 * PIECE_SIZE)
            .store(3 * PIECE_SIZE, Ordering::Relaxed);
        assert_eq!(f.shown(&HashMap::new(), &resumed), 3 * PIECE_SIZE);
        // Chunk 2: its fetch failed after 4 pieces (kept), then it starts again from
        // there: the kept pieces still count, the new ones on top.
        let mut kept = HashMap::from([(2, 4 * PIECE_SIZE)]);
        assert_eq!(f.shown(&kept, &resumed), 7 * PIECE_SIZE);
        let again = f.start(2, 4 * PIECE_SIZE);
        assert_eq!(f.shown(&kept, &resumed), 7 * PIECE_SIZE);
        again.store(PIECE_SIZE, Ordering::Relaxed);
        assert_eq!(f.shown(&kept, &resumed), 8 * PIECE_SIZE);
        // A race's loser kept 2 pieces of chunk 3 while its first request, from the
        // start, has 5: counted once, as 5.
        f.start(3, 0).store(5 * PIECE_SIZE, Ordering::Relaxed);
        kept.insert(3, 2 * PIECE_SIZE);
        assert_eq!(f.shown(&kept, &resumed), 13 * PIECE_SIZE);
        // Chunk 4's fetch had 3 pieces and failed; what it keeps is 2 (never its last):
        // `status` keeps showing 3.
        let four = f.start(4, 0);
        four.store(3 * PIECE_SIZE, Ordering::Relaxed);
        assert_eq!(f.shown(&kept, &resumed), 16 * PIECE_SIZE);
        f.end(4, false);
        kept.insert(4, 2 * PIECE_SIZE);
        assert_eq!(f.shown(&kept, &resumed), 16 * PIECE_SIZE);
        // Verified chunks count in `done`, not here.
        f.end(2, true);
        kept.remove(&2);
        f.end(4, true);
        kept.remove(&4);
        assert_eq!(f.shown(&kept, &resumed), 8 * PIECE_SIZE);
    }
}
