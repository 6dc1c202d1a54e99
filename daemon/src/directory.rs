//! The peer directory: who is linked, over which kept connection, with which library,
//! and which addresses wait for a redial. It has its own lock, apart from the library and
//! the operations; the link tasks, discovery, the download's source choice and the
//! control answers about peers use it. Its lock is a leaf: never held across an `.await`,
//! and no daemon lock is taken while it is held (so taking it under the state lock is
//! safe).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lanspread_catalog::{Catalog, GameId, Version};
use lanspread_control::api::{GameVersion, PartialRow, PeerInfo, RemoteGameRow};
use lanspread_peer::{aggregate, latest_sources, prefer_new_link, Direction, PeerEntry, PeerTable};
use lanspread_peer::{Sources, Upsert};
use lanspread_proto::{
    close_code, ChunkHash, ChunkSet, GameAd, Holding, PeerAddr, PeerId, MAX_PEX, MAX_PEX_GAMES,
};
use quinn::{Connection, VarInt};
use tokio::sync::{mpsc, watch};

/// The connection currently kept for a peer.
pub struct Link {
    /// The QUIC connection.
    pub conn: Connection,
    /// Who dialled it.
    pub direction: Direction,
    /// The peer's address when the link was kept (what `max_links_per_address` counts: a
    /// connection that migrates still counts where it was made).
    pub ip: IpAddr,
}

/// How long an address that failed a peer-exchange dial is not tried again.
pub const PEX_RETRY: Duration = Duration::from_secs(60);
/// Most failed addresses remembered.
const PEX_FAILED_MAX: usize = 1024;

/// A change of a peer's partial holdings.
pub enum Holdings {
    /// Its whole holding of a game.
    All(Holding),
    /// More verified chunks of a game at a manifest digest.
    More(GameId, ChunkHash, Vec<u32>),
    /// The chunks of a game it is fetching now (the whole list).
    Growing(GameId, ChunkHash, Vec<u32>),
    /// It no longer holds the game in part.
    Gone(GameId),
}

/// The games peer exchange says a peer holds a partial copy of.
fn holds(e: &PeerEntry) -> Vec<GameId> {
    e.partial.keys().take(MAX_PEX_GAMES).cloned().collect()
}

/// A link to dial again (sent to `links::redial_manager`).
/// Whether a dial keeps to `max_links_per_address`: one no one asked for (mDNS, peer
/// exchange, a reset's redial, the redial of a lost mDNS link) does; `connect` and
/// static peers are the user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capped(pub bool);

#[derive(Debug)]
pub enum Redial {
    /// A link we dialled with `connect` or to a peer mDNS found, lost: redialled until
    /// that peer is back (keeping to the address cap when the link did: mDNS).
    Lost(PeerId, SocketAddr, Capped),
    /// A link ended by the peer's stateless reset (its new process): dialled back a few
    /// times, whoever dialled it.
    Reset(PeerId, SocketAddr),
}

/// Why [`Directory::register`] did not keep a connection.
#[derive(Debug)]
pub enum NotKept {
    /// The connection kept for the peer already is preferred; its row, if it has one.
    Duplicate(Option<PeerInfo>),
    /// The peer's address holds as many links as one address may: why.
    AddressCap(String),
}

/// What the directory's lock guards.
#[derive(Default)]
struct Peers {
    /// Linked peers and their libraries.
    table: PeerTable,
    /// The kept connection per peer.
    links: HashMap<PeerId, Link>,
    /// The last peer-exchange list each linked peer sent (its first [`MAX_PEX`]): weighed
    /// again when this daemon starts downloading a game (`Directory::pex_again`), since
    /// no peer sends the same list twice.
    learned: HashMap<PeerId, Vec<PeerAddr>>,
}

