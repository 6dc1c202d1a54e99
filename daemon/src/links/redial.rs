//! Dialling again: the peers peer exchange chose (once each) and lost peers that we had
//! dialled with `connect` or found by mDNS (until they are back, with a doubling
//! backoff). Static peers keep themselves linked (`static_peers.rs`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lanspread_proto::{GameId, PeerAddr, PeerId};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::{dial_peer, AfterLoss, Capped};
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
    let at = (p.addr, Capped(true));
    let ok = match dial_peer(&shared, at, Some(&p.peer_id), AfterLoss::Leave).await {
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
pub(super) const REDIAL_FIRST: Duration = Duration::from_secs(1);
pub(super) const REDIAL_MAX: Duration = Duration::from_secs(60);

/// Takes redial requests from lost outbound links (through a channel, so that a link
/// task never has to name the dial future it came from) and runs one redial per peer.
pub async fn redial_manager(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Redial>,
) {
    while let Some(r) = rx.recv().await {
        match r {
            Redial::Lost(peer, addr, capped) => {
                tokio::spawn(redial(shared.clone(), peer, (addr, capped)))
            }
            Redial::Reset(peer, addr) => tokio::spawn(after_reset(shared.clone(), peer, addr)),
        };
    }
}

/// Redials a lost peer that we had dialled (`connect`, mDNS) until it is back,
/// by this dial or any other route, or the daemon stops.
async fn redial(shared: Arc<Shared>, peer: PeerId, (addr, capped): (SocketAddr, Capped)) {
    let mut backoff = REDIAL_FIRST;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::state::until_shutdown(&mut shutdown) => return,
        }
        if shared.peers.link(&peer).is_some() {
            return;
        }
        match dial_peer(&shared, (addr, capped), None, AfterLoss::Redial).await {
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
        let at = (addr, Capped(true));
        match dial_peer(&shared, at, Some(&peer), AfterLoss::Leave).await {
            Ok(_) => {
                info!(peer = %peer.short(), %addr, "dialled back after its restart");
                return;
            }
            Err(e) => debug!(%addr, "dial after a reset failed: {e}"),
        }
        backoff *= 2;
    }
}
