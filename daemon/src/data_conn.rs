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
use lanspread_transfer::{
    close_code, connect_data, peer_id_of, read_frame, session_binding, write_frame, Hello, Message,
    PeerId,
};
use quinn::{Connection, VarInt};
use tracing::{info, warn, Span};

use crate::links::{check_peer_hello, our_hello, HELLO_TIMEOUT};
use crate::state::Shared;

/// Source side: checks the downloader's hello, answers with ours, then serves its
/// requests until it closes.
pub async fn serve(shared: Arc<Shared>, conn: Connection) {
    let remote = match peer_id_of(&conn) {
        Ok(id) => id,
        Err(e) => return refuse(&conn, close_code::PROTOCOL_ERROR, e.to_string()),
    };
    Span::current().record("id", tracing::field::display(remote.short()));
    if let Err((code, why)) = hello_exchange(&shared, &conn, &remote, Direction::Inbound).await {
        return refuse(&conn, code, why);
    }
    info!("serving a data connection");
    let requests = crate::serve::serve_requests(shared, conn, remote).await;
    info!(requests, "data connection ended");
}

fn refuse(conn: &Connection, code: u32, why: String) {
    warn!(addr = %conn.remote_address(), "refused a data connection: {why}");
    conn.close(VarInt::from_u32(code), why.as_bytes());
}

/// Downloader side: dials a data connection to the peer `expect` at `addr` from transfer
/// thread `lane`'s endpoint and exchanges hellos. Must run on that thread's runtime:
/// quinn drives the connection where it is dialled.
pub async fn open(
    shared: &Shared,
    addr: SocketAddr,
    expect: &PeerId,
    lane: usize,
) -> Result<Connection, String> {
    let timeout = lanspread_transfer::TransportTuning::default().connect_timeout;
    let config = shared.data_client.clone();
    let endpoint = shared.threads.endpoint(lane).unwrap_or(&shared.endpoint);
    let (conn, id) = connect_data(endpoint, config, addr, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if &id != expect {
        conn.close(VarInt::from_u32(close_code::PROTOCOL_ERROR), b"wrong peer");
        return Err(format!("{addr} is now peer {id}, not {expect}"));
    }
    if let Err((code, why)) = hello_exchange(shared, &conn, &id, Direction::Outbound).await {
        conn.close(VarInt::from_u32(code), why.as_bytes());
        return Err(format!("data connection to {addr}: {why}"));
    }
    Ok(conn)
}

/// The dialler sends its hello first; the acceptor answers only after checking it.
/// `Err` holds the close code and the reason.
async fn hello_exchange(
    shared: &Shared,
    conn: &Connection,
    remote: &PeerId,
    direction: Direction,
) -> Result<(), (u32, String)> {
    let protocol = |e: String| (close_code::PROTOCOL_ERROR, e);
    let binding = session_binding(conn).map_err(|e| protocol(e.to_string()))?;
    let dialled = direction == Direction::Outbound;
    if dialled {
        send_hello(shared, conn, &binding, true)
            .await
            .map_err(protocol)?;
    }
    let hello = read_hello(conn).await.map_err(protocol)?;
    check_peer_hello(shared, &binding, &hello, remote, direction)?;
    if !dialled {
        send_hello(shared, conn, &binding, false)
            .await
            .map_err(protocol)?;
    }
    Ok(())
}

async fn send_hello(
    shared: &Shared,
    conn: &Connection,
    binding: &[u8; 32],
    dialled: bool,
) -> Result<(), String> {
    let proof = shared.secret.as_ref().map(|s| s.prove(binding, dialled));
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, &our_hello(shared, proof))
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())
}

async fn read_hello(conn: &Connection) -> Result<Hello, String> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, async {
        let mut recv = conn.accept_uni().await.map_err(|e| e.to_string())?;
        read_frame::<_, Message>(&mut recv)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    match first {
        Ok(Ok(Some(Message::Hello(h)))) => Ok(h),
        Ok(Ok(other)) => Err(format!("expected hello, got {other:?}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no hello in time".into()),
    }
}
