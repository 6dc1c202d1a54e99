//! Who asked a peer for a game lately (sans-IO): at a LAN party's start every client asks
//! the file server for the manifest within a second, and their first chunk requests come
//! before any of them has announced its download to the server (announcements travel on
//! the links, requests on data connections). Counting recent askers, the server sees a
//! swarm from the first request: each downloader gets one upload turn, instead of the
//! first one to ask getting every turn as a lone downloader would (at N = 4 in the lab,
//! two clients got four answers each at once: eight 32 MiB chunks shared the server's
//! uplink for 15–35 s, and one chunk went out twice).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lanspread_proto::PeerId;

/// How long a peer that asked for a game (its manifest, or an offer) counts as one of
/// its downloaders. Longer than a manifest vote's grace and a download's preparation
/// (the gap between the manifest and the first chunk request), short enough that a lone
/// downloader is soon not held to one answer by someone who asked once and went away.
pub const ASKED_LATELY: Duration = Duration::from_secs(10);

/// At most this many askers are kept per key (the oldest go first): a bound on what a
/// flood of peers can make the server keep.
const MAX_ASKERS: usize = 1024;

/// Recent askers per key (a game at a version).
#[derive(Debug)]
pub struct RecentAskers<K> {
    asked: BTreeMap<K, BTreeMap<PeerId, Instant>>,
}

impl<K> Default for RecentAskers<K> {
    fn default() -> Self {
        Self {
            asked: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> RecentAskers<K> {
    /// `peer` asked for `key` at `now`.
    pub fn note(&mut self, key: &K, peer: &PeerId, now: Instant) {
        self.forget(now);
        let askers = self.asked.entry(key.clone()).or_default();
        askers.insert(peer.clone(), now);
        if askers.len() > MAX_ASKERS {
            let oldest = askers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(p, _)| p.clone());
            if let Some(p) = oldest {
                askers.remove(&p);
            }
        }
    }

    /// The peers other than `peer` that asked for `key` within [`ASKED_LATELY`] of
    /// `now`. The caller drops those whose download ended (ready with the game now, or
    /// gone): a finished peer is no downloader, however recently it asked.
    pub fn others(&self, key: &K, peer: &PeerId, now: Instant) -> Vec<PeerId> {
        self.asked.get(key).map_or_else(Vec::new, |askers| {
            askers
                .iter()
                .filter(|(p, at)| *p != peer && now.saturating_duration_since(**at) < ASKED_LATELY)
                .map(|(p, _)| p.clone())
                .collect()
        })
    }

    fn forget(&mut self, now: Instant) {
        self.asked.retain(|_, askers| {
            askers.retain(|_, at| now.saturating_duration_since(*at) < ASKED_LATELY);
            !askers.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u8) -> PeerId {
        PeerId::from_spki(&[n])
    }

    #[test]
    fn another_asker_counts_for_a_while_and_only_for_its_game() {
        let t0 = Instant::now();
        let mut a = RecentAskers::default();
        a.note(&"g", &p(1), t0);
        assert!(a.others(&"g", &p(1), t0).is_empty(), "alone");
        a.note(&"g", &p(2), t0);
        assert_eq!(a.others(&"g", &p(1), t0), [p(2)]);
        assert_eq!(a.others(&"g", &p(2), t0), [p(1)]);
        assert!(a.others(&"h", &p(1), t0).is_empty(), "another game");
        let later = t0 + ASKED_LATELY;
        assert!(
            a.others(&"g", &p(1), later).is_empty(),
            "p2 asked too long ago"
        );
        // Asking again renews the mark; old marks are forgotten.
        a.note(&"g", &p(2), later);
        assert_eq!(a.others(&"g", &p(1), later), [p(2)]);
        a.note(&"h", &p(3), later + ASKED_LATELY);
        assert_eq!(a.asked.len(), 1, "g's askers forgotten");
    }

    #[test]
    fn a_flood_of_askers_is_bounded() {
        let t0 = Instant::now();
        let mut a = RecentAskers::default();
        for i in 0..(MAX_ASKERS + 10) {
            let id = PeerId::from_spki(&i.to_le_bytes());
            a.note(&"g", &id, t0 + Duration::from_micros(i as u64));
        }
        assert_eq!(a.asked[&"g"].len(), MAX_ASKERS);
    }
}
