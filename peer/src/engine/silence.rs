//! The sources asked for their manifest that have not answered yet, and when each one's
//! silence ends it. A source that hashes the game first reports how far it is; a report
//! is a sign of life only when it is real progress:
//! - its `total` is the one of its first report (a source cannot move the goal),
//! - `done` moved forward by at least [`MIN_STEP`] (or reached `total`).
//!
//! However it reports, a source is given at most the timeout plus `total` at
//! [`MIN_HASH_RATE`] from when it was asked, so a source that inches forward cannot hold
//! a download for ever. `total` is the source's own word, and so is the size it
//! advertises: the driver counts no more than the largest size another source of the
//! download advertises ([`credible_total`]), which no single peer can lower.

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
        let cap = s.asked + self.idle + Duration::from_secs(total / MIN_HASH_RATE);
        s.until = (now + self.idle).min(cap).max(s.until);
        true
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

/// The total a source's hashing report counts with: `None` when it is not the size the
/// source advertises for the game; else at most the largest size another source of the
/// download advertises (`others`). A source alone chooses both its total and its size
/// (2^50 bytes held a vote for years at [`MIN_HASH_RATE`]), but it cannot lower the
/// others' sizes, so it cannot cut an honest source's wait either.
pub fn credible_total(
    total: u64,
    advertised: Option<u64>,
    others: impl IntoIterator<Item = u64>,
) -> Option<u64> {
    if advertised != Some(total) {
        return None;
    }
    Some(
        others
            .into_iter()
            .max()
            .map_or(total, |most| total.min(most)),
    )
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
    fn a_total_counts_for_no_more_than_another_source_advertises() {
        let gib = 1u64 << 30;
        // Not the size it advertises: no report counts.
        assert_eq!(credible_total(50 * gib, Some(40 * gib), []), None);
        assert_eq!(credible_total(50 * gib, None, []), None);
        // Alone, or the largest: its own.
        assert_eq!(credible_total(50 * gib, Some(50 * gib), []), Some(50 * gib));
        assert_eq!(
            credible_total(50 * gib, Some(50 * gib), [1, 50 * gib]),
            Some(50 * gib)
        );
        // A forged 2^50 beside an honest 50 GiB: held to 50 GiB (3.5 h at the slowest
        // rate, not 8.5 years); a peer that advertises less cuts no one's wait.
        assert_eq!(
            credible_total(1 << 50, Some(1 << 50), [50 * gib]),
            Some(50 * gib)
        );
        assert_eq!(
            credible_total(50 * gib, Some(50 * gib), [0, 1 << 50]),
            Some(50 * gib)
        );
    }
}
