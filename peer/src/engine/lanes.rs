//! Lane choice, without IO. A source is reached over its link or, with several transfer
//! threads, over data connections (lanes), one per thread: `Lane::Data(j)` is driven by
//! thread `j`. A source's next batch goes to its least busy live lane, in turn among
//! equals (batch `i` on lane `i mod n` while all keep pace). A data connection lost while
//! the link lives is retired: its batches count as a stall of the source, not its loss,
//! and when no data connection is left the link carries the chunks. A data connection
//! opened again ([`LaneBook::restore`], when to dial it: [`LaneDials`]) takes batches
//! again, and the link stops taking new ones.

mod dials;

use std::collections::BTreeMap;

use lanspread_proto::PeerId;

pub use dials::{LaneDials, LANE_LASTED, LANE_REDIAL_FIRST, LANE_REDIAL_MAX};

use super::{Engine, Phase};

/// Which connection of a source a batch goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// The source's link connection.
    Link,
    /// The source's data connection driven by transfer thread `j`.
    Data(usize),
}

/// One source's lanes, the batches in flight on each, and where the next search starts.
#[derive(Debug, Clone)]
struct SourceLanes {
    lanes: Vec<Lane>,
    busy: Vec<usize>,
    /// Retired lanes keep their index, so batches in flight elsewhere keep theirs.
    retired: Vec<bool>,
    next: usize,
}

impl SourceLanes {
    fn new(lanes: Vec<Lane>, next: usize) -> Self {
        let n = lanes.len();
        Self {
            lanes,
            busy: vec![0; n],
            retired: vec![false; n],
            next,
        }
    }

    /// The index of `lane`, added (retired) when it is new.
    fn index(&mut self, lane: Lane) -> usize {
        match self.lanes.iter().position(|&l| l == lane) {
            Some(i) => i,
            None => {
                self.lanes.push(lane);
                self.busy.push(0);
                self.retired.push(true);
                self.lanes.len() - 1
            }
        }
    }

    fn has_live_data(&self) -> bool {
        self.lanes
            .iter()
            .zip(&self.retired)
            .any(|(&l, &r)| !r && l != Lane::Link)
    }
}

/// The lanes of every source of one download.
#[derive(Debug, Clone, Default)]
pub struct LaneBook {
    by_peer: BTreeMap<PeerId, SourceLanes>,
}

/// The index of the lane for the next batch: the least busy one not retired, the first
/// such from `start` on (so equally busy lanes take turns). A lane whose batch finished
/// early gets the next one instead of a busy lane whose turn it would be.
fn least_busy(busy: &[usize], retired: &[bool], start: usize) -> usize {
    let n = busy.len().max(1);
    (0..busy.len())
        .map(|k| (start + k) % n)
        .filter(|&i| !retired.get(i).copied().unwrap_or(false))
        .min_by_key(|&i| busy[i])
        .unwrap_or(0)
}

impl LaneBook {
    /// The lanes of the sources in `opened` (source → the transfer threads whose data
    /// connection to it opened; none: the link alone). `threads` spreads the sources'
    /// first lanes over the transfer threads, so that with several sources (each with few
    /// chunks in flight) all threads get work.
    pub fn new(opened: &[(PeerId, Vec<usize>)], threads: usize) -> Self {
        let count = opened.len().max(1);
        let by_peer = opened
            .iter()
            .enumerate()
            .map(|(k, (peer, data))| {
                let lanes: Vec<Lane> = if data.is_empty() {
                    vec![Lane::Link]
                } else {
                    data.iter().map(|&j| Lane::Data(j)).collect()
                };
                let first = k * threads.max(1) / count;
                (peer.clone(), SourceLanes::new(lanes, first))
            })
            .collect();
        Self { by_peer }
    }

    /// Gives `peer` its link as its one lane unless it has lanes (a partial source found
    /// during the transfer: one chunk at a time needs no data connections).
    pub fn add_link(&mut self, peer: &PeerId) {
        if !self.by_peer.contains_key(peer) {
            self.relink(peer);
        }
    }

    /// Gives `peer` its link as its one lane, whatever lanes it had (a source back over a
    /// new link: its data connections closed with the old one, and come back through
    /// [`LaneBook::restore`]).
    pub fn relink(&mut self, peer: &PeerId) {
        self.by_peer
            .insert(peer.clone(), SourceLanes::new(vec![Lane::Link], 0));
    }

