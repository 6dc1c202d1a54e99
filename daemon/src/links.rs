//! Peer links: accepting and dialling QUIC connections, the hello exchange, library
//! announcements and goodbyes. One task per connection reads the peer's announce stream;
//! a second task writes ours.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lanspread_peer::{check_not_self, prefer_new_link, Direction, Upsert};
use lanspread_transfer::{
    close_code, connect, is_data_connection, peer_id_of, read_frame, secret_proof, session_binding,
    write_frame, Hello, Message, PeerId, SecretCheck, PROTOCOL_VERSION,
};
use quinn::{Connection, SendStream, VarInt};
use tokio::sync::oneshot;
use tracing::{debug, info, info_span, warn, Instrument, Span};

use crate::api::{EventKind, PeerInfo};
use crate::state::{peer_info, Link, Shared};

/// How long a peer has to send its hello and first library.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a link could not be set up, as told to a `connect` caller.
pub type LinkResult = Result<PeerInfo, String>;

/// Accepts incoming connections until the endpoint closes. Each is accepted on the next
/// transfer thread in turn, which then drives it (quinn runs a connection where it is
/// accepted): a data connection is served there; a link's announce task runs on the
/// daemon's runtime and its requests are served on the connection's thread.
pub async fn accept_loop(shared: Arc<Shared>) {
    let main = tokio::runtime::Handle::current();
    while let Some(incoming) = shared.endpoint.accept().await {
        let remote = incoming.remote_address();
        let span = link_span(remote, Direction::Inbound);
        let here = shared.threads.next().clone();
        let (shared, main) = (shared.clone(), main.clone());
        here.clone().spawn(
            async move {
                let conn = match incoming.await {
                    Ok(conn) => conn,
                    Err(e) => return debug!("incoming handshake failed: {e}"),
                };
                if is_data_connection(&conn) {
                    return crate::data_conn::serve(shared, conn).await;
                }
                let link = run_link(shared, conn, Direction::Inbound, None, None, here);
                main.spawn(link.in_current_span());
            }
            .instrument(span),
        );
    }
}

/// Dials `addr`, runs the link in the background and returns once the peer's hello and
/// first library arrived.
pub async fn dial(shared: &Arc<Shared>, addr: SocketAddr) -> LinkResult {
    if is_own_address(shared.listen, addr) {
        return Err(lanspread_peer::PeerError::SelfConnect.to_string());
    }
    let timeout = lanspread_transfer::TransportTuning::default().connect_timeout;
    let (conn, remote) = match connect(&shared.endpoint, addr, timeout).await {
        Ok(c) => c,
        Err(e) => return Err(self_or(e.to_string())),
    };
    if let Err(e) = check_not_self(&shared.local_id, &remote) {
        conn.close(VarInt::from_u32(close_code::SELF_CONNECT), b"self");
        return Err(e.to_string());
    }
    let (tx, rx) = oneshot::channel();
    tokio::spawn(
        run_link(
            shared.clone(),
            conn,
            Direction::Outbound,
            Some(addr),
            Some(tx),
            tokio::runtime::Handle::current(),
        )
        .instrument(link_span(addr, Direction::Outbound)),
    );
    match tokio::time::timeout(HELLO_TIMEOUT + Duration::from_secs(1), rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(format!(
            "connection to {addr} closed during the hello exchange"
        )),
        Err(_) => Err(format!("{addr} did not complete the hello exchange")),
    }
}

/// A refused self-connection may surface as the remote (ourselves) closing the dial.
fn self_or(msg: String) -> String {
    if msg.contains("self") {
        lanspread_peer::PeerError::SelfConnect.to_string()
    } else {
        msg
    }
}

/// True when `addr` is plainly our own listen address. Other routes to ourselves (another
/// local address of a wildcard bind) are caught after the handshake by the peer id.
fn is_own_address(listen: SocketAddr, addr: SocketAddr) -> bool {
    if addr == listen {
        return true;
    }
    let canonical_local = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST || v4.is_unspecified(),
        std::net::IpAddr::V6(v6) => v6 == std::net::Ipv6Addr::LOCALHOST || v6.is_unspecified(),
    };
    addr.port() == listen.port() && listen.ip().is_unspecified() && canonical_local
}

