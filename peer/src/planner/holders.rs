//! The swarm side of the planner: the shuffled order, partial sources (peers that
//! download the same manifest and serve the chunks they verified) and rarest-first
//! choice among what they hold. The policy is the one `tests/swarm/` simulates: a partial
//! source gets one chunk's worth at a time, the rarest it holds (the shuffled order breaks
//! ties, differently on every downloader); a complete source (the file server) gets only
//! chunks no partial source holds, so its uplink carries what the swarm lacks.

use lanspread_proto::{ChunkSet, PeerId};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Assignment, Planner, Source, State};

/// Units ([`Planner::with_unit`]) in flight from one partial source: one big chunk, or
/// one batch of small ones. More parallel flows per uplink delay the first copies
/// everyone else waits for (the swarm simulation: 1.53 × T_min with one chunk per holder,
/// 2.07 × with two).
pub const PARTIAL_IN_FLIGHT_UNITS: u64 = 1;
/// Units' worth (chunks') a downloader in a swarm has coming in at once, from all its sources
/// together (a complete source's answer counts as one chunk, whatever it was offered):
/// partial sources get no new chunk while that many are in flight. Fewer flows into one
/// downlink finish each chunk sooner, so it can be passed on sooner, and leave the
/// server's answer a larger share of the link, so the one complete copy reaches the
/// swarm in about F/U (the swarm simulation, N = 16: 1.64 × T_min without a cap, 1.54 ×
/// with 3 chunks, 1.40 × with 4, 1.45 × with 5; with cut-through and the simulation's
/// start fixed, session 27: 1.20 ×, 1.07 × and 1.16 × — four answers from the server at a
/// quarter of its link each, and four relays of them fill a downlink).
pub const SWARM_INBOUND_UNITS: u64 = 4;
/// How long the download may verify nothing from anyone before a resting partial source's
/// chunks no longer count as held: a busy holder is fine while others send; one that
/// never serves must not keep the chunks only it holds from the server.
pub const LATER_UNCOUNT: std::time::Duration = std::time::Duration::from_secs(60);

impl Planner {
    /// Starts chunks in an order shuffled with `seed` instead of file order: downloaders
    /// that start together (a LAN party) then ask the server for different chunks, and
    /// each soon holds something the others want. Runs of small chunks that would go in
    /// one request stay together (set the batching first), and so do the units of one
    /// 32 MiB chunk: a chunk is whole (and reported) soon after its first unit, not when
    /// the last of its units scattered over the download comes in.
    pub fn shuffled(mut self, seed: u64) -> Self {
        let b = self.batching;
        // Runs: a big chunk's units, or small chunks that fit one request.
        let mut units: Vec<(usize, usize)> = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (c, spec) in self.chunks.iter().enumerate() {
            let small = spec.len <= b.max_chunk_len;
            let prev = c.checked_sub(1).map(|p| &self.chunks[p]);
            let same_chunk = c > start && prev.is_some_and(|p| p.chunk_key() == spec.chunk_key());
            let joins = same_chunk
                || small
                    && c > start
                    && self.chunks[c - 1].len <= b.max_chunk_len
                    && c - start < b.max_chunks
                    && bytes + spec.len <= b.max_bytes;
            if !joins && c > 0 {
                units.push((start, c));
                (start, bytes) = (c, 0);
            }
            bytes += spec.len;
        }
        if !self.chunks.is_empty() {
            units.push((start, self.chunks.len()));
        }
        self.seed = seed;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in (1..units.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            units.swap(i, j);
        }
        for (rank, &(from, to)) in units.iter().enumerate() {
            for c in from..to {
                self.rank[c] = rank as u32;
            }
        }
        self.queue = self.queue.iter().map(|&(_, c)| (self.rank[c], c)).collect();
        self
    }

    /// Fetches the chunks of file `file` after every other (the commit sentinel: a
    /// resume discards a received sentinel, so it is not worth having early).
    pub fn fetch_last(mut self, file: usize) -> Self {
        let last = self
            .rank
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        for (c, spec) in self.chunks.iter().enumerate() {
            if spec.file == file {
                self.rank[c] = last;
            }
        }
        self.queue = self.queue.iter().map(|&(_, c)| (self.rank[c], c)).collect();
        self
    }

