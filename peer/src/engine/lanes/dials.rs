//! When to dial a source's data connections again, without IO. A data connection that
//! closes while its source stays (on a congested link QUIC can hear nothing for its idle
//! timeout), one whose first dial failed, and those of a source back over a new link
//! (a restarted file server) are dialled again, each slot (transfer thread) on its own:
//! after [`LANE_REDIAL_FIRST`], doubling to [`LANE_REDIAL_MAX`] while its dials fail or
//! its connections do not last; a connection that lasted [`LANE_LASTED`] starts the
//! back-off over. A source that takes no lanes now (its link gone, dropped) is not
//! dialled and keeps its back-off, so a download never dials a source it does not ask.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lanspread_proto::PeerId;

/// The first wait before a lost data connection is dialled again.
pub const LANE_REDIAL_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two dials of one slot.
pub const LANE_REDIAL_MAX: Duration = Duration::from_secs(30);
/// A data connection open this long starts its slot's back-off over when it closes.
pub const LANE_LASTED: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Open since then.
    Open(Instant),
    /// A dial is on its way.
    Dialling,
    /// No connection: dialled from then on.
    Wait(Instant),
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: State,
    /// The wait before the next dial after a failure.
    delay: Duration,
}

/// The data connection slots of a download's sources and when each is dialled again.
#[derive(Debug, Clone, Default)]
pub struct LaneDials {
    slots: BTreeMap<(PeerId, usize), Slot>,
}

impl LaneDials {
    /// `slot` of `peer` has an open connection since `now`.
    pub fn opened(&mut self, peer: &PeerId, slot: usize, now: Instant) {
        let s = self.slots.entry((peer.clone(), slot)).or_insert(Slot {
            state: State::Open(now),
            delay: LANE_REDIAL_FIRST,
        });
        s.state = State::Open(now);
    }

    /// `slot` of `peer` has no connection at `now`: its connection closed, or its dial
    /// failed. Dialled again after the back-off (see the module docs); a slot already
    /// waiting keeps its time.
    pub fn closed(&mut self, peer: &PeerId, slot: usize, now: Instant) {
        let s = self.slots.entry((peer.clone(), slot)).or_insert(Slot {
            state: State::Dialling,
            delay: LANE_REDIAL_FIRST,
        });
        match s.state {
            State::Wait(_) => return,
            State::Open(since) if now.saturating_duration_since(since) >= LANE_LASTED => {
                s.delay = LANE_REDIAL_FIRST;
            }
            State::Open(_) | State::Dialling => {}
        }
        s.state = State::Wait(now + s.delay);
        s.delay = (s.delay * 2).min(LANE_REDIAL_MAX);
    }

    /// The slots to dial at `now`, marked as dialling (report each with
    /// [`LaneDials::opened`] or [`LaneDials::closed`]). `wanted` says whether a peer
    /// takes lanes now ([`Engine::wants_lanes`](crate::Engine::wants_lanes) and its link
    /// open); one that does not stays waiting.
    pub fn due(&mut self, now: Instant, wanted: impl Fn(&PeerId) -> bool) -> Vec<(PeerId, usize)> {
        let mut due = Vec::new();
        for ((peer, slot), s) in &mut self.slots {
            if matches!(s.state, State::Wait(at) if at <= now) && wanted(peer) {
                s.state = State::Dialling;
                due.push((peer.clone(), *slot));
            }
        }
        due
    }

    /// Whether a slot waits for its dial (the driver looks every second whatever this
    /// says: only the tests ask).
    #[cfg(test)]
    fn waiting(&self) -> bool {
        self.slots
            .values()
            .any(|s| matches!(s.state, State::Wait(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: u8) -> PeerId {
        PeerId::from_spki(&[n])
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_lost_slot_is_dialled_after_a_back_off_that_doubles_while_it_fails() {
        let t0 = Instant::now();
        let mut d = LaneDials::default();
        let all = |_: &PeerId| true;
        d.opened(&pid(1), 0, t0);
        d.opened(&pid(1), 1, t0);
        assert!(!d.waiting());
        assert!(
            d.due(t0 + 100 * S, all).is_empty(),
            "open slots are not dialled"
        );
        // Slot 1 closed after 5 s: dialled 1 s later, not before.
        d.closed(&pid(1), 1, t0 + 5 * S);
        d.closed(&pid(1), 1, t0 + 5 * S + S / 2); // (seen again: same time)
        assert!(d.waiting());
        assert!(d.due(t0 + 5 * S, all).is_empty());
        assert_eq!(d.due(t0 + 6 * S, all), [(pid(1), 1)]);
        assert!(d.due(t0 + 6 * S, all).is_empty(), "being dialled");
        // Its dial fails: 2 s, then 4 s ... up to 30 s.
        d.closed(&pid(1), 1, t0 + 7 * S);
        assert!(d.due(t0 + 8 * S, all).is_empty());
        assert_eq!(d.due(t0 + 9 * S, all), [(pid(1), 1)]);
        let mut now = t0 + 9 * S;
        let mut waits = Vec::new();
        for _ in 0..6 {
            d.closed(&pid(1), 1, now);
            let mut at = now;
            while d.due(at, all).is_empty() {
                at += S;
            }
            waits.push((at - now).as_secs());
            now = at;
        }
        assert_eq!(waits, [4, 8, 16, 30, 30, 30]);
        // Open and closed at once: the back-off goes on (a source that takes and drops
        // connections is not dialled every second) ...
        d.opened(&pid(1), 1, now);
        d.closed(&pid(1), 1, now + S);
        assert!(d.due(now + 30 * S, all).is_empty());
        assert_eq!(d.due(now + 31 * S, all), [(pid(1), 1)]);
        // ... and one that lasted starts it over.
        now += 31 * S;
        d.opened(&pid(1), 1, now);
        d.closed(&pid(1), 1, now + LANE_LASTED);
        assert_eq!(d.due(now + LANE_LASTED + S, all), [(pid(1), 1)]);
    }

    #[test]
    fn a_source_that_takes_no_lanes_keeps_waiting() {
        let t0 = Instant::now();
        let mut d = LaneDials::default();
        // Dials that failed at the start (never opened).
        d.closed(&pid(1), 0, t0);
        d.closed(&pid(2), 0, t0);
        let only_2 = |p: &PeerId| *p == pid(2);
        assert_eq!(d.due(t0 + 10 * S, only_2), [(pid(2), 0)]);
        // Peer 1 (its link gone, say) waits, its back-off unchanged, until it is back.
        assert!(d.due(t0 + 20 * S, only_2).is_empty());
        assert!(d.waiting());
        assert_eq!(d.due(t0 + 21 * S, |_| true), [(pid(1), 0)]);
        assert!(!d.waiting());
    }
}
