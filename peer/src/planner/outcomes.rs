//! What comes back of a chunk's request: verified (the first copy, or a race's loser
//! finishing too) or failed, and what a failure costs its source.

use lanspread_proto::PeerId;

use super::{FailKind, Planner, Settled, State, MAX_BACKOFF, MAX_STALLS, MAX_TRANSIENT_RETRIES};

impl Planner {
    /// A chunk arrived and every piece of it matched its hash: see [`Settled`].
    pub fn on_done(&mut self, chunk: usize, peer: &PeerId) -> Settled {
        if self.state.get(chunk) == Some(&State::Done) && self.late[chunk].as_ref() == Some(peer) {
            self.late[chunk] = None;
            self.release(chunk, peer, true);
            return Settled::Again;
        }
        if !self.is_in_flight_from(chunk, peer) {
            return Settled::Unknown;
        }
        // Something changed: resting sources may be offered again, and a source that
        // says `Later` while others send is busy, not stalled.
        for s in self.sources.values_mut() {
            s.quiet = false;
        }
        self.wake();
        let len = self.chunks[chunk].len;
        if let Some(s) = self.sources.get_mut(peer) {
            s.in_flight -= 1;
            s.in_flight_bytes -= len;
            s.stalls = 0;
            s.losses = 0;
            s.backoff = s.backoff.saturating_sub(1);
        }
        let loser = self.win(chunk, peer);
        self.state[chunk] = State::Done;
        self.done += 1;
        Settled::First { loser }
    }

    /// A chunk failed; it goes back to the queue, and the source is dropped unless the
    /// failure was local.
    pub fn on_failed(&mut self, chunk: usize, peer: &PeerId, kind: FailKind) {
        if let Some(epoch) = self.end_of_race(chunk, peer) {
            // The other copy goes on (or is verified): only the source answers for it.
            return self.penalize(epoch, peer, kind);
        }
        if !self.is_in_flight_from(chunk, peer) {
            return;
        }
        self.release(chunk, peer, false);
        self.penalize(self.epoch_at[chunk], peer, kind);
        self.state[chunk] = State::Pending;
        self.owner[chunk] = None;
        if kind == FailKind::Transient {
            self.retries[chunk] += 1;
            if self.retries[chunk] > MAX_TRANSIENT_RETRIES {
                self.failed = Some(format!(
                    "chunk {chunk} failed {MAX_TRANSIENT_RETRIES} times"
                ));
            }
        }
        if kind == FailKind::NotChosen {
            // Back in its place in the order: someone else is being sent it.
            self.queue.insert((self.rank[chunk], chunk));
        } else {
            // Retry it before anything else.
            self.retry.push_front(chunk);
        }
    }

    /// What a failure of `kind` costs the source (a chunk of it failed).
    /// `epoch`: the source's epoch when the failed request was made.
    fn penalize(&mut self, epoch: u32, peer: &PeerId, kind: FailKind) {
        if let Some(s) = self.sources.get_mut(peer) {
            match kind {
                FailKind::Transient | FailKind::NotChosen => {}
                // Every chunk in flight from a silent source fails at once; the silence
                // counts once.
                FailKind::Stalled if epoch == s.epoch => {
                    s.epoch += 1;
                    s.stalls += 1;
                    s.backoff = (s.backoff + 1).min(MAX_BACKOFF);
                    if s.stalls >= MAX_STALLS {
                        s.dropped = true;
                    }
                }
                FailKind::Stalled => {}
                // Every chunk in flight fails with the link; the loss counts once. A
                // request made before it went and came back failed with the old
                // connection and costs nothing.
                FailKind::Disconnected if epoch == s.epoch => s.lose(),
                FailKind::Disconnected => {}
                // A partial source is gone when its download ends (it may be a complete
                // one a moment later); bad bytes ban any source.
                FailKind::SourceGone if s.has.is_some() || s.was_partial => s.dropped = true,
                FailKind::SourceGone | FailKind::BadData => {
                    s.dropped = true;
                    s.banned = true;
                }
            }
        }
        if !matches!(kind, FailKind::Transient | FailKind::NotChosen) {
            self.recount(peer);
        }
    }
}