    /// Adds a partial source, or updates what it holds (`has`: every chunk it verified,
    /// in this manifest's numbering). Ignored for a complete source, a source dropped for
    /// cause, or a set of another length. A partial source that was dropped (it said
    /// `Later` too long, or its download ended while asked) comes back only with a changed
    /// holding; one that was no longer listed or whose link closed, whenever it is listed.
    pub fn set_partial(&mut self, peer: &PeerId, has: ChunkSet) -> bool {
        if has.len() != self.chunks.len() {
            return false;
        }
        let new = !self.sources.contains_key(peer);
        if new {
            let empty = Source {
                has: Some(ChunkSet::empty(has.len())),
                ..Source::default()
            };
            self.sources.insert(peer.clone(), empty);
        }
        let Some(s) = self.sources.get(peer) else {
            return false;
        };
        if s.has.is_none() || s.banned {
            return false;
        }
        let same = s.has.as_ref() == Some(&has);
        if same && s.dropped && !s.lost {
            return false; // dropped: it comes back with a changed holding only
        }
        if same && !new && !s.dropped {
            return true; // nothing new
        }
        self.count(peer, false);
        if let Some(s) = self.sources.get_mut(peer) {
            if s.dropped {
                s.revive();
            }
            s.has = Some(has);
        }
        self.recount(peer);
        self.wake();
        true
    }

    /// Adds a complete source found during the download (a peer that became ready at the
    /// newest version: often a partial source whose download just committed). Its bytes
    /// are checked like any source's. It starts level with the least loaded complete
    /// source, so the balance rule does not hold the others back while it catches up.
    /// Ignored for a source dropped for cause or a complete one already known, unless its
    /// link had closed ([`FailKind::Disconnected`](super::FailKind::Disconnected)): it is back (a file server restarted).
    pub fn add_complete(&mut self, peer: &PeerId) -> bool {
        let floor = self.floor().unwrap_or(0);
        let new = !self.sources.contains_key(peer);
        if new {
            self.sources.insert(peer.clone(), Source::default());
        }
        let Some(s) = self.sources.get(peer) else {
            return false;
        };
        if s.banned || (!new && s.has.is_none() && !s.lost) {
            return false;
        }
        self.count(peer, false);
        let Some(s) = self.sources.get_mut(peer) else {
            return false;
        };
        // Its requests as a partial source may still fail as gone: not a ban.
        s.was_partial = s.has.take().is_some() || s.was_partial;
        if s.dropped {
            s.revive();
        }
        s.resting = false;
        s.assigned = s.assigned.max(floor);
        true
    }

    /// What partial source `peer` is still fetching of what it holds (cut-through): asked
    /// for only when it has no verified chunk we need.
    pub fn set_growing(&mut self, peer: &PeerId, growing: &[usize]) {
        if let Some(s) = self.sources.get_mut(peer).filter(|s| s.has.is_some()) {
            s.growing = growing.to_vec();
        }
    }

    /// A partial source vanished (its link or its copy is gone): its chunks in flight
    /// will fail on their own; nothing more is asked of it unless it comes back.
    pub fn remove_partial(&mut self, peer: &PeerId) {
        if let Some(s) = self.sources.get_mut(peer) {
            if s.has.is_some() && !s.dropped {
                // Back when it is listed again, unless it keeps going without sending.
                s.lose();
            }
        }
        self.recount(peer);
    }

    /// The partial sources this download knows, live ones only.
    pub fn partial_sources(&self) -> impl Iterator<Item = &PeerId> {
        self.sources
            .iter()
            .filter(|(_, s)| s.has.is_some() && !s.dropped)
            .map(|(p, _)| p)
    }

    /// How many live partial sources hold `chunk` (one that said `Later` when nothing had
    /// verified for [`LATER_UNCOUNT`] and rests does not count: what only it holds may go
    /// to a complete source).
    pub fn rarity(&self, chunk: usize) -> u32 {
        self.rarity.get(chunk).copied().unwrap_or(0)
    }

    /// Counts `peer`'s holding in the rarity (`on`) or not, as it should be: a partial
    /// source counts while it is live and not resting.
    pub(super) fn recount(&mut self, peer: &PeerId) {
        let should = self
            .sources
            .get(peer)
            .is_some_and(|s| s.has.is_some() && !s.dropped && !(s.resting && s.quiet));
        self.count(peer, should);
    }

