//! Peers speaking garbage or lying about their identity are disconnected and logged; the
//! daemon carries on (foundation part of S40/S41), using a raw protocol client.

use std::time::Duration;

use lanspread_catalog::{GameId, Version};
use lanspread_proto::{close_code, encode_frame, GameAd, Hello, Message, PROTOCOL_VERSION};
use lanspread_scenarios::Node;
use lanspread_transfer::Identity;
use quinn::{ConnectionError, VarInt};

use crate::util::rt;

/// Connects a raw client, sends the frames `bytes(identity)` on an announce stream and
/// returns how the daemon closed the connection.
async fn send_raw(addr: &str, bytes: impl FnOnce(&Identity) -> Vec<Vec<u8>>) -> ConnectionError {
    let (id, _ep, conn) = crate::util::raw_client(addr).await;
    let mut send = conn.open_uni().await.unwrap();
    for b in bytes(&id) {
        if send.write_all(&b).await.is_err() {
            break;
        }
    }
    let _ = send.finish();
    tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("daemon closes the connection")
}

fn hello(id: &Identity, protocol: u32) -> Vec<u8> {
    encode_frame(&Message::Hello(Hello {
        peer_id: id.peer_id().clone(),
        listen: "127.0.0.1:1".parse().unwrap(),
        protocol,
        agent: "raw".into(),
        proof: None,
    }))
    .unwrap()
}

/// A `Library` frame of `games` ads with the longest ids (about 85 bytes each).
fn library_frame(games: usize) -> Vec<u8> {
    let ads = (0..games)
        .map(|i| GameAd {
            id: GameId::new(&format!("{i:0>64}")).unwrap(),
            version: Version::parse("20250101").unwrap(),
            size: u64::MAX,
        })
        .collect();
    encode_frame(&Message::Library(ads)).unwrap()
}

fn closed_with(err: &ConnectionError, code: u32) -> bool {
    matches!(err, ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(code))
}

#[test]
fn garbage_frames_disconnect_and_the_daemon_carries_on() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("target", games.path());
    let rt = rt();
    // Not postcard at all.
    let err = rt.block_on(send_raw(&n.addr, |_| {
        vec![vec![5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]]
    }));
    assert!(closed_with(&err, close_code::PROTOCOL_ERROR), "{err:?}");
    // An oversized frame header.
    let err = rt.block_on(send_raw(&n.addr, |_| vec![u32::MAX.to_le_bytes().to_vec()]));
    assert!(closed_with(&err, close_code::PROTOCOL_ERROR), "{err:?}");
    // A library before the hello.
    let lib = encode_frame(&Message::Library(vec![GameAd {
        id: GameId::new("ggoo").unwrap(),
        version: Version::parse("20250101").unwrap(),
        size: 1,
    }]))
    .unwrap();
    let err = rt.block_on(send_raw(&n.addr, |_| vec![lib]));
    assert!(closed_with(&err, close_code::PROTOCOL_ERROR), "{err:?}");
    // A library of 2 MiB before the hello: refused after the hello's 4 KiB limit, and
    // never printed (its debug form was about 7 times its size, logged whole).
    let logged = n.log().len();
    let big = library_frame(25_000);
    assert!(big.len() > 2 << 20);
    let err = rt.block_on(send_raw(&n.addr, |_| vec![big]));
    assert!(closed_with(&err, close_code::PROTOCOL_ERROR), "{err:?}");
    let grew = n.log().len() - logged;
    assert!(grew < 16 << 10, "{grew} bytes logged for one refusal");
    assert!(
        n.log()[logged..].contains("4096-byte limit"),
        "{}",
        n.log_tail()
    );
    // The daemon is fine and lists no peer.
    assert!(n.peer_ids().is_empty());
    assert!(n.events_named("peer-connected").is_empty());
    assert!(
        n.log_tail().contains("refused peer") || n.log_tail().contains("protocol error"),
        "{}",
        n.log_tail()
    );
    // After the hello, a frame over the announce stream's 4 MiB limit ends the link.
    let err = rt.block_on(send_raw(&n.addr, |id| {
        vec![hello(id, PROTOCOL_VERSION), library_frame(60_000)]
    }));
    assert!(closed_with(&err, close_code::PROTOCOL_ERROR), "{err:?}");
    assert!(
        n.log_tail().contains(&format!("{}-byte limit", 4 << 20)),
        "{}",
        n.log_tail()
    );
    lanspread_scenarios::wait_for("the link to go", || n.peer_ids().is_empty().then_some(()));
    assert!(n.events_named("remote-library-changed").is_empty());
}