    /// Takes the lane for `peer`'s next batch; `None` when `peer` has no lanes (it had
    /// no link when they were opened).
    pub fn take(&mut self, peer: &PeerId) -> Option<Lane> {
        let p = self.by_peer.get_mut(peer)?;
        let i = least_busy(&p.busy, &p.retired, p.next);
        p.next = i + 1;
        p.busy[i] += 1;
        Some(p.lanes[i])
    }

    /// A batch taken on `lane` of `peer` ended.
    pub fn done(&mut self, peer: &PeerId, lane: Lane) {
        if let Some(p) = self.by_peer.get_mut(peer) {
            if let Some(i) = p.lanes.iter().position(|&l| l == lane) {
                p.busy[i] = p.busy[i].saturating_sub(1);
            }
        }
    }

    /// `lane` of `peer`, a data connection, was lost while the link lives: retires it
    /// (the link takes new batches again when no data connection is left). Returns
    /// whether the lane was a data lane of `peer` (its batch's failures are then a stall).
    pub fn retire(&mut self, peer: &PeerId, lane: Lane) -> bool {
        let Some(p) = self.by_peer.get_mut(peer) else {
            return false;
        };
        let Some(i) = p.lanes.iter().position(|&l| l == lane) else {
            return false;
        };
        if lane == Lane::Link {
            return false;
        }
        p.retired[i] = true;
        if !p.has_live_data() {
            let link = p.index(Lane::Link);
            p.retired[link] = false;
        }
        true
    }

    /// A data connection of `peer` driven by thread `slot` is open (again): it takes
    /// batches, and the link none while a data connection is live. Returns whether the
    /// lane was not live before; false too for a peer without lanes.
    pub fn restore(&mut self, peer: &PeerId, slot: usize) -> bool {
        let Some(p) = self.by_peer.get_mut(peer) else {
            return false;
        };
        let i = p.index(Lane::Data(slot));
        if !p.retired[i] {
            return false;
        }
        p.retired[i] = false;
        if let Some(link) = p.lanes.iter().position(|&l| l == Lane::Link) {
            p.retired[link] = true;
        }
        true
    }

    /// Whether `lane` of `peer` takes batches.
    pub fn is_live(&self, peer: &PeerId, lane: Lane) -> bool {
        self.by_peer.get(peer).is_some_and(|p| {
            p.lanes
                .iter()
                .zip(&p.retired)
                .any(|(&l, &r)| l == lane && !r)
        })
    }

    /// Whether `peer` is down to its link after losing every data connection.
    pub fn only_link_left(&self, peer: &PeerId) -> bool {
        self.by_peer.get(peer).is_some_and(|p| !p.has_live_data())
    }
}

impl Engine {
    /// Whether `peer` should have data connections now: a complete source still asked
    /// (not dropped, nor lost with its link) of a download in its transfer phase, run
    /// with several transfer threads. The driver dials the ones it misses (when:
    /// [`LaneDials`]) and tells each that opens ([`Engine::lane_back`]).
    pub fn wants_lanes(&self, peer: &PeerId) -> bool {
        self.config.threads > 1
            && self.phase == Phase::Transfer
            && self
                .planner
                .as_ref()
                .is_some_and(|p| p.is_live_complete(peer))
    }

    /// `peer`'s data connection driven by transfer thread `slot` is open: its lane takes
    /// batches (again: a lane lost, a source back over a new link). Returns whether it
    /// does; false when `peer` [wants no lanes](Engine::wants_lanes) (close it then).
    pub fn lane_back(&mut self, peer: &PeerId, slot: usize) -> bool {
        if !self.wants_lanes(peer) {
            return false;
        }
        self.lanes.restore(peer, slot);
        self.lanes.is_live(peer, Lane::Data(slot))
    }