/// The span every log line of one peer link carries: the address at once, the peer id
/// once its certificate is checked.
fn link_span(addr: SocketAddr, direction: Direction) -> Span {
    let dir = match direction {
        Direction::Inbound => "in",
        Direction::Outbound => "out",
    };
    info_span!("peer", %addr, dir, id = tracing::field::Empty)
}

/// Runs one connection until it ends. `dialled` is the address we dialled (outbound),
/// redialled with backoff if the link is lost; `ready` gets the outcome of the hello;
/// the peer's requests are served on `driver`, the runtime that drives `conn`.
async fn run_link(
    shared: Arc<Shared>,
    conn: Connection,
    direction: Direction,
    dialled: Option<SocketAddr>,
    mut ready: Option<oneshot::Sender<LinkResult>>,
    driver: tokio::runtime::Handle,
) {
    let mut tell = |r: LinkResult| {
        if let Some(tx) = ready.take() {
            let _ = tx.send(r);
        }
    };
    let remote = match peer_id_of(&conn) {
        Ok(id) => id,
        Err(e) => {
            warn!(addr = %conn.remote_address(), "refused: {e}");
            conn.close(VarInt::from_u32(close_code::PROTOCOL_ERROR), b"no identity");
            return tell(Err(e.to_string()));
        }
    };
    Span::current().record("id", tracing::field::display(remote.short()));
    if check_not_self(&shared.local_id, &remote).is_err() {
        debug!("refused a connection from ourselves");
        conn.close(VarInt::from_u32(close_code::SELF_CONNECT), b"self");
        return tell(Err(lanspread_peer::PeerError::SelfConnect.to_string()));
    }

    // The LAN secret proof is bound to this TLS session and to our role in it.
    let binding = match session_binding(&conn) {
        Ok(b) => b,
        Err(e) => {
            conn.close(VarInt::from_u32(close_code::PROTOCOL_ERROR), b"tls");
            return tell(Err(e.to_string()));
        }
    };
    let proof = shared
        .secret
        .as_ref()
        .map(|s| s.prove(&binding, direction == Direction::Outbound));

    // Our announce stream: hello now; the library only once the peer's hello passed our
    // checks (so a peer without the secret learns nothing), then on every change.
    let send = match conn.open_uni().await {
        Ok(s) => s,
        Err(e) => return tell(Err(format!("cannot open a stream: {e}"))),
    };
    let (accepted, go) = oneshot::channel();
    let mut writer = tokio::spawn(announce(shared.clone(), send, proof, go).in_current_span());
    let mut shutdown = shared.shutdown.subscribe();

    // Their announce stream: hello first.
    let first = tokio::time::timeout(HELLO_TIMEOUT, async {
        let mut recv = conn.accept_uni().await.map_err(|e| e.to_string())?;
        let hello: Option<Message> = read_frame(&mut recv).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((recv, hello))
    })
    .await;
    let (mut recv, hello) = match first {
        Ok(Ok((recv, Some(Message::Hello(h))))) => (recv, h),
        Ok(Ok((_, other))) => {
            return refuse(
                &conn,
                &mut tell,
                writer,
                close_code::PROTOCOL_ERROR,
                format!("expected hello, got {other:?}"),
            )
        }
        Ok(Err(e)) => {
            let why = refused_by_peer(&conn).unwrap_or(e);
            return refuse(&conn, &mut tell, writer, close_code::PROTOCOL_ERROR, why);
        }
        Err(_) => {
            return refuse(
                &conn,
                &mut tell,
                writer,
                close_code::PROTOCOL_ERROR,
                "no hello in time".into(),
            )
        }
    };
    if let Err((code, why)) = check_peer_hello(&shared, &binding, &hello, &remote, direction) {
        return refuse(&conn, &mut tell, writer, code, why);
    }
    let _ = accepted.send(());
    // IPv4 peers of a dual-stack socket show up as IPv4-mapped IPv6; list them as IPv4.
    let addr = SocketAddr::new(
        conn.remote_address().ip().to_canonical(),
        hello.listen.port(),
    );

    // Register, keeping one connection per peer.
    let upsert = {
        let mut inner = shared.lock();
        if let Some(existing) = inner.links.get(&remote) {
            let alive = existing.conn.close_reason().is_none();
            if !prefer_new_link(
                &shared.local_id,
                &remote,
                alive,
                existing.direction,
                direction,
            ) {
                let info = inner.peers.get(&remote).map(|e| peer_info(&remote, e));
                drop(inner);
                debug!("keeping the existing connection");
                conn.close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
                writer.abort();
                return tell(info.ok_or_else(|| "duplicate connection".to_string()));
            }
            existing
                .conn
                .close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
        }
        inner.links.insert(
            remote.clone(),
            Link {
                conn: conn.clone(),
                direction,
            },
        );
        let upsert = inner.peers.upsert(&remote, addr);
        shared.peer_count.send_replace(inner.peers.len());
        upsert
    };
    match upsert {
        Upsert::New => info!(%addr, "peer connected"),
        Upsert::Moved { from } => info!(%from, to = %addr, "peer moved"),
        Upsert::Unchanged => debug!("peer reconnected"),
    }
    let server = driver.spawn(
        crate::serve::serve_requests(shared.clone(), conn.clone(), remote.clone())
            .in_current_span(),
    );
    if upsert != Upsert::Unchanged {
        shared.events.emit(EventKind::PeerConnected {
            peer_id: remote.clone(),
            addr: addr.to_string(),
        });
    }

    // Announcements until goodbye, error or close.
    let mut first_library = true;
    let end = loop {
        let msg = tokio::select! {
            m = read_frame::<_, Message>(&mut recv) => m,
            reason = conn.closed() => break format!("connection closed: {reason}"),
            _ = crate::state::until_shutdown(&mut shutdown) => {
                // The writer sends the goodbye; close once it is out (or after a bound).
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
                conn.close(VarInt::from_u32(close_code::GOODBYE), b"goodbye");
                break "local shutdown".into();
            }
        };
        match msg {
            Ok(Some(Message::Library(ads))) => {
                let (changed, info) = {
                    let mut inner = shared.lock();
                    let changed = inner.peers.set_library(&remote, &ads, &shared.catalog);
                    (
                        changed,
                        inner.peers.get(&remote).map(|e| peer_info(&remote, e)),
                    )
                };
                let Some(info) = info else {
                    break "peer entry replaced".into();
                };
                if changed || first_library {
                    shared.events.emit(EventKind::RemoteLibraryChanged {
                        peer_id: remote.clone(),
                        games: info.games.clone(),
                    });
                }
                if first_library {
                    first_library = false;
                    tell(Ok(info));
                }
            }
            Ok(Some(Message::Goodbye { reason })) => break format!("goodbye: {reason}"),
            Ok(Some(Message::Hello(_))) => {
                warn!("protocol error: second hello");
                conn.close(
                    VarInt::from_u32(close_code::PROTOCOL_ERROR),
                    b"second hello",
                );
                break "protocol error".into();
            }
            Ok(None) => break "announce stream ended".into(),
            Err(e) => {
                warn!("protocol error, disconnecting: {e}");
                conn.close(
                    VarInt::from_u32(close_code::PROTOCOL_ERROR),
                    b"protocol error",
                );
                break format!("protocol error: {e}");
            }
        }
    };
    tell(Err(end.clone()));
    writer.abort();
    server.abort();
    let lost = drop_link(&shared, &remote, &conn, addr, &end);
    if let (true, Some(addr)) = (lost, dialled) {
        if !*shared.shutdown.borrow() {
            let _ = shared.redial.send((Some(remote), addr));
        }
    }
}

