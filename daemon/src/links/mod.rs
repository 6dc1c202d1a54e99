//! Peer links: accepting and dialling QUIC connections, the hello exchange, library
//! announcements and goodbyes. One task per connection reads the peer's announce stream;
//! a second task writes ours.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lanspread_peer::{check_not_self, holding_frames, pex_list, Direction, Upsert};
use lanspread_proto::{close_code, peer_text, Message, PeerAddr, PeerId, MAX_ANNOUNCE_LEN};
use lanspread_transfer::{connect, peer_id_of, read_frame_within, write_frame};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::oneshot;
use tracing::{debug, info, info_span, warn, Instrument, Span};

pub(crate) use crate::directory::Capped;
use crate::directory::{Holdings, NotKept, Redial};
use crate::failure::peer_failure;
use crate::handshake::{self, Exchange};
use crate::handshake_slots::Admitted;
use crate::state::Shared;
use lanspread_control::api::{EventKind, PeerInfo};
use lanspread_control::{ErrorKind, Failure};

mod accept;
mod redial;
pub mod static_peers;

pub use accept::accept_loop;
pub use redial::{pex_dialler, redial_manager};
use redial::{REDIAL_FIRST, REDIAL_MAX};

/// The peer a link was set up with, or why not, as told to a `connect` caller (kind
/// `connect-failed`).
pub type LinkResult = Result<PeerInfo, Failure>;

fn refused(why: impl Into<String>) -> Failure {
    Failure::new(ErrorKind::ConnectFailed, why)
}

/// Dials `addr`, runs the link in the background and returns once the peer's hello and
/// first library arrived.
pub async fn dial(shared: &Arc<Shared>, addr: SocketAddr) -> LinkResult {
    dial_peer(shared, (addr, Capped(false)), None, AfterLoss::Redial).await
}

/// Whether a link a dial makes is dialled again after it is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterLoss {
    Redial,
    Leave,
}

/// [`dial`], and when `expect` is given the peer there must prove that id and not be
/// linked already: a learned address cannot be used to replace a link we keep.
pub(crate) async fn dial_peer(
    shared: &Arc<Shared>,
    (addr, Capped(capped)): (SocketAddr, Capped),
    expect: Option<&PeerId>,
    after_loss: AfterLoss,
) -> LinkResult {
    if is_own_address(shared.me.listen, addr) {
        return Err(peer_failure(lanspread_peer::PeerError::SelfConnect));
    }
    // A dial no one asked for (`Capped`) keeps to the address cap too: a host announcing
    // many ids on its address is linked no more than it could link in (checked here
    // when the id is known, after the handshake, and exactly as the link is kept: dials
    // run side by side).
    let over_cap = |remote: &PeerId| {
        capped
            .then(|| shared.peers.address_cap(remote, addr.ip()))
            .flatten()
    };
    if let Some(why) = expect.and_then(over_cap) {
        return Err(refused(why));
    }
    let timeout = shared.net.tuning.connect_timeout;
    let (conn, remote) = match connect(&shared.net.endpoint, addr, timeout).await {
        Ok(c) => c,
        Err(e) => return Err(refused(self_or(peer_text(&e.to_string())))),
    };
    if let Err(e) = check_not_self(&shared.me.id, &remote) {
        conn.close(VarInt::from_u32(close_code::SELF_CONNECT), b"self");
        return Err(peer_failure(e));
    }
    if let Some(expect) = expect {
        if &remote != expect {
            conn.close(
                VarInt::from_u32(close_code::DUPLICATE),
                b"not the peer told of",
            );
            return Err(refused(format!("{addr} is peer {remote}, not {expect}")));
        }
        if shared.peers.link(&remote).is_some() {
            conn.close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
            return Err(refused(format!("peer {remote} is linked already")));
        }
    }
    if let Some(why) = over_cap(&remote) {
        conn.close(VarInt::from_u32(close_code::GOODBYE), b"");
        return Err(refused(why));
    }
    let (tx, rx) = oneshot::channel();
    tokio::spawn(
        run_link(
            shared.clone(),
            conn,
            Origin {
                direction: Direction::Outbound,
                capped,
            },
            // A link peer exchange made is not redialled: the peers' lists bring it back
            // while it is worth having, and a departed client is not chased forever.
            (after_loss == AfterLoss::Redial).then_some(addr),
            Some(tx),
            tokio::runtime::Handle::current(),
            None,
        )
        .instrument(link_span(addr, Direction::Outbound)),
    );
    let result =
        match tokio::time::timeout(handshake::HELLO_TIMEOUT + Duration::from_secs(1), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(refused(format!(
                "connection to {addr} closed during the hello exchange"
            ))),
            Err(_) => Err(refused(format!(
                "{addr} did not complete the hello exchange"
            ))),
        };
    match result {
        // Dialled at the moment another route linked the same peer (peer exchange, its
        // own dial): one of the two connections is closed as a duplicate, and the peer
        // asked for is linked all the same.
        Err(e) if expect.is_none() => shared.peers.info(&remote).ok_or(e),
        other => other,
    }
}

