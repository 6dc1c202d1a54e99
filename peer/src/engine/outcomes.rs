//! What comes back from the fetches: each batch's results settled with the planner,
//! an offer's choice, and where the download stands after them.

use lanspread_proto::PeerId;
use tracing::warn;

use super::{Action, Asked, BatchId, ChunkResult, Engine, Phase};
use crate::{FailKind, PeerError, PlannerStatus, Settled};

impl Engine {
    /// The results of a [`Fetch`], one per chunk in its order (missing ones count as
    /// the source gone). `lane_lost`: the batch's lane was a data connection that closed
    /// while the source's link lives — its failures are then a stall of the source,
    /// not its loss, and the lane is retired.
    pub fn on_fetched(&mut self, id: BatchId, results: Vec<ChunkResult>, lane_lost: bool) {
        let Some(Asked {
            peer,
            lane,
            chunks,
            picked,
            cancelled,
        }) = self.in_flight.remove(&id)
        else {
            return;
        };
        // An offer whose choice was told: the others were settled then.
        let results = match picked {
            Some(i) => results.into_iter().nth(i).into_iter().collect(),
            None => results,
        };
        self.lanes.done(&peer, lane);
        let failed = results.len() < chunks.len() || results.iter().any(Result::is_err);
        let stall = failed && lane_lost && self.lanes.retire(&peer, lane);
        if stall {
            warn!(peer = %peer.short(), ?lane, "a data connection was lost; its chunks are retried on the others");
            if self.lanes.only_link_left(&peer) {
                warn!(peer = %peer.short(), "no data connection left: chunks go over the link");
            }
        }
        if self.phase != Phase::Transfer {
            return;
        }
        self.settle(&peer, &chunks, results, (stall, cancelled));
        self.check_status();
    }

    /// Whether `chunk` is verified: a race's loser may still report on it, and what
    /// the driver tracks of the chunk (progress, a relay) is the winner's.
    pub fn is_verified(&self, chunk: usize) -> bool {
        self.planner.as_ref().is_some_and(|p| p.is_done(chunk))
    }

    /// The source of offer `id` chose the chunk at `index` of it (the head of its answer):
    /// the others are pending again at once, free for other sources, instead of when the
    /// chosen one ends (a 32 MiB chunk later). [`Engine::on_fetched`] still takes one
    /// result per chunk as asked and keeps the chosen one's. Returns the chunks put back
    /// (none when the batch ended meanwhile or the choice was told already).
    pub fn on_chosen(&mut self, id: BatchId, index: usize) -> Vec<usize> {
        if self.phase != Phase::Transfer {
            return Vec::new();
        }
        let Some(batch) = self.in_flight.get_mut(&id) else {
            return Vec::new();
        };
        if batch.picked.is_some() || index >= batch.chunks.len() {
            return Vec::new();
        }
        let chosen = batch.chunks[index];
        let others: Vec<usize> = batch.chunks.drain(..).filter(|&c| c != chosen).collect();
        batch.chunks.push(chosen);
        batch.picked = Some(index);
        let peer = batch.peer.clone();
        if let Some(planner) = self.planner.as_mut() {
            planner.chosen(chosen);
            for &c in &others {
                planner.on_failed(c, &peer, FailKind::NotChosen);
            }
        }
        others
    }

    /// Which chunk of batch `id` (its index as asked) its source chose, once told
    /// ([`Engine::on_chosen`]); `None` for any other batch.
    pub fn picked(&self, id: BatchId) -> Option<usize> {
        self.in_flight.get(&id).and_then(|b| b.picked)
    }