/// The peer directory. `count` always equals the number of linked peers: it is set only
/// where the table changes, under the same guard.
pub struct Directory {
    peers: Mutex<Peers>,
    /// Number of linked peers; `wait-peers` watches it.
    count: watch::Sender<usize>,
    /// Links to redial with backoff: lost links of `connect` and mDNS, stateless resets.
    pub redial: mpsc::UnboundedSender<Redial>,
    /// The tasks that keep the static peers linked (`links::static_peers`), by entry.
    pub statics: StaticTasks,
    /// The receiving end, taken once by the redial manager.
    pub redial_rx: Mutex<Option<mpsc::UnboundedReceiver<Redial>>>,
    /// The linked peers as peer exchange tells them (every link writer watches it).
    pex: watch::Sender<Arc<Vec<PeerAddr>>>,
    /// Learned peers being dialled now, and addresses that failed a dial lately.
    dialling: Mutex<(BTreeSet<PeerId>, BTreeMap<SocketAddr, Instant>)>,
    /// Learned peers to dial once (by the peer-exchange dialler task).
    pub pex_dial: mpsc::UnboundedSender<PeerAddr>,
    /// The receiving end, taken once by that task.
    pub pex_dial_rx: Mutex<Option<mpsc::UnboundedReceiver<PeerAddr>>>,
    /// Peer exchange dials while there are fewer links than this (changed by reload).
    max_links: std::sync::atomic::AtomicUsize,
    /// Links one address may hold (`0`: no cap; changed by reload).
    max_per_address: std::sync::atomic::AtomicUsize,
    /// Links refused by that cap since the last report, and when that was.
    cap_refusals: Mutex<(u64, Option<Instant>)>,
    /// Bumped whenever a peer's partial holdings or library change (running downloads
    /// watch it for new sources).
    holdings: watch::Sender<u64>,
}

impl Directory {
    /// A directory whose peer exchange dials up to `max_links` links, and that keeps at
    /// most `max_per_address` links from one address.
    pub fn new(max_links: usize, max_per_address: usize) -> Self {
        let (redial, redial_rx) = mpsc::unbounded_channel();
        let (pex_dial, pex_dial_rx) = mpsc::unbounded_channel();
        Self {
            max_links: max_links.into(),
            max_per_address: max_per_address.into(),
            cap_refusals: Mutex::default(),
            pex_dial,
            pex_dial_rx: Mutex::new(Some(pex_dial_rx)),
            peers: Mutex::default(),
            count: watch::channel(0).0,
            redial,
            redial_rx: Mutex::new(Some(redial_rx)),
            pex: watch::channel(Arc::default()).0,
            dialling: Mutex::default(),
            holdings: watch::channel(0).0,
            statics: StaticTasks::default(),
        }
    }
}

/// Running tasks by name, each aborted when replaced or stopped.
#[derive(Default)]
pub struct StaticTasks(Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>);

