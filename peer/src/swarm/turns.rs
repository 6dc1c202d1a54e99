//! Upload turns (sans-IO): a peer serves at most [`SWARM_UPLOADS`] swarm answers at once,
//! one per downloader, and hands a freed turn to the downloader that has waited longest,
//! so a late joiner is never beaten to every turn by peers that happen to ask again first.
//!
//! A downloader refused (`Later`) joins the queue and keeps its place while it asks again
//! within [`TURN_HOLD`]; a freed turn is kept for the head of the queue, and others are
//! refused while queued peers wait for it. A queued peer that does not come back within
//! [`TURN_HOLD`] (its download ended, it found another source) loses its place.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use lanspread_proto::PeerId;

use super::SWARM_UPLOADS;

/// How long a refused downloader keeps its place in the queue without asking again
/// (downloaders ask again after `OFFER_REST`, 125 ms): long enough for one rest and a
/// round trip, short enough that a turn kept for a waiter that went idles for less than
/// an 8 MiB unit's transfer (750 ms with 32 MiB units).
pub const TURN_HOLD: Duration = Duration::from_millis(187);

/// How a plain chunk request at the server of a swarm is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    /// Nobody else wants a turn: served at once (release it like a turn).
    Free,
    /// Served in a turn (release it when the answer ends).
    Turn,
    /// `Later`: every turn taken or owed to who waited longer.
    Later,
}

/// Who holds the turns and who waits for one.
#[derive(Debug)]
pub struct UploadTurns {
    slots: usize,
    /// See [`TURN_HOLD`].
    hold: Duration,
    /// Holders and how many answers each has (one, or more with `per_peer` above 1).
    holding: BTreeMap<PeerId, usize>,
    /// Waiting downloaders, longest first, and when each last asked.
    queue: VecDeque<(PeerId, Instant)>,
}

impl Default for UploadTurns {
    fn default() -> Self {
        Self::new(SWARM_UPLOADS)
    }
}

