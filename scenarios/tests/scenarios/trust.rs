//! S41: the LAN secret. Daemons with different secrets (or one without) refuse each other
//! before any library is sent; with the same secret they link and download.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lanspread_fixtures::BRAVO;
use lanspread_proto::{close_code, encode_frame, Hello, Message, PROTOCOL_VERSION};
use lanspread_scenarios::{assert_same_tree, lab, Node, OutputWithin, WAIT};
use lanspread_transfer::{read_frame, session_binding};
use quinn::{ConnectionError, VarInt};

fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn with_secret(name: &str, games: &Path, secret: Option<&Path>) -> Node {
    match secret {
        Some(p) => {
            let args = ["--secret-file", &p.display().to_string()];
            crate::util::node_with_args(name, games, &args)
        }
        None => Node::start(name, games),
    }
}

/// Opens the announce stream of a raw peer and sends a hello with `peer_id` and `proof`.
async fn send_hello(
    conn: &quinn::Connection,
    peer_id: lanspread_proto::PeerId,
    proof: Option<[u8; 32]>,
) -> quinn::SendStream {
    let mut send = conn.open_uni().await.unwrap();
    let hello = Message::Hello(Hello {
        peer_id,
        listen: "127.0.0.1:1".parse().unwrap(),
        protocol: PROTOCOL_VERSION,
        agent: "raw".into(),
        proof,
    });
    send.write_all(&encode_frame(&hello).unwrap())
        .await
        .unwrap();
    send
}

