//! QUIC endpoint construction and dialling.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use rustls_pki_types::CertificateDer;

use crate::tls::{client_config, server_config};
use lanspread_proto::{PeerId, ALPN, DATA_ALPN, SERVER_NAME};

use crate::{Identity, TransferError};

/// Transport settings for a LAN.
#[derive(Debug, Clone)]
pub struct TransportTuning {
    /// Interval of QUIC keep-alive packets.
    pub keep_alive: Duration,
    /// A connection with no packets for this long is dead.
    pub idle_timeout: Duration,
    /// Per-stream receive window in bytes.
    pub stream_window: u32,
    /// Per-connection receive window in bytes.
    pub conn_window: u32,
    /// Most concurrent bidirectional streams a peer may open.
    pub max_bidi_streams: u32,
    /// Most concurrent unidirectional streams a peer may open (its announce stream, a
    /// data connection's hello).
    pub max_uni_streams: u32,
    /// How long a dial may take before it is abandoned.
    pub connect_timeout: Duration,
    /// UDP socket send and receive buffer sizes asked for (the kernel caps them at
    /// `net.core.wmem_max` / `rmem_max`); 0 keeps the kernel's defaults.
    pub udp_buffer: usize,
    /// The largest UDP payload MTU discovery tries (quinn's default, 1452, fits a
    /// 1500-byte Ethernet MTU; 8952 a 9000-byte jumbo-frame LAN).
    pub max_udp_payload: u16,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(1),
            // Not 5 s: on a congested link (a file server's uplink shared by dozens of
            // clients) one connection can lose every packet for seconds while QUIC's
            // probe timer backs off (doubling from ~0.2 s), and the downloader, which
            // then hears nothing, would kill a connection that is only slow. Measured in
            // the busy-server scenario (4 clients behind a 40 Mbit/s tbf): 5 s lost
            // data connections mid-download.
            idle_timeout: Duration::from_secs(20),
            // One chunk: a range is answered on one stream.
            stream_window: lanspread_proto::CHUNK_SIZE as u32,
            // Bounds what the client holds unread (quinn buffers at most this much per
            // connection): 128 MiB + the writer's 48 MiB pool keeps a download's peak RSS
            // under the 256 MiB budget by construction. The planner's smallest per-source
            // budget fits.
            conn_window: (lanspread_proto::MIN_CHUNKS_IN_FLIGHT * lanspread_proto::CHUNK_SIZE)
                as u32,
            max_bidi_streams: 256,
            max_uni_streams: 16,
            connect_timeout: Duration::from_secs(5),
            udp_buffer: 0,
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
        }
    }
}

/// quinn's default upper bound of MTU discovery: a 1500-byte MTU less the IPv6 and UDP
/// headers.
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1452;

/// The send priority of a connection's small control streams (requests, the announce
/// stream): above answers' (0), so their bytes go out before any queued chunk's.
pub const CONTROL_PRIORITY: i32 = 1;

/// The smallest receive window a data connection gets, however many lanes share a source
/// (far above a LAN's bandwidth-delay product: 2 MiB is 1 ms at 2 GiB/s).
pub const MIN_LANE_WINDOW: u32 = 2 << 20;

impl TransportTuning {
    /// [`TransportTuning::max_udp_payload`] within what QUIC allows (1200..=65527).
    fn udp_payload_bound(&self) -> u16 {
        self.max_udp_payload.clamp(1200, 65_527)
    }

    /// The tuning of each of `lanes` data connections to one source (one per transfer
    /// thread): the connection window is shared out among them, at least
    /// [`MIN_LANE_WINDOW`] each, and no stream's window is larger than its connection's. So
    /// what a source's lanes can make the client hold unread together stays at one
    /// connection window (128 MiB) up to 64 lanes, whatever the thread count.
    pub fn per_lane(&self, lanes: usize) -> TransportTuning {
        let lanes = u32::try_from(lanes.max(1)).unwrap_or(u32::MAX);
        let conn_window = (self.conn_window / lanes).max(MIN_LANE_WINDOW);
        TransportTuning {
            conn_window,
            stream_window: self.stream_window.min(conn_window),
            ..self.clone()
        }
    }

