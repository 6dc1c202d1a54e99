//! The peer table: one entry per peer id, whatever address it is seen at.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use lanspread_catalog::{Catalog, GameId, Version};
use lanspread_proto::{ChunkHash, ChunkSet, GameAd, Holding, PeerId, MAX_CHUNKS, MAX_GROWING};

/// A game as a peer advertises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteGame {
    /// Committed version on that peer.
    pub version: Version,
    /// Payload bytes on that peer.
    pub size: u64,
}

/// One connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// The peer's address (its QUIC listen address as seen from here).
    pub addr: SocketAddr,
    /// Its ready games that are in our catalog.
    pub games: BTreeMap<GameId, RemoteGame>,
    /// Its ready games outside our catalog (at most [`MAX_UNLISTED`]), kept so that a
    /// catalog reloaded with more ids sees them at once, not at the peer's next change.
    pub unlisted: BTreeMap<GameId, RemoteGame>,
    /// Games it is downloading, with the chunks it holds verified (partial holders are
    /// not ready: they are not in `games`, never count as sources of a version or vote).
    pub partial: BTreeMap<GameId, PartialGame>,
}

/// Most games outside our catalog kept per peer: a catalog has hundreds of ids, and a
/// hostile peer's announce (up to a 16 MiB frame) must not be stored whole.
pub const MAX_UNLISTED: usize = 1024;

/// A game a peer holds in part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialGame {
    /// The version it is downloading.
    pub version: Version,
    /// The manifest its chunks were verified against.
    pub digest: ChunkHash,
    /// Its verified chunks (unchecked length: [`PeerTable::partial_holders`] checks it
    /// against the downloader's manifest).
    pub chunks: ChunkSet,
    /// The chunks it is fetching now, served as their pieces verify (at most
    /// `MAX_GROWING`, each inside `chunks`' length).
    pub growing: Vec<u32>,
}

/// What [`PeerTable::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// A peer id not seen before.
    New,
    /// A known peer id at a new address; its library is kept.
    Moved {
        /// The previous address.
        from: SocketAddr,
    },
    /// Nothing changed.
    Unchanged,
}

/// Games in the catalog, and at most [`MAX_UNLISTED`] of the others.
fn split_by_catalog(
    all: impl Iterator<Item = (GameId, RemoteGame)>,
    catalog: &Catalog,
) -> (BTreeMap<GameId, RemoteGame>, BTreeMap<GameId, RemoteGame>) {
    let mut games = BTreeMap::new();
    let mut unlisted = BTreeMap::new();
    for (id, game) in all {
        if catalog.contains(&id) {
            games.insert(id, game);
        } else if unlisted.len() < MAX_UNLISTED {
            unlisted.insert(id, game);
        }
    }
    (games, unlisted)
}

