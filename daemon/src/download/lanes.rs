//! A download's lanes to its sources. With one transfer thread a source has one lane, its
//! link connection. With `n`, a source gets `n` data connections, each dialled on (and
//! so driven by) its own transfer thread, where the fetches of that lane run too: packet
//! crypto and SHA-256 of a download spread over `n` cores, and the source spreads the
//! accepted connections over its own threads. Batch `i` of a source goes to its lane
//! `i mod n`. A source whose data connections cannot be opened keeps its link.

use std::collections::HashMap;
use std::sync::Arc;

use lanspread_transfer::{close_code, PeerId};
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
    by_peer: HashMap<PeerId, (Vec<Lane>, usize)>,
    data: Vec<Connection>,
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
            lanes.by_peer.insert(peer.clone(), (vec![main], first));
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
                Ok(Ok(conn)) => {
                    lanes.data.push(conn.clone());
                    opened.entry(peer).or_default().push(Lane { conn, runtime });
                }
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
                entry.0 = data;
            }
        }
        lanes
    }

    /// The next lane to `peer` in turn; `None` when it had no link at the start.
    pub fn next(&mut self, peer: &PeerId) -> Option<&Lane> {
        let (lanes, next) = self.by_peer.get_mut(peer)?;
        let i = *next % lanes.len();
        *next = next.wrapping_add(1);
        lanes.get(i)
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        for conn in &self.data {
            conn.close(VarInt::from_u32(close_code::GOODBYE), b"done");
        }
    }
}