    fn count(&mut self, peer: &PeerId, on: bool) {
        let Some(s) = self.sources.get_mut(peer) else {
            return;
        };
        if s.counted == on {
            return;
        }
        s.counted = on;
        for c in s.has.iter().flat_map(|h| h.iter()) {
            if on {
                self.rarity[c] += 1;
            } else {
                self.rarity[c] = self.rarity[c].saturating_sub(1);
            }
        }
    }

    pub(super) fn partial_room(&self, s: &Source) -> bool {
        !s.dropped
            && !s.resting
            && s.in_flight < self.max_in_flight
            && s.in_flight_bytes < (self.partial_in_flight_bytes() >> s.backoff).max(1)
    }

    /// See [`PARTIAL_IN_FLIGHT_UNITS`].
    pub(super) fn partial_in_flight_bytes(&self) -> u64 {
        PARTIAL_IN_FLIGHT_UNITS * self.unit
    }

    /// See [`SWARM_INBOUND_UNITS`].
    pub(super) fn swarm_inbound_bytes(&self) -> u64 {
        SWARM_INBOUND_UNITS * self.unit
    }

    /// Bytes coming in from all sources, a complete source's answer counted as at most
    /// one chunk (an offer names many; the source sends one), and the complete sources'
    /// together as at most one chunk less than the cap: several finished peers answering
    /// at once never leave the partial holders without a chunk to send.
    pub(super) fn inbound_bytes(&self) -> u64 {
        let (mut partial, mut complete) = (0, 0);
        for s in self.sources.values() {
            match s.has {
                Some(_) => partial += s.in_flight_bytes,
                None => complete += s.in_flight_bytes.min(self.unit),
            }
        }
        partial + complete.min(self.swarm_inbound_bytes() - self.unit)
    }

    /// The rarest chunk a partial source with room can take (a verified one before one it
    /// is still fetching), while less than [`SWARM_INBOUND_UNITS`] is coming in. Among
    /// holders of equally rare chunks each download has its own order of the holders
    /// ([`Planner::spread`]): in peer-id order, every downloader of a party that starts
    /// together asked the same holder first, which has four upload turns and answered
    /// the others `Later` (the lab's N = 16 log: 15 clients asked one peer for one chunk
    /// at the same instant, then the next).
    pub(super) fn assign_partial(&mut self) -> Option<Assignment> {
        if self.inbound_bytes() >= self.swarm_inbound_bytes() {
            return None;
        }
        let (_, peer, chunk) = self
            .sources
            .iter()
            .filter_map(|(p, s)| {
                let has = s.has.as_ref()?;
                if !self.partial_room(s) {
                    return None;
                }
                let c = self.rarest_held(has, &s.growing, |_| true)?;
                let key = (s.growing.contains(&c), self.rarity[c], self.spread(p));
                Some((key, p, c))
            })
            .min_by_key(|(key, _, _)| *key)
            .map(|(key, p, c)| (key, p.clone(), c))?;
        self.take_pending(chunk);
        self.assign(chunk, &peer);
        Some(Assignment { chunk, peer })
    }

    /// This download's place for `peer` among the holders (from the shuffle's seed): two
    /// downloads order the same holders differently.
    pub(super) fn spread(&self, peer: &PeerId) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.seed, peer).hash(&mut h);
        h.finish()
    }

    /// Among the pending chunks in `has` that pass `ok`: a failed one first, else a
    /// verified one before one still `growing` there, the rarest (then first in the
    /// order).
    pub(super) fn rarest_held(
        &self,
        has: &ChunkSet,
        growing: &[usize],
        ok: impl Fn(u64) -> bool,
    ) -> Option<usize> {
        let usable =
            |c: usize| has.contains(c) && self.state[c] == State::Pending && ok(self.chunks[c].len);
        if let Some(c) = self.retry.iter().copied().find(|&c| usable(c)) {
            return Some(c);
        }
        has.iter()
            .filter(|&c| self.state[c] == State::Pending && ok(self.chunks[c].len))
            .min_by_key(|&c| (growing.contains(&c), self.rarity[c], self.rank[c], c))
    }

    /// Whether a live partial source holds a pending chunk.
    pub(super) fn partial_can_send(&self) -> bool {
        self.sources.values().any(|s| {
            !s.dropped
                && s.has
                    .as_ref()
                    .is_some_and(|h| h.iter().any(|c| self.state[c] == State::Pending))
        })
    }
}

#[cfg(test)]
mod tests;
