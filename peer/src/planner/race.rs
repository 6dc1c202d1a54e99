//! The end game of a swarm download: once nothing is left to start, the last big chunk
//! still on its way from one source is also asked of a second *partial* holder with room; the
//! first verified copy wins and the engine cancels the other request. The last chunks
//! of a download are the rare ones (the server's last sends) and often come from a holder
//! that shares its uplink among several downloaders, or relays a chunk it is still
//! receiving: racing a second holder lets whichever is faster finish the download. Only
//! partial holders race: the file server's uplink carries each chunk once (issue 21's
//! ≤ 1.1 F), and what the swarm holds is the swarm's to send.

use lanspread_proto::PeerId;

use super::{Assignment, Planner, State};

/// Missing chunks at most for a race: the last one. The simulation (N = 16, 32, 256)
/// measured racing every chunk in flight once nothing is left to start at 1.20, 1.31 and
/// 1.30 × T_min, the last two at 1.19 / 1.27 / 1.29 ×, the last one at 1.19 / 1.25 /
/// 1.28 × (1.17 / 1.24 / 1.28 × without races): a second request shares the uplinks
/// everyone needs, and only the very last chunk's is worth it. With the simulation's start
/// fixed (session 27) its fluid links never stall a relay and races change little
/// (N = 16, 32, 256: 1.07 / 1.12 / 1.14 × with the last one, the same with the last two,
/// 1.04 / 1.14 / 1.14 × without); they stay for real links, where a relay does stall.
pub const RACE_LAST_CHUNKS: usize = 1;

/// How a chunk's verified copy was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The first verified copy: report it.
    First {
        /// The source still sending the other copy of a race: its request is to be
        /// cancelled.
        loser: Option<PeerId>,
    },
    /// The chunk was verified already (the loser of a race finished too): nothing to do.
    Again,
    /// Not a chunk in flight from that source: ignored.
    Unknown,
}

impl Planner {
    /// Races the last chunks (see the module): the default for a swarm download.
    pub fn race_the_last_chunks(mut self, on: bool) -> Self {
        self.race = on;
        self
    }

    /// The source of an offer chose to send `chunk`: it may be raced.
    pub fn chosen(&mut self, chunk: usize) {
        if let Some(o) = self.offered.get_mut(chunk) {
            *o = false;
        }
    }

    /// Whether `chunk` is verified.
    pub fn is_done(&self, chunk: usize) -> bool {
        self.state.get(chunk) == Some(&State::Done)
    }

    /// A second request for a chunk in flight (see the module), or `None`: something is
    /// still pending, the download has its fill coming in, or no other partial holder of
    /// an unraced big chunk has room. The chunk started earliest goes first.
    pub(super) fn assign_racer(&mut self) -> Option<Assignment> {
        if !self.race
            || self.chunks.len() - self.done > RACE_LAST_CHUNKS
            || !self.queue.is_empty()
            || !self.retry.is_empty()
            || self.inbound_bytes() >= self.swarm_inbound_bytes()
        {
            return None;
        }
        let mut racing: Vec<usize> = (0..self.chunks.len())
            .filter(|&c| {
                self.state[c] == State::InFlight
                    && !self.offered[c]
                    && self.second[c].is_none()
                    && self.chunks[c].len > self.batching.max_chunk_len
            })
            .collect();
        racing.sort_by_key(|&c| self.started[c]);
        let (chunk, peer) = racing.into_iter().find_map(|c| {
            let owner = self.owner[c].as_ref();
            self.sources
                .iter()
                .filter(|(p, s)| {
                    Some(*p) != owner
                        && s.has.as_ref().is_some_and(|h| h.contains(c))
                        && self.partial_room(s)
                })
                .min_by_key(|(p, s)| (s.in_flight_bytes, (*p).clone()))
                .map(|(p, _)| (c, p.clone()))
        })?;
        Some(self.assign_second(chunk, peer))
    }

    /// Makes `peer` the second source of `chunk`, in flight from another (a race).
    pub(super) fn assign_second(&mut self, chunk: usize, peer: PeerId) -> Assignment {
        let len = self.chunks[chunk].len;
        if let Some(s) = self.sources.get_mut(&peer) {
            s.in_flight += 1;
            s.in_flight_bytes += len;
            s.assigned += len;
            self.race_epoch[chunk] = s.epoch;
        }
        self.second[chunk] = Some(peer.clone());
        Assignment { chunk, peer }
    }

