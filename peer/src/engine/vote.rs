//! The manifest phase of the [`Engine`]: hashing reports, answers, the vote and its
//! grace, and the planner built from the chosen manifest.

use std::time::Instant;

use lanspread_catalog::{Manifest, VERSION_FILE};
use lanspread_proto::{PeerId, MAX_RANGES};
use tracing::warn;

use super::{
    max_in_flight_bytes, Action, Engine, Phase, BATCH_BYTES, BATCH_CHUNKS, BATCH_CHUNK_LEN,
    MAX_IN_FLIGHT,
};
use crate::Planner;

impl Engine {
    /// The source asked for its manifest reports how far its hashing is: `done` of
    /// `total` bytes. Counts as a sign of life (its silence starts again) only when it is
    /// real progress, and never past a cap set by `total` (see `silence.rs`); returns
    /// whether it counted.
    pub fn on_manifest_progress(
        &mut self,
        peer: &PeerId,
        done: u64,
        total: u64,
        now: Instant,
    ) -> bool {
        self.phase == Phase::Manifests && self.waiting.report(peer, done, total, now)
    }

    /// A source's answer to [`Action::AskManifest`]: its manifest, or why there is none.
    pub fn on_manifest(&mut self, peer: PeerId, answer: Result<Manifest, String>, now: Instant) {
        if self.phase != Phase::Manifests || !self.waiting.remove(&peer) {
            return;
        }
        match answer {
            Ok(manifest) => self.vote.add(peer, manifest),
            Err(e) => {
                warn!(peer = %peer.short(), "no manifest: {e}");
                self.vote.no_answer(peer, format!("no manifest: {e}"));
            }
        }
        self.after_answer(now);
    }

    /// A source answered or was left out: closes the vote when none is left, else starts
    /// the grace once the rest can no longer change it.
    pub(super) fn after_answer(&mut self, now: Instant) {
        if self.waiting.is_empty() {
            self.close_vote();
        } else if self.grace_ends.is_none() && self.vote.settled(self.waiting.len()) {
            // The silent ones can no longer change the vote: they get the grace, so one
            // that never answers holds the download seconds, not the timeout.
            self.grace_ends = Some(now + self.config.manifest_grace);
        }
    }

    pub(super) fn close_vote(&mut self) {
        let vote = std::mem::take(&mut self.vote);
        self.why.extend(vote.rejected().iter().cloned());
        match vote.choose(&self.game) {
            Ok(chosen) => {
                for (peer, reason) in &chosen.rejected {
                    warn!(peer = %peer.short(), "not a source for {}: {reason}", self.game);
                    self.why.insert(peer.clone(), reason.clone());
                }
                let budget = max_in_flight_bytes(self.config.threads, chosen.sources.len());
                let mut planner = Planner::with_unit(
                    &chosen.files,
                    &chosen.sources,
                    MAX_IN_FLIGHT,
                    self.config.unit,
                )
                .limit_in_flight_bytes(budget)
                .batch_small_chunks(BATCH_CHUNKS, BATCH_CHUNK_LEN, BATCH_BYTES)
                .offer_to_complete_sources(self.config.offer.min(MAX_RANGES))
                .race_the_last_chunks(self.config.offer > 1);
                if let Some(seed) = self.config.shuffle {
                    planner = planner.shuffled(seed);
                    let sentinel = chosen
                        .files
                        .iter()
                        .position(|f| f.path.as_str() == VERSION_FILE);
                    if let Some(file) = sentinel {
                        planner = planner.fetch_last(file);
                    }
                }
                self.planner = Some(planner);
                self.chosen = Some(chosen);
                self.phase = Phase::Preparing;
                self.actions.push_back(Action::Prepare);
            }
            Err(e) => self.fail(e),
        }
    }
}
