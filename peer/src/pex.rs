//! Peer exchange: which of the peers a linked peer told us about to dial. Sans-IO.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use lanspread_proto::{GameId, PeerAddr, PeerId, MAX_PEX, MAX_PEX_GAMES};

/// Default cap on links (ours and theirs together) that peer exchange dials up to: at a
/// LAN party of hundreds, each peer links to this many and the swarm stays connected.
pub const DEFAULT_MAX_LINKS: usize = 64;

/// Links over the cap that peer exchange may dial to peers holding a partial copy of a
/// game this peer downloads: links made before a party's downloads began (to idle
/// machines, or before anyone held anything) do not keep a downloader from the holders.
pub const HOLDER_LINKS: usize = 16;

/// What peer exchange weighs a learned peer against.
#[derive(Debug, Clone, Copy)]
pub struct PexRoom<'a> {
    /// The peers we are linked to.
    pub linked: &'a BTreeSet<PeerId>,
    /// The learned peers being dialled now.
    pub dialling: &'a BTreeSet<PeerId>,
    /// Addresses that failed a dial lately: a peer cannot keep us dialling addresses
    /// that do not answer.
    pub failed: &'a BTreeSet<SocketAddr>,
    /// The cap on `linked + dialling` (0: peer exchange off).
    pub max_links: usize,
    /// The games we download now.
    pub wanted: &'a BTreeSet<GameId>,
}

/// Whether `p` holds (among the first [`MAX_PEX_GAMES`] games it was said to) a partial
/// copy of a game in `wanted`.
pub fn holds_wanted(p: &PeerAddr, wanted: &BTreeSet<GameId>) -> bool {
    p.holds
        .iter()
        .take(MAX_PEX_GAMES)
        .any(|g| wanted.contains(g))
}

/// The learned peers to dial now: not ourselves, not linked, not being dialled, each id
/// once, with a usable address (no unspecified address, no port 0) that did not fail a
/// dial lately, only the first [`MAX_PEX`] of the list. Peers holding a partial copy of a
/// game we download come first and may take [`HOLDER_LINKS`] links over the cap; the
/// others only as many as keep `linked + dialling` under `max_links`. A cap of 0 turns
/// peer exchange off.
pub fn pex_dials(me: &PeerId, room: PexRoom<'_>, learned: &[PeerAddr]) -> Vec<PeerAddr> {
    if room.max_links == 0 {
        return Vec::new();
    }
    let used = room.linked.len() + room.dialling.len();
    let mut seen = BTreeSet::new();
    let (holders, others): (Vec<&PeerAddr>, Vec<&PeerAddr>) = learned
        .iter()
        .take(MAX_PEX)
        .filter(|p| &p.peer_id != me && !room.linked.contains(&p.peer_id))
        .filter(|p| !room.dialling.contains(&p.peer_id))
        .filter(|p| !p.addr.ip().is_unspecified() && p.addr.port() != 0)
        .filter(|p| !room.failed.contains(&p.addr))
        .filter(|p| seen.insert(p.peer_id.clone()))
        .partition(|p| holds_wanted(p, room.wanted));
    let n_holders = holders
        .len()
        .min((room.max_links + HOLDER_LINKS).saturating_sub(used));
    let n_others = room.max_links.saturating_sub(used + n_holders);
    holders
        .into_iter()
        .take(n_holders)
        .chain(others.into_iter().take(n_others))
        .cloned()
        .collect()
}