#[test]
fn a_hello_claiming_another_peer_id_is_refused() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("target", games.path());
    let victim = Identity::ephemeral().unwrap();
    let err = rt().block_on(send_raw(&n.addr, |_| {
        vec![hello(&victim, PROTOCOL_VERSION)]
    }));
    assert!(closed_with(&err, close_code::PROTOCOL_ERROR), "{err:?}");
    assert!(n.peer_ids().is_empty());
    assert!(n.log_tail().contains("TLS key proves"), "{}", n.log_tail());
}

#[test]
fn another_protocol_version_is_refused() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("target", games.path());
    let err = rt().block_on(send_raw(&n.addr, |id| {
        vec![hello(id, PROTOCOL_VERSION + 1)]
    }));
    assert!(closed_with(&err, close_code::VERSION_MISMATCH), "{err:?}");
    assert!(n.peer_ids().is_empty());
}

#[test]
fn raw_udp_garbage_is_ignored() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("target", games.path());
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..1200)
            .map(|j| (i.wrapping_mul(31).wrapping_add(j) % 251) as u8)
            .collect();
        sock.send_to(&junk, &n.addr).unwrap();
    }
    // Still answers and still accepts a real peer.
    assert_eq!(n.json(&["status"])["peer_id"], n.peer_id.as_str());
    let other = tempfile::tempdir().unwrap();
    let m = Node::start("other", other.path());
    m.connect(&n);
    assert_eq!(n.peer_ids().len(), 1);
}

/// A linked peer that asks for chunks and never reads them holds the source's serve slots
/// (four per connection, 256 in all) and the data queued for it — forever, before the
/// source watched its writes. Now each blocked answer is reset once the connection has
/// taken nothing for two stall windows (1 s here against 30 s by default), and the
/// peer's next request is served.
#[test]
fn a_peer_that_stops_reading_loses_its_answers_not_the_source() {
    use lanspread_catalog::RelPath;
    use lanspread_fixtures::{Content, GameSpec};
    use lanspread_proto::{ChunkRange, PeerRequest, PeerResponse};
    use lanspread_scenarios::NodeOptions;
    use lanspread_transfer::{connect, make_endpoint, read_frame, TransportTuning};

    const PART: u64 = 8 << 20;
    let games = tempfile::tempdir().unwrap();
    let mut spec = GameSpec::new("ggoo", "20250301");
    for i in 0..4u64 {
        spec = spec.file(
            &format!("ggoo.part{i}.eti"),
            0o644,
            Content::Random {
                seed: 1900 + i,
                size: PART,
            },
        );
    }
    spec.write(games.path()).unwrap();
    let n = Node::start_with(
        "source",
        games.path(),
        NodeOptions {
            env: vec![("LANSPREAD_SEND_STALL_MS".into(), "1000".into())],
            ..Default::default()
        },
    );
    crate::util::wait_ready(&n, "ggoo");
    let game = GameId::new("ggoo").unwrap();
    let version = Version::parse("20250301").unwrap();
    let request = |path: &str, len: u64| {
        encode_frame(&PeerRequest::Chunks {
            game: game.clone(),
            version,
            ranges: vec![ChunkRange {
                path: RelPath::new(path).unwrap(),
                offset: 0,
                len,
            }],
        })
        .unwrap()
    };
    rt().block_on(async {
        // A client with small stream windows: each answer blocks after 256 KiB.
        let id = Identity::ephemeral().unwrap();
        let tuning = TransportTuning {
            stream_window: 256 << 10,
            ..TransportTuning::default()
        };
        let ep = make_endpoint(&id, "127.0.0.1:0".parse().unwrap(), &tuning).unwrap();
        let (conn, _) = connect(&ep, n.addr.parse().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        let mut announce = conn.open_uni().await.unwrap();
        announce
            .write_all(&hello(&id, PROTOCOL_VERSION))
            .await
            .unwrap();
        // The manifest first (a source serves ranges only of files it hashed).
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let files = PeerRequest::Files {
            game: game.clone(),
            version,
        };
        send.write_all(&encode_frame(&files).unwrap())
            .await
            .unwrap();
        send.finish().unwrap();
        let manifest: Option<PeerResponse> = read_frame(&mut recv).await.unwrap();
        assert!(
            matches!(manifest, Some(PeerResponse::Files(_))),
            "{manifest:?}"
        );
        // Four whole parts asked for, none read: every serve slot of this connection.
        let mut unread = Vec::new();
        for i in 0..4 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&request(&format!("ggoo.part{i}.eti"), PART))
                .await
                .unwrap();
            send.finish().unwrap();
            unread.push((send, recv));
        }
        // A fifth request is answered once the stalled ones are given up.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&request("version.ini", 8)).await.unwrap();
        send.finish().unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(60), async {
            let head: Option<PeerResponse> = read_frame(&mut recv).await.unwrap();
            let mut body = [0u8; 8];
            recv.read_exact(&mut body).await.unwrap();
            (head, body)
        })
        .await
        .expect("the fifth request is answered once the unread ones are reset");
        assert_eq!(answer, (Some(PeerResponse::Chunk { len: 8 }), *b"20250301"));
        // Every unread answer is given up (reading one earlier would have moved it).
        lanspread_scenarios::wait_for("four answers given up", || {
            (n.log().matches("stopped answering a request").count() >= 4).then_some(())
        });
        // They were reset by the source, not completed.
        for (i, (_, mut recv)) in unread.into_iter().enumerate() {
            let end = tokio::time::timeout(Duration::from_secs(30), recv.read_to_end(1 << 30))
                .await
                .expect("an unread answer ends");
            assert!(
                end.is_err(),
                "unread answer {i} was completed, not reset ({} bytes)\n{}",
                end.map_or(0, |b| b.len()),
                n.log_tail()
            );
        }
        conn.close(0u32.into(), b"done");
    });
    let log = n.log_tail();
    assert!(
        log.contains("stopped answering a request: the peer took nothing for 2 s"),
        "{log}"
    );
    // The source carries on.
    assert_eq!(n.json(&["status"])["peer_id"], n.peer_id.as_str());
}