    fn transport(&self) -> TransportConfig {
        let mut t = TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive));
        // The idle timeout is bounded by QUIC's varint range; our values are far below it.
        if let Ok(idle) = self.idle_timeout.try_into() {
            t.max_idle_timeout(Some(idle));
        }
        t.stream_receive_window(VarInt::from_u32(self.stream_window));
        t.receive_window(VarInt::from_u32(self.conn_window));
        t.send_window(u64::from(self.conn_window));
        t.max_concurrent_bidi_streams(VarInt::from_u32(self.max_bidi_streams));
        t.max_concurrent_uni_streams(VarInt::from_u32(self.max_uni_streams));
        // Streams take turns packet by packet (quinn's default, `send_fairness(true)`).
        // Without turns a stream partly sent is continued to its end before any other:
        // on a swarm's link a request or a holdings announcement queued behind a 32 MiB
        // answer going the same way waited for all of it (5–8 s at 100 Mbit/s).
        let mut mtud = quinn::MtuDiscoveryConfig::default();
        mtud.upper_bound(self.udp_payload_bound());
        t.mtu_discovery_config(Some(mtud));
        t
    }
}

/// Binds a QUIC endpoint that both accepts and dials, with our identity on both sides.
/// Must be called inside a tokio runtime.
pub fn make_endpoint(
    id: &Identity,
    listen: SocketAddr,
    tuning: &TransportTuning,
) -> Result<Endpoint, TransferError> {
    let transport = Arc::new(tuning.transport());
    let server_crypto = QuicServerConfig::try_from(server_config(id)?)
        .map_err(|e| TransferError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client = quic_client_config(id, transport, ALPN)?;
    let mut config = quinn::EndpointConfig::new(Arc::new(id.reset_key()));
    let cid_key = id.cid_key();
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    bind(listen, tuning, config, Some(server), client)
}

/// Binds a dial-only endpoint whose connections are data connections (`DATA_ALPN`): the
/// socket of one transfer thread, so that a data connection's packets are received on
/// the thread that drives it. Must be called inside the runtime that will drive it.
/// `client` is the [`data_client_config`] (built once, shared by all such endpoints).
pub fn make_data_endpoint(
    bind_addr: SocketAddr,
    tuning: &TransportTuning,
    client: quinn::ClientConfig,
) -> Result<Endpoint, TransferError> {
    // Dial-only, on a port of its own: no former self's connections to reset.
    bind(
        bind_addr,
        tuning,
        quinn::EndpointConfig::default(),
        None,
        client,
    )
}

fn bind(
    addr: SocketAddr,
    tuning: &TransportTuning,
    mut config: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
    client: quinn::ClientConfig,
) -> Result<Endpoint, TransferError> {
    let bind_err = |source| TransferError::Bind { addr, source };
    let socket = udp_socket(addr, tuning.udp_buffer).map_err(bind_err)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_err(std::io::Error::other("no async runtime")))?;
    // What we accept from peers: at least the default, and our own largest. A peer
    // sends us datagrams up to what we accept, and we send it up to what it accepts.
    let accept = tuning.udp_payload_bound().max(1472);
    config
        .max_udp_payload_size(accept)
        .map_err(|e| bind_err(std::io::Error::other(e.to_string())))?;
    // Every socket is a `FitBatches` (a rebind, were one added, must wrap its socket too).
    let socket = Arc::new(crate::FitBatches::new(
        runtime.wrap_udp_socket(socket).map_err(bind_err)?,
        accept,
    ));
    let mut endpoint =
        Endpoint::new_with_abstract_socket(config, server, socket, runtime).map_err(bind_err)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// The client side of a data connection (`DATA_ALPN`), dialled with [`connect_data`].
pub fn data_client_config(
    id: &Identity,
    tuning: &TransportTuning,
) -> Result<quinn::ClientConfig, TransferError> {
    quic_client_config(id, Arc::new(tuning.transport()), DATA_ALPN)
}

fn quic_client_config(
    id: &Identity,
    transport: Arc<TransportConfig>,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TransferError> {
    let crypto = QuicClientConfig::try_from(client_config(id, alpn)?)
        .map_err(|e| TransferError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(transport);
    Ok(client)
}

/// A UDP socket bound to `listen` with large buffers: a burst of a fast sender must not
/// overflow the default 208 KiB receive buffer (each drop costs a congestion backoff).
/// `[::]` stays dual-stack, as with a plain bind.
fn udp_socket(listen: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if listen.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Best effort: the kernel caps the sizes; smaller buffers still work. 0 keeps the
    // kernel's defaults.
    if buffer > 0 {
        let _ = socket.set_recv_buffer_size(buffer);
        let _ = socket.set_send_buffer_size(buffer);
    }
    socket.bind(&listen.into())?;
    Ok(socket.into())
}

/// Dials `addr` and returns the connection with the peer id proven by its handshake.
pub async fn connect(
    endpoint: &Endpoint,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Connection, PeerId), TransferError> {
    dial(endpoint.connect(addr, SERVER_NAME), addr, timeout).await
}

/// Dials a data connection to `addr` with `config` (from [`data_client_config`]). Quinn
/// drives a connection on the runtime that dials it, so dialling from another thread's
/// runtime puts this connection's packet work (crypto, acks) on that thread.
pub async fn connect_data(
    endpoint: &Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Connection, PeerId), TransferError> {
    dial(
        endpoint.connect_with(config, addr, SERVER_NAME),
        addr,
        timeout,
    )
    .await
}

/// Whether the peer dialled `conn` as a data connection (`DATA_ALPN`).
pub fn is_data_connection(conn: &Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == DATA_ALPN)
}

async fn dial(
    connecting: Result<quinn::Connecting, quinn::ConnectError>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Connection, PeerId), TransferError> {
    let err = |why: String| TransferError::Connect { addr, why };
    let connecting = connecting.map_err(|e| err(e.to_string()))?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(err(e.to_string())),
        Err(_) => return Err(err(format!("no answer within {} ms", timeout.as_millis()))),
    };
    let id = peer_id_of(&conn)?;
    Ok((conn, id))
}

/// The peer id bound to a connection's TLS key.
pub fn peer_id_of(conn: &Connection) -> Result<PeerId, TransferError> {
    let identity = conn.peer_identity().ok_or(TransferError::NoPeerIdentity)?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TransferError::NoPeerIdentity)?;
    let first = certs.first().ok_or(TransferError::NoPeerIdentity)?;
    crate::identity::peer_id_of_cert(first)
}