    pub(super) fn settle(
        &mut self,
        peer: &PeerId,
        chunks: &[usize],
        results: Vec<ChunkResult>,
        (stall, cancelled): (bool, bool),
    ) {
        let Some(planner) = self.planner.as_mut() else {
            return;
        };
        let none_chosen = !results.is_empty()
            && results
                .iter()
                .all(|r| matches!(r, Err((FailKind::NotChosen, _))));
        let mut results = results.into_iter();
        let mut failed = Vec::new();
        for &chunk in chunks {
            let res = results
                .next()
                .unwrap_or_else(|| Err((FailKind::SourceGone, "no answer".into())));
            match res {
                Ok(()) => match planner.on_done(chunk, peer) {
                    Settled::First { loser } => {
                        self.progress_at = self.clock;
                        self.actions.push_back(Action::Verified {
                            chunk,
                            peer: peer.clone(),
                        });
                        // The other racer's request is stopped (one chunk per race).
                        let lost = loser.and_then(|l| {
                            self.in_flight
                                .iter_mut()
                                .find(|(_, b)| b.peer == l && b.chunks == [chunk] && !b.cancelled)
                        });
                        if let Some((&id, batch)) = lost {
                            batch.cancelled = true;
                            self.actions.push_back(Action::Cancel(id));
                        }
                    }
                    Settled::Again | Settled::Unknown => {}
                },
                Err((FailKind::SourceGone | FailKind::Disconnected, why)) if stall => {
                    failed.push((
                        chunk,
                        FailKind::Stalled,
                        format!("data connection lost: {why}"),
                    ))
                }
                Err((FailKind::NotChosen, _)) => {
                    planner.on_failed(chunk, peer, FailKind::NotChosen)
                }
                Err((kind, why)) => failed.push((chunk, kind, why)),
            }
        }
        if let Some((chunk, kind, why)) = failed.first() {
            warn!(peer = %peer.short(), chunk, chunks = failed.len(), "chunk failed ({kind:?}): {why}");
            // A source banned for cause keeps that cause: its batches still under way end
            // later, failed as its connections close, and say less.
            if !(planner.is_banned(peer) && self.why.contains_key(peer)) {
                self.why.insert(peer.clone(), why.clone());
            }
        }
        // (A cancelled race's loser is not a busy source.)
        if none_chosen && !cancelled {
            // Every offered chunk is on its way to someone else: ask again when that
            // changes here, or after a while.
            planner.rest(peer, self.clock.saturating_duration_since(self.progress_at));
            self.rest_since = Some(self.clock);
        }
        // In reverse: each failed chunk goes to the front of the queue, so they keep
        // their order.
        for (chunk, kind, _) in failed.into_iter().rev() {
            planner.on_failed(chunk, peer, kind);
        }
    }

    pub(super) fn check_status(&mut self) {
        if self.phase != Phase::Transfer {
            return;
        }
        let Some(planner) = self.planner.as_ref() else {
            return;
        };
        let status = planner.status();
        if status == PlannerStatus::Starved {
            if self.starved_at.is_none() {
                warn!(game = %self.game, wait = ?self.config.swarm_wait,
                    "no source can send a missing chunk now: waiting for partial sources to verify more, or for disconnected ones to come back");
            }
            self.starved_at.get_or_insert(self.clock);
        } else {
            self.starved_at = None;
        }
        match status {
            PlannerStatus::Running | PlannerStatus::Starved => {}
            PlannerStatus::Finished => {
                self.phase = Phase::Ended;
                self.actions.push_back(Action::Commit);
            }
            PlannerStatus::Failed(reason) => {
                // Say why each source was given up, not only that none is left.
                let swarm = if self.swarm {
                    format!(", {} missing unit(s) of 8 MiB", self.missing_chunks())
                } else {
                    String::new()
                };
                let reason = format!("{reason}{swarm}{}", self.reasons());
                self.fail(PeerError::SourcesFailed(reason));
            }
        }
    }

    /// " (peer: why; ...)" for the sources given up so far, or nothing.
    pub(super) fn reasons(&self) -> String {
        if self.why.is_empty() {
            return String::new();
        }
        let each: Vec<String> = self
            .why
            .iter()
            .map(|(p, why)| format!("{}: {why}", p.short()))
            .collect();
        format!(" ({})", each.join("; "))
    }

    pub(super) fn missing_chunks(&self) -> usize {
        self.planner
            .as_ref()
            .map_or(0, |p| p.chunks().len() - p.done_count())
    }
}