/// A source whose file changed in place after it gave out its hashes (`rsync -t
/// --inplace`, `cp -p`: same size, mtime restored) refuses ranges of it, saying so,
/// instead of sending bytes the peer's manifest does not describe; a fresh manifest
/// request re-hashes it and its ranges are served again (issue 18, item 8).
#[test]
fn a_file_changed_since_its_hashes_were_given_out_is_refused_until_rehashed() {
    use lanspread_catalog::{Manifest, RelPath};
    use lanspread_fixtures::{Content, GameSpec};
    use lanspread_proto::{ChunkRange, PeerRequest, PeerResponse};
    use lanspread_transfer::read_frame;

    const LEN: u64 = 1 << 20;
    let games = tempfile::tempdir().unwrap();
    GameSpec::new("ggoo", "20250301")
        .file(
            "ggoo.eti",
            0o644,
            Content::Random {
                seed: 1950,
                size: LEN,
            },
        )
        .write(games.path())
        .unwrap();
    let n = Node::start("source", games.path());
    crate::util::wait_ready(&n, "ggoo");
    let game = GameId::new("ggoo").unwrap();
    let version = Version::parse("20250301").unwrap();
    let file = games.path().join("ggoo/ggoo.eti");
    rt().block_on(async {
        let (id, _ep, conn) = crate::util::raw_client(&n.addr).await;
        let mut announce = conn.open_uni().await.unwrap();
        announce
            .write_all(&hello(&id, PROTOCOL_VERSION))
            .await
            .unwrap();
        let ask = |req: PeerRequest| {
            let conn = conn.clone();
            async move {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(&encode_frame(&req).unwrap()).await.unwrap();
                send.finish().unwrap();
                let head: Option<PeerResponse> = read_frame(&mut recv).await.unwrap();
                (head, recv)
            }
        };
        let manifest = || PeerRequest::Files {
            game: game.clone(),
            version,
        };
        let range = || PeerRequest::Chunks {
            game: game.clone(),
            version,
            ranges: vec![ChunkRange {
                path: RelPath::new("ggoo.eti").unwrap(),
                offset: 0,
                len: LEN,
            }],
        };
        let hash_of = |m: Manifest| {
            m.files
                .into_iter()
                .find(|f| f.path.as_str() == "ggoo.eti")
                .unwrap()
                .chunks[0]
        };
        let Some(PeerResponse::Files(files)) = ask(manifest()).await.0 else {
            panic!("no manifest")
        };
        let before = hash_of(files);
        assert!(matches!(
            ask(range()).await.0,
            Some(PeerResponse::Chunk { len: LEN })
        ));

        // Rewritten in place, mtime restored.
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"changed in place", 4096).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);

        match ask(range()).await.0 {
            Some(PeerResponse::Refused { reason }) => assert!(
                reason.contains("ggoo.eti changed since its hashes were given out"),
                "{reason}"
            ),
            other => panic!("a changed file was served: {other:?}"),
        }
        let Some(PeerResponse::Files(files)) = ask(manifest()).await.0 else {
            panic!("no manifest")
        };
        assert_ne!(hash_of(files), before, "not re-hashed");
        let (head, mut recv) = ask(range()).await;
        assert_eq!(head, Some(PeerResponse::Chunk { len: LEN }));
        let mut body = vec![0u8; LEN as usize];
        recv.read_exact(&mut body).await.unwrap();
        assert_eq!(body, std::fs::read(&file).unwrap());
        conn.close(0u32.into(), b"done");
    });
}