/// Closes a link (inbound, or an automatic dial) whose address holds as many links as one
/// may, saying why.
fn refuse_over_cap(shared: &Shared, conn: &Connection, why: String) -> Failure {
    log_cap_refusal(shared, conn.remote_address(), &why);
    conn.close(VarInt::from_u32(close_code::ADDRESS_CAP), why.as_bytes());
    refused(why)
}

/// A link refused (or not dialled) for the address cap: a warning at most every 10 s
/// with the count, else a debug line (a host at its cap that tries again and again, or
/// announces many ids, does not flood the log).
pub(crate) fn log_cap_refusal(shared: &Shared, addr: SocketAddr, why: &str) {
    match shared.peers.cap_refused() {
        Some(n) => warn!(%addr, "refused {n} link(s) lately: {why}"),
        None => debug!(%addr, "refused a link: {why}"),
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

/// How a link came about: who dialled, and whether it keeps to `max_links_per_address`
/// (inbound links and dials no one asked for: mDNS, peer exchange, a reset's redial).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub direction: Direction,
    pub capped: bool,
}

/// Runs one connection until it ends. `dialled` is the address we dialled (outbound),
/// redialled with backoff if the link is lost; `ready` gets the outcome of the hello;
/// the peer's requests are served on `driver`, the runtime that drives `conn`; an
/// inbound connection's handshake slot is given back once the hello is judged, which
/// must be by the slot's deadline.
async fn run_link(
    shared: Arc<Shared>,
    conn: Connection,
    Origin { direction, capped }: Origin,
    dialled: Option<SocketAddr>,
    mut ready: Option<oneshot::Sender<LinkResult>>,
    driver: tokio::runtime::Handle,
    slot: Option<Admitted>,
) {
    let mut tell = |r: LinkResult| {
        if let Some(tx) = ready.take() {
            let _ = tx.send(r);
        }
    };
    let Greeted {
        remote,
        mut recv,
        mut writer,
        addr,
    } = match Admitted::within(slot.as_ref(), &conn, greet(&shared, &conn, direction)).await {
        Some(Ok(g)) => g,
        Some(Err(e)) => return tell(Err(e)),
        None => return tell(Err(refused("no hello in time"))),
    };
    drop(slot);

    // Register, keeping one connection per peer.
    let upsert =
        match shared
            .peers
            .register(&shared.me.id, &remote, &conn, (direction, capped), addr)
        {
            Ok(upsert) => upsert,
            Err(NotKept::Duplicate(kept)) => {
                debug!("keeping the existing connection");
                conn.close(VarInt::from_u32(close_code::DUPLICATE), b"duplicate");
                writer.abort();
                return tell(kept.ok_or_else(|| refused("duplicate connection")));
            }
            Err(NotKept::AddressCap(why)) => {
                writer.abort();
                return tell(Err(refuse_over_cap(&shared, &conn, why)));
            }
        };
    match upsert {
        Upsert::New => info!(%addr, "peer connected"),
        Upsert::Moved { from } => info!(%from, to = %addr, "peer moved"),
        Upsert::Unchanged => info!(%addr, "peer reconnected: this connection replaces its link"),
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
    let end = follow(&shared, &conn, &remote, &mut recv, &mut writer, &mut tell).await;
    tell(Err(refused(end.clone())));
    writer.abort();
    server.abort();
    let lost = drop_link(&shared, &remote, &conn, addr, &end);
    if !lost || *shared.shutdown.borrow() {
        return;
    }
    if let Some(addr) = dialled {
        let _ = shared
            .peers
            .redial
            .send(Redial::Lost(remote, addr, Capped(capped)));
    } else if matches!(conn.close_reason(), Some(quinn::ConnectionError::Reset)) {
        // A stateless reset comes from a new process of the peer on the same address and
        // identity (restarted at once), which may not know us any more: dialled back a
        // few times, as that peer, and never chased after (the link stays undialled).
        let _ = shared.peers.redial.send(Redial::Reset(remote, addr));
    }
}

/// A link past the hello exchange: the peer's proven id, its announce stream, our
/// announce writer (sending the library once told to), its canonical listen address.
struct Greeted {
    remote: PeerId,
    recv: RecvStream,
    writer: tokio::task::JoinHandle<()>,
    addr: SocketAddr,
}

/// The hello exchange of a new link: the peer's id from its certificate, not ourselves,
/// our hello out, theirs in and checked (version, identity, LAN secret).
async fn greet(
    shared: &Arc<Shared>,
    conn: &Connection,
    direction: Direction,
) -> Result<Greeted, Failure> {
    let remote = match peer_id_of(conn) {
        Ok(id) => id,
        Err(e) => {
            warn!(addr = %conn.remote_address(), "refused: {e}");
            conn.close(VarInt::from_u32(close_code::PROTOCOL_ERROR), b"no identity");
            return Err(refused(e.to_string()));
        }
    };
    Span::current().record("id", tracing::field::display(remote.short()));
    if check_not_self(&shared.me.id, &remote).is_err() {
        debug!("refused a connection from ourselves");
        conn.close(VarInt::from_u32(close_code::SELF_CONNECT), b"self");
        return Err(peer_failure(lanspread_peer::PeerError::SelfConnect));
    }

    // Past the address's cap, before any hello: the peer hears why, and learns nothing.
    if direction == Direction::Inbound {
        let ip = conn.remote_address().ip();
        if let Some(why) = shared.peers.address_cap(&remote, ip) {
            return Err(refuse_over_cap(shared, conn, why));
        }
    }

    // Our announce stream: hello now; the library only once the peer's hello passed our
    // checks (so a peer without the secret learns nothing), then on every change. The
    // LAN secret proof in it is bound to this TLS session and to our role in it.
    let exchange = match Exchange::new(&shared.me, conn, direction) {
        Ok(x) => x,
        Err(refusal) => {
            handshake::close(conn, &refusal);
            return Err(refused(refusal.why));
        }
    };
    let send = match conn.open_uni().await {
        // Holdings go out ahead of the answers we send this peer.
        Ok(s) => {
            let _ = s.set_priority(lanspread_transfer::CONTROL_PRIORITY);
            s
        }
        Err(e) => return Err(refused(peer_text(&format!("cannot open a stream: {e}")))),
    };
    let (accepted, go) = oneshot::channel();
    let hello = exchange.hello();
    let writer =
        tokio::spawn(announce(shared.clone(), send, (hello, remote.clone()), go).in_current_span());

    // Their announce stream: hello first.
    let (recv, hello) = match exchange.receive_hello(conn, &remote).await {
        Ok(got) => got,
        Err(refusal) => {
            warn!(addr = %conn.remote_address(), "refused peer: {}", refusal.why);
            writer.abort();
            handshake::close(conn, &refusal);
            return Err(refused(refusal.why));
        }
    };
    let _ = accepted.send(());
    // IPv4 peers of a dual-stack socket show up as IPv4-mapped IPv6; list them as IPv4.
    let addr = SocketAddr::new(
        conn.remote_address().ip().to_canonical(),
        hello.listen.port(),
    );

    Ok(Greeted {
        remote,
        recv,
        writer,
        addr,
    })
}

/// Reads the peer's announcements (libraries) until goodbye, a protocol error, the
/// connection's end or our shutdown; `tell` gets the peer once its first library is in.
/// Returns why the link ended.
async fn follow(
    shared: &Arc<Shared>,
    conn: &Connection,
    remote: &PeerId,
    recv: &mut RecvStream,
    writer: &mut tokio::task::JoinHandle<()>,
    tell: &mut impl FnMut(LinkResult),
) -> String {
    let mut shutdown = shared.shutdown.subscribe();
    let mut first_library = true;
    loop {
        let msg = tokio::select! {
            m = read_frame_within::<_, Message>(recv, MAX_ANNOUNCE_LEN) => m,
            // A peer's close reason is part of these (quinn prints its bytes as sent).
            reason = conn.closed() => break peer_text(&format!("connection closed: {reason}")),
            _ = crate::state::until_shutdown(&mut shutdown) => {
                // The writer sends the goodbye; close once it is out (or after a bound).
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut *writer).await;
                conn.close(VarInt::from_u32(close_code::GOODBYE), b"goodbye");
                break "local shutdown".into();
            }
        };
        match msg {
            Ok(Some(Message::Library(ads))) => {
                let (changed, info) = shared.peers.set_library(remote, &ads, &shared.catalog());
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
            Ok(Some(Message::Goodbye { reason })) => {
                break format!("goodbye: {}", lanspread_proto::peer_text(&reason))
            }
            Ok(Some(Message::Holding(h))) => {
                shared
                    .peers
                    .holding((remote, conn), Holdings::All(h), &shared.catalog())
            }
            Ok(Some(Message::HoldingMore {
                game,
                digest,
                chunks,
            })) => shared.peers.holding(
                (remote, conn),
                Holdings::More(game, digest, chunks),
                &shared.catalog(),
            ),
            Ok(Some(Message::Peers(learned))) => {
                // A peer on the LAN cannot mean our loopback or a multicast group.
                let from_loopback = conn.remote_address().ip().to_canonical().is_loopback();
                let learned: Vec<PeerAddr> = learned
                    .into_iter()
                    .filter(|p| from_loopback || !p.addr.ip().to_canonical().is_loopback())
                    .filter(|p| !p.addr.ip().is_multicast())
                    .collect();
                let wanted = shared.partials.games();
                for p in shared
                    .peers
                    .learned((&shared.me.id, remote), learned, &wanted)
                {
                    let _ = shared.peers.pex_dial.send(p);
                }
            }
            Ok(Some(Message::HoldingGrowing {
                game,
                digest,
                chunks,
            })) => shared.peers.holding(
                (remote, conn),
                Holdings::Growing(game, digest, chunks),
                &shared.catalog(),
            ),
            Ok(Some(Message::HoldingGone { game })) => {
                shared
                    .peers
                    .holding((remote, conn), Holdings::Gone(game), &shared.catalog())
            }
            Ok(Some(Message::Hello(_))) => {
                warn!("protocol error: second hello");
                conn.close(
                    VarInt::from_u32(close_code::PROTOCOL_ERROR),
                    b"second hello",
                );
                break "protocol error".into();
            }
            Ok(None) => break "announce stream ended".into(),
            // The connection ended (timed out, reset by a restarted peer, closed by
            // it): no protocol error, and its own reason says more than the stream's
            // "connection lost".
            Err(_) if conn.close_reason().is_some() => {
                let gone = conn
                    .close_reason()
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                break peer_text(&format!("connection lost: {gone}"));
            }
            Err(e) => {
                warn!("protocol error, disconnecting: {e}");
                conn.close(
                    VarInt::from_u32(close_code::PROTOCOL_ERROR),
                    b"protocol error",
                );
                break format!("protocol error: {e}");
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
    let removed = shared.peers.remove_if_current(remote, conn);
    if removed {
        info!(peer = %remote.short(), "peer lost: {why}");
        shared.events.emit(EventKind::PeerLost {
            peer_id: remote.clone(),
            addr: addr.to_string(),
        });
    }
    removed
}

/// At most one peer-exchange list per link this often: the lists change with every
/// link and every peer's downloads (`Directory::holding`), and a peer that starts and
/// ends downloads quickly must not make us flood every link.
const PEX_EVERY: Duration = Duration::from_secs(1);

/// Writes our announce stream: hello, then (once `accepted` fires) the library on every
/// change, goodbye on shutdown.
async fn announce(
    shared: Arc<Shared>,
    mut send: SendStream,
    (hello, remote): (Message, PeerId),
    accepted: oneshot::Receiver<()>,
) {
    let mut advert = shared.advert.subscribe();
    let mut holdings = shared.partials.watch();
    let mut pex = shared.peers.watch_pex();
    let mut shutdown = shared.shutdown.subscribe();
    let result: Result<(), lanspread_transfer::TransferError> = async {
        write_frame(&mut send, &hello).await?;
        if accepted.await.is_err() {
            return Ok(());
        }
        // The library whenever it changes; the partial copies as deltas from what this
        // link was told.
        let mut told: crate::partial::Announced = Default::default();
        // Peer exchange: the list when it changed, at most once per `PEX_EVERY`, never
        // the same list twice.
        let mut peers_due = true;
        let mut peers_sent: (Vec<PeerAddr>, Option<tokio::time::Instant>) = (Vec::new(), None);
        // The first frame after the hello is the library, as it always was.
        let lib = advert.borrow_and_update().clone();
        write_frame(&mut send, &Message::Library(lib.to_vec())).await?;
        let mut library_changed = false;
        loop {
            let next_list = peers_sent.1.map(|at| at + PEX_EVERY);
            if peers_due && next_list.is_none_or(|at| at <= tokio::time::Instant::now()) {
                peers_due = false;
                let others = pex_list(&pex.borrow_and_update(), &remote);
                if !others.is_empty() && others != peers_sent.0 {
                    write_frame(&mut send, &Message::Peers(others.clone())).await?;
                    peers_sent = (others, Some(tokio::time::Instant::now()));
                }
            }
            let now = holdings.borrow_and_update().clone();
            for frame in holding_frames(&told, &now) {
                write_frame(&mut send, &frame).await?;
            }
            told = now;
            // After the holdings: a committed game's `HoldingGone` goes before the
            // `Library` that lists it ready.
            if library_changed {
                let lib = advert.borrow_and_update().clone();
                write_frame(&mut send, &Message::Library(lib.to_vec())).await?;
            }
            library_changed = false;
            let next_list = peers_sent
                .1
                .map_or_else(tokio::time::Instant::now, |at| at + PEX_EVERY);
            tokio::select! {
                changed = advert.changed() => {
                    if changed.is_err() { break }
                    library_changed = true;
                }
                changed = pex.changed() => {
                    if changed.is_err() { break }
                    let _ = pex.borrow_and_update();
                    peers_due = true;
                }
                _ = tokio::time::sleep_until(next_list), if peers_due => {}
                changed = holdings.changed() => if changed.is_err() { break },
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
