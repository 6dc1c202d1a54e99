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

/// The lowest limit taken (10 KiB/s): below it a piece would wait for hours, or for
/// longer than a `Duration` holds.
pub const MIN_LIMIT_MIB_S: f64 = 0.01;
/// The highest limit taken (about a TiB/s: no link is faster).
pub const MAX_LIMIT_MIB_S: f64 = 1e6;

/// Checks a configured limit: a number of MiB/s in
/// [`MIN_LIMIT_MIB_S`]`..=`[`MAX_LIMIT_MIB_S`].
pub fn check_limit(name: &str, mib_per_s: f64) -> Result<f64, String> {
    if (MIN_LIMIT_MIB_S..=MAX_LIMIT_MIB_S).contains(&mib_per_s) {
        Ok(mib_per_s)
    } else {
        // Not the number itself when it is huge: `1e300` would print 301 digits.
        let shown = if mib_per_s.abs() < 1e9 {
            format!("{mib_per_s}")
        } else {
            format!("{mib_per_s:e}")
        };
        Err(format!(
            "{name}: {shown} is not a number of MiB/s in {MIN_LIMIT_MIB_S}..={MAX_LIMIT_MIB_S}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn limits_out_of_range_are_refused_in_a_line() {
        assert_eq!(check_limit("upload", 5.0), Ok(5.0));
        for bad in [0.001, 2e6, 1e300, -1.0, f64::NAN] {
            let e = check_limit("upload", bad).unwrap_err();
            assert!(e.starts_with("upload: ") && e.len() < 80, "{e}");
        }
        assert!(check_limit("upload", 1e300).unwrap_err().contains("1e300"));
    }

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
    fn bad_limits_are_refused() {
        assert!(check_limit("max_upload_mib_s", 0.0).is_err());
        assert!(check_limit("max_upload_mib_s", -1.0).is_err());
        assert!(check_limit("max_upload_mib_s", f64::NAN).is_err());
        assert!(
            check_limit("max_upload_mib_s", 1e-30).is_err(),
            "would wait for ever"
        );
        assert!(check_limit("max_upload_mib_s", f64::INFINITY).is_err());
        // Even a rate no check lets through never panics the pacer.
        let mut p = Pacer::new(1e-30);
        assert_eq!(
            p.reserve(Duration::ZERO, MIB),
            Duration::MAX.saturating_sub(BURST)
        );
        assert_eq!(check_limit("max_upload_mib_s", 12.5), Ok(12.5));
    }
}
