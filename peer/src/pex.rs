//! Peer exchange: which of the peers a linked peer told us about to dial. Sans-IO.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use lanspread_proto::{PeerAddr, PeerId, MAX_PEX};

/// Default cap on links (ours and theirs together) that peer exchange dials up to: at a
/// LAN party of hundreds, each peer links to this many and the swarm stays connected.
pub const DEFAULT_MAX_LINKS: usize = 64;

/// The learned peers to dial now: not ourselves, not linked, not being dialled, each id
/// once, with a usable address (no unspecified address, no port 0) that did not fail a
/// dial lately (`failed`: a peer cannot keep us dialling addresses that do not answer),
/// only the first [`MAX_PEX`] of the list, and only as many as keep `linked + dialling`
/// under `max_links`.
pub fn pex_dials(
    me: &PeerId,
    (linked, dialling): (&BTreeSet<PeerId>, &BTreeSet<PeerId>),
    failed: &BTreeSet<SocketAddr>,
    learned: &[PeerAddr],
    max_links: usize,
) -> Vec<PeerAddr> {
    let room = max_links.saturating_sub(linked.len() + dialling.len());
    let mut seen = BTreeSet::new();
    learned
        .iter()
        .take(MAX_PEX)
        .filter(|p| &p.peer_id != me && !linked.contains(&p.peer_id))
        .filter(|p| !dialling.contains(&p.peer_id))
        .filter(|p| !p.addr.ip().is_unspecified() && p.addr.port() != 0)
        .filter(|p| !failed.contains(&p.addr))
        .filter(|p| seen.insert(p.peer_id.clone()))
        .take(room)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: u8) -> PeerId {
        PeerId::from_spki(&[n])
    }

    fn at(n: u8, addr: &str) -> PeerAddr {
        PeerAddr {
            peer_id: pid(n),
            addr: addr.parse().unwrap(),
        }
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
        let none = BTreeSet::new();
        let d = pex_dials(&pid(0), (&linked, &dialling), &none, &learned, 10);
        assert_eq!(
            d,
            [
                at(5, "10.0.0.5:41741"),
                at(6, "[fd00::6]:41741"),
                at(7, "10.0.0.7:41741")
            ]
        );
        // The cap counts links and dials in progress.
        let d = pex_dials(&pid(0), (&linked, &dialling), &none, &learned, 3);
        assert_eq!(d, [at(5, "10.0.0.5:41741")]);
        assert!(pex_dials(&pid(0), (&linked, &dialling), &none, &learned, 2).is_empty());
        // An address that failed lately is not tried again (the same id at another
        // address still is).
        let failed: BTreeSet<SocketAddr> = ["10.0.0.5:41741".parse().unwrap()].into();
        let d = pex_dials(&pid(0), (&linked, &dialling), &failed, &learned, 10);
        let want = [
            at(5, "10.0.0.55:41741"),
            at(6, "[fd00::6]:41741"),
            at(7, "10.0.0.7:41741"),
        ];
        assert_eq!(d, want);
    }

    #[test]
    fn only_the_first_max_pex_entries_count() {
        let learned: Vec<PeerAddr> = (0..=200u8)
            .map(|n| at(n, &format!("10.0.1.{n}:41741")))
            .collect();
        let none = BTreeSet::new();
        let d = pex_dials(&pid(250), (&none, &none), &BTreeSet::new(), &learned, 1000);
        assert_eq!(d.len(), MAX_PEX);
    }
}