/// The peer-exchange list for the link to `remote`: the other linked peers of `all`
/// (never `remote`), at most [`MAX_PEX`]. Each peer hears another window of a long list
/// (from an offset its id gives), so in a party of hundreds the links spread instead of
/// all going to the same 64. Only the window is copied: every link builds its list at
/// each change, and a copy of the whole list each time would cost links² copies.
pub fn pex_list(all: &[PeerAddr], remote: &PeerId) -> Vec<PeerAddr> {
    let others = || all.iter().filter(|p| &p.peer_id != remote);
    let n = others().count();
    if n <= MAX_PEX {
        return others().cloned().collect();
    }
    let spread = remote.as_str().bytes().map(usize::from).sum::<usize>();
    others()
        .cycle()
        .skip(spread % n)
        .take(MAX_PEX)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_link_hears_a_window_of_the_others_never_itself() {
        let all: Vec<PeerAddr> = (0..200u8)
            .map(|n| at(n, &format!("10.0.{n}.1:41741")))
            .collect();
        let mut windows = BTreeSet::new();
        for remote in [pid(0), pid(7), pid(199), pid(250)] {
            let list = pex_list(&all, &remote);
            // The window of the others from the remote's offset, wrapping around.
            let mut others: Vec<PeerAddr> = all
                .iter()
                .filter(|p| p.peer_id != remote)
                .cloned()
                .collect();
            let spread = remote.as_str().bytes().map(usize::from).sum::<usize>();
            let len = others.len();
            others.rotate_left(spread % len);
            others.truncate(MAX_PEX);
            assert_eq!(list, others);
            assert!(list.iter().all(|p| p.peer_id != remote));
            windows.insert(list[0].peer_id.clone());
        }
        assert!(windows.len() > 1, "the windows start at different peers");
        // A short list is told whole, without the remote.
        let few = &all[..5];
        assert_eq!(pex_list(few, &pid(2)).len(), 4);
        assert_eq!(pex_list(few, &pid(9)), few.to_vec());
    }

    fn pid(n: u8) -> PeerId {
        PeerId::from_spki(&[n])
    }

    fn at(n: u8, addr: &str) -> PeerAddr {
        PeerAddr {
            peer_id: pid(n),
            addr: addr.parse().unwrap(),
            holds: Vec::new(),
        }
    }

    fn holding(n: u8, games: &[&str]) -> PeerAddr {
        PeerAddr {
            holds: games.iter().map(|g| GameId::new(g).unwrap()).collect(),
            ..at(n, &format!("10.0.2.{n}:41741"))
        }
    }

    /// Dials for `learned` with these links and dials in progress, no failed address.
    fn dials(
        (linked, dialling): (&BTreeSet<PeerId>, &BTreeSet<PeerId>),
        (max_links, wanted): (usize, &[&str]),
        learned: &[PeerAddr],
    ) -> Vec<PeerAddr> {
        let wanted: BTreeSet<GameId> = wanted.iter().map(|g| GameId::new(g).unwrap()).collect();
        let failed = BTreeSet::new();
        let room = PexRoom {
            linked,
            dialling,
            failed: &failed,
            max_links,
            wanted: &wanted,
        };
        pex_dials(&pid(0), room, learned)
    }

    #[test]
    fn dials_new_usable_peers_under_the_cap() {
        let linked: BTreeSet<PeerId> = [pid(1)].into();
        let dialling: BTreeSet<PeerId> = [pid(2)].into();
        let learned = [
            at(0, "10.0.0.9:41741"), // ourselves
            at(1, "10.0.0.1:41741"), // linked already
            at(2, "10.0.0.2:41741"), // being dialled
            at(3, "0.0.0.0:41741"),  // unusable
            at(4, "10.0.0.4:0"),     // unusable
            at(5, "10.0.0.5:41741"),
            at(5, "10.0.0.55:41741"), // same id again
            at(6, "[fd00::6]:41741"),
            at(7, "10.0.0.7:41741"),
        ];
        let d = dials((&linked, &dialling), (10, &[]), &learned);
        assert_eq!(
            d,
            [
                at(5, "10.0.0.5:41741"),
                at(6, "[fd00::6]:41741"),
                at(7, "10.0.0.7:41741")
            ]
        );
        // The cap counts links and dials in progress.
        let d = dials((&linked, &dialling), (3, &[]), &learned);
        assert_eq!(d, [at(5, "10.0.0.5:41741")]);
        assert!(dials((&linked, &dialling), (2, &[]), &learned).is_empty());
        // An address that failed lately is not tried again (the same id at another
        // address still is).
        let failed: BTreeSet<SocketAddr> = ["10.0.0.5:41741".parse().unwrap()].into();
        let none = BTreeSet::new();
        let room = PexRoom {
            linked: &linked,
            dialling: &dialling,
            failed: &failed,
            max_links: 10,
            wanted: &none,
        };
        let want = [
            at(5, "10.0.0.55:41741"),
            at(6, "[fd00::6]:41741"),
            at(7, "10.0.0.7:41741"),
        ];
        assert_eq!(pex_dials(&pid(0), room, &learned), want);
    }

    #[test]
    fn only_the_first_max_pex_entries_count() {
        let learned: Vec<PeerAddr> = (1..=200u8)
            .map(|n| at(n, &format!("10.0.1.{n}:41741")))
            .collect();
        let none = BTreeSet::new();
        let d = dials((&none, &none), (1000, &[]), &learned);
        assert_eq!(d.len(), MAX_PEX);
        // A holder past them is not seen either.
        let mut learned = learned;
        learned.insert(MAX_PEX, holding(201, &["cod5"]));
        let d = dials((&none, &none), (1000, &["cod5"]), &learned);
        assert!(d.iter().all(|p| p.holds.is_empty()));
    }

    #[test]
    fn holders_of_our_downloads_come_first_and_may_pass_the_cap() {
        let linked: BTreeSet<PeerId> = [pid(1)].into();
        let none = BTreeSet::new();
        let learned = [
            at(3, "10.0.0.3:41741"),
            holding(4, &["other"]),
            holding(5, &["quake", "cod5"]),
            holding(6, &["cod5"]),
        ];
        // Room for one: holders of what we download take it before the peers listed
        // first, and the second holder a link over the cap.
        let d = dials((&linked, &none), (2, &["cod5"]), &learned);
        assert_eq!(d, [learned[2].clone(), learned[3].clone()]);
        // At the cap, holders still get links, up to HOLDER_LINKS over it; others none.
        let d = dials((&linked, &none), (1, &["cod5"]), &learned);
        assert_eq!(d, [learned[2].clone(), learned[3].clone()]);
        let full: BTreeSet<PeerId> = (100..100 + HOLDER_LINKS as u8).map(pid).collect();
        let d = dials((&full, &linked), (1, &["cod5"]), &learned);
        assert!(d.is_empty(), "{d:?}");
        let d = dials((&full, &none), (1, &["cod5"]), &learned);
        assert_eq!(d, [learned[2].clone()]);
        // Not downloading what they hold: the plain cap.
        assert!(dials((&linked, &none), (1, &["doom"]), &learned).is_empty());
        let d = dials((&linked, &none), (3, &[]), &learned);
        assert_eq!(d, [learned[0].clone(), learned[1].clone()]);
        // A cap of 0 turns peer exchange off, holders too.
        assert!(dials((&none, &none), (0, &["cod5"]), &learned).is_empty());
        // Only the first MAX_PEX_GAMES games of an entry count.
        let mut many: Vec<&str> = vec!["a", "b", "c", "d"];
        assert_eq!(many.len(), MAX_PEX_GAMES);
        many.push("cod5");
        let late = [holding(7, &many)];
        assert!(dials((&linked, &none), (1, &["cod5"]), &late).is_empty());
    }
}
