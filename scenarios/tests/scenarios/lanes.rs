//! Several transfer threads (`--transfer-threads N`): a download opens N data connections
//! to each source, each driven by its own thread on both sides, and stripes the chunk
//! requests over them. Data connections pass the same checks as links (LAN secret proof
//! bound to the connection, id bound to the key) before any request is served.

use std::path::Path;
use std::time::{Duration, Instant};

use lanspread_catalog::{GameId, Version};
use lanspread_fixtures::{Content, GameSpec};
use lanspread_proto::{
    close_code, encode_frame, Hello, Message, PeerRequest, PeerResponse, PROTOCOL_VERSION,
};
use lanspread_scenarios::{assert_same_tree, Node};
use lanspread_transfer::{
    connect_data, data_client_config, make_endpoint, read_frame, session_binding, write_frame,
    Identity, TransportTuning,
};
use quinn::{ConnectionError, VarInt};

const CHUNK: u64 = lanspread_proto::CHUNK_SIZE;
const THREADS: usize = 3;

fn node(name: &str, games: &Path, secret: &Path) -> Node {
    node_with(name, games, secret, THREADS)
}

fn node_with(name: &str, games: &Path, secret: &Path, threads: usize) -> Node {
    let args = [
        "--transfer-threads",
        &threads.to_string(),
        "--secret-file",
        &secret.display().to_string(),
    ];
    crate::util::node_with_args(name, games, &args)
}