/// First wait before redialling a lost peer, doubled after each failure up to the max.
const REDIAL_FIRST: Duration = Duration::from_secs(1);
const REDIAL_MAX: Duration = Duration::from_secs(60);

/// Takes redial requests from lost outbound links (through a channel, so that a link
/// task never has to name the dial future it came from) and runs one redial per peer.
pub async fn redial_manager(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::state::Redial>,
) {
    while let Some((peer, addr)) = rx.recv().await {
        tokio::spawn(redial(shared.clone(), peer, addr));
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
            .is_some_and(|p| shared.lock().links.contains_key(p))
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

/// Removes the peer if this connection is still the one kept for it.
fn drop_link(
    shared: &Shared,
    remote: &PeerId,
    conn: &Connection,
    addr: SocketAddr,
    why: &str,
) -> bool {
    let removed = {
        let mut inner = shared.lock();
        let ours = inner
            .links
            .get(remote)
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id());
        if ours {
            inner.links.remove(remote);
            inner.peers.remove(remote);
            shared.peer_count.send_replace(inner.peers.len());
        }
        ours
    };
    if removed {
        info!(peer = %remote.short(), "peer lost: {why}");
        shared.events.emit(EventKind::PeerLost {
            peer_id: remote.clone(),
            addr: addr.to_string(),
        });
    }
    removed
}

/// A peer's hello against its TLS identity, our protocol version and (with a LAN
/// secret) the proof bound to this connection's session (`binding`) and the peer's role
/// in it. `Err` holds the close code and the reason.
pub(crate) fn check_peer_hello(
    shared: &Shared,
    binding: &[u8; 32],
    hello: &Hello,
    remote: &PeerId,
    direction: Direction,
) -> Result<(), (u32, String)> {
    if let Err(why) = check_hello(hello, remote) {
        let code = if hello.protocol != PROTOCOL_VERSION {
            close_code::VERSION_MISMATCH
        } else {
            close_code::PROTOCOL_ERROR
        };
        return Err((code, why));
    }
    let their_role_client = direction == Direction::Inbound;
    let check = secret_proof(
        shared.secret.as_ref(),
        binding,
        their_role_client,
        hello.proof.as_ref(),
    );
    match check {
        SecretCheck::Refused(why) => Err((close_code::SECRET_MISMATCH, why)),
        _ => Ok(()),
    }
}

fn check_hello(hello: &Hello, proven: &PeerId) -> Result<(), String> {
    if hello.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} (we speak {PROTOCOL_VERSION})",
            hello.protocol
        ));
    }
    if &hello.peer_id != proven {
        return Err(format!(
            "hello claims peer id {} but the TLS key proves {proven}",
            hello.peer_id
        ));
    }
    Ok(())
}

