//! Bandwidth limits for LAN peers: one shared pacer per direction, so the upload limit
//! is shared fairly by every client being served and the download limit by every chunk
//! in flight (the decision math is `lanspread_peer::Pacer`). A limit can be changed or
//! lifted while transfers run (`lanspread limit`): whoever waits under the old rate asks
//! again under the new one at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use lanspread_peer::Pacer;
use tokio::sync::Notify;

/// A shared rate limit, off (`None`) or a rate in MiB/s.
pub struct RateLimit {
    /// The rate, its pacer and a generation bumped by every change.
    pacer: Mutex<(Option<(f64, Pacer)>, u64)>,
    /// Whether a rate is set: read without the lock on the hot path (every received
    /// piece, often one packet's worth), where an unlimited daemon pays nothing.
    limited: AtomicBool,
    changed: Notify,
    epoch: Instant,
    /// Pieces that had to wait, and the microseconds they were told to wait (metrics).
    waits: (AtomicU64, AtomicU64),
}

impl RateLimit {
    /// A limit of `mib_per_s` MiB/s (already checked positive), or none.
    pub fn new(mib_per_s: Option<f64>) -> Self {
        Self {
            pacer: Mutex::new((mib_per_s.map(|r| (r, Pacer::new(r))), 0)),
            limited: AtomicBool::new(mib_per_s.is_some()),
            changed: Notify::new(),
            epoch: Instant::now(),
            waits: (AtomicU64::new(0), AtomicU64::new(0)),
        }
    }

    /// The rate now, MiB/s (`None`: unlimited).
    pub fn mib_per_s(&self) -> Option<f64> {
        self.locked().0.as_ref().map(|(r, _)| *r)
    }

    /// Sets a new rate (already checked positive) or lifts the limit; transfers waiting
    /// under the old rate reserve again under the new one.
    pub fn set(&self, mib_per_s: Option<f64>) {
        {
            let mut p = self.locked();
            *p = (mib_per_s.map(|r| (r, Pacer::new(r))), p.1 + 1);
            self.limited.store(mib_per_s.is_some(), Ordering::Relaxed);
        }
        self.changed.notify_waiters();
    }

    /// Waits until `bytes` may move.
    pub async fn take(&self, bytes: u64) {
        if !self.limited.load(Ordering::Relaxed) {
            return;
        }
        // Counted once per piece that waits, for as long as it actually waited (a
        // change of the limit makes it reserve again, not wait twice).
        let mut waiting_since = None;
        let count = WaitCount {
            limit: self,
            since: &mut waiting_since,
        };
        loop {
            let mut changed = std::pin::pin!(self.changed.notified());
            let (wait, gen) = {
                let mut p = self.locked();
                let gen = p.1;
                match p.0.as_mut() {
                    None => return,
                    Some((_, pacer)) => (pacer.reserve(self.epoch.elapsed(), bytes), gen),
                }
            };
            if wait.is_zero() {
                return;
            }
            if count.since.is_none() {
                *count.since = Some(Instant::now());
            }
            let until = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => return,
                    () = &mut changed => {}
                }
                if self.locked().1 != gen {
                    break; // reserve again under the new rate
                }
                // A change from before this reservation: keep the place in line.
                changed.set(self.changed.notified());
            }
        }
    }

    /// Pieces that waited for the limit so far, and for how long in all (seconds).
    pub fn waited(&self) -> (u64, f64) {
        let us = self.waits.1.load(Ordering::Relaxed);
        (self.waits.0.load(Ordering::Relaxed), us as f64 / 1e6)
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, (Option<(f64, Pacer)>, u64)> {
        self.pacer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Adds a piece's wait to the counters when `take` returns (or is dropped).
struct WaitCount<'a> {
    limit: &'a RateLimit,
    since: &'a mut Option<Instant>,
}

impl Drop for WaitCount<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.since {
            let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.limit.waits.0.fetch_add(1, Ordering::Relaxed);
            self.limit.waits.1.fetch_add(us, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_waiter_follows_a_change_of_the_limit() {
        let limit = std::sync::Arc::new(RateLimit::new(Some(1.0)));
        // 1 MiB/s: every MiB takes about a second.
        limit.take(1 << 20).await;
        let t0 = tokio::time::Instant::now();
        let waiter = {
            let limit = limit.clone();
            tokio::spawn(async move { limit.take(8 << 20).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "8 MiB at 1 MiB/s waits");
        limit.set(None);
        waiter.await.unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "lifted: goes at once"
        );
        assert_eq!(limit.mib_per_s(), None);
        limit.set(Some(4.0));
        assert_eq!(limit.mib_per_s(), Some(4.0));
    }
}
