//! A download's connections to its sources, the lanes the engine chooses among
//! (`lanspread_peer::LaneBook` decides which batch goes where). With one transfer thread
//! a source has one lane, its link. With `n`, a source gets `n` data connections, each
//! dialled on (and so driven by) its own transfer thread, where the fetches of that lane
//! run too: packet crypto and piece hashing of a download spread over `n` cores, and the source
//! spreads the accepted connections over its own threads. A source whose data
//! connections cannot be opened keeps its link.
//!
//! A data connection that closes (lost to an idle timeout on a congested link, or with its
//! source, restarted) or could not be opened is dialled again while the download wants
//! its source's lanes (`Engine::wants_lanes`), with a back-off per thread
//! (`lanspread_peer::LaneDials`): a download that lost lanes once does not run on fewer
//! cores to its end. Only the sources the download began with get data connections
//! (a source found later has its link: a party's late holders are many).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use lanspread_peer::{Engine, Lane, LaneDials};
use lanspread_proto::{close_code, PeerId};
use lanspread_transfer::is_data_connection;
use quinn::{Connection, VarInt};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::state::Shared;

/// A dial's end: the source, the transfer thread, the connection or why not.
type Dialled = (PeerId, usize, Result<Connection, String>);

/// The connections to every source of one download; data connections close with it.
pub struct Lanes {
    /// Each source the download began with: slot `j` is its data connection driven by
    /// transfer thread `j` (none with one thread: the link alone).
    by_peer: HashMap<PeerId, Vec<Option<Connection>>>,
    shared: Arc<Shared>,
    /// When each slot without a connection is dialled again.
    dials: LaneDials,
    /// Dials on their way report here.
    dialled: (
        mpsc::UnboundedSender<Dialled>,
        mpsc::UnboundedReceiver<Dialled>,
    ),
}

impl Lanes {
    /// Opens the data connections to `sources` (those still linked).
    pub async fn open(shared: &Arc<Shared>, sources: &[PeerId]) -> Self {
        let mut lanes = Self {
            by_peer: HashMap::new(),
            shared: shared.clone(),
            dials: LaneDials::default(),
            dialled: mpsc::unbounded_channel(),
        };
        let n = shared.net.threads.len();
        let mut dials = Vec::new();
        for peer in sources {
            let Some(link) = shared.peers.link(peer) else {
                continue;
            };
            let slots = if n > 1 { n } else { 0 };
            lanes.by_peer.insert(peer.clone(), vec![None; slots]);
            for j in 0..slots {
                dials.push((peer.clone(), j, lanes.dial(peer, link.remote_address(), j)));
            }
        }
        let now = Instant::now();
        for (peer, j, dial) in dials {
            match dial.await {
                Ok(conn) => {
                    if let Some(slot) = lanes.slot(&peer, j) {
                        *slot = Some(conn);
                    }
                    lanes.dials.opened(&peer, j, now);
                }
                Err(e) => {
                    warn!(peer = %peer.short(), lane = j, "a data connection failed: {e}");
                    lanes.dials.closed(&peer, j, now);
                }
            }
        }
        for (peer, slots) in &lanes.by_peer {
            match slots.iter().flatten().count() {
                0 if n > 1 => {
                    warn!(peer = %peer.short(), "no data connection: chunks go over the link")
                }
                0 => {}
                k => info!(peer = %peer.short(), lanes = k, "data connections open"),
            }
        }
        lanes
    }

