//! When the recursive watch walks its whole tree again after inotify event queue
//! overflows (decision only, no inotify here), and the wait for its descriptor that lets
//! a due walk happen while no event comes.

use std::time::{Duration, Instant};

/// The least time between two walks of the whole tree after event queue overflows.
pub const REWALK_EVERY: Duration = Duration::from_secs(2);

/// When to walk the whole tree again after event queue overflows: at the first at once,
/// then at most once every [`REWALK_EVERY`], and once more after the last. A copy of a
/// huge game can overflow the queue again and again; a walk on each (the watch thread
/// reads no events meanwhile) would only make the next overflow sooner.
#[derive(Debug)]
pub struct Rewalks {
    /// [`REWALK_EVERY`] (shorter in tests).
    every: Duration,
    last: Option<Instant>,
    /// An overflow came since the last walk.
    due: bool,
}

impl Rewalks {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            due: false,
        }
    }

    /// An overflow at `now`: whether to walk now (if not, a walk is due later). The
    /// caller tells [`Rewalks::walked`] when a walk ends.
    pub fn overflow(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|l| now < l + self.every) {
            self.due = true;
            return false;
        }
        self.due = false;
        true
    }

    /// A walk ended at `now`: the interval counts from there (a walk of a big tree on a
    /// cold disk can take longer than the interval itself).
    pub fn walked(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// How long the thread may wait for events before a due walk (`None`: none is due).
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        let last = self.last?;
        self.due
            .then(|| (last + self.every).saturating_duration_since(now))
    }

    /// Whether the due walk's time has come (the caller walks, then tells
    /// [`Rewalks::walked`]).
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.wait(now) == Some(Duration::ZERO) {
            self.due = false;
            return true;
        }
        false
    }
}

/// Waits until `fd` is readable or `timeout` passes; true when readable (an interrupted
/// wait is not: the caller looks at its clock again).
pub fn readable_within(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up: waking a millisecond early would only wait again.
    let ms = timeout.as_micros().div_ceil(1000).max(1);
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll reads and writes the one pollfd it is given, for one descriptor the
    // caller keeps open.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    rc > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_overflow_walks_at_once_and_a_burst_walks_once_more_after_it() {
        let every = Duration::from_secs(2);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut r = Rewalks::new(every);
        assert_eq!(r.wait(t0), None, "nothing due before any overflow");
        assert!(r.overflow(at(0)), "the first overflow walks at once");
        r.walked(at(300)); // a walk of 300 ms
        assert_eq!(r.wait(at(310)), None);
        // More overflows within the interval after the walk: no walk, one due when it
        // ends.
        assert!(!r.overflow(at(400)));
        assert!(!r.overflow(at(1800)));
        assert_eq!(r.wait(at(1800)), Some(Duration::from_millis(500)));
        assert!(!r.take_due(at(2299)));
        assert!(
            r.take_due(at(2300)),
            "the due walk at the end of the interval"
        );
        r.walked(at(2400));
        assert_eq!(r.wait(at(2401)), None, "and only one");
        assert!(!r.take_due(at(5000)));
        // An overflow long after the last walk walks at once again.
        assert!(r.overflow(at(4500)));
        r.walked(at(4500));
        assert!(!r.overflow(at(4600)));
        assert!(r.take_due(at(7000)), "late is still due");
    }

    #[test]
    fn a_descriptor_with_nothing_to_read_waits_out_its_timeout() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!readable_within(b.as_raw_fd(), Duration::from_millis(1)));
        a.write_all(b"x").unwrap();
        assert!(readable_within(b.as_raw_fd(), Duration::from_secs(60)));
    }
}
