//! Which chunk to ask which holder for, when holders may hold only part of the game: the
//! first few chunks at random (something to share soon), then rarest first over the
//! holders this peer knows with a random tie-break, and an end game that asks a second
//! holder for chunks already in flight and cancels the loser on the first verified copy.
//! A complete holder (the file server) is asked for the chunks the fewest partial holders
//! have, so one complete copy spreads into the swarm before the server sends any chunk
//! twice.

use std::collections::{BTreeMap, BTreeSet};

use lanspread_proto::{ChunkSet, PeerId};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Tunables of the picker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickerConfig {
    /// While fewer chunks than this are held or in flight, pick at random.
    pub random_first: usize,
    /// Most chunks in flight from one holder.
    pub per_holder: usize,
    /// Most requests for one chunk at once in the end game (the first one included).
    pub endgame_copies: u8,
    /// The end game starts when this few chunks are missing (and all are in flight):
    /// earlier, a second copy costs a holder's uplink that a first copy needs.
    pub endgame_missing: usize,
}

impl Default for PickerConfig {
    fn default() -> Self {
        Self {
            random_first: 4,
            // One 32 MiB chunk at a time per holder: the swarm simulation finished 16
            // clients in 1.53 × T_min with 1, 2.07 × with 2 (more parallel flows per
            // uplink delay the first copies every other client waits for).
            per_holder: 1,
            endgame_copies: 2,
            endgame_missing: 2,
        }
    }
}

/// A chunk to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// The chunk.
    pub chunk: usize,
    /// True when another holder was already asked for it (end game).
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
struct Holder {
    /// What it holds; `None`: everything (a ready peer).
    has: Option<ChunkSet>,
    /// Chunks asked of it and not yet answered.
    asked: BTreeSet<usize>,
}

impl Holder {
    fn has(&self, chunk: usize) -> bool {
        self.has.as_ref().is_none_or(|s| s.contains(chunk))
    }
}

/// A number in `0..n` (`n > 0`); the modulo bias is irrelevant for tie-breaks.
fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// The piece picker of one download.
#[derive(Debug, Clone)]
pub struct Picker {
    cfg: PickerConfig,
    have: ChunkSet,
    /// Requests in flight per chunk.
    requested: Vec<u8>,
    /// Partial holders per chunk (complete holders add the same to every chunk).
    rarity: Vec<u32>,
    holders: BTreeMap<PeerId, Holder>,
    rng: ChaCha8Rng,
}

