//! The sources asked for their manifest that have not answered yet, and when each one's
//! silence ends it. A source that hashes the game first reports how far it is; a report
//! is a sign of life only when it is real progress:
//! - its `total` is the one of its first report (a source cannot move the goal),
//! - `done` moved forward by at least [`MIN_STEP`] (or reached `total`).
//!
//! However it reports, a source is given at most the timeout plus `total` at
//! [`MIN_HASH_RATE`] from when it was asked, so a source that inches forward cannot hold
//! a download for ever. `total` is the source's own word (and the size it advertises,
//! which it also chose): once another source has answered with a manifest, no more than
//! that manifest's bytes count — a source that claims 2^50 bytes to hash is not waited
//! for years while the game at hand is 50 GiB.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lanspread_proto::PeerId;

/// The least forward step of a hashing report that counts as progress.
pub const MIN_STEP: u64 = 1 << 20;
/// The slowest hashing a source is waited for, in bytes per second (a cold disk reads
/// far faster): a source hashing `total` bytes gets at most `total / MIN_HASH_RATE` more
/// than the silence timeout.
pub const MIN_HASH_RATE: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Silence {
    /// When its silence ends it.
    until: Instant,
    /// When it was asked.
    asked: Instant,
    /// Its last report: done of total.
    report: Option<(u64, u64)>,
}

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub(super) struct Waiting {
    peers: BTreeMap<PeerId, Silence>,
    idle: Duration,
    /// The most bytes a manifest answered so far holds.
    answered: Option<u64>,
}

impl Waiting {
    /// Every source asked at `now`; each may stay silent for `idle`.
    pub(super) fn new(sources: &[PeerId], now: Instant, idle: Duration) -> Self {
        let s = Silence {
            until: now + idle,
            asked: now,
            report: None,
        };
        Self {
            peers: sources.iter().map(|p| (p.clone(), s)).collect(),
            idle,
            answered: None,
        }
    }

    /// A source's hashing report; returns whether it counted as progress.
    pub(super) fn report(&mut self, peer: &PeerId, done: u64, total: u64, now: Instant) -> bool {
        let Some(s) = self.peers.get_mut(peer) else {
            return false;
        };
        let forward = match s.report {
            None => done <= total,
            Some((d, t)) => {
                t == total
                    && done <= total
                    && done >= d.saturating_add(MIN_STEP).min(total)
                    && done > d
            }
        };
        if !forward {
            return false;
        }
        s.report = Some((done, total));
        let cap = cap(s, self.idle, total, self.answered);
        s.until = (now + self.idle).min(cap).max(s.until);
        true
    }

    /// Another source answered with a manifest of `bytes`: no silence lasts past the cap
    /// of that size any more.
    pub(super) fn answered(&mut self, bytes: u64) {
        let known = self.answered.map_or(bytes, |b| b.max(bytes));
        self.answered = Some(known);
        for s in self.peers.values_mut() {
            if let Some((_, total)) = s.report {
                s.until = s.until.min(cap(s, self.idle, total, Some(known)));
            }
        }
    }

    /// Takes out the sources whose silence has ended by `now`.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<PeerId> {
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, s)| now >= s.until)
            .map(|(p, _)| p.clone())
            .collect();
        for p in &gone {
            self.peers.remove(p);
        }
        gone
    }

    /// The earliest end of a silence.
    pub(super) fn next(&self) -> Option<Instant> {
        self.peers.values().map(|s| s.until).min()
    }

    /// Takes out a source that answered; whether it was waited for.
    pub(super) fn remove(&mut self, peer: &PeerId) -> bool {
        self.peers.remove(peer).is_some()
    }

    /// Takes out every source still waited for.
    pub(super) fn take_all(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.peers).into_keys().collect()
    }

    pub(super) fn len(&self) -> usize {
        self.peers.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// The latest end of `s`'s silence: asked, plus the timeout, plus its `total` (at most
/// what an answered manifest holds) at [`MIN_HASH_RATE`].
fn cap(s: &Silence, idle: Duration, total: u64, answered: Option<u64>) -> Instant {
    let total = answered.map_or(total, |a| total.min(a));
    s.asked + idle + Duration::from_secs(total / MIN_HASH_RATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: u8) -> PeerId {
        PeerId::from_spki(&[n])
    }

    #[test]
    fn only_real_progress_extends_a_silence_and_never_past_the_cap() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let mut w = Waiting::new(&[pid(1)], t0, idle);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let total = 400 << 20; // 100 s at MIN_HASH_RATE: the cap is t0 + 160 s.
        assert!(w.report(&pid(1), 0, total, at(10)));
        assert_eq!(w.next(), Some(at(70)));
        // Less than a MiB forward, the same value, another total: not progress.
        assert!(!w.report(&pid(1), 1000, total, at(20)));
        assert!(!w.report(&pid(1), 0, total, at(20)));
        assert!(!w.report(&pid(1), 5 << 20, total * 2, at(20)));
        assert!(!w.report(&pid(9), 5 << 20, total, at(20)), "not asked");
        assert!(w.report(&pid(1), 1 << 20, total, at(50)));
        assert_eq!(w.next(), Some(at(110)));
        // Inching forward a MiB at a time: held to the cap.
        assert!(w.report(&pid(1), 2 << 20, total, at(150)));
        assert_eq!(w.next(), Some(at(160)));
        assert!(w.expired(at(159)).is_empty());
        assert_eq!(w.expired(at(160)), [pid(1)]);
        assert!(w.is_empty());
    }

    #[test]
    fn the_last_step_to_the_total_counts_and_answers_take_sources_out() {
        let t0 = Instant::now();
        let mut w = Waiting::new(&[pid(1), pid(2)], t0, Duration::from_secs(60));
        assert!(w.report(&pid(1), 10, 100, t0));
        assert!(
            w.report(&pid(1), 100, 100, t0),
            "done, though less than a MiB"
        );
        assert!(w.remove(&pid(1)));
        assert!(!w.remove(&pid(1)));
        assert_eq!(w.len(), 1);
        assert_eq!(w.take_all(), [pid(2)]);
    }

    #[test]
    fn a_total_past_what_another_source_answered_buys_no_more_time() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(60);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = Waiting::new(&[pid(1), pid(2)], t0, idle);
        // A forged total of 2^50 bytes: its cap is years away.
        let forged = 1u64 << 50;
        for (i, t) in [(1u64, 10), (2, 65), (3, 120)] {
            assert!(w.report(&pid(1), i << 20, forged, at(t)));
        }
        // Another source answers with a 400 MiB manifest: the cap is t0 + 60 + 100 s,
        // whatever total it claims, and further reports extend no further.
        assert!(w.remove(&pid(2)));
        assert_eq!(w.next(), Some(at(180)));
        w.answered(400 << 20);
        assert_eq!(w.next(), Some(at(160)));
        assert!(w.report(&pid(1), 4 << 20, forged, at(150)));
        assert_eq!(w.next(), Some(at(160)));
        assert_eq!(w.expired(at(160)), [pid(1)]);
        // An honest source of the same game is capped as before.
        let mut w = Waiting::new(&[pid(1)], t0, idle);
        w.answered(400 << 20);
        assert!(w.report(&pid(1), 0, 400 << 20, at(10)));
        assert_eq!(w.next(), Some(at(70)));
    }
}