/// `a connect b` fails on both sides with a LAN secret error, and neither lists the other.
fn assert_refused(a: &Node, b: &Node) {
    // Only lines logged from here on count: a second call on the same pair must not
    // take the first call's lines for its own.
    let logged = [a.log().len(), b.log().len()];
    let out = a.cli(&["connect", &b.addr]);
    assert_eq!(out.code, 1, "connect must fail: {out:?}");
    assert!(out.stderr.contains("LAN secret"), "{}", out.stderr);
    assert!(a.peer_ids().is_empty() && b.peer_ids().is_empty());
    // Each daemon logged its own reason.
    for (n, from) in [a, b].into_iter().zip(logged) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !n
            .log()
            .get(from..)
            .unwrap_or("")
            .contains("LAN secret mismatch")
        {
            assert!(std::time::Instant::now() < deadline, "{}", n.log_tail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Nothing about the other side's library crossed.
    for n in [a, b] {
        assert!(n.events_named("remote-library-changed").is_empty());
    }
}

#[test]
fn s41_different_secrets_refuse_each_other() {
    let keys = tempfile::tempdir().unwrap();
    let one = secret_file(keys.path(), "one", "the first lan party secret\n");
    let two = secret_file(keys.path(), "two", "a different lan party secret\n");
    let games = tempfile::tempdir().unwrap();
    let src = with_secret("src", &lab().join(BRAVO), Some(&one));
    let c = with_secret("client", games.path(), Some(&two));
    assert_refused(&c, &src);
}

#[test]
fn s41_a_secret_on_one_side_only_is_refused_both_ways() {
    let keys = tempfile::tempdir().unwrap();
    let one = secret_file(keys.path(), "one", "the first lan party secret\n");
    let g1 = tempfile::tempdir().unwrap();
    let g2 = tempfile::tempdir().unwrap();
    let with = with_secret("with", g1.path(), Some(&one));
    let without = with_secret("without", g2.path(), None);
    assert_refused(&without, &with);
    assert_refused(&with, &without);
}

#[test]
fn s41_same_secret_links_and_downloads() {
    let keys = tempfile::tempdir().unwrap();
    // Same secret in two files (one with a trailing newline).
    let a = secret_file(keys.path(), "a", "the first lan party secret\n");
    let b = secret_file(keys.path(), "b", "the first lan party secret");
    let games = tempfile::tempdir().unwrap();
    let src = with_secret("src", &lab().join(BRAVO), Some(&a));
    let c = with_secret("client", games.path(), Some(&b));
    c.connect(&src);
    c.download_ok("bfbc2", &["--no-install"]);
    assert_same_tree(
        &lab().join(BRAVO).join("bfbc2"),
        &games.path().join("bfbc2"),
    );
}

#[test]
fn s41_unusable_secret_files_stop_the_daemon_with_a_clear_error() {
    let keys = tempfile::tempdir().unwrap();
    let open = keys.path().join("open");
    std::fs::write(&open, "readable by everybody on this host\n").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let short = secret_file(keys.path(), "short", "tiny\n");
    let games = tempfile::tempdir().unwrap();
    for (file, why) in [
        (open, "readable by others"),
        (short, "too short"),
        (keys.path().join("missing"), "No such file"),
    ] {
        let out = std::process::Command::new(lanspread_scenarios::bin("lanspreadd"))
            .arg("--games")
            .arg(games.path())
            .arg("--state")
            .arg(keys.path().join("state"))
            .arg("--socket")
            .arg(keys.path().join("s.sock"))
            .args(["--listen", "127.0.0.1:0", "--no-mdns", "--secret-file"])
            .arg(&file)
            .output_within(WAIT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("LAN secret") && err.contains(why), "{err}");
    }
}

/// A raw peer that proves nothing learns nothing: the daemon sends its hello, then closes
/// with SECRET_MISMATCH without a library frame. With the right secret but another peer's
/// id in its hello, it is refused as well (ids stay bound to keys).
#[test]
fn s41_raw_peer_without_the_secret_gets_no_library() {
    let keys = tempfile::tempdir().unwrap();
    let file = secret_file(keys.path(), "k", "the first lan party secret\n");
    let src = with_secret("src", &lab().join(BRAVO), Some(&file));
    crate::util::rt().block_on(async {
        let (id, _ep, conn) = crate::util::raw_client(&src.addr).await;
        let _send = send_hello(&conn, id.peer_id().clone(), None).await;
        // The daemon may close before its hello is read; whatever arrives, no library.
        if let Ok(mut recv) = conn.accept_uni().await {
            while let Ok(Some(m)) = read_frame::<_, Message>(&mut recv).await {
                assert!(
                    matches!(m, Message::Hello(_)),
                    "sent to a peer without the secret: {m:?}"
                );
            }
        }
        let err = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .unwrap();
        assert!(
            matches!(&err, ConnectionError::ApplicationClosed(c)
                if c.error_code == VarInt::from_u32(close_code::SECRET_MISMATCH)),
            "{err:?}"
        );

        // The right secret, but a hello claiming another peer's id.
        let (_id, _ep2, conn) = crate::util::raw_client(&src.addr).await;
        let secret = lanspread_transfer::load_secret(&file).unwrap();
        let proof = secret.prove(&session_binding(&conn).unwrap(), true);
        let victim = lanspread_transfer::Identity::ephemeral().unwrap();
        let _send = send_hello(&conn, victim.peer_id().clone(), Some(proof)).await;
        let err = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .unwrap();
        assert!(
            matches!(&err, ConnectionError::ApplicationClosed(c)
                if c.error_code == VarInt::from_u32(close_code::PROTOCOL_ERROR)),
            "{err:?}"
        );
    });
    assert!(src.peer_ids().is_empty());
    assert!(src.log_tail().contains("TLS key proves"));
}

/// With the right secret and its own id, a raw peer is accepted and gets the library.
#[test]
fn s41_raw_peer_with_the_secret_gets_the_library() {
    let keys = tempfile::tempdir().unwrap();
    let file = secret_file(keys.path(), "k", "the first lan party secret\n");
    let src = with_secret("src", &lab().join(BRAVO), Some(&file));
    crate::util::rt().block_on(async {
        let (id, _ep, conn) = crate::util::raw_client(&src.addr).await;
        let secret = lanspread_transfer::load_secret(&file).unwrap();
        let proof = secret.prove(&session_binding(&conn).unwrap(), true);
        let _send = send_hello(&conn, id.peer_id().clone(), Some(proof)).await;
        let mut recv = conn.accept_uni().await.unwrap();
        let first: Option<Message> = read_frame(&mut recv).await.unwrap();
        assert!(matches!(first, Some(Message::Hello(_))), "{first:?}");
        let next: Option<Message> = read_frame(&mut recv).await.unwrap();
        let Some(Message::Library(games)) = next else {
            panic!("expected the library, got {next:?}");
        };
        assert!(games.iter().any(|g| g.id.as_str() == "bfbc2"));
    });
}