/// Connections that never say hello hold at most their address's share of the handshake
/// slots: past it, more from that address are refused at once, a peer from another
/// address still links, and once they are gone the address gets in again.
#[test]
fn connections_that_never_say_hello_are_capped_per_address() {
    use lanspread_transfer::{connect, make_endpoint, TransportTuning};
    let games = tempfile::tempdir().unwrap();
    let n = Node::start_with(
        "crowded",
        games.path(),
        lanspread_scenarios::NodeOptions {
            env: vec![("LANSPREAD_HANDSHAKES_PER_ADDRESS".into(), "4".into())],
            ..Default::default()
        },
    );
    let addr = n.addr.parse().unwrap();
    let id = Identity::ephemeral().unwrap();
    let rt = rt();
    let _guard = rt.enter();
    // Another loopback address than the daemon's peers use.
    let ep = make_endpoint(
        &id,
        "127.0.0.2:0".parse().unwrap(),
        &TransportTuning::default(),
    )
    .unwrap();
    let dial = || rt.block_on(connect(&ep, addr, Duration::from_secs(5)));
    let held: Vec<_> = (0..4)
        .map(|i| {
            dial()
                .unwrap_or_else(|e| panic!("connection {i} within the cap: {e}"))
                .0
        })
        .collect();
    let over = dial().expect_err("a fifth connection from the address is refused");
    assert!(
        over.to_string().to_lowercase().contains("refused"),
        "refused, not timed out: {over}"
    );
    // A peer at another address links meanwhile.
    let games_b = tempfile::tempdir().unwrap();
    let b = Node::start("neighbour", games_b.path());
    assert_eq!(b.connect(&n)["peer_id"], n.peer_id.as_str());
    // Closed, they give their slots back.
    for c in &held {
        c.close(VarInt::from_u32(0), b"bye");
    }
    let again = lanspread_scenarios::wait_for("the address to get in again", || dial().ok());
    again.0.close(VarInt::from_u32(0), b"bye");
    assert!(
        n.log().contains("turning inbound connections away"),
        "{}",
        n.log_tail()
    );
}

/// A peer that completes QUIC's handshake but grants no stream (so our hello can never
/// be sent) holds its handshake slot only until the handshake's deadline: the daemon
/// closes the connection, although keep-alives would keep it open for ever.
#[test]
fn a_peer_that_grants_no_stream_is_closed_at_the_handshake_deadline() {
    use lanspread_transfer::{connect, make_endpoint, TransportTuning};
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("target", games.path());
    rt().block_on(async {
        let id = Identity::ephemeral().unwrap();
        let tuning = TransportTuning {
            max_uni_streams: 0,
            ..TransportTuning::default()
        };
        let ep = make_endpoint(&id, "127.0.0.1:0".parse().unwrap(), &tuning).unwrap();
        let (conn, _) = connect(&ep, n.addr.parse().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(60), conn.closed())
            .await
            .expect("the daemon closes the connection");
        assert!(
            closed_with(&closed, close_code::PROTOCOL_ERROR),
            "{closed:?}"
        );
        assert!(closed.to_string().contains("no hello in time"), "{closed}");
    });
}

/// A peer we dial that grants no stream cannot hold our side either: the daemon closes
/// the connection at the hello's deadline and `connect` fails (before, the dial gave up
/// but its connection stayed open for ever, its link task waiting for a stream).
#[test]
fn a_dialled_peer_that_grants_no_stream_is_closed_at_the_hello_deadline() {
    use lanspread_transfer::{make_endpoint, TransportTuning};
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("dialler", games.path());
    // Driven in the background while the CLI runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (ep, addr) = rt.block_on(async {
        let id = Identity::ephemeral().unwrap();
        let tuning = TransportTuning {
            max_uni_streams: 0,
            ..TransportTuning::default()
        };
        let ep = make_endpoint(&id, "127.0.0.1:0".parse().unwrap(), &tuning).unwrap();
        let addr = ep.local_addr().unwrap().to_string();
        (ep, addr)
    });
    let server = rt.spawn(async move {
        tokio::time::timeout(Duration::from_secs(60), async {
            let conn = ep.accept().await.unwrap().await.unwrap();
            conn.closed().await
        })
        .await
    });
    let out = n.cli(&["connect", &addr]);
    assert_ne!(out.code, 0, "{out:?}");
    let closed = rt
        .block_on(server)
        .unwrap()
        .expect("the daemon closes the connection");
    assert!(closed.to_string().contains("no hello in time"), "{closed}");
}