impl Picker {
    /// A picker for a download that already holds `have` (verified; a resume's chunks).
    /// `seed` makes the random choices repeatable.
    pub fn new(have: ChunkSet, cfg: PickerConfig, seed: u64) -> Self {
        let n = have.len();
        Self {
            cfg,
            have,
            requested: vec![0; n],
            rarity: vec![0; n],
            holders: BTreeMap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// What this download holds verified.
    pub fn have(&self) -> &ChunkSet {
        &self.have
    }

    /// True when every chunk is verified.
    pub fn done(&self) -> bool {
        self.have.is_full()
    }

    /// The chunks neither held nor in flight.
    pub fn unrequested(&self) -> usize {
        (0..self.have.len())
            .filter(|&c| !self.have.contains(c) && self.requested[c] == 0)
            .count()
    }

    /// Adds (or updates) a holder: `None` for a complete one, else what it holds (a set of
    /// another length is taken as empty).
    pub fn set_holder(&mut self, peer: PeerId, has: Option<ChunkSet>) {
        let has = has.map(|s| {
            if s.len() == self.have.len() {
                s
            } else {
                ChunkSet::empty(self.have.len())
            }
        });
        let asked = self.forget(&peer).1;
        if let Some(s) = &has {
            for c in s.iter() {
                self.rarity[c] += 1;
            }
        }
        self.holders.insert(peer, Holder { has, asked });
    }

    /// A partial holder verified one more chunk.
    pub fn holder_got(&mut self, peer: &PeerId, chunk: usize) {
        if let Some(Holder { has: Some(s), .. }) = self.holders.get_mut(peer) {
            if s.insert(chunk) {
                self.rarity[chunk] += 1;
            }
        }
    }

    /// Drops a holder (gone, or dropped for bad bytes). Its chunks in flight become
    /// unrequested again; they are returned.
    pub fn remove_holder(&mut self, peer: &PeerId) -> Vec<usize> {
        let (_, asked) = self.forget(peer);
        for &c in &asked {
            self.requested[c] = self.requested[c].saturating_sub(1);
        }
        asked.into_iter().collect()
    }

    fn forget(&mut self, peer: &PeerId) -> (bool, BTreeSet<usize>) {
        match self.holders.remove(peer) {
            Some(h) => {
                if let Some(s) = &h.has {
                    for c in s.iter() {
                        self.rarity[c] = self.rarity[c].saturating_sub(1);
                    }
                }
                (true, h.asked)
            }
            None => (false, BTreeSet::new()),
        }
    }

    /// How many partial holders this download knows for `chunk`.
    pub fn rarity(&self, chunk: usize) -> u32 {
        self.rarity.get(chunk).copied().unwrap_or(0)
    }

    /// Chunks in flight from `peer`.
    pub fn in_flight(&self, peer: &PeerId) -> usize {
        self.holders.get(peer).map_or(0, |h| h.asked.len())
    }

    /// Whether `peer` holds a chunk this download still needs and has not asked anyone for
    /// (what makes a downloader interested in a holder).
    pub fn wants_from(&self, peer: &PeerId) -> bool {
        self.holders.get(peer).is_some_and(|h| {
            (0..self.have.len())
                .any(|c| !self.have.contains(c) && self.requested[c] == 0 && h.has(c))
        })
    }

    /// The next chunk to ask `peer` for, if any: `None` when it holds nothing this
    /// download still needs, or it already has `per_holder` chunks in flight.
    pub fn pick(&mut self, peer: &PeerId) -> Option<Pick> {
        if let Some(&chunk) = self.candidates(peer, 1).first() {
            self.take(peer, chunk);
            return Some(Pick {
                chunk,
                duplicate: false,
            });
        }
        let missing = self.have.len() - self.have.count();
        if missing > self.cfg.endgame_missing || !self.may_ask(peer) {
            return None;
        }
        let chunk = self.rarest(|p, c| p.second_copy_for(peer, c), 1).pop()?;
        self.take(peer, chunk);
        Some(Pick {
            chunk,
            duplicate: true,
        })
    }

    /// Up to `k` chunks `peer` holds that this download needs and has asked nobody for,
    /// best first (at random while fewer than `random_first` chunks are held or in
    /// flight, then rarest first); nothing is reserved. For a complete holder that
    /// chooses among them itself ([`super::SeedChooser`]); then [`Picker::take`].
    pub fn candidates(&mut self, peer: &PeerId, k: usize) -> Vec<usize> {
        if !self.may_ask(peer) {
            return Vec::new();
        }
        let held_or_flying = self.have.count() + self.requested.iter().filter(|&&r| r > 0).count();
        if held_or_flying < self.cfg.random_first {
            let mut fresh: Vec<usize> = (0..self.have.len())
                .filter(|&c| self.fresh_for(peer, c))
                .collect();
            let mut out = Vec::new();
            while out.len() < k && !fresh.is_empty() {
                let i = below(&mut self.rng, fresh.len());
                out.push(fresh.swap_remove(i));
            }
            return out;
        }
        self.rarest(|p, c| p.fresh_for(peer, c), k)
    }

    /// What to offer a complete holder (the server): up to `k` candidates that no partial
    /// holder known here has — the rest this download fetches from the swarm. With no
    /// partial holder at all this is every chunk still needed.
    pub fn offer(&mut self, peer: &PeerId, k: usize) -> Vec<usize> {
        let mut all = self.candidates(peer, usize::MAX);
        all.retain(|&c| self.rarity[c] == 0);
        all.truncate(k);
        all
    }

    /// Marks `chunk` as asked of `peer`.
    pub fn take(&mut self, peer: &PeerId, chunk: usize) {
        if chunk >= self.have.len() || self.have.contains(chunk) {
            return;
        }
        if let Some(h) = self.holders.get_mut(peer) {
            if h.asked.insert(chunk) {
                self.requested[chunk] = self.requested[chunk].saturating_add(1);
            }
        }
    }

    fn may_ask(&self, peer: &PeerId) -> bool {
        self.holders
            .get(peer)
            .is_some_and(|h| h.asked.len() < self.cfg.per_holder)
    }

    fn fresh_for(&self, peer: &PeerId, c: usize) -> bool {
        !self.have.contains(c)
            && self.requested[c] == 0
            && self.holders.get(peer).is_some_and(|h| h.has(c))
    }

    fn second_copy_for(&self, peer: &PeerId, c: usize) -> bool {
        !self.have.contains(c)
            && self.requested[c] > 0
            && self.requested[c] < self.cfg.endgame_copies
            && self
                .holders
                .get(peer)
                .is_some_and(|h| h.has(c) && !h.asked.contains(&c))
    }

    /// The `k` rarest chunks that pass `ok`, rarest first, ties in random order.
    fn rarest(&mut self, ok: impl Fn(&Self, usize) -> bool, k: usize) -> Vec<usize> {
        let mut all: Vec<(u32, u64, usize)> = (0..self.have.len())
            .filter(|&c| ok(self, c))
            .map(|c| (self.rarity[c], 0, c))
            .collect();
        for e in &mut all {
            e.1 = self.rng.next_u64();
        }
        all.sort_unstable();
        all.into_iter().take(k).map(|(_, _, c)| c).collect()
    }

    /// `chunk` arrived from `from` and matched its hash. Returns the other holders still
    /// asked for it (end game): their requests are to be cancelled.
    pub fn verified(&mut self, chunk: usize, from: &PeerId) -> Vec<PeerId> {
        if !self.have.insert(chunk) {
            return Vec::new();
        }
        self.requested[chunk] = 0;
        let mut losers = Vec::new();
        for (p, h) in &mut self.holders {
            if h.asked.remove(&chunk) && p != from {
                losers.push(p.clone());
            }
        }
        losers
    }

    /// The request for `chunk` to `peer` ended without a verified copy (failed, cancelled,
    /// refused): the chunk may be asked for again.
    pub fn released(&mut self, chunk: usize, peer: &PeerId) {
        if let Some(h) = self.holders.get_mut(peer) {
            if h.asked.remove(&chunk) {
                self.requested[chunk] = self.requested[chunk].saturating_sub(1);
            }
        }
    }
}