    /// Dials `peer`'s data connection for transfer thread `j` on that thread.
    fn dial(
        &self,
        peer: &PeerId,
        addr: std::net::SocketAddr,
        j: usize,
    ) -> impl std::future::Future<Output = Result<Connection, String>> {
        let runtime = self.shared.net.threads.get(j).clone();
        let (shared, expect) = (self.shared.clone(), peer.clone());
        let dial = runtime.spawn(
            async move { crate::data_conn::open(&shared.me, &shared.net, addr, &expect, j).await }
                .in_current_span(),
        );
        async move {
            match dial.await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("its task failed: {e}")),
            }
        }
    }

    fn slot(&mut self, peer: &PeerId, j: usize) -> Option<&mut Option<Connection>> {
        self.by_peer.get_mut(peer)?.get_mut(j)
    }

    /// The sources with lanes and the transfer threads whose data connection to each
    /// is open (none: the link alone), for the engine.
    pub fn opened(&self) -> Vec<(PeerId, Vec<usize>)> {
        let mut opened: Vec<(PeerId, Vec<usize>)> = self
            .by_peer
            .iter()
            .map(|(p, slots)| {
                let open = (0..slots.len()).filter(|&j| slots[j].is_some()).collect();
                (p.clone(), open)
            })
            .collect();
        opened.sort();
        opened
    }

    /// The data connection of lane `Data(j)` of `peer` and the runtime to fetch on
    /// (thread `j`'s); `None` for the link or a slot without a connection.
    pub fn get(&self, peer: &PeerId, lane: Lane) -> Option<(Connection, Handle)> {
        let Lane::Data(j) = lane else {
            return None;
        };
        let conn = self.by_peer.get(peer)?.get(j)?.clone()?;
        Some((conn, self.shared.net.threads.get(j).clone()))
    }

    /// Whether a batch's failures on `conn` are its lane's loss, not its source's: `conn`
    /// is a data connection that closed while the source's link lives (on a congested
    /// link QUIC can hear nothing for its idle timeout): the source is busy, not gone.
    pub fn lost(&self, peer: &PeerId, conn: &Connection) -> bool {
        let link_lives = self
            .shared
            .peers
            .link(peer)
            .is_some_and(|l| l.close_reason().is_none());
        is_data_connection(conn) && conn.close_reason().is_some() && link_lives
    }

    /// Whether there are data connections to keep (more than one transfer thread).
    pub fn keeping(&self) -> bool {
        self.by_peer.values().any(|slots| !slots.is_empty())
    }

    /// Looks after the data connections (every second or so): each source's slots agree
    /// with the engine's lanes ([`Lanes::agree`]), and those without a connection are
    /// dialled again when their back-off allows, while the engine wants the source's
    /// lanes and its link is open.
    pub fn keep(&mut self, engine: &mut Engine) {
        let now = Instant::now();
        let peers: Vec<PeerId> = self.by_peer.keys().cloned().collect();
        for peer in &peers {
            self.agree(peer, engine);
        }
        let links = &self.shared.peers;
        let due = self.dials.due(now, |p| {
            engine.wants_lanes(p) && links.link(p).is_some_and(|l| l.close_reason().is_none())
        });
        for (peer, j) in due {
            let Some(link) = links.link(&peer) else {
                self.dials.closed(&peer, j, now);
                continue;
            };
            debug!(peer = %peer.short(), lane = j, "dialling a data connection again");
            let dial = self.dial(&peer, link.remote_address(), j);
            let tx = self.dialled.0.clone();
            tokio::spawn(
                async move {
                    let result = dial.await;
                    if let Err(mpsc::error::SendError((_, _, Ok(conn)))) =
                        tx.send((peer, j, result))
                    {
                        // The download ended meanwhile.
                        conn.close(VarInt::from_u32(close_code::GOODBYE), b"done");
                    }
                }
                .in_current_span(),
            );
        }
    }

    /// The next dial that ended.
    pub async fn next_dialled(&mut self) -> Option<Dialled> {
        self.dialled.1.recv().await
    }

    /// A dial ended: an open connection is a lane again if the engine still wants the
    /// source's lanes, else closed; a failed dial is tried again after the back-off.
    pub fn dialled(&mut self, (peer, j, result): Dialled, engine: &mut Engine) {
        let now = Instant::now();
        match result {
            Ok(conn) if engine.lane_back(&peer, j) => {
                info!(peer = %peer.short(), lane = j, "a data connection opened again");
                if let Some(slot) = self.slot(&peer, j) {
                    if let Some(old) = slot.replace(conn) {
                        old.close(VarInt::from_u32(close_code::GOODBYE), b"replaced");
                    }
                }
                self.dials.opened(&peer, j, now);
            }
            Ok(conn) => {
                conn.close(VarInt::from_u32(close_code::GOODBYE), b"not needed");
                self.dials.closed(&peer, j, now);
            }
            Err(e) => {
                debug!(peer = %peer.short(), lane = j, "a data connection failed again: {e}");
                self.dials.closed(&peer, j, now);
            }
        }
    }

    /// Makes `peer`'s slots and the engine's lanes agree: a closed connection's lane is
    /// retired and its slot dialled again later; an open one is a live lane (again: a
    /// late failure of a batch on the connection it replaced retired it) — or, when the
    /// engine wants no lanes of `peer` because its link is gone, closed, and dialled
    /// again once it is back over a new link. Those of a source dropped for cause, or of
    /// a download over, stay until the download ends (closing them would cut answers in
    /// flight, whose failures would then read as the reason it was dropped). Called after
    /// each batch of `peer` ends and on every [`Lanes::keep`].
    pub fn agree(&mut self, peer: &PeerId, engine: &mut Engine) {
        let now = Instant::now();
        let linked = self
            .shared
            .peers
            .link(peer)
            .is_some_and(|l| l.close_reason().is_none());
        let Some(slots) = self.by_peer.get_mut(peer) else {
            return;
        };
        for (j, slot) in slots.iter_mut().enumerate() {
            let Some(conn) = slot.as_ref() else {
                continue;
            };
            let open = conn.close_reason().is_none();
            if open && (engine.lane_back(peer, j) || linked) {
                continue;
            }
            conn.close(VarInt::from_u32(close_code::GOODBYE), b"not needed");
            *slot = None;
            engine.lane_closed(peer, j);
            self.dials.closed(peer, j, now);
        }
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        // The data connections end with the download; the link is the peer's.
        for conn in self.by_peer.values().flatten().flatten() {
            conn.close(VarInt::from_u32(close_code::GOODBYE), b"done");
        }
    }
}
