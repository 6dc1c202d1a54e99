//! The peer table: one entry per peer id, whatever address it is seen at.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use lanspread_catalog::{Catalog, GameId, Version};
use lanspread_proto::{GameAd, PeerId};

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
        let games: BTreeMap<GameId, RemoteGame> = ads
            .iter()
            .filter(|ad| catalog.contains(&ad.id))
            .map(|ad| {
                (
                    ad.id.clone(),
                    RemoteGame {
                        version: ad.version,
                        size: ad.size,
                    },
                )
            })
            .collect();
        if entry.games == games {
            return false;
        }
        entry.games = games;
        true
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
}
