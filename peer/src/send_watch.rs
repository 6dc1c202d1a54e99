//! When a source gives up on an answer its peer does not take. A write that stays blocked
//! means the peer's flow-control window is full: it does not read this stream, or it reads
//! nothing at all, or the connection is busy with its other streams (they are drained one
//! after another). Only the first two are the peer's fault; a busy connection still sends.
//! So a blocked answer is abandoned when, after one quiet `window`, the whole connection
//! also sent less than [`MIN_PROGRESS`] bytes during the next one — or, however busy the
//! connection, when it has been blocked for [`STUCK_WINDOWS`] windows (a peer that reads
//! one stream slowly must not hold its others, and their serve slots, forever).
//! Sans-IO: time and the connection's byte counter are passed in.

use std::fmt;
use std::time::Duration;

/// Fewer bytes than this sent on the whole connection in one window is "takes nothing"
/// (keep-alives, acknowledgements and pings are a few hundred bytes a second).
pub const MIN_PROGRESS: u64 = 256 << 10;
/// Windows a write may stay blocked while the connection moves other data.
pub const STUCK_WINDOWS: u32 = 20;

/// Why an answer was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// The connection as a whole sent (almost) nothing: the peer reads nothing.
    PeerTakesNothing {
        /// How long the write had been blocked.
        blocked: Duration,
    },
    /// The connection moved other data, but this answer stayed blocked too long.
    AnswerStuck {
        /// How long the write had been blocked.
        blocked: Duration,
    },
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerTakesNothing { blocked } => write!(
                f,
                "the peer took nothing for {} s",
                blocked.as_secs_f64().round()
            ),
            Self::AnswerStuck { blocked } => write!(
                f,
                "the answer moved nothing for {} s while the connection carried other data",
                blocked.as_secs_f64().round()
            ),
        }
    }
}

/// What to do with a write that is still blocked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep waiting; ask again after one more window.
    Wait,
    /// Reset the answer and free its slot.
    Abandon(Stalled),
}

/// One blocked write. Create it when the write has not finished within one window, call
/// [`Blocked::check`] every further window until the write finishes or it says abandon.
#[derive(Debug, Clone)]
pub struct Blocked {
    window: Duration,
    /// When the write began (time since any fixed epoch).
    began: Duration,
    /// The connection's sent-bytes counter at the last check.
    mark: u64,
}

impl Blocked {
    /// A write that began at `began` and is still blocked at the first check, when the
    /// connection had sent `sent` bytes in total.
    pub fn new(window: Duration, began: Duration, sent: u64) -> Self {
        Self {
            window,
            began,
            mark: sent,
        }
    }

    /// The write is still blocked at `now`, the connection having sent `sent` bytes in
    /// total.
    pub fn check(&mut self, now: Duration, sent: u64) -> Verdict {
        let blocked = now.saturating_sub(self.began);
        let moved = sent.saturating_sub(self.mark);
        self.mark = sent;
        if moved < MIN_PROGRESS {
            return Verdict::Abandon(Stalled::PeerTakesNothing { blocked });
        }
        if blocked >= self.window * STUCK_WINDOWS {
            return Verdict::Abandon(Stalled::AnswerStuck { blocked });
        }
        Verdict::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(30);

    #[test]
    fn a_peer_that_takes_nothing_is_abandoned_after_two_windows() {
        // First quiet window: the write blocked at 0, still blocked at 30 s.
        let mut b = Blocked::new(W, Duration::ZERO, 1_000_000);
        // The connection sent only keep-alives in the next window.
        let v = b.check(2 * W, 1_000_000 + 900);
        assert_eq!(
            v,
            Verdict::Abandon(Stalled::PeerTakesNothing { blocked: 2 * W })
        );
        assert_eq!(
            Stalled::PeerTakesNothing { blocked: 2 * W }.to_string(),
            "the peer took nothing for 60 s"
        );
    }

    #[test]
    fn a_busy_connection_keeps_a_queued_answer_waiting() {
        let mut b = Blocked::new(W, Duration::ZERO, 0);
        let mut sent = 0;
        for i in 2..STUCK_WINDOWS {
            // 6 Mbit/s for this client: ~22 MB a window on its other streams.
            sent += 22_000_000;
            assert_eq!(b.check(W * i, sent), Verdict::Wait, "window {i}");
        }
    }

    #[test]
    fn an_answer_stuck_behind_a_slow_reader_is_abandoned_at_the_cap() {
        let mut b = Blocked::new(W, Duration::ZERO, 0);
        let mut verdict = Verdict::Wait;
        let mut i = 2;
        while verdict == Verdict::Wait {
            verdict = b.check(W * i, u64::from(i) * MIN_PROGRESS);
            i += 1;
            assert!(i <= STUCK_WINDOWS + 1, "never abandoned");
        }
        assert_eq!(
            verdict,
            Verdict::Abandon(Stalled::AnswerStuck {
                blocked: W * STUCK_WINDOWS
            })
        );
    }

    #[test]
    fn progress_is_measured_per_window_not_in_total() {
        let mut b = Blocked::new(W, Duration::ZERO, 0);
        assert_eq!(b.check(2 * W, 50 << 20), Verdict::Wait);
        // Plenty moved before, nothing in this window.
        assert!(matches!(
            b.check(3 * W, 50 << 20),
            Verdict::Abandon(Stalled::PeerTakesNothing { .. })
        ));
    }

    #[test]
    fn a_counter_that_goes_backwards_counts_as_no_progress() {
        let mut b = Blocked::new(W, Duration::ZERO, 10 << 20);
        assert!(matches!(
            b.check(2 * W, 0),
            Verdict::Abandon(Stalled::PeerTakesNothing { .. })
        ));
    }
}
