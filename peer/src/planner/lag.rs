//! Slow complete sources. The balance rule (S14: a complete source takes a unit only
//! while less than a unit ahead of the least loaded one) keeps sources of like speeds
//! within a chunk of each other; applied to sources of unlike speeds it held the whole
//! download to the slowest one's pace — a peer on Wi-Fi among wired ones, or one that
//! trickles a byte now and then, made two sources slower than the fast one alone. So
//! when a complete source sits idle, held back by the balance alone, the sources holding
//! it back (units in flight, a unit behind it) are *lagging* for the rest of the
//! download: out of the balance, each still taking units as its own caps allow. Sources
//! of like speeds never get there (the idle one would have to verify a whole window more
//! than the other has done and in flight). Once nothing is left to start and a source
//! sits idle, the engine waits [`LAG_RACE_AFTER`] for the others' units still on their
//! way, then finds those senders lagging (a download asked for whole at its start split
//! evenly, so none was ever held back by the balance); the sources that are not lagging
//! race the lagging ones' units, newest first (the first verified copy wins; the engine
//! cancels the other). A lagging source is asked for one unit per request, at most
//! [`LAGGING_IN_FLIGHT`] at once, and only when no other source has room; an idle one in
//! the end game, or one back over a new link, is judged afresh (speeds change). Only
//! without partial sources: a swarm's complete sources go a unit at a time anyway, and
//! its end game races partial holders (`race.rs`).

use lanspread_proto::PeerId;

use super::{Assignment, Planner, State};

/// How long the end game waits for the units still on their way from sources not
/// found lagging while another source sits idle, before it finds them lagging and races
/// them (sources of like speeds end their last units within moments of each other).
pub const LAG_RACE_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// Most units in flight at once from a lagging source: what it holds is what the
/// others may have to send again at the end.
pub const LAGGING_IN_FLIGHT: usize = 2;

impl Planner {
    /// Whether `peer` was found lagging (see the module).
    pub fn is_lagging(&self, peer: &PeerId) -> bool {
        self.sources.get(peer).is_some_and(|s| s.lagging)
    }

    /// A live complete source with nothing in flight and room but for the balance (in
    /// the end game a lagging one too: speeds change, and one idle now is not slow now).
    fn idle_complete(&self, lagging_too: bool) -> Option<PeerId> {
        if self.partial_sources().next().is_some() {
            return None;
        }
        self.sources
            .iter()
            .filter(|(_, s)| {
                s.has.is_none()
                    && (lagging_too || !s.lagging)
                    && s.in_flight == 0
                    && self.has_room(s, s.assigned)
            })
            .map(|(p, _)| p.clone())
            .next()
    }

    /// Marks lagging the sources that hold an idle one back (see the module); whether
    /// any was.
    pub(super) fn find_laggards(&mut self) -> bool {
        let Some(idle) = self.idle_complete(false) else {
            return false;
        };
        let ahead = self.sources[&idle].assigned;
        let unit = self.unit;
        let mut found = false;
        for (p, s) in &mut self.sources {
            if *p != idle
                && s.has.is_none()
                && !s.dropped
                && !s.lagging
                && s.in_flight > 0
                && s.assigned.saturating_add(unit) <= ahead
            {
                s.lagging = true;
                found = true;
            }
        }
        found
    }

    /// Whether the end game waits on other sources: nothing is left to start, a complete
    /// source sits idle, and others that are not lagging still have units on their way.
    /// The engine gives them [`LAG_RACE_AFTER`] to end them (sources of like speeds end
    /// theirs within moments of each other), then calls [`Planner::end_game_laggards`].
    pub fn end_game_waits(&self) -> bool {
        self.queue.is_empty()
            && self.retry.is_empty()
            && self.idle_complete(true).is_some()
            && self
                .sources
                .values()
                .any(|s| s.has.is_none() && !s.dropped && !s.lagging && s.in_flight > 0)
    }