/// Peers keyed by peer id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTable {
    peers: BTreeMap<PeerId, PeerEntry>,
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a peer or updates its address in place (S28: same id, new address).
    pub fn upsert(&mut self, id: &PeerId, addr: SocketAddr) -> Upsert {
        match self.peers.get_mut(id) {
            None => {
                self.peers.insert(
                    id.clone(),
                    PeerEntry {
                        addr,
                        games: BTreeMap::new(),
                        unlisted: BTreeMap::new(),
                        partial: BTreeMap::new(),
                    },
                );
                Upsert::New
            }
            Some(e) if e.addr == addr => Upsert::Unchanged,
            Some(e) => {
                let from = std::mem::replace(&mut e.addr, addr);
                Upsert::Moved { from }
            }
        }
    }

    /// Replaces a peer's library, keeping only ids of our catalog. Returns whether the
    /// library changed; `false` as well for an unknown peer.
    pub fn set_library(&mut self, id: &PeerId, ads: &[GameAd], catalog: &Catalog) -> bool {
        let Some(entry) = self.peers.get_mut(id) else {
            return false;
        };
        let all = ads.iter().map(|ad| {
            (
                ad.id.clone(),
                RemoteGame {
                    version: ad.version,
                    size: ad.size,
                },
            )
        });
        let (games, unlisted) = split_by_catalog(all, catalog);
        entry.unlisted = unlisted;
        if entry.games == games {
            return false;
        }
        entry.games = games;
        true
    }

    /// Sorts every peer's games again by a new catalog: ids it added become visible at
    /// once, ids it dropped are hidden (their partial holdings too). Returns whether any
    /// peer's catalog games changed.
    pub fn recatalog(&mut self, catalog: &Catalog) -> bool {
        let mut changed = false;
        for entry in self.peers.values_mut() {
            let before = std::mem::take(&mut entry.games);
            let all = before
                .clone()
                .into_iter()
                .chain(std::mem::take(&mut entry.unlisted));
            let (games, unlisted) = split_by_catalog(all, catalog);
            changed |= games != before;
            entry.games = games;
            entry.unlisted = unlisted;
            entry.partial.retain(|id, _| catalog.contains(id));
        }
        changed
    }

    /// A peer's whole holding of a game it downloads (replaces the previous one). Ignored
    /// for an unknown peer or a game outside our catalog; false then.
    pub fn set_holding(&mut self, id: &PeerId, h: Holding, catalog: &Catalog) -> bool {
        let Some(entry) = self.peers.get_mut(id) else {
            return false;
        };
        if !catalog.contains(&h.game) || h.chunks.len() > MAX_CHUNKS {
            return false;
        }
        // Words for exactly its length, no bit past it: a hostile set stores no more.
        let Ok(chunks) = h.chunks.clone().check(h.chunks.len()) else {
            return false;
        };
        let game = PartialGame {
            version: h.version,
            digest: h.digest,
            chunks,
            growing: Vec::new(),
        };
        entry.partial.insert(h.game, game);
        true
    }

    /// A peer's holding of `game` at the manifest `digest`, if it announced one.
    fn holding_at(
        &mut self,
        id: &PeerId,
        game: &GameId,
        digest: &ChunkHash,
    ) -> Option<&mut PartialGame> {
        self.peers
            .get_mut(id)
            .and_then(|e| e.partial.get_mut(game))
            .filter(|p| &p.digest == digest)
    }

    /// The chunks of a holding the peer is fetching now (the whole list); ignored (false)
    /// unless it announced a holding of that game at that digest. Indices past its set
    /// and past [`MAX_GROWING`] are ignored.
    pub fn holding_growing(
        &mut self,
        id: &PeerId,
        game: &GameId,
        digest: &ChunkHash,
        chunks: &[u32],
    ) -> bool {
        let Some(p) = self.holding_at(id, game, digest) else {
            return false;
        };
        let len = p.chunks.len();
        p.growing = chunks
            .iter()
            .copied()
            .filter(|&c| (c as usize) < len)
            .take(MAX_GROWING)
            .collect();
        true
    }

    /// More verified chunks of a holding; ignored (false) unless the peer announced a
    /// holding of that game at that digest. Indices past its set are ignored.
    pub fn holding_more(
        &mut self,
        id: &PeerId,
        game: &GameId,
        digest: &ChunkHash,
        chunks: &[u32],
    ) -> bool {
        let Some(p) = self
            .holding_at(id, game, digest)
            .filter(|p| chunks.len() <= p.chunks.len())
        else {
            return false;
        };
        for &c in chunks {
            p.chunks.insert(c as usize);
        }
        true
    }

    /// Forgets every holding of a peer (its link was replaced: the new one tells afresh).
    pub fn clear_holdings(&mut self, id: &PeerId) {
        if let Some(e) = self.peers.get_mut(id) {
            e.partial.clear();
        }
    }

    /// The peer no longer holds a partial copy of the game.
    pub fn holding_gone(&mut self, id: &PeerId, game: &GameId) -> bool {
        self.peers
            .get_mut(id)
            .is_some_and(|e| e.partial.remove(game).is_some())
    }

    /// The partial holders of `game` at `version` whose chunks were verified against the
    /// manifest with `digest` of `chunks` chunks, with what they serve: the chunks they
    /// verified and those they are fetching; a set of another length is a lie and left
    /// out.
    pub fn partial_holders(
        &self,
        game: &GameId,
        version: Version,
        digest: &ChunkHash,
        chunks: usize,
    ) -> Vec<(PeerId, ChunkSet)> {
        self.peers
            .iter()
            .filter_map(|(id, e)| {
                let p = e.partial.get(game)?;
                if p.version != version || &p.digest != digest {
                    return None;
                }
                let mut set = p.chunks.clone().check(chunks).ok()?;
                // What it is fetching counts as held: it serves it as it arrives.
                for &c in &p.growing {
                    set.insert(c as usize);
                }
                Some((id.clone(), set))
            })
            .collect()
    }

    /// Of what [`PeerTable::partial_holders`] lists, the chunks each holder is still
    /// fetching (indices below `chunks`).
    pub fn partial_growing(
        &self,
        game: &GameId,
        version: Version,
        digest: &ChunkHash,
        chunks: usize,
    ) -> Vec<(PeerId, Vec<usize>)> {
        self.peers
            .iter()
            .filter_map(|(id, e)| {
                let p = e.partial.get(game)?;
                if p.version != version || &p.digest != digest || p.growing.is_empty() {
                    return None;
                }
                let list = p
                    .growing
                    .iter()
                    .map(|&c| c as usize)
                    .filter(|&c| c < chunks);
                Some((id.clone(), list.collect()))
            })
            .collect()
    }

    /// How many peers hold part of `game` at `version` (any manifest, any chunks: a
    /// download that verified nothing yet counts).
    pub fn downloaders(&self, game: &GameId, version: Version) -> usize {
        self.peers
            .values()
            .filter(|e| e.partial.get(game).is_some_and(|p| p.version == version))
            .count()
    }

    /// Removes a peer.
    pub fn remove(&mut self, id: &PeerId) -> Option<PeerEntry> {
        self.peers.remove(id)
    }

    /// Looks a peer up.
    pub fn get(&self, id: &PeerId) -> Option<&PeerEntry> {
        self.peers.get(id)
    }

    /// All peers, sorted by id.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &PeerEntry)> {
        self.peers.iter()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True when no peer is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn pid(n: u8) -> PeerId {
        PeerId::try_from(format!("{n:02x}").repeat(16)).unwrap()
    }

    pub(crate) fn ad(id: &str, version: &str, size: u64) -> GameAd {
        GameAd {
            id: GameId::new(id).unwrap(),
            version: Version::parse(version).unwrap(),
            size,
        }
    }

    #[test]
    fn address_change_updates_in_place_and_keeps_the_library() {
        let mut t = PeerTable::new();
        let a1: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let a2: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        assert_eq!(t.upsert(&pid(1), a1), Upsert::New);
        assert!(t.set_library(&pid(1), &[ad("ggoo", "20250301", 5)], &Catalog::builtin()));
        assert_eq!(t.upsert(&pid(1), a1), Upsert::Unchanged);
        assert_eq!(t.upsert(&pid(1), a2), Upsert::Moved { from: a1 });
        assert_eq!(t.len(), 1);
        let e = t.get(&pid(1)).unwrap();
        assert_eq!(e.addr, a2);
        assert_eq!(e.games.len(), 1, "library kept across the move");
    }

    #[test]
    fn unknown_ids_are_dropped_and_unchanged_libraries_report_false() {
        let mut t = PeerTable::new();
        t.upsert(&pid(1), "127.0.0.1:1".parse().unwrap());
        let lib = [
            ad("mystery-game", "20250101", 1),
            ad("bf1942", "20250101", 2),
        ];
        assert!(t.set_library(&pid(1), &lib, &Catalog::builtin()));
        assert_eq!(t.get(&pid(1)).unwrap().games.len(), 1);
        assert!(!t.set_library(&pid(1), &lib, &Catalog::builtin()));
        assert!(
            !t.set_library(&pid(9), &lib, &Catalog::builtin()),
            "unknown peer"
        );
        assert!(t.remove(&pid(1)).is_some());
        assert!(t.is_empty());
    }

    #[test]
    fn a_reloaded_catalog_shows_and_hides_peer_games_without_a_new_announce() {
        let mut t = PeerTable::new();
        t.upsert(&pid(1), "127.0.0.1:1".parse().unwrap());
        let lib = [ad("mystery", "20250101", 1), ad("bf1942", "20250101", 2)];
        let small = Catalog::parse("bf1942\n").unwrap();
        assert!(t.set_library(&pid(1), &lib, &small));
        let ids = |t: &PeerTable| {
            t.get(&pid(1))
                .unwrap()
                .games
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&t), [GameId::new("bf1942").unwrap()]);
        let both = Catalog::parse("bf1942\nmystery\n").unwrap();
        assert!(t.recatalog(&both), "mystery appears");
        assert_eq!(ids(&t).len(), 2);
        assert!(!t.recatalog(&both), "nothing new");
        assert!(t.recatalog(&Catalog::parse("mystery\n").unwrap()));
        assert_eq!(ids(&t), [GameId::new("mystery").unwrap()]);
        assert!(
            t.recatalog(&small),
            "bf1942 was kept aside, mystery goes aside"
        );
        assert_eq!(ids(&t), [GameId::new("bf1942").unwrap()]);
        // A flood of ids outside the catalog is kept only up to the cap.
        let flood: Vec<GameAd> = (0..MAX_UNLISTED + 10)
            .map(|n| ad(&format!("g{n}"), "20250101", 1))
            .collect();
        t.set_library(&pid(1), &flood, &small);
        assert_eq!(t.get(&pid(1)).unwrap().unlisted.len(), MAX_UNLISTED);
    }

    #[test]
    fn holdings_are_kept_apart_from_the_ready_library_and_checked() {
        let mut t = PeerTable::new();
        let cat = Catalog::builtin();
        t.upsert(&pid(1), "127.0.0.1:1".parse().unwrap());
        t.upsert(&pid(2), "127.0.0.1:2".parse().unwrap());
        let game: GameId = "bf1942".parse().unwrap();
        let v = Version::parse("20250101").unwrap();
        let digest = [7u8; 32];
        let mut first = ChunkSet::empty(10);
        first.insert(0);
        let holding = |chunks: ChunkSet| Holding {
            game: game.clone(),
            version: v,
            digest,
            chunks,
        };
        assert!(t.set_holding(&pid(1), holding(first.clone()), &cat));
        // A set for another chunk count is a lie: left out.
        assert!(t.set_holding(&pid(2), holding(ChunkSet::full(11)), &cat));
        assert!(t.get(&pid(1)).unwrap().games.is_empty(), "not a ready game");
        assert!(t.holding_more(&pid(1), &game, &digest, &[3, 99]));
        assert!(
            !t.holding_more(&pid(1), &game, &[0; 32], &[4]),
            "another manifest"
        );
        let holders = t.partial_holders(&game, v, &digest, 10);
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[0].0, pid(1));
        assert_eq!(holders[0].1.iter().collect::<Vec<_>>(), [0, 3]);
        assert!(t.partial_holders(&game, v, &[1; 32], 10).is_empty());
        let other = Version::parse("20250102").unwrap();
        assert!(t.partial_holders(&game, other, &digest, 10).is_empty());
        // Not in the catalog, unknown peer, gone.
        let mut stranger = holding(first);
        stranger.game = "mystery-game".parse().unwrap();
        assert!(!t.set_holding(&pid(1), stranger, &cat));
        assert!(!t.set_holding(&pid(9), holding(ChunkSet::empty(10)), &cat));
        let huge = ChunkSet::empty(MAX_CHUNKS + 1);
        assert!(
            !t.set_holding(&pid(2), holding(huge), &cat),
            "too many chunks"
        );
        let too_many: Vec<u32> = (0..11).collect();
        assert!(
            !t.holding_more(&pid(1), &game, &digest, &too_many),
            "more than the set"
        );
        // Chunks it is fetching count as held (served as they arrive); a new list
        // replaces the old, indices past the set and past the cap are left out, another
        // manifest's list is ignored, and a new holding starts with none.
        assert!(t.holding_growing(&pid(1), &game, &digest, &[5, 6, 99]));
        assert!(t.holding_growing(&pid(1), &game, &digest, &[6, 7, 12]));
        assert!(!t.holding_growing(&pid(1), &game, &[0; 32], &[8]));
        let served = |t: &PeerTable| {
            t.partial_holders(&game, v, &digest, 10)[0]
                .1
                .iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(served(&t), [0, 3, 6, 7]);
        assert_eq!(
            t.partial_growing(&game, v, &digest, 10),
            [(pid(1), vec![6, 7])]
        );
        let flood: Vec<u32> = (0..1000).map(|i| i % 10).collect();
        assert!(t.holding_growing(&pid(1), &game, &digest, &flood));
        let p = &t.get(&pid(1)).unwrap().partial[&game];
        assert_eq!(p.growing.len(), lanspread_proto::MAX_GROWING);
        assert!(t.set_holding(&pid(1), holding(ChunkSet::empty(10)), &cat));
        assert!(served(&t).is_empty(), "a new holding: nothing growing");
        assert!(t.holding_more(&pid(1), &game, &digest, &[0, 3]));
        t.clear_holdings(&pid(2));
        assert!(t.get(&pid(2)).unwrap().partial.is_empty());
        assert!(t.holding_gone(&pid(1), &game));
        assert!(!t.holding_gone(&pid(1), &game));
        assert!(t.partial_holders(&game, v, &digest, 10).is_empty());
    }
}
