//! Bandwidth pacing: a virtual-time scheduler (GCRA). Every sender reserves its bytes
//! before moving them and waits until its slot; reservations are served in arrival order,
//! so concurrent streams share the rate evenly. Sans-IO: time is passed in.

use std::time::Duration;

/// Most bytes allowed to go out at once after an idle period (50 ms worth).
const BURST: Duration = Duration::from_millis(50);

/// A rate limit in bytes per second.
#[derive(Debug, Clone)]
pub struct Pacer {
    bytes_per_s: f64,
    /// Virtual time (since the pacer's epoch) at which the link is free again.
    free_at: Duration,
}

impl Pacer {
    /// A pacer for `mib_per_s` MiB/s (must be positive and finite).
    pub fn new(mib_per_s: f64) -> Self {
        Self {
            bytes_per_s: mib_per_s * 1024.0 * 1024.0,
            free_at: Duration::ZERO,
        }
    }

    /// Reserves `bytes` at `now` (time since the epoch); returns how long to wait before
    /// sending them.
    pub fn reserve(&mut self, now: Duration, bytes: u64) -> Duration {
        let start = self.free_at.max(now.saturating_sub(BURST));
        let takes =
            Duration::try_from_secs_f64(bytes as f64 / self.bytes_per_s).unwrap_or(Duration::MAX);
        self.free_at = start.saturating_add(takes);
        // Wait until the reservation ends minus the burst allowance.
        self.free_at.saturating_sub(BURST).saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Sends `total` bytes in `piece`-sized reservations, sleeping as told; returns the
    /// virtual time taken.
    fn run(p: &mut Pacer, total: u64, piece: u64) -> Duration {
        let mut now = Duration::ZERO;
        let mut sent = 0;
        while sent < total {
            now += p.reserve(now, piece);
            sent += piece;
        }
        now
    }

    #[test]
    fn long_transfers_take_size_over_rate() {
        let mut p = Pacer::new(10.0);
        let t = run(&mut p, 100 * MIB, MIB);
        // 10 s, minus at most the burst allowance.
        assert!(
            t >= Duration::from_millis(9_850) && t <= Duration::from_secs(10),
            "{t:?}"
        );
    }

    #[test]
    fn concurrent_senders_share_evenly() {
        let mut p = Pacer::new(8.0);
        let mut clocks = [Duration::ZERO; 2];
        let mut sent = [0u64; 2];
        // Whoever is due first sends next, as tasks would.
        while sent.iter().sum::<u64>() < 64 * MIB {
            let i = if clocks[0] <= clocks[1] { 0 } else { 1 };
            clocks[i] += p.reserve(clocks[i], MIB);
            sent[i] += MIB;
        }
        assert!(sent[0].abs_diff(sent[1]) <= 2 * MIB, "{sent:?}");
    }

    #[test]
    fn idle_time_is_not_banked_beyond_the_burst() {
        let mut p = Pacer::new(1.0);
        assert_eq!(
            p.reserve(Duration::from_secs(100), MIB / 64),
            Duration::ZERO
        );
        // After a long idle, only the burst goes out at once.
        let wait = p.reserve(Duration::from_secs(100), MIB);
        assert!(wait >= Duration::from_millis(900), "{wait:?}");
    }

    #[test]
    fn a_rate_no_check_lets_through_never_panics_the_pacer() {
        // `lanspread_control::check_limit` refuses it; the pacer copes all the same.
        let mut p = Pacer::new(1e-30);
        assert_eq!(
            p.reserve(Duration::ZERO, MIB),
            Duration::MAX.saturating_sub(BURST)
        );
    }
}
