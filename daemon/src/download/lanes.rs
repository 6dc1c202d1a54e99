//! A download's lanes to its sources. With one transfer thread a source has one lane, its
//! link connection. With `n`, a source gets `n` data connections, each dialled on (and
//! so driven by) its own transfer thread, where the fetches of that lane run too: packet
//! crypto and SHA-256 of a download spread over `n` cores, and the source spreads the
//! accepted connections over its own threads. A source's batches go to its least busy
//! lane, in turn among equals (batch `i` on lane `i mod n` while all keep pace). A source
//! whose data connections cannot be opened keeps its link. A data connection lost while
//! the link lives (on a congested link QUIC can hear nothing for its idle timeout) is
//! retired, its batches count as a stall of the source (not its loss), and the others
//! carry on; when none is left, the link carries the chunks.

use std::collections::HashMap;
use std::sync::Arc;

use lanspread_transfer::{close_code, is_data_connection, PeerId};
use quinn::{Connection, VarInt};
use tokio::runtime::Handle;
use tracing::{info, warn, Instrument};

use crate::state::Shared;

/// One connection to a source and the runtime that drives it.
pub struct Lane {
    /// The connection requests go on.
    pub conn: Connection,
    /// Where this lane's fetches run.
    pub runtime: Handle,
}

/// The lanes of every source of one download; data connections close with it.
#[derive(Default)]
pub struct Lanes {
    by_peer: HashMap<PeerId, PeerLanes>,
}

/// One source's lanes, the batches in flight on each, and where the next search starts.
struct PeerLanes {
    lanes: Vec<Lane>,
    busy: Vec<usize>,
    /// Retired lanes (lost data connections) keep their index, so batches in flight on
    /// other lanes keep theirs.
    retired: Vec<bool>,
    next: usize,
    /// The source's link connection.
    link: Connection,
}

/// The lane for the next batch: the least busy one not retired, the first such from
/// `start` on (so equally busy lanes take turns). A lane whose batch finished early gets
/// the next one instead of a busy lane whose turn it would be.
fn least_busy(busy: &[usize], retired: &[bool], start: usize) -> usize {
    let n = busy.len().max(1);
    (0..busy.len())
        .map(|k| (start + k) % n)
        .filter(|&i| !retired.get(i).copied().unwrap_or(false))
        .min_by_key(|&i| busy[i])
        .unwrap_or(0)
}

impl Lanes {
    /// Opens the lanes to `sources` (those still linked).
    pub async fn open(shared: &Arc<Shared>, sources: &[PeerId]) -> Self {
        let mut lanes = Self::default();
        let n = shared.threads.len();
        let mut dials = Vec::new();
        for (k, peer) in sources.iter().enumerate() {
            let Some(link) = shared.lock().links.get(peer).map(|l| l.conn.clone()) else {
                continue;
            };
            let main = Lane {
                conn: link.clone(),
                runtime: Handle::current(),
            };
            // Each source starts on another lane, so that with several sources (each
            // with few chunks in flight) all transfer threads get work.
            let first = k * n / sources.len();
            let one = PeerLanes {
                lanes: vec![main],
                busy: vec![0],
                retired: vec![false],
                next: first,
                link: link.clone(),
            };
            lanes.by_peer.insert(peer.clone(), one);
            if n == 1 {
                continue;
            }
            let addr = link.remote_address();
            for j in 0..n {
                let runtime = shared.threads.get(j).clone();
                let (shared, expect) = (shared.clone(), peer.clone());
                let dial = runtime.spawn(
                    async move { crate::data_conn::open(&shared, addr, &expect, j).await }
                        .in_current_span(),
                );
                dials.push((peer.clone(), runtime, dial));
            }
        }
        let mut opened: HashMap<PeerId, Vec<Lane>> = HashMap::new();
        for (peer, runtime, dial) in dials {
            match dial.await {
                Ok(Ok(conn)) => opened.entry(peer).or_default().push(Lane { conn, runtime }),
                Ok(Err(e)) => warn!(peer = %peer.short(), "a data connection failed: {e}"),
                Err(e) => warn!(peer = %peer.short(), "a data connection task failed: {e}"),
            }
        }
        if n > 1 {
            for peer in lanes.by_peer.keys().filter(|p| !opened.contains_key(*p)) {
                warn!(peer = %peer.short(), "no data connection: chunks go over the link");
            }
        }
        for (peer, data) in opened {
            info!(peer = %peer.short(), lanes = data.len(), "data connections open");
            if let Some(entry) = lanes.by_peer.get_mut(&peer) {
                entry.busy = vec![0; data.len()];
                entry.retired = vec![false; data.len()];
                entry.lanes = data;
            }
        }
        lanes
    }

    /// Takes the lane for `peer`'s next batch (the least busy, in turn among equals) and
    /// its index for [`Lanes::done`]; `None` when `peer` had no link at the start.
    pub fn take(&mut self, peer: &PeerId) -> Option<(usize, &Lane)> {
        let p = self.by_peer.get_mut(peer)?;
        let i = least_busy(&p.busy, &p.retired, p.next);
        p.next = i + 1;
        p.busy[i] += 1;
        Some((i, &p.lanes[i]))
    }

    /// After a batch on lane `i` of `peer` failed: when that lane is a data connection
    /// that is now closed while the source's link lives, retires it (the link takes over
    /// when no data connection is left) and returns `true`: the batch's failures are a
    /// stall of the source, not its loss.
    pub fn retire_if_lost(&mut self, peer: &PeerId, i: usize) -> bool {
        let Some(p) = self.by_peer.get_mut(peer) else {
            return false;
        };
        let Some(lane) = p.lanes.get(i) else {
            return false;
        };
        if !is_data_connection(&lane.conn) || p.link.close_reason().is_some() {
            return false;
        }
        let Some(why) = lane.conn.close_reason() else {
            return false;
        };
        if !p.retired[i] {
            p.retired[i] = true;
            warn!(peer = %peer.short(), "a data connection was lost ({why}); its chunks are retried on the others");
            if p.retired.iter().all(|&r| r) {
                warn!(peer = %peer.short(), "no data connection left: chunks go over the link");
                p.lanes.push(Lane {
                    conn: p.link.clone(),
                    runtime: Handle::current(),
                });
                p.busy.push(0);
                p.retired.push(false);
            }
        }
        true
    }

    /// A batch taken on lane `i` of `peer` ended.
    pub fn done(&mut self, peer: &PeerId, i: usize) {
        if let Some(b) = self.by_peer.get_mut(peer).and_then(|p| p.busy.get_mut(i)) {
            *b = b.saturating_sub(1);
        }
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // The data connections end with the download; a link lane is the peer's link.
        let lanes = self.by_peer.values().flat_map(|p| &p.lanes);
        for lane in lanes.filter(|l| is_data_connection(&l.conn)) {
            lane.conn
                .close(VarInt::from_u32(close_code::GOODBYE), b"done");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::least_busy;

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
}