fn refuse(
    conn: &Connection,
    tell: &mut impl FnMut(LinkResult),
    writer: tokio::task::JoinHandle<()>,
    code: u32,
    why: String,
) {
    warn!(addr = %conn.remote_address(), "refused peer: {why}");
    writer.abort();
    conn.close(VarInt::from_u32(code), why.as_bytes());
    tell(Err(why));
}

/// Why the peer closed the connection, when it refused us on purpose.
fn refused_by_peer(conn: &Connection) -> Option<String> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code != VarInt::from_u32(close_code::GOODBYE) =>
        {
            Some(format!(
                "refused by the peer: {}",
                String::from_utf8_lossy(&c.reason)
            ))
        }
        _ => None,
    }
}

/// Our hello, with the LAN secret proof for the connection it goes on.
pub(crate) fn our_hello(shared: &Shared, proof: Option<[u8; 32]>) -> Message {
    Message::Hello(Hello {
        peer_id: shared.local_id.clone(),
        listen: shared.listen,
        protocol: PROTOCOL_VERSION,
        agent: concat!("lanspread/", env!("CARGO_PKG_VERSION")).into(),
        proof,
    })
}

/// Writes our announce stream: hello, then (once `accepted` fires) the library on every
/// change, goodbye on shutdown.
async fn announce(
    shared: Arc<Shared>,
    mut send: SendStream,
    proof: Option<[u8; 32]>,
    accepted: oneshot::Receiver<()>,
) {
    let hello = our_hello(&shared, proof);
    let mut advert = shared.advert.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let result: Result<(), lanspread_transfer::FrameError> = async {
        write_frame(&mut send, &hello).await?;
        if accepted.await.is_err() {
            return Ok(());
        }
        loop {
            let lib = advert.borrow_and_update().clone();
            write_frame(&mut send, &Message::Library(lib.to_vec())).await?;
            tokio::select! {
                changed = advert.changed() => if changed.is_err() { break },
                _ = crate::state::until_shutdown(&mut shutdown) => break,
            }
        }
        write_frame(
            &mut send,
            &Message::Goodbye {
                reason: "shutdown".into(),
            },
        )
        .await?;
        let _ = send.finish();
        // Wait until the peer has the goodbye, briefly.
        let _ = tokio::time::timeout(Duration::from_millis(500), send.stopped()).await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        debug!("announce stream ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_address_detection() {
        let l: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert!(is_own_address(l, l));
        assert!(!is_own_address(l, "127.0.0.1:5001".parse().unwrap()));
        let any: SocketAddr = "0.0.0.0:5000".parse().unwrap();
        assert!(is_own_address(any, "127.0.0.1:5000".parse().unwrap()));
        assert!(!is_own_address(any, "192.0.2.1:5000".parse().unwrap()));
        // Left to the handshake-level check.
        assert!(!is_own_address(any, "127.0.0.2:5000".parse().unwrap()));
    }
}