    /// `peer`'s data connection driven by thread `slot` closed: its lane takes no new
    /// batches (those on it fail as its loss: `on_fetched`'s `lane_lost`).
    pub fn lane_closed(&mut self, peer: &PeerId, slot: usize) {
        self.lanes.retire(peer, Lane::Data(slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(n: u8) -> PeerId {
        PeerId::from_spki(&[n])
    }

    #[test]
    fn batches_go_to_the_least_busy_lane_in_turn() {
        // All idle: the search start decides, so equal lanes take turns.
        let live = [false; 4];
        assert_eq!(least_busy(&[0, 0, 0], &live, 0), 0);
        assert_eq!(least_busy(&[0, 0, 0], &live, 1), 1);
        assert_eq!(least_busy(&[0, 0, 0], &live, 5), 2);
        // Lane 2 finished early: it gets the batch although lane 0 would be next.
        assert_eq!(least_busy(&[1, 1, 0, 1], &live, 0), 2);
        // Equally busy from the start on: the first one found.
        assert_eq!(least_busy(&[2, 1, 1, 1], &live, 2), 2);
        assert_eq!(least_busy(&[0], &live, 7), 0);
        assert_eq!(least_busy(&[], &live, 3), 0);
        // A retired lane gets nothing, however idle.
        assert_eq!(least_busy(&[3, 0, 2], &[false, true, false], 1), 2);
        assert_eq!(least_busy(&[0, 5], &[true, false], 0), 1);
    }

    #[test]
    fn sources_start_on_different_lanes_and_take_turns() {
        let mut book = LaneBook::new(&[(pid(1), vec![0, 1, 2, 3]), (pid(2), vec![0, 1, 2, 3])], 4);
        let a: Vec<Lane> = (0..4).filter_map(|_| book.take(&pid(1))).collect();
        assert_eq!(
            a,
            [Lane::Data(0), Lane::Data(1), Lane::Data(2), Lane::Data(3)]
        );
        // The second source starts half way round.
        assert_eq!(book.take(&pid(2)), Some(Lane::Data(2)));
        book.done(&pid(1), Lane::Data(1));
        assert_eq!(book.take(&pid(1)), Some(Lane::Data(1)));
        assert_eq!(book.take(&pid(9)), None);
        // One thread: the link is the only lane.
        let mut one = LaneBook::new(&[(pid(1), vec![])], 1);
        assert_eq!(one.take(&pid(1)), Some(Lane::Link));
        assert_eq!(one.take(&pid(1)), Some(Lane::Link));
        assert!(!one.retire(&pid(1), Lane::Link));
    }

    #[test]
    fn lost_data_lanes_are_retired_and_the_link_takes_over() {
        let mut book = LaneBook::new(&[(pid(1), vec![0, 1])], 2);
        assert!(book.retire(&pid(1), Lane::Data(0)));
        assert!(!book.only_link_left(&pid(1)));
        for _ in 0..3 {
            assert_eq!(book.take(&pid(1)), Some(Lane::Data(1)));
        }
        assert!(book.retire(&pid(1), Lane::Data(1)));
        // Retiring twice adds no second link lane.
        assert!(book.retire(&pid(1), Lane::Data(1)));
        assert!(book.only_link_left(&pid(1)));
        assert_eq!(book.take(&pid(1)), Some(Lane::Link));
        assert_eq!(book.take(&pid(1)), Some(Lane::Link));
        assert!(!book.retire(&pid(2), Lane::Data(0)));
    }

    #[test]
    fn lanes_opened_again_take_batches_and_the_link_stops() {
        // Thread 1's dial failed at the start: lanes 0 and 2.
        let mut book = LaneBook::new(&[(pid(1), vec![0, 2])], 3);
        let first: Vec<Lane> = (0..2).filter_map(|_| book.take(&pid(1))).collect();
        assert_eq!(first, [Lane::Data(0), Lane::Data(2)]);
        // Opened later: a lane of its own, the least busy one.
        assert!(book.restore(&pid(1), 1));
        assert!(!book.restore(&pid(1), 1), "already live");
        assert_eq!(book.take(&pid(1)), Some(Lane::Data(1)));
        // Every data lane lost: the link; one back: the link takes nothing new.
        for j in 0..3 {
            assert!(book.retire(&pid(1), Lane::Data(j)));
        }
        assert!(book.only_link_left(&pid(1)));
        assert_eq!(book.take(&pid(1)), Some(Lane::Link));
        assert!(book.restore(&pid(1), 2));
        assert!(!book.only_link_left(&pid(1)));
        for _ in 0..4 {
            assert_eq!(book.take(&pid(1)), Some(Lane::Data(2)));
        }
        // The batch in flight on the link still ends there.
        book.done(&pid(1), Lane::Link);
        // Lost again: the same link lane comes back, not a second one.
        assert!(book.retire(&pid(1), Lane::Data(2)));
        assert_eq!(book.take(&pid(1)), Some(Lane::Link));
        assert_eq!(book.by_peer[&pid(1)].lanes.len(), 4);
        // A source back over a new link has its link, then its lanes as they open.
        book.relink(&pid(1));
        assert_eq!(book.take(&pid(1)), Some(Lane::Link));
        assert!(book.restore(&pid(1), 0));
        assert_eq!(book.take(&pid(1)), Some(Lane::Data(0)));
        assert_eq!(book.take(&pid(1)), Some(Lane::Data(0)));
        // No lanes at all: nothing to restore.
        assert!(!book.restore(&pid(7), 0));
        assert_eq!(book.take(&pid(7)), None);
    }
}