    /// The end game waited [`LAG_RACE_AFTER`] for the sources with units still on their
    /// way while another sat idle: they lag (a download small enough to be asked for
    /// whole at its start put each source's even share in flight at once, so no source
    /// was ever held back by the balance).
    pub fn end_game_laggards(&mut self) {
        if !self.end_game_waits() {
            return;
        }
        // The idle ones are not slow now (a source found lagging earlier may have sped
        // up since): they race the others.
        for s in self.sources.values_mut() {
            if s.has.is_none() && !s.dropped {
                s.lagging = s.in_flight > 0;
            }
        }
    }

    /// Once nothing is left to start, a second request for the oldest big unit on its way
    /// from a lagging source, from a source that is not lagging and has room (see the
    /// module).
    pub(super) fn assign_lag_racer(&mut self) -> Option<Assignment> {
        if !self.queue.is_empty()
            || !self.retry.is_empty()
            || self.partial_sources().next().is_some()
        {
            return None;
        }
        let racer = self
            .sources
            .iter()
            .filter(|(_, s)| s.has.is_none() && !s.lagging && self.has_room(s, s.assigned))
            .min_by_key(|(p, s)| (s.in_flight_bytes, (*p).clone()))
            .map(|(p, _)| p.clone())?;
        // Any unit, small ones too (a lagging source gets one unit per request, so the
        // loser's request is cancelled; one batched before it was found lagging goes on
        // and its late copy counts for nothing); the newest first: a source sends its
        // requests in order, so its oldest is the one it has nearly sent.
        let chunk = (0..self.chunks.len())
            .filter(|&c| {
                self.state[c] == State::InFlight
                    && self.second[c].is_none()
                    && !self.offered[c]
                    && self.owner[c]
                        .as_ref()
                        .is_some_and(|o| *o != racer && self.is_lagging(o))
            })
            .max_by_key(|&c| self.started[c])?;
        Some(self.assign_second(chunk, racer))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::file;
    use super::super::{Planner, Settled};
    use crate::table::tests::pid;
    use lanspread_proto::UNIT_SIZE;

    /// A source that never answers does not hold the download: the other takes every
    /// unit left, then races the silent one's, and the download ends.
    #[test]
    fn a_source_that_never_answers_does_not_hold_the_other() {
        let units = 24;
        let mut p = Planner::new(&[file("a.eti", units * UNIT_SIZE)], &[pid(1), pid(2)], 4);
        let mut slow_units = Vec::new();
        let mut done = 0;
        for _ in 0..10 * units {
            let Some(b) = p.poll_batch() else { break };
            if b.peer == pid(2) {
                assert!(!b.race, "the slow source is never the racer");
                slow_units.extend(b.chunks);
                continue;
            }
            for c in b.chunks {
                match p.on_done(c, &pid(1)) {
                    Settled::First { loser } => {
                        // A race's loser is the slow source.
                        assert!(!b.race || loser == Some(pid(2)), "{loser:?}");
                        done += 1;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(done, units as usize, "everything came from the fast source");
        assert!(p.is_lagging(&pid(2)) && !p.is_lagging(&pid(1)));
        assert!(!slow_units.is_empty());
        assert_eq!(p.status(), super::super::PlannerStatus::Finished);
    }

    /// Sources that answer in turn stay balanced: none is found lagging, and their totals
    /// stay within a unit of each other.
    #[test]
    fn sources_of_like_speeds_stay_balanced() {
        let units = 40;
        let peers = [pid(1), pid(2)];
        let mut p = Planner::new(&[file("a.eti", units * UNIT_SIZE)], &peers, 4);
        let mut open: Vec<(usize, lanspread_proto::PeerId)> = Vec::new();
        loop {
            while let Some(b) = p.poll_batch() {
                open.extend(b.chunks.into_iter().map(|c| (c, b.peer.clone())));
            }
            // The oldest request ends first, whichever source it went to.
            if open.is_empty() {
                break;
            }
            let (c, peer) = open.remove(0);
            p.on_done(c, &peer);
        }
        assert!(peers.iter().all(|q| !p.is_lagging(q)));
        let per = p.per_source();
        let (a, b) = (per[&pid(1)], per[&pid(2)]);
        assert!(a.abs_diff(b) <= UNIT_SIZE, "{per:?}");
    }
}
