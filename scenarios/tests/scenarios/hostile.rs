//! Peers speaking garbage or lying about their identity are disconnected and logged; the
//! daemon carries on (foundation part of S40/S41), using a raw protocol client.

use std::time::Duration;

use lanspread_catalog::{GameId, Version};
use lanspread_scenarios::Node;
use lanspread_transfer::{
    close_code, encode_frame, GameAd, Hello, Identity, Message, PROTOCOL_VERSION,
};
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
    // The daemon is fine and lists no peer.
    assert!(n.peer_ids().is_empty());
    assert!(n.events_named("peer-connected").is_empty());
    assert!(
        n.log_tail().contains("refused peer") || n.log_tail().contains("protocol error"),
        "{}",
        n.log_tail()
    );
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