fn secret(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("secret");
    std::fs::write(&p, "the lanes lan party secret\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// The `requests=N` of every "data connection ended" line of a log.
fn data_connection_requests(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("data connection ended"))
        .filter_map(|l| {
            let v = l.split("requests=").nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect()
}

/// A lab with `cod5`: one `.eti` of `size` random bytes and `small` files of 3000 bytes.
fn game(size: u64, small: usize) -> tempfile::TempDir {
    let lab = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .file("cod5.eti", 0o644, Content::Random { seed: 7, size })
        .with_small_files(11, small, 3000)
        .write(lab.path())
        .unwrap();
    lab
}

/// Three big chunks and batches of small files.
fn mixed_game() -> tempfile::TempDir {
    game(3 * CHUNK + 100, 200)
}

/// Big chunks and batches of small files travel over three data connections, each of
/// which served requests; the tree is identical and the connections close with the
/// download.
#[test]
fn lanes_carry_a_download_over_data_connections() {
    let keys = tempfile::tempdir().unwrap();
    let key = secret(keys.path());
    let lab = mixed_game();
    let games = tempfile::tempdir().unwrap();
    let src = node("src", lab.path(), &key);
    let c = node("client", games.path(), &key);
    c.connect(&src);
    c.download_ok("cod5", &["--no-install"]);
    assert_same_tree(&lab.path().join("cod5"), &games.path().join("cod5"));
    assert!(
        c.log().contains(&format!("lanes={THREADS}")),
        "{}",
        c.log_tail()
    );
    // Every data connection carried requests (stripes), and all ended with the download.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = data_connection_requests(&src.log());
    while served.len() < THREADS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        served = data_connection_requests(&src.log());
    }
    assert_eq!(served.len(), THREADS, "{}", src.log_tail());
    assert!(served.iter().all(|&n| n > 0), "{served:?}");
    // The link stays up after its data connections closed.
    assert_eq!(c.peer_ids(), vec![src.peer_id.clone()]);
}

/// With one transfer thread on the client, chunks go over the link itself: no data
/// connection is opened, and the download is the same.
#[test]
fn lanes_one_thread_uses_the_link() {
    let keys = tempfile::tempdir().unwrap();
    let key = secret(keys.path());
    let lab = mixed_game();
    let games = tempfile::tempdir().unwrap();
    let src = node_with("src", lab.path(), &key, THREADS);
    let c = node_with("client", games.path(), &key, 1);
    c.connect(&src);
    c.download_ok("cod5", &["--no-install"]);
    assert_same_tree(&lab.path().join("cod5"), &games.path().join("cod5"));
    assert!(!c.log().contains("data connections open"), "{}", c.log());
    assert!(
        !src.log().contains("serving a data connection"),
        "{}",
        src.log()
    );
}

/// A data connection is refused before any request is served when its hello lacks the
/// LAN secret proof, or proves the secret but claims another peer's id.
#[test]
fn lanes_data_connections_are_checked_like_links() {
    let keys = tempfile::tempdir().unwrap();
    let key = secret(keys.path());
    let lab = game(4096, 0);
    let src = node("src", lab.path(), &key);
    let lan = lanspread_transfer::load_secret(&key).unwrap();
    crate::util::rt().block_on(async {
        let id = Identity::ephemeral().unwrap();
        let other = Identity::ephemeral().unwrap();
        let tuning = TransportTuning::default();
        let ep = make_endpoint(&id, "127.0.0.1:0".parse().unwrap(), &tuning).unwrap();
        for (claimed, with_proof, code) in [
            (&id, false, close_code::SECRET_MISMATCH),
            (&other, true, close_code::PROTOCOL_ERROR),
        ] {
            let cfg = data_client_config(&id, &tuning).unwrap();
            let addr = src.addr.parse().unwrap();
            let (conn, _) = connect_data(&ep, cfg, addr, Duration::from_secs(5))
                .await
                .unwrap();
            let proof = with_proof.then(|| lan.prove(&session_binding(&conn).unwrap(), true));
            let hello = Message::Hello(Hello {
                peer_id: claimed.peer_id().clone(),
                listen: "127.0.0.1:1".parse().unwrap(),
                protocol: PROTOCOL_VERSION,
                agent: "raw".into(),
                proof,
            });
            let mut announce = conn.open_uni().await.unwrap();
            announce
                .write_all(&encode_frame(&hello).unwrap())
                .await
                .unwrap();
            // A request right behind the hello gets no answer.
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let ask = PeerRequest::Files {
                game: GameId::new("cod5").unwrap(),
                version: Version::parse("20250101").unwrap(),
            };
            let _ = write_frame(&mut send, &ask).await;
            let _ = send.finish();
            let answer = read_frame::<_, PeerResponse>(&mut recv).await;
            assert!(answer.is_err(), "served before the checks: {answer:?}");
            let err = tokio::time::timeout(Duration::from_secs(10), conn.closed())
                .await
                .unwrap();
            assert!(
                matches!(&err, ConnectionError::ApplicationClosed(c)
                    if c.error_code == VarInt::from_u32(code)),
                "{err:?}"
            );
        }
    });
    // Nothing registered: a data connection is never a link.
    assert!(src.peer_ids().is_empty());
    let log = src.log();
    assert_eq!(log.matches("refused a data connection").count(), 2, "{log}");
    assert!(!log.contains("serving a data connection"), "{log}");
}

/// The only source is restarted in the middle of a download (SIGKILL, then started again
/// on its address, as a service manager does) while the client runs three transfer
/// threads: once the source is back, the client opens its data connections to it again
/// and the rest comes over them — not over the link alone to the end (one thread's worth
/// of a 16-core file server), as before.
#[test]
fn lanes_are_opened_again_to_a_source_back_from_a_restart() {
    let keys = tempfile::tempdir().unwrap();
    let key = secret(keys.path());
    let lab = game(6 * CHUNK, 0);
    // Slow enough to be in the middle when it goes (192 MiB at 24 MiB/s, a limit on the
    // sender).
    let args = [
        "--transfer-threads",
        "3",
        "--secret-file",
        &key.display().to_string(),
        "--max-upload-mib-s",
        "24",
    ];
    let mut src = crate::util::node_with_args("src", lab.path(), &args);
    let games = tempfile::tempdir().unwrap();
    let c = node("client", games.path(), &key);
    c.connect(&src);
    c.download_ok("cod5", &["--no-install", "--detach"]);
    // Early: the sender's limit is shared by the 16 units in flight, so a whole chunk
    // verifies only when most of those are nearly done; the source must go while more
    // is left than the link alone may have in flight.
    lanspread_scenarios::wait_for("client: 8 MiB received", || {
        let op = c.json(&["status"])["operations"].get(0).cloned()?;
        (op["done_bytes"].as_u64()? >= 8 << 20).then_some(())
    });
    assert!(
        c.log().contains(&format!("lanes={THREADS}")),
        "{}",
        c.log_tail()
    );
    src.kill();
    lanspread_scenarios::wait_for("client: the download waits for its source", || {
        let op = c.json(&["status"])["operations"].get(0).cloned()?;
        (op["state"] == "waiting").then_some(())
    });
    let before = src.log().len();
    src.restart_at_same_address();
    let end = lanspread_scenarios::wait_for("client: the download ends", || {
        c.game_events("cod5")
            .into_iter()
            .find(|e| e["event"] == "download-finished" || e["event"] == "download-failed")
    });
    assert_eq!(end["event"], "download-finished", "{end}");
    assert_same_tree(&lab.path().join("cod5"), &games.path().join("cod5"));
    let events = c.game_events("cod5");
    let count = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    assert_eq!(count("download-begin"), 1, "one download: {events:?}");
    assert_eq!(count("download-failed"), 0, "{events:?}");
    let log = c.log();
    assert!(
        log.contains("a data connection opened again"),
        "{}",
        c.log_tail()
    );
    // The restarted source served chunks over data connections of the same download.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = data_connection_requests(&src.log()[before..]);
    while served.iter().all(|&n| n == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        served = data_connection_requests(&src.log()[before..]);
    }
    assert!(
        served.iter().any(|&n| n > 0),
        "no data connection of the restarted source served: {served:?}{}",
        src.log_tail()
    );
}
