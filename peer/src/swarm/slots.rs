//! Bounded concurrent uploads, rotated: a peer serves at most `max` downloaders at once;
//! the others wait in arrival order, and a downloader that has held its slot for a whole
//! rotation period gives it to the one waiting longest, then queues again. So a late
//! joiner waits at most about `waiting ahead / max` periods, never forever, and the
//! uplink is shared by few enough flows that each moves whole chunks quickly.

use std::collections::VecDeque;
use std::time::Duration;

use lanspread_proto::PeerId;

/// The upload slots of one peer. Time is a `Duration` since any fixed start (sans-IO).
#[derive(Debug, Clone)]
pub struct UploadSlots {
    max: usize,
    period: Duration,
    /// Slot holders and when they got the slot.
    active: Vec<(PeerId, Duration)>,
    waiting: VecDeque<PeerId>,
}

impl UploadSlots {
    /// `max` slots (at least one), rotated every `period`.
    pub fn new(max: usize, period: Duration) -> Self {
        Self {
            max: max.max(1),
            period,
            active: Vec::new(),
            waiting: VecDeque::new(),
        }
    }

    /// Whether `peer` holds a slot.
    pub fn holds(&self, peer: &PeerId) -> bool {
        self.active.iter().any(|(p, _)| p == peer)
    }

    /// Slot holders now.
    pub fn active(&self) -> impl Iterator<Item = &PeerId> {
        self.active.iter().map(|(p, _)| p)
    }

    /// Downloaders waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// `peer` wants to download: true when it holds a slot now (it got a free one or
    /// already had one); otherwise it waits in line.
    pub fn want(&mut self, peer: &PeerId, now: Duration) -> bool {
        if self.holds(peer) {
            return true;
        }
        if self.active.len() < self.max && self.waiting.is_empty() {
            self.active.push((peer.clone(), now));
            return true;
        }
        if !self.waiting.contains(peer) {
            self.waiting.push_back(peer.clone());
        }
        self.fill(now);
        self.holds(peer)
    }

    /// `peer` wants nothing more (done, gone, nothing to get): its slot or place in line
    /// is freed. Returns the downloaders that got a slot.
    pub fn done(&mut self, peer: &PeerId, now: Duration) -> Vec<PeerId> {
        self.active.retain(|(p, _)| p != peer);
        self.waiting.retain(|p| p != peer);
        self.fill(now)
    }

    /// Rotation: every holder that had its slot for a whole period while others wait gives
    /// it to the longest waiting and queues again. Returns `(slot lost, slot got)` pairs.
    pub fn tick(&mut self, now: Duration) -> Vec<(PeerId, PeerId)> {
        let mut swaps = Vec::new();
        let mut i = 0;
        while i < self.active.len() && !self.waiting.is_empty() {
            if now.saturating_sub(self.active[i].1) < self.period {
                i += 1;
                continue;
            }
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            let (old, _) = std::mem::replace(&mut self.active[i], (next.clone(), now));
            self.waiting.push_back(old.clone());
            swaps.push((old, next));
            i += 1;
        }
        swaps
    }

    /// When the next rotation could happen (the oldest slot's period ends), if anyone waits.
    pub fn next_tick(&self) -> Option<Duration> {
        if self.waiting.is_empty() {
            return None;
        }
        self.active.iter().map(|(_, t)| *t + self.period).min()
    }

    fn fill(&mut self, now: Duration) -> Vec<PeerId> {
        let mut got = Vec::new();
        while self.active.len() < self.max {
            let Some(p) = self.waiting.pop_front() else {
                break;
            };
            self.active.push((p.clone(), now));
            got.push(p);
        }
        got
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
    fn at_most_max_then_in_line_in_order() {
        let mut s = UploadSlots::new(2, 10 * S);
        assert!(s.want(&pid(1), S) && s.want(&pid(2), S));
        assert!(!s.want(&pid(3), S) && !s.want(&pid(4), S));
        assert!(!s.want(&pid(3), 2 * S), "asking again keeps its place");
        assert_eq!(s.waiting(), 2);
        assert_eq!(s.done(&pid(1), 3 * S), [pid(3)]);
        assert!(s.holds(&pid(3)) && !s.holds(&pid(1)));
        assert_eq!(
            s.done(&pid(4), 3 * S),
            Vec::<PeerId>::new(),
            "left the line"
        );
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn rotation_gives_late_joiners_a_turn_and_requeues() {
        let mut s = UploadSlots::new(1, 10 * S);
        assert!(s.want(&pid(1), Duration::ZERO));
        assert!(!s.want(&pid(2), S));
        assert!(!s.want(&pid(3), 2 * S));
        assert_eq!(s.next_tick(), Some(10 * S));
        assert!(s.tick(9 * S).is_empty(), "not a whole period yet");
        assert_eq!(s.tick(10 * S), [(pid(1), pid(2))]);
        assert_eq!(s.tick(20 * S), [(pid(2), pid(3))]);
        assert_eq!(s.tick(30 * S), [(pid(3), pid(1))]);
        // Nobody waits: no rotation.
        assert_eq!(s.done(&pid(2), 31 * S), Vec::<PeerId>::new());
        assert_eq!(s.done(&pid(3), 31 * S), Vec::<PeerId>::new());
        assert_eq!(s.next_tick(), None);
        assert!(s.tick(100 * S).is_empty());
        assert!(s.holds(&pid(1)));
    }

    #[test]
    fn nobody_starves() {
        // 1 slot, 20 downloaders that never finish: each gets a turn within 20 periods.
        let mut s = UploadSlots::new(1, S);
        for i in 0..20 {
            s.want(&pid(i), Duration::ZERO);
        }
        let mut served = std::collections::BTreeSet::new();
        for t in 0..=20 {
            s.tick(S * t);
            served.extend(s.active().cloned());
        }
        assert_eq!(served.len(), 20);
    }
}
