//! A download's connections to its sources, the lanes the engine chooses among
//! (`lanspread_peer::LaneBook` decides which batch goes where). With one transfer thread
//! a source has one lane, its link. With `n`, a source gets `n` data connections, each
//! dialled on (and so driven by) its own transfer thread, where the fetches of that lane
//! run too: packet crypto and piece hashing of a download spread over `n` cores, and the source
//! spreads the accepted connections over its own threads. A source whose data
//! connections cannot be opened keeps its link.

use std::collections::HashMap;
use std::sync::Arc;

use lanspread_peer::Lane;
use lanspread_proto::{close_code, PeerId};
use lanspread_transfer::is_data_connection;
use quinn::{Connection, VarInt};
use tokio::runtime::Handle;
use tracing::{info, warn, Instrument};

use crate::state::Shared;

/// One source's connections: its link and its data connections with the runtime each
/// is driven by.
struct SourceConns {
    link: Connection,
    data: Vec<(Connection, Handle)>,
}

/// The connections to every source of one download; data connections close with it.
pub struct Lanes {
    by_peer: HashMap<PeerId, SourceConns>,
    /// The runtime that drives links (the daemon's).
    main: Handle,
}

impl Lanes {
    /// Opens the data connections to `sources` (those still linked).
    pub async fn open(shared: &Arc<Shared>, sources: &[PeerId]) -> Self {
        let mut lanes = Self {
            by_peer: HashMap::new(),
            main: Handle::current(),
        };
        let n = shared.net.threads.len();
        let mut dials = Vec::new();
        for peer in sources {
            let Some(link) = shared.peers.link(peer) else {
                continue;
            };
            let addr = link.remote_address();
            let data = Vec::new();
            lanes
                .by_peer
                .insert(peer.clone(), SourceConns { link, data });
            if n == 1 {
                continue;
            }
            for j in 0..n {
                let runtime = shared.net.threads.get(j).clone();
                let (shared, expect) = (shared.clone(), peer.clone());
                let dial = runtime.spawn(
                    async move {
                        crate::data_conn::open(&shared.me, &shared.net, addr, &expect, j).await
                    }
                    .in_current_span(),
                );
                dials.push((peer.clone(), runtime, dial));
            }
        }
        for (peer, runtime, dial) in dials {
            let Some(entry) = lanes.by_peer.get_mut(&peer) else {
                continue;
            };
            match dial.await {
                Ok(Ok(conn)) => entry.data.push((conn, runtime)),
                Ok(Err(e)) => warn!(peer = %peer.short(), "a data connection failed: {e}"),
                Err(e) => warn!(peer = %peer.short(), "a data connection task failed: {e}"),
            }
        }
        for (peer, conns) in &lanes.by_peer {
            match conns.data.len() {
                0 if n > 1 => {
                    warn!(peer = %peer.short(), "no data connection: chunks go over the link")
                }
                0 => {}
                k => info!(peer = %peer.short(), lanes = k, "data connections open"),
            }
        }
        lanes
    }

    /// The sources with lanes and how many data connections each has (0: the link
    /// alone), for the engine.
    pub fn opened(&self) -> Vec<(PeerId, usize)> {
        let mut opened: Vec<(PeerId, usize)> = self
            .by_peer
            .iter()
            .map(|(p, c)| (p.clone(), c.data.len()))
            .collect();
        opened.sort();
        opened
    }

    /// The connection of `lane` of `peer` and the runtime to fetch on.
    pub fn get(&self, peer: &PeerId, lane: Lane) -> Option<(Connection, Handle)> {
        let c = self.by_peer.get(peer)?;
        match lane {
            Lane::Link => Some((c.link.clone(), self.main.clone())),
            Lane::Data(i) => c.data.get(i).cloned(),
        }
    }

    /// Whether `lane` of `peer` is a data connection that closed while the source's link
    /// lives (on a congested link QUIC can hear nothing for its idle timeout): the
    /// source is busy, not gone.
    pub fn lost(&self, peer: &PeerId, lane: Lane) -> bool {
        let Some(c) = self.by_peer.get(peer) else {
            return false;
        };
        let Lane::Data(i) = lane else {
            return false;
        };
        let closed = c
            .data
            .get(i)
            .is_some_and(|(conn, _)| conn.close_reason().is_some());
        closed && c.link.close_reason().is_none()
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // The data connections end with the download; the link is the peer's.
        for (conn, _) in self.by_peer.values().flat_map(|c| &c.data) {
            if is_data_connection(conn) {
                conn.close(VarInt::from_u32(close_code::GOODBYE), b"done");
            }
        }
    }
}
