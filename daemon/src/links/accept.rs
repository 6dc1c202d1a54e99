//! The accept loop: every inbound connection gets a handshake slot first (or is asked to
//! prove its address, refused or ignored), then is driven on a transfer thread.

use std::sync::Arc;

use lanspread_peer::Direction;
use lanspread_transfer::is_data_connection;
use tracing::{debug, Instrument};

use super::{link_span, run_link, Origin};
use crate::handshake_slots::Turned;
use crate::state::Shared;

/// Accepts incoming connections until the endpoint closes. Each holds a handshake slot
/// until its hello passed or failed, within `HANDSHAKE_LIMIT` (`HandshakeSlots`: past the
/// caps asked to prove its address, refused or ignored), and is accepted on the next
/// transfer thread in turn, which then drives it (quinn runs a connection where it is
/// accepted): a data connection is served there; a link's announce task runs on the
/// daemon's runtime and its requests are served on the connection's thread.
pub async fn accept_loop(shared: Arc<Shared>) {
    let main = tokio::runtime::Handle::current();
    while let Some(incoming) = shared.net.endpoint.accept().await {
        let remote = incoming.remote_address();
        let proven = incoming.remote_address_validated();
        let slot = match shared.net.handshakes.admit(remote.ip(), proven) {
            Ok(slot) => slot,
            Err(Turned::Retry) if incoming.may_retry() => {
                let _ = incoming.retry();
                continue;
            }
            Err(Turned::Ignore) => {
                incoming.ignore();
                continue;
            }
            Err(_) => {
                incoming.refuse();
                continue;
            }
        };
        let span = link_span(remote, Direction::Inbound);
        let here = shared.net.threads.next().clone();
        let (shared, main) = (shared.clone(), main.clone());
        here.clone().spawn(
            async move {
                let handshake = tokio::time::timeout_at(slot.until, async { incoming.await });
                let conn = match handshake.await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => return debug!("incoming handshake failed: {e}"),
                    // Dropped, the connection closes.
                    Err(_) => return debug!("incoming handshake not done in time"),
                };
                if is_data_connection(&conn) {
                    return crate::data_conn::serve(shared, conn, slot).await;
                }
                let link = run_link(
                    shared,
                    conn,
                    Origin {
                        direction: Direction::Inbound,
                        capped: true,
                    },
                    None,
                    None,
                    here,
                    Some(slot),
                );
                main.spawn(link.in_current_span());
            }
            .instrument(span),
        );
    }
}
