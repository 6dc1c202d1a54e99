//! Static peers (`peers = [...]`): one task per entry keeps it linked while the entry is
//! in the config. The name is looked up at every dial (a named server may have moved);
//! a failed lookup or dial, or the loss of the link, is followed by another try after a
//! wait of 1 s, doubling to 60 s. A reload stops the tasks of removed entries — their
//! links stay until they end, and are not dialled again — and starts new ones.

use std::sync::Arc;
use std::time::Duration;

use lanspread_proto::PeerId;
use tracing::{debug, info, warn};

use super::{dial_peer, AfterLoss, Capped, REDIAL_FIRST, REDIAL_MAX};
use crate::state::Shared;

/// Keeps `peer` linked until [`stop`] or shutdown.
pub fn start(shared: &Arc<Shared>, peer: String) {
    let task = {
        let (shared, peer) = (shared.clone(), peer.clone());
        tokio::spawn(async move {
            let mut stop = shared.shutdown.subscribe();
            tokio::select! {
                _ = keep_linked(shared.clone(), peer) => {}
                _ = crate::state::until_shutdown(&mut stop) => {}
            }
        })
    };
    shared.peers.statics.replace(peer, task.abort_handle());
}

/// Stops dialling `peer`; a link it has stays until it ends.
pub fn stop(shared: &Shared, peer: &str) {
    if shared.peers.statics.stop(peer) {
        info!(%peer, "static peer removed: no longer dialled");
    }
}

/// Dials `peer` until linked, waits until the link is gone, and again, with backoff.
async fn keep_linked(shared: Arc<Shared>, peer: String) {
    let mut wait = REDIAL_FIRST;
    let mut warned = false;
    loop {
        match link(&shared, &peer).await {
            Ok(id) => {
                let linked = tokio::time::Instant::now();
                until_unlinked(&shared, &id).await;
                info!(%peer, "static peer lost; dialling it again");
                // A link that lasted starts the backoff over; one dropped at once (a peer
                // that accepts and leaves) keeps it growing.
                if linked.elapsed() >= REDIAL_MAX {
                    (wait, warned) = (REDIAL_FIRST, false);
                }
            }
            // A name not resolving yet (DNS not up at boot) says so at every try.
            Err(Unlinked::Lookup(why)) => {
                warn!(%peer, "static peer {why}; retrying in {wait:?}");
            }
            Err(Unlinked::Dial(why)) if !warned => {
                warn!(%peer, "static peer: {why}; retrying with backoff");
                warned = true;
            }
            Err(Unlinked::Dial(why)) => debug!(%peer, "static peer: {why}"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(REDIAL_MAX);
    }
}

/// Why a static peer is not linked.
enum Unlinked {
    Lookup(String),
    Dial(String),
}

/// Looks `peer` up and dials it; the id linked (by this dial or another route).
async fn link(shared: &Arc<Shared>, peer: &str) -> Result<PeerId, Unlinked> {
    let addr = match tokio::net::lookup_host(peer).await.map(|mut a| a.next()) {
        Ok(Some(addr)) => addr,
        Ok(None) => return Err(Unlinked::Lookup("resolves to no address".into())),
        Err(e) => return Err(Unlinked::Lookup(format!("does not resolve ({e})"))),
    };
    // Not redialled by the link itself: this task does it while the entry is configured.
    match dial_peer(shared, (addr, Capped(false)), None, AfterLoss::Leave).await {
        Ok(info) => Ok(info.peer_id),
        Err(e) => Err(Unlinked::Dial(e.to_string())),
    }
}

/// Returns once `id` has no link, whichever connection links it meanwhile (a closed one
/// still listed for a few polls counts as gone: its link task forgets it a moment after
/// it closes).
async fn until_unlinked(shared: &Shared, id: &PeerId) {
    let mut closed_polls = 0;
    while let Some(conn) = shared.peers.link(id) {
        if conn.close_reason().is_none() {
            closed_polls = 0;
            conn.closed().await;
            continue;
        }
        closed_polls += 1;
        if closed_polls > 20 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