/// 32 bytes of TLS exported keying material for the LAN secret proof; both ends of one
/// connection get the same bytes, other connections different ones.
pub fn session_binding(conn: &Connection) -> Result<[u8; 32], TransferError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, lanspread_proto::EXPORTER_LABEL, b"")
        .map_err(|_| TransferError::Tls("cannot export keying material".into()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_frame, write_frame};
    use lanspread_proto::Message;

    /// Two identities with an endpoint each on loopback, and the second one's address.
    fn pair() -> (Identity, Identity, Endpoint, Endpoint, SocketAddr) {
        let a = Identity::ephemeral().unwrap();
        let b = Identity::ephemeral().unwrap();
        let tuning = TransportTuning::default();
        let ea = make_endpoint(&a, "127.0.0.1:0".parse().unwrap(), &tuning).unwrap();
        let eb = make_endpoint(&b, "127.0.0.1:0".parse().unwrap(), &tuning).unwrap();
        let b_addr = eb.local_addr().unwrap();
        (a, b, ea, eb, b_addr)
    }

    #[test]
    fn lanes_share_one_connection_window() {
        let t = TransportTuning::default();
        let one = t.per_lane(1);
        assert_eq!((one.conn_window, one.stream_window), (128 << 20, 32 << 20));
        assert_eq!(t.per_lane(0).conn_window, 128 << 20);
        let four = t.per_lane(4);
        assert_eq!((four.conn_window, four.stream_window), (32 << 20, 32 << 20));
        let eight = t.per_lane(8);
        assert_eq!(
            (eight.conn_window, eight.stream_window),
            (16 << 20, 16 << 20)
        );
        for lanes in 1..=64u64 {
            let l = t.per_lane(lanes as usize);
            assert!(lanes * u64::from(l.conn_window) <= 128 << 20, "{lanes}");
            assert!(l.stream_window <= l.conn_window && l.conn_window >= MIN_LANE_WINDOW);
            assert_eq!(l.idle_timeout, t.idle_timeout);
        }
        assert_eq!(t.per_lane(1000).conn_window, MIN_LANE_WINDOW);
    }

    #[tokio::test]
    async fn mutual_identity_over_loopback() {
        let (a, b, ea, eb, b_addr) = pair();
        let tuning = TransportTuning::default();
        let server = tokio::spawn(async move {
            let conn = eb.accept().await.unwrap().await.unwrap();
            let client_id = peer_id_of(&conn).unwrap();
            let mut recv = conn.accept_uni().await.unwrap();
            let msg: Message = read_frame(&mut recv).await.unwrap().unwrap();
            (client_id, msg, session_binding(&conn).unwrap())
        });
        let (conn, server_id) = connect(&ea, b_addr, tuning.connect_timeout).await.unwrap();
        assert_eq!(&server_id, b.peer_id());
        let mut send = conn.open_uni().await.unwrap();
        write_frame(&mut send, &Message::Goodbye { reason: "x".into() })
            .await
            .unwrap();
        send.finish().unwrap();
        let (client_id, msg, server_binding) = server.await.unwrap();
        assert_eq!(&client_id, a.peer_id());
        // Both ends derive the same session binding for the LAN secret proof.
        assert_eq!(session_binding(&conn).unwrap(), server_binding);
        assert_ne!(server_binding, [0u8; 32]);
        assert_eq!(msg, Message::Goodbye { reason: "x".into() });
    }

    #[tokio::test]
    async fn data_connections_are_told_apart_by_alpn() {
        let (a, b, ea, eb, b_addr) = pair();
        let tuning = TransportTuning::default();
        let server = tokio::spawn(async move {
            let mut kinds = Vec::new();
            for _ in 0..2 {
                let conn = eb.accept().await.unwrap().await.unwrap();
                kinds.push((is_data_connection(&conn), peer_id_of(&conn).unwrap()));
            }
            kinds
        });
        let t = tuning.connect_timeout;
        let (link, _) = connect(&ea, b_addr, t).await.unwrap();
        let data_cfg = data_client_config(&a, &tuning).unwrap();
        let (data, id) = connect_data(&ea, data_cfg, b_addr, t).await.unwrap();
        assert_eq!(&id, b.peer_id());
        assert!(!is_data_connection(&link));
        assert!(is_data_connection(&data));
        let kinds = server.await.unwrap();
        assert_eq!(
            kinds,
            vec![(false, a.peer_id().clone()), (true, a.peer_id().clone())]
        );
    }

    /// On a link both peers answer and ask: a request (or an announcement) must not wait
    /// behind a whole chunk already queued the same way on the connection.
    #[tokio::test]
    async fn a_small_stream_is_not_queued_behind_a_large_one() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        // One chunk: the stream window (32 MiB) takes it whole.
        const BIG: usize = 32 << 20;
        let (_a, _b, ea, eb, b_addr) = pair();
        let tuning = TransportTuning::default();
        let got = std::sync::Arc::new(AtomicUsize::new(0));
        let (counted, at_small) = (got.clone(), got.clone());
        let server = tokio::spawn(async move {
            let conn = eb.accept().await.unwrap().await.unwrap();
            let mut big = conn.accept_uni().await.unwrap();
            let reader = tokio::spawn(async move {
                while let Some(c) = big.read_chunk(1 << 20, true).await.unwrap() {
                    counted.fetch_add(c.bytes.len(), SeqCst);
                }
            });
            let mut small = conn.accept_uni().await.unwrap();
            let msg: Message = read_frame(&mut small).await.unwrap().unwrap();
            let seen = at_small.load(SeqCst);
            reader.await.unwrap();
            (msg, seen)
        });
        let (conn, _) = connect(&ea, b_addr, tuning.connect_timeout).await.unwrap();
        let mut big = conn.open_uni().await.unwrap();
        // The windows take it all at once: the whole chunk is queued in quinn.
        big.write_all(&vec![7u8; BIG]).await.unwrap();
        big.finish().unwrap();
        // The answer is on its way (partly sent) when the request is queued behind it.
        let started = async {
            while got.load(SeqCst) < 1 << 20 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), started)
            .await
            .expect("the server reads the first MiB");
        let mut small = conn.open_uni().await.unwrap();
        small.set_priority(CONTROL_PRIORITY).unwrap();
        let msg = Message::Goodbye { reason: "x".into() };
        write_frame(&mut small, &msg).await.unwrap();
        small.finish().unwrap();
        let (received, seen) = server.await.unwrap();
        assert_eq!(received, msg);
        assert_eq!(got.load(SeqCst), BIG);
        assert!(
            seen < BIG / 2,
            "the small stream arrived after {seen} of the large one's {BIG} bytes"
        );
    }

    /// Jumbo datagrams: quinn batches up to 10 datagrams in one GSO send, and 10 of more
    /// than 6,550 bytes are more than one UDP send carries: Linux refused every such
    /// batch (`EMSGSIZE`, which quinn-udp drops without a word), and the losses made the
    /// black-hole detector drop the MTU to 1200. Over loopback (MTU 65,536) with the bound
    /// at 8952, MTU discovery must pass 6,550 bytes and full batches at that size must then
    /// go through without a black hole.
    #[tokio::test]
    async fn jumbo_datagrams_reach_their_bound_and_keep_it() {
        const PIECE: usize = 4 << 20;
        const MOST: usize = 256 << 20;
        let tuning = TransportTuning {
            max_udp_payload: 8952,
            ..TransportTuning::default()
        };
        let (a, b) = (
            Identity::ephemeral().unwrap(),
            Identity::ephemeral().unwrap(),
        );
        let ea = make_endpoint(&a, "127.0.0.1:0".parse().unwrap(), &tuning).unwrap();
        let eb = make_endpoint(&b, "127.0.0.1:0".parse().unwrap(), &tuning).unwrap();
        let b_addr = eb.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let conn = eb.accept().await.unwrap().await.unwrap();
            let mut recv = conn.accept_uni().await.unwrap();
            let mut n = 0;
            while let Some(c) = recv.read_chunk(1 << 20, true).await.unwrap() {
                n += c.bytes.len();
            }
            n
        });
        let (conn, _) = connect(&ea, b_addr, tuning.connect_timeout).await.unwrap();
        let mut send = conn.open_uni().await.unwrap();
        let piece = vec![7u8; PIECE];
        // Queue 4 MiB at a time until 16 MiB were queued after the MTU passed 6,550 bytes
        // (MTU discovery probes step by step; a loaded machine takes longer to get there).
        // The receiver checks that every byte arrived.
        let (mut sent, mut after) = (0, 0);
        while sent < MOST && after < 16 << 20 {
            send.write_all(&piece).await.unwrap();
            sent += PIECE;
            if conn.stats().path.current_mtu > 6550 {
                after += PIECE;
            }
        }
        send.finish().unwrap();
        assert_eq!(server.await.unwrap(), sent);
        let path = conn.stats().path;
        assert!(path.current_mtu > 6550, "{path:?}");
        assert_eq!(path.black_holes_detected, 0, "{path:?}");
    }

    #[tokio::test]
    async fn dialling_nothing_times_out_cleanly() {
        let a = Identity::ephemeral().unwrap();
        let ea = make_endpoint(
            &a,
            "127.0.0.1:0".parse().unwrap(),
            &TransportTuning::default(),
        )
        .unwrap();
        // A bound UDP socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = connect(
            &ea,
            silent.local_addr().unwrap(),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}