    /// Frees what a request of `peer` for `chunk` held of its caps.
    pub(super) fn release(&mut self, chunk: usize, peer: &PeerId, sent: bool) {
        let len = self.chunks[chunk].len;
        if let Some(s) = self.sources.get_mut(peer) {
            s.in_flight = s.in_flight.saturating_sub(1);
            s.in_flight_bytes = s.in_flight_bytes.saturating_sub(len);
            if !sent {
                s.assigned = s.assigned.saturating_sub(len);
            }
        }
    }

    /// The request of `peer` for `chunk` ended without its copy counting: a race's loser
    /// (the chunk done), or one of two racers (the other goes on alone). Returns the
    /// source's epoch when that request was made (for its stall count); `None`: not a
    /// race, the caller settles it as usual.
    pub(super) fn end_of_race(&mut self, chunk: usize, peer: &PeerId) -> Option<u32> {
        let racer = |o: &Option<PeerId>| o.as_ref() == Some(peer);
        let epoch = match self.state.get(chunk)? {
            State::Done if self.late[chunk].as_ref() == Some(peer) => {
                self.late[chunk] = None;
                self.race_epoch[chunk]
            }
            State::InFlight if self.second[chunk].is_some() && racer(&self.second[chunk]) => {
                self.second[chunk] = None;
                self.race_epoch[chunk]
            }
            State::InFlight if self.second[chunk].is_some() && racer(&self.owner[chunk]) => {
                // The second request goes on alone: its epoch is the chunk's now.
                self.owner[chunk] = self.second[chunk].take();
                std::mem::replace(&mut self.epoch_at[chunk], self.race_epoch[chunk])
            }
            _ => return None,
        };
        self.release(chunk, peer, false);
        Some(epoch)
    }

    /// The winner of `chunk` is `peer`: the other racer, if any, is the loser (its
    /// request ends later, cancelled or finished, through [`Planner::end_of_race`]).
    pub(super) fn win(&mut self, chunk: usize, peer: &PeerId) -> Option<PeerId> {
        let loser = match (&self.owner[chunk], self.second[chunk].take()) {
            (Some(o), Some(s)) if o == peer => Some(s),
            (Some(o), Some(s)) if &s == peer => Some(o.clone()),
            _ => None,
        };
        if loser.is_some() && self.owner[chunk].as_ref() != Some(peer) {
            // The second request won: the loser's epoch is the chunk's.
            std::mem::swap(&mut self.epoch_at[chunk], &mut self.race_epoch[chunk]);
        }
        self.owner[chunk] = Some(peer.clone());
        self.late[chunk] = loser.clone();
        loser
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::file;
    use super::super::{FailKind, Planner};
    use super::Settled;
    use crate::table::tests::pid;
    use lanspread_proto::ChunkSet;
    use lanspread_proto::UNIT_SIZE;

    /// One big chunk, two partial holders of it, the end game on.
    fn one_chunk_two_holders() -> Planner {
        let mut p = Planner::new(&[file("a.eti", UNIT_SIZE)], &[], 64).race_the_last_chunks(true);
        let mut all = ChunkSet::empty(1);
        all.insert(0);
        p.set_partial(&pid(2), all.clone());
        p.set_partial(&pid(3), all);
        p
    }

    #[test]
    fn a_failed_racer_leaves_the_first_request_alone_and_a_failed_first_the_racer() {
        let mut p = one_chunk_two_holders();
        let first = p.poll_batch().unwrap();
        let race = p.poll_batch().unwrap();
        assert!(!first.race && race.race && race.peer != first.peer);
        assert!(p.poll_batch().is_none(), "one race per chunk");
        // The racer's holder goes: the chunk stays in flight from the first.
        p.on_failed(0, &race.peer, FailKind::SourceGone);
        assert!(p.poll_batch().is_none(), "not pending again");
        assert_eq!(p.on_done(0, &first.peer), Settled::First { loser: None });
        assert!(p.is_done(0));

        let mut p = one_chunk_two_holders();
        let first = p.poll_batch().unwrap();
        let race = p.poll_batch().unwrap();
        // The first request is cut (a relay that stopped; the engine rests its holder):
        // the racer goes on alone.
        p.on_failed(0, &first.peer, FailKind::NotChosen);
        p.rest(&first.peer, std::time::Duration::ZERO);
        assert!(p.poll_batch().is_none());
        assert_eq!(p.on_done(0, &race.peer), Settled::First { loser: None });
        // A late answer of someone not asked is ignored.
        assert_eq!(p.on_done(0, &first.peer), Settled::Unknown);
    }

    #[test]
    fn without_the_end_game_nothing_is_raced() {
        let mut p = one_chunk_two_holders().race_the_last_chunks(false);
        assert!(p.poll_batch().is_some());
        assert!(p.poll_batch().is_none());
    }
}
