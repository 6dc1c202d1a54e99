//! Data connections (ALPN `lanspread-data/1`): a downloader's extra connections to a
//! source, one per transfer thread (`download/lanes.rs`). Both sides send a `Hello` on a
//! unidirectional stream, checked exactly like a link's (id bound to the TLS key,
//! protocol version, LAN secret proof bound to this connection and the sender's role);
//! the source answers only once the downloader's hello passed, and the downloader uses
//! the connection only once the source's hello arrived and passed. Nothing is registered
//! or announced: a data connection is not a link, and it closes with its download.

use std::net::SocketAddr;
use std::sync::Arc;

use lanspread_peer::Direction;
use lanspread_proto::{close_code, PeerId, Refusal};
use lanspread_transfer::{connect_data, peer_id_of};
use quinn::{Connection, VarInt};
use tracing::{debug, info, warn, Span};

use crate::handshake::{self, Exchange, LocalPeer};
use crate::handshake_slots::Admitted;
use crate::resources::Transfers;
use crate::state::Shared;
use lanspread_control::{ErrorKind, Failure};

/// Source side: checks the downloader's hello, answers with ours (then gives back the
/// handshake `slot`), then serves its requests until it closes.
pub async fn serve(shared: Arc<Shared>, conn: Connection, slot: Admitted) {
    let remote = match peer_id_of(&conn) {
        Ok(id) => id,
        Err(e) => {
            warn!(addr = %conn.remote_address(), "refused a data connection: {e}");
            return handshake::close(&conn, &Refusal::protocol(e.to_string()));
        }
    };
    Span::current().record("id", tracing::field::display(remote.short()));
    let hello = hello_exchange(&shared.me, &conn, &remote, Direction::Inbound);
    match Admitted::within(Some(&slot), &conn, hello).await {
        Some(Ok(())) => {}
        Some(Err(refusal)) => {
            warn!(addr = %conn.remote_address(), "refused a data connection: {}", refusal.why);
            return handshake::close(&conn, &refusal);
        }
        None => return debug!("no hello in time on a data connection"),
    }
    drop(slot);
    info!("serving a data connection");
    let requests = crate::serve::serve_requests(shared, conn, remote).await;
    info!(requests, "data connection ended");
}

/// Downloader side: dials a data connection to the peer `expect` at `addr` from transfer
/// thread `lane`'s endpoint and exchanges hellos. Must run on that thread's runtime:
/// quinn drives the connection where it is dialled.
pub async fn open(
    me: &LocalPeer,
    net: &Transfers,
    addr: SocketAddr,
    expect: &PeerId,
    lane: usize,
) -> Result<Connection, Failure> {
    let timeout = net.tuning.connect_timeout;
    let config = net.data_client.clone();
    let endpoint = net.threads.endpoint(lane).unwrap_or(&net.endpoint);
    let refused = |why: String| Failure::new(ErrorKind::ConnectFailed, why);
    let (conn, id) = connect_data(endpoint, config, addr, timeout)
        .await
        .map_err(|e| refused(e.to_string()))?;
    if &id != expect {
        conn.close(VarInt::from_u32(close_code::PROTOCOL_ERROR), b"wrong peer");
        return Err(refused(format!("{addr} is now peer {id}, not {expect}")));
    }
    let hello = hello_exchange(me, &conn, &id, Direction::Outbound);
    match Admitted::within(None, &conn, hello).await {
        Some(Ok(())) => Ok(conn),
        Some(Err(refusal)) => {
            handshake::close(&conn, &refusal);
            Err(refused(format!(
                "data connection to {addr}: {}",
                refusal.why
            )))
        }
        None => Err(refused(format!(
            "data connection to {addr}: no hello in time"
        ))),
    }
}

/// The dialler sends its hello first; the acceptor answers only after checking it.
async fn hello_exchange(
    me: &LocalPeer,
    conn: &Connection,
    remote: &PeerId,
    direction: Direction,
) -> Result<(), Refusal> {
    let exchange = Exchange::new(me, conn, direction)?;
    let dialled = direction == Direction::Outbound;
    if dialled {
        exchange.send_hello(conn).await?;
    }
    exchange.receive_hello(conn, remote).await?;
    if !dialled {
        exchange.send_hello(conn).await?;
    }
    Ok(())
}