impl UploadTurns {
    /// Turns for `slots` answers at once (at least one).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            hold: TURN_HOLD,
            holding: BTreeMap::new(),
            queue: VecDeque::new(),
        }
    }

    /// The same with `hold` instead of [`TURN_HOLD`] (the swarm simulation judges it).
    pub fn holding_places_for(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    fn held(&self) -> usize {
        self.holding.values().sum()
    }

    /// Asks for a turn for `peer` at `now`: `true` when it may send an answer now (then
    /// call [`UploadTurns::release`] when the answer ends), `false` (answer `Later`) when
    /// it holds a turn already, every turn is taken, or downloaders that waited longer
    /// are owed the free ones; then it keeps or takes its place in the queue.
    pub fn take(&mut self, peer: &PeerId, now: Instant) -> bool {
        self.queue
            .retain(|(_, at)| now.saturating_duration_since(*at) < self.hold);
        let free = self.slots.saturating_sub(self.held());
        let place = self.queue.iter().position(|(p, _)| p == peer);
        // Free turns go to the queue's head first: `peer` gets one if fewer than `free`
        // waiting peers that could take one (they hold none now) are ahead of it.
        let owed = self
            .queue
            .iter()
            .take(place.unwrap_or(self.queue.len()))
            .filter(|(p, _)| !self.holding.contains_key(p))
            .count();
        let mine = self.holding.contains_key(peer);
        if !mine && owed < free {
            if let Some(i) = place {
                self.queue.remove(i);
            }
            *self.holding.entry(peer.clone()).or_insert(0) += 1;
            return true;
        }
        // A peer asking while it still holds a turn (its next request raced the end of
        // its last answer) queues too: it is served in order, not after a rest.
        match place {
            Some(i) => self.queue[i].1 = now,
            None => self.queue.push_back((peer.clone(), now)),
        }
        false
    }

    /// A plain chunk request's turn at the server of a swarm (several peers download the
    /// game): while nobody else holds or waits for a turn, and nobody else asked for the
    /// game lately (`alone`, see [`RecentAskers`](super::RecentAskers)), it is served at
    /// once, up to as many answers as there are turns (`Free`, counted as held, so a
    /// second downloader sees the first one's answers as taken turns); otherwise as
    /// [`UploadTurns::take`]. A lone downloader is not held to one answer at a time by
    /// peers that only announce a download; peers that ask too get a turn each.
    pub fn take_plain(&mut self, peer: &PeerId, now: Instant, alone: bool) -> Plain {
        self.queue
            .retain(|(_, at)| now.saturating_duration_since(*at) < self.hold);
        let others = !alone
            || self.holding.keys().any(|p| p != peer)
            || self.queue.iter().any(|(p, _)| p != peer);
        if !others && self.held() < self.slots {
            *self.holding.entry(peer.clone()).or_insert(0) += 1;
            return Plain::Free;
        }
        if !others {
            return Plain::Later; // as many answers at once as there are turns
        }
        if self.take(peer, now) {
            Plain::Turn
        } else {
            Plain::Later
        }
    }

    /// An answer `peer` was given a turn for ended.
    pub fn release(&mut self, peer: &PeerId) {
        if let Some(n) = self.holding.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.holding.remove(peer);
            }
        }
    }

    /// How many answers are being sent now.
    pub fn busy(&self) -> usize {
        self.held()
    }

    /// How many downloaders wait for a turn.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u8) -> PeerId {
        PeerId::from_spki(&[n])
    }

    #[test]
    fn one_turn_per_downloader_and_no_more_than_the_slots() {
        let t0 = Instant::now();
        let mut t = UploadTurns::new(2);
        assert!(t.take(&p(1), t0));
        assert!(!t.take(&p(1), t0), "one turn per downloader");
        assert!(t.take(&p(2), t0));
        assert!(!t.take(&p(3), t0), "both turns taken");
        // p1 asked again while it held its turn: it waits in line too, before p3.
        assert_eq!((t.busy(), t.waiting()), (2, 2));
        t.release(&p(1));
        assert!(!t.take(&p(3), t0), "p1 asked first");
        assert!(t.take(&p(1), t0));
        t.release(&p(2));
        assert!(t.take(&p(3), t0));
    }

    #[test]
    fn a_freed_turn_goes_to_who_waited_longest() {
        let t0 = Instant::now();
        // Times as they were with a 750 ms hold, scaled to the hold.
        let at_750 = |ms: u32| TURN_HOLD * ms / 750;
        let mut t = UploadTurns::new(1);
        assert!(t.take(&p(1), t0));
        assert!(!t.take(&p(2), t0)); // waits first
        assert!(!t.take(&p(3), t0 + at_750(10)));
        t.release(&p(1));
        // p1 and p3 ask again first: the turn is p2's.
        let at = t0 + at_750(400);
        assert!(!t.take(&p(1), at));
        assert!(!t.take(&p(3), at));
        assert!(t.take(&p(2), at + at_750(100)));
        t.release(&p(2));
        // Next: p3 (queued before p1 came back).
        assert!(!t.take(&p(1), at + at_750(200)));
        assert!(t.take(&p(3), at + at_750(300)));
    }

    #[test]
    fn plain_requests_are_free_until_someone_else_wants_a_turn() {
        let t0 = Instant::now();
        let mut t = UploadTurns::new(2);
        // A lone downloader: as many answers at once as there are turns, whoever else
        // announces a download.
        for _ in 0..2 {
            assert_eq!(t.take_plain(&p(1), t0, true), Plain::Free);
        }
        assert_eq!(t.take_plain(&p(1), t0, true), Plain::Later);
        assert_eq!((t.busy(), t.waiting()), (2, 0));
        // A second downloader finds the turns taken by the first one's answers and
        // waits; so do the first one's further requests.
        assert_eq!(t.take_plain(&p(2), t0, true), Plain::Later);
        assert_eq!(t.take_plain(&p(1), t0, true), Plain::Later);
        t.release(&p(1));
        assert_eq!(
            t.take_plain(&p(1), t0, true),
            Plain::Later,
            "p2 waited first"
        );
        assert_eq!(t.take_plain(&p(2), t0, true), Plain::Turn);
        t.release(&p(1));
        assert_eq!(t.take_plain(&p(1), t0, true), Plain::Turn);
    }

    #[test]
    fn plain_requests_get_one_turn_each_while_others_ask_for_the_game() {
        let t0 = Instant::now();
        let mut t = UploadTurns::new(4);
        // Four clients asked for the manifest together; the first to ask for chunks gets
        // one turn, not all four, and each of the others gets one too.
        assert_eq!(t.take_plain(&p(1), t0, false), Plain::Turn);
        assert_eq!(t.take_plain(&p(1), t0, false), Plain::Later);
        for n in 2..=4 {
            assert_eq!(t.take_plain(&p(n), t0, false), Plain::Turn);
        }
        assert_eq!(t.busy(), 4);
    }

    #[test]
    fn a_waiter_that_does_not_ask_again_loses_its_place() {
        let t0 = Instant::now();
        let mut t = UploadTurns::new(1);
        assert!(t.take(&p(1), t0));
        assert!(!t.take(&p(2), t0));
        t.release(&p(1));
        // p2 went away: after TURN_HOLD the turn is anyone's.
        assert!(
            !t.take(&p(3), t0 + Duration::from_millis(100)),
            "owed to p2"
        );
        let later = t0 + TURN_HOLD + Duration::from_millis(1);
        assert!(t.take(&p(3), later));
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn nobody_starves_in_a_rotation() {
        // 8 downloaders, 2 turns, each answer takes 3 ticks, everyone asks every tick.
        let t0 = Instant::now();
        let mut t = UploadTurns::new(2);
        let mut served = [0u32; 8];
        let mut ends: Vec<(u32, u8)> = Vec::new();
        for tick in 0..400u32 {
            let now = t0 + Duration::from_millis(u64::from(tick) * 100);
            ends.retain(|&(end, peer)| {
                if end == tick {
                    t.release(&p(peer));
                    false
                } else {
                    true
                }
            });
            // Asking order favours low ids: without the queue they would win every time.
            for peer in 0..8u8 {
                if t.take(&p(peer), now) {
                    served[peer as usize] += 1;
                    ends.push((tick + 3, peer));
                }
            }
        }
        let (lo, hi) = (served.iter().min().unwrap(), served.iter().max().unwrap());
        assert!(hi - lo <= 1, "{served:?}");
    }
}
