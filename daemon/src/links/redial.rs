//! Dialling again: the peers peer exchange chose (once each), lost peers that we had
//! dialled (until they are back, with a doubling backoff), and static peers whose names
//! do not resolve yet.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lanspread_proto::{GameId, PeerAddr, PeerId};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{dial, dial_peer, AfterLoss};
use crate::directory::Redial;
use crate::state::Shared;

/// Dials, once each, the peers that peer exchange chose (`Directory::learned`) and,
/// when this daemon starts downloading a game, the holders of it it was told of before
/// (`Directory::pex_again`).
pub async fn pex_dialler(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<PeerAddr>) {
    let mut copies = shared.partials.watch();
    let mut wanted: BTreeSet<GameId> = BTreeSet::new();
    loop {
        tokio::select! {
            p = rx.recv() => match p {
                Some(p) => {
                    tokio::spawn(pex_dial(shared.clone(), p));
                }
                None => return,
            },
            changed = copies.changed() => {
                if changed.is_err() {
                    return;
                }
                let now: BTreeSet<GameId> = copies.borrow_and_update().keys().cloned().collect();
                let started = now.difference(&wanted).next().is_some();
                wanted = now;
                if started {
                    for p in shared.peers.pex_again(&shared.me.id, &wanted) {
                        tokio::spawn(pex_dial(shared.clone(), p));
                    }
                }
            }
        }
    }
}

async fn pex_dial(shared: Arc<Shared>, p: PeerAddr) {
    let ok = match dial_peer(&shared, p.addr, Some(&p.peer_id), AfterLoss::Leave).await {
        Ok(info) => {
            let peer = info.peer_id.short();
            let holds = p.holds.iter().map(|g| g.as_str()).collect::<Vec<_>>();
            info!(%peer, addr = %p.addr, ?holds, "linked a peer learned by peer exchange");
            true
        }
        Err(e) => {
            debug!(addr = %p.addr, "peer exchange dial failed: {e}");
            false
        }
    };
    shared.peers.dialled(&p, ok);
}

/// First wait before redialling a lost peer, doubled after each failure up to the max.
const REDIAL_FIRST: Duration = Duration::from_secs(1);
const REDIAL_MAX: Duration = Duration::from_secs(60);

/// Takes redial requests from lost outbound links (through a channel, so that a link
/// task never has to name the dial future it came from) and runs one redial per peer.
pub async fn redial_manager(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Redial>,
) {
    while let Some(r) = rx.recv().await {
        match r {
            Redial::Lost(peer, addr) => tokio::spawn(redial(shared.clone(), peer, addr)),
            Redial::Reset(peer, addr) => tokio::spawn(after_reset(shared.clone(), peer, addr)),
        };
    }
}

/// Redials a lost peer that we had dialled (`connect` or a static peer) until it is back,
/// by this dial or any other route, or the daemon stops.
async fn redial(shared: Arc<Shared>, peer: Option<PeerId>, addr: SocketAddr) {
    let mut backoff = REDIAL_FIRST;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::state::until_shutdown(&mut shutdown) => return,
        }
        if peer
            .as_ref()
            .is_some_and(|p| shared.peers.link(p).is_some())
        {
            return;
        }
        match dial(&shared, addr).await {
            Ok(info) => {
                info!(peer = %info.peer_id.short(), %addr, "redialled");
                return;
            }
            Err(e) => {
                debug!(%addr, "redial failed: {e}");
                backoff = (backoff * 2).min(REDIAL_MAX);
            }
        }
    }
}

/// Dial attempts after a stateless reset (1 s apart, doubling: about 15 s in all).
const AFTER_RESET_TRIES: u32 = 4;

/// Dials back a peer whose link ended by a stateless reset from its new process, expecting
/// its id, until it is linked by any route, the tries run out or the daemon stops. The
/// link made is not redialled after a later loss (`dial_peer` with an expected id).
async fn after_reset(shared: Arc<Shared>, peer: PeerId, addr: SocketAddr) {
    let mut backoff = REDIAL_FIRST;
    let mut shutdown = shared.shutdown.subscribe();
    for _ in 0..AFTER_RESET_TRIES {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::state::until_shutdown(&mut shutdown) => return,
        }
        if shared.peers.link(&peer).is_some() {
            return;
        }
        match dial_peer(&shared, addr, Some(&peer), AfterLoss::Leave).await {
            Ok(_) => {
                info!(peer = %peer.short(), %addr, "dialled back after its restart");
                return;
            }
            Err(e) => debug!(%addr, "dial after a reset failed: {e}"),
        }
        backoff *= 2;
    }
}

/// Dials a static peer (`peers = [...]`). A name that does not resolve yet (DNS not up at
/// boot, the server not yet on the network) is looked up again with backoff (1 s doubling
/// to 60 s) until it does; a dial that fails goes to the redial manager.
pub(crate) async fn static_peer(shared: Arc<Shared>, peer: String) {
    let mut wait = Duration::from_secs(1);
    let addr = loop {
        match tokio::net::lookup_host(&peer).await.map(|mut a| a.next()) {
            Ok(Some(addr)) => break addr,
            Ok(None) => warn!(%peer, "static peer resolves to no address; retrying in {wait:?}"),
            Err(e) => warn!(%peer, "static peer does not resolve ({e}); retrying in {wait:?}"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(60));
    };
    if let Err(e) = dial(&shared, addr).await {
        warn!(%peer, "static peer: {e}; retrying with backoff");
        let _ = shared.peers.redial.send(Redial::Lost(None, addr));
    }
}