impl StaticTasks {
    fn tasks(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, tokio::task::AbortHandle>>
    {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `task` as `name`'s, stopping the one it had.
    pub fn replace(&self, name: String, task: tokio::task::AbortHandle) {
        if let Some(old) = self.tasks().insert(name, task) {
            old.abort();
        }
    }

    /// Stops `name`'s task; whether it had one.
    pub fn stop(&self, name: &str) -> bool {
        self.tasks().remove(name).inspect(|t| t.abort()).is_some()
    }
}

impl Directory {
    /// A poisoned lock is recovered: every mutation keeps the data consistent.
    fn lock(&self) -> MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why a link of `remote` at `ip` is refused: that address holds as many links as one
    /// address may (`over_address_cap`). Asked before the hello exchange of an inbound
    /// link (so the peer hears why) and before an automatic dial (mDNS, peer exchange);
    /// [`Directory::register`] asks again under the same lock as it keeps the link
    /// (handshakes and dials to one address run side by side).
    pub fn address_cap(&self, remote: &PeerId, ip: IpAddr) -> Option<String> {
        Self::over_address_cap(&self.lock(), remote, ip, self.max_per_address())
    }

    fn over_address_cap(p: &Peers, remote: &PeerId, ip: IpAddr, cap: usize) -> Option<String> {
        let ip = ip.to_canonical();
        let from_address = p.links.values().filter(|l| l.ip == ip).count();
        let linked = p.links.contains_key(remote);
        lanspread_peer::over_address_cap(from_address, linked, cap).then(|| {
            format!(
                "{ip} holds {from_address} links already, the most one address may \
                 (max_links_per_address)"
            )
        })
    }

    /// Counts a link refused by the address cap; the count to report when one is due (at
    /// most every 10 s: a host at its cap that handshakes again and again does not flood
    /// the log).
    pub fn cap_refused(&self) -> Option<u64> {
        let mut r = self.cap_refusals.lock().unwrap_or_else(|p| p.into_inner());
        r.0 += 1;
        let now = Instant::now();
        let due =
            r.1.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        due.then(|| {
            r.1 = Some(now);
            std::mem::take(&mut r.0)
        })
    }

    /// Links one address may hold (`0`: no cap).
    pub fn max_per_address(&self) -> usize {
        self.max_per_address
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes [`Directory::max_per_address`] (reload); links above it stay.
    pub fn set_max_per_address(&self, n: usize) {
        self.max_per_address
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Keeps `conn` as the link of `remote` unless the connection already kept for it is
    /// preferred (`prefer_new_link`: [`NotKept::Duplicate`] with that peer's row, if it
    /// has one) or, when `capped`, its address holds as many links as one may
    /// ([`NotKept::AddressCap`]). A replaced connection is closed as a duplicate.
    pub fn register(
        &self,
        me: &PeerId,
        remote: &PeerId,
        conn: &Connection,
        (direction, capped): (Direction, bool),
        addr: SocketAddr,
    ) -> Result<Upsert, NotKept> {
        let mut p = self.lock();
        let ip = conn.remote_address().ip().to_canonical();
        if capped {
            if let Some(why) = Self::over_address_cap(&p, remote, ip, self.max_per_address()) {
                return Err(NotKept::AddressCap(why));
            }
        }
        if let Some(existing) = p.links.get(remote) {
            let alive = existing.conn.close_reason().is_none();
            if !prefer_new_link(me, remote, alive, existing.direction, direction) {
                let row = p.table.get(remote).map(|e| peer_info(remote, e));
                return Err(NotKept::Duplicate(row));
            }
            existing
                .conn
                .close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
            // Holdings are told as deltas per connection: the new one starts afresh.
            p.table.clear_holdings(remote);
            self.holdings.send_modify(|v| *v += 1);
        }
        let link = Link {
            conn: conn.clone(),
            direction,
            ip,
        };
        p.links.insert(remote.clone(), link);
        let upsert = p.table.upsert(remote, addr);
        self.count.send_replace(p.table.len());
        self.publish(&p);
        Ok(upsert)
    }

    /// Removes `remote` if `conn` is still the connection kept for it; true if it was.
    pub fn remove_if_current(&self, remote: &PeerId, conn: &Connection) -> bool {
        let mut p = self.lock();
        let ours = p
            .links
            .get(remote)
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id());
        if ours {
            p.links.remove(remote);
            p.learned.remove(remote);
            p.table.remove(remote);
            self.count.send_replace(p.table.len());
            self.holdings.send_modify(|v| *v += 1);
            self.publish(&p);
        }
        ours
    }

    fn publish(&self, p: &Peers) {
        let list: Vec<PeerAddr> = p
            .table
            .iter()
            .map(|(id, e)| PeerAddr {
                peer_id: id.clone(),
                addr: e.addr,
                holds: holds(e),
            })
            .collect();
        self.pex.send_replace(Arc::new(list));
    }

    /// What link writers tell their peers (each leaves out the peer it writes to).
    pub fn watch_pex(&self) -> watch::Receiver<Arc<Vec<PeerAddr>>> {
        self.pex.subscribe()
    }

    /// Keeps the peer-exchange list `from` sent (its first [`MAX_PEX`] entries, while
    /// `from` is linked) and returns the peers of it to dial now ([`Self::pex_dials`]);
    /// `wanted`: the games this daemon downloads.
    pub fn learned(
        &self,
        (me, from): (&PeerId, &PeerId),
        mut list: Vec<PeerAddr>,
        wanted: &BTreeSet<GameId>,
    ) -> Vec<PeerAddr> {
        list.truncate(MAX_PEX);
        {
            let mut p = self.lock();
            if !p.links.contains_key(from) {
                return Vec::new(); // a late frame of a link already gone
            }
            p.learned.insert(from.clone(), list.clone());
        }
        self.pex_dials(me, &list, wanted)
    }

    /// The holders of the games this daemon downloads now (`wanted`) among the kept
    /// lists, to dial now: when it starts a download, holders it was told of before take
    /// links over the cap.
    pub fn pex_again(&self, me: &PeerId, wanted: &BTreeSet<GameId>) -> Vec<PeerAddr> {
        let holders: Vec<PeerAddr> = self
            .lock()
            .learned
            .values()
            .flatten()
            .filter(|p| lanspread_peer::holds_wanted(p, wanted))
            .take(MAX_PEX)
            .cloned()
            .collect();
        self.pex_dials(me, &holders, wanted)
    }

    /// The peers of a peer-exchange list to dial now (`lanspread_peer::pex_dials`),
    /// marked as being dialled until [`Directory::dialled`].
    fn pex_dials(
        &self,
        me: &PeerId,
        learned: &[PeerAddr],
        wanted: &BTreeSet<GameId>,
    ) -> Vec<PeerAddr> {
        let max_links = self.max_links();
        // `dialling` first, then the links: a dial that ends in between (registered,
        // then no longer dialling) is counted once, not missed.
        let mut guard = self.dialling.lock().unwrap_or_else(|p| p.into_inner());
        let linked: BTreeSet<PeerId> = self.lock().links.keys().cloned().collect();
        let (dialling, failed) = &mut *guard;
        failed.retain(|_, at| at.elapsed() < PEX_RETRY);
        let recent: BTreeSet<SocketAddr> = failed.keys().copied().collect();
        let room = lanspread_peer::PexRoom {
            linked: &linked,
            dialling,
            failed: &recent,
            max_links,
            wanted,
        };
        let dials = lanspread_peer::pex_dials(me, room, learned);
        dialling.extend(dials.iter().map(|d| d.peer_id.clone()));
        dials
    }

    /// Links up to which peer exchange dials.
    pub fn max_links(&self) -> usize {
        self.max_links.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes [`Directory::max_links`] (reload); links above it stay.
    pub fn set_max_links(&self, n: usize) {
        self.max_links
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sorts every peer's library again by a reloaded catalog; the rows of the peers whose
    /// catalog games changed, for their `remote-library-changed` events.
    pub fn recatalog(&self, catalog: &Catalog) -> Vec<PeerInfo> {
        let mut p = self.lock();
        let before: Vec<PeerInfo> = p.table.iter().map(|(id, e)| peer_info(id, e)).collect();
        if !p.table.recatalog(catalog) {
            return Vec::new();
        }
        self.holdings.send_modify(|v| *v += 1);
        p.table
            .iter()
            .map(|(id, e)| peer_info(id, e))
            .filter(|now| !before.contains(now))
            .collect()
    }

    /// A peer-exchange dial ended; a failed address is not tried again for
    /// [`PEX_RETRY`].
    pub fn dialled(&self, p: &PeerAddr, ok: bool) {
        let mut guard = self.dialling.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.remove(&p.peer_id);
        if !ok {
            let failed = &mut guard.1;
            if failed.len() >= PEX_FAILED_MAX {
                // Forget the oldest: the map stays bounded whatever peers tell us.
                if let Some(oldest) = failed.iter().min_by_key(|(_, t)| **t).map(|(a, _)| *a) {
                    failed.remove(&oldest);
                }
            }
            failed.insert(p.addr, Instant::now());
        }
    }

    /// Takes a peer's announced library: whether it changed, and the peer's row (`None`
    /// when the peer is no longer in the directory).
    pub fn set_library(
        &self,
        remote: &PeerId,
        ads: &[GameAd],
        catalog: &Catalog,
    ) -> (bool, Option<PeerInfo>) {
        let mut p = self.lock();
        let changed = p.table.set_library(remote, ads, catalog);
        if changed {
            // A peer that became ready may be a source of a running download.
            self.holdings.send_modify(|v| *v += 1);
        }
        (changed, p.table.get(remote).map(|e| peer_info(remote, e)))
    }

    /// A peer's partial copy of a game it downloads (`Holding`, `HoldingMore`,
    /// `HoldingGone` on its announce stream). Kept apart from its ready library: partial
    /// holders are never counted or asked for manifests.
    pub fn holding(
        &self,
        (remote, conn): (&PeerId, &Connection),
        msg: Holdings,
        catalog: &Catalog,
    ) {
        let mut p = self.lock();
        let current = p
            .links
            .get(remote)
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id());
        if !current {
            return; // a late frame of a replaced connection
        }
        // What peer exchange tells of it (`publish`), when the games may change.
        let told = |p: &Peers| p.table.get(remote).map(holds);
        let before = matches!(msg, Holdings::All(_) | Holdings::Gone(_)).then(|| told(&p));
        match msg {
            Holdings::All(h) => p.table.set_holding(remote, h, catalog),
            Holdings::More(game, digest, chunks) => {
                p.table.holding_more(remote, &game, &digest, &chunks)
            }
            Holdings::Growing(game, digest, chunks) => {
                p.table.holding_growing(remote, &game, &digest, &chunks)
            }
            Holdings::Gone(game) => p.table.holding_gone(remote, &game),
        };
        if before.is_some_and(|b| b != told(&p)) {
            self.publish(&p);
        }
        self.holdings.send_modify(|v| *v += 1);
    }

    /// Changes whenever a linked peer's partial holdings or library change.
    pub fn watch_holdings(&self) -> watch::Receiver<u64> {
        self.holdings.subscribe()
    }

    /// The linked peers holding part of `game` at `version` with the manifest of this
    /// digest and chunk count, with what each verified.
    pub fn partial_holders(
        &self,
        (game, version): (&GameId, Version),
        digest: &ChunkHash,
        chunks: usize,
    ) -> Vec<(PeerId, ChunkSet)> {
        self.lock()
            .table
            .partial_holders(game, version, digest, chunks)
    }

    /// Of the partial holders, the chunks each is still fetching (served as they arrive).
    pub fn partial_growing(
        &self,
        (game, version): (&GameId, Version),
        digest: &ChunkHash,
        chunks: usize,
    ) -> Vec<(PeerId, Vec<usize>)> {
        self.lock()
            .table
            .partial_growing(game, version, digest, chunks)
    }

    /// How many linked peers download `game` at `version` now (they announce a partial
    /// copy of it, maybe still empty).
    pub fn downloaders(&self, game: &GameId, version: Version) -> usize {
        self.lock().table.downloaders(game, version)
    }

    /// The kept connection of a peer.
    pub fn link(&self, peer: &PeerId) -> Option<Connection> {
        self.lock().links.get(peer).map(|l| l.conn.clone())
    }

    /// The kept connection of a peer and the listen address it announced.
    pub fn link_and_addr(&self, peer: &PeerId) -> Option<(Connection, String)> {
        let p = self.lock();
        let conn = p.links.get(peer)?.conn.clone();
        let addr = p
            .table
            .get(peer)
            .map(|e| e.addr.to_string())
            .unwrap_or_default();
        Some((conn, addr))
    }

    /// Those of `peers` that are linked, in order.
    pub fn linked(&self, peers: &[PeerId]) -> Vec<PeerId> {
        let p = self.lock();
        peers
            .iter()
            .filter(|id| p.links.contains_key(*id))
            .cloned()
            .collect()
    }

    /// Whether a peer with this id (as text, from discovery) is linked.
    pub fn is_linked(&self, id: &str) -> bool {
        self.lock().links.keys().any(|p| p.as_str() == id)
    }

    /// Whether any link is still open (shutdown waits for their goodbyes).
    pub fn any_link(&self) -> bool {
        !self.lock().links.is_empty()
    }

    /// The peers with the newest version of `game`, or `None` when no peer has it.
    pub fn sources(&self, game: &GameId) -> Option<Sources> {
        latest_sources(&self.lock().table, game)
    }

    /// Whether `peer` is linked and does not have `game` ready at `version` or newer:
    /// it may still be downloading it.
    pub fn may_want(&self, peer: &PeerId, game: &GameId, version: Version) -> bool {
        self.lock()
            .table
            .get(peer)
            .is_some_and(|e| e.games.get(game).is_none_or(|g| g.version < version))
    }

    /// The size a peer advertises for a ready game of its library.
    pub fn advertised_size(&self, peer: &PeerId, game: &GameId) -> Option<u64> {
        Some(self.lock().table.get(peer)?.games.get(game)?.size)
    }

    /// Number of linked peers.
    pub fn linked_count(&self) -> usize {
        *self.count.borrow()
    }

    /// Watches the number of linked peers.
    pub fn watch_count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    /// The row of one linked peer.
    pub fn info(&self, peer: &PeerId) -> Option<PeerInfo> {
        let p = self.lock();
        p.links.contains_key(peer).then_some(())?;
        p.table.get(peer).map(|e| peer_info(peer, e))
    }

    /// `list-peers`.
    pub fn infos(&self) -> Vec<PeerInfo> {
        let p = self.lock();
        p.table.iter().map(|(id, e)| peer_info(id, e)).collect()
    }

    /// The remote half of `list-games`: each game at its newest version.
    pub fn remote_games(&self) -> Vec<RemoteGameRow> {
        aggregate(&self.lock().table)
            .into_iter()
            .map(|r| RemoteGameRow {
                id: r.id,
                eti_game_version: r.eti_game_version,
                peer_count: r.peer_count,
                size: r.size,
            })
            .collect()
    }
}

/// A peer table entry as a `list-peers` row.
fn peer_info(id: &PeerId, e: &PeerEntry) -> PeerInfo {
    PeerInfo {
        peer_id: id.clone(),
        addr: e.addr.to_string(),
        games: e
            .games
            .iter()
            .map(|(g, r)| GameVersion {
                id: g.clone(),
                version: r.version,
            })
            .collect(),
        partial: e
            .partial
            .iter()
            .map(|(g, p)| PartialRow {
                id: g.clone(),
                version: p.version,
                chunks_verified: p.chunks.count() as u64,
                chunks: p.chunks.len() as u64,
            })
            .collect(),
    }
}
