//! S40, the source side: a raw protocol peer advertises a game and then lies in its
//! descriptors (escaping paths, reserved names, duplicates, huge counts and sizes,
//! malformed postcard, oversized frames) or in its chunks (longer, shorter, never
//! ending, wrong bytes). Each download is refused with a logged reason, nothing is
//! written outside the game root, no sentinel is committed, and the daemon carries on.

use std::path::Path;
use std::time::Duration;

use lanspread_catalog::{GameId, Version};
use lanspread_fixtures::BRAVO;
use lanspread_proto::{encode_frame, GameAd, Hello, Message, PeerRequest, PROTOCOL_VERSION};
use lanspread_scenarios::{lab, wait_for, Node, NodeOptions};
use lanspread_transfer::{
    is_data_connection, make_endpoint, read_frame, Identity, TransportTuning,
};
use serde::Serialize;

const VERSION: &str = "20250101";
/// Above the client's batching threshold (1 MiB): the data file goes in a request of its
/// own, so each lie fails the data chunk (the sentinel is answered honestly).
const DATA_LEN: usize = 2 << 20;

/// Same wire layout as `FileManifest`, but the path is any string.
#[derive(Serialize, Clone)]
struct RawFile {
    path: String,
    size: u64,
    mode: u32,
    chunks: Vec<[u8; 32]>,
    pieces: Vec<[u8; 32]>,
}

impl RawFile {
    /// A file with these bytes: its piece hashes, and the chunk hashes over them.
    fn of(path: &str, bytes: &[u8]) -> Self {
        let pieces: Vec<[u8; 32]> = bytes
            .chunks(lanspread_proto::PIECE_SIZE as usize)
            .map(piece)
            .collect();
        Self {
            path: path.into(),
            size: bytes.len() as u64,
            mode: 0o644,
            chunks: lanspread_proto::chunk_hashes(&pieces),
            pieces,
        }
    }
}

/// Same wire layout as `PeerResponse` (`Files`: a `Manifest`'s files, then its empty
/// folders).
#[derive(Serialize)]
enum RawResponse {
    Files(Vec<RawFile>, Vec<String>),
    Chunk { len: u64 },
}

#[derive(Clone)]
enum Lie {
    /// Answer the manifest request with these frame bytes.
    Manifest(Vec<u8>),
    /// A valid manifest; chunk requests get this treatment.
    Chunk(ChunkLie),
    /// Takes the manifest request and never answers it (the stream stays open).
    SilentManifest,
}

#[derive(Clone, Copy, Debug)]
enum ChunkLie {
    AnnounceMore,
    AnnounceLess,
    SendShort,
    SendLong,
    Stall,
    WrongBytes,
    /// No lie in the bytes; data connections (`DATA_ALPN`) are closed at once, like a
    /// source that cannot take them.
    HonestWithoutDataConnections,
    /// No lie in the bytes; the first data connection that asks for the data file is
    /// closed instead of answered (as one lost to an idle timeout on a congested link),
    /// while the link stays up.
    LosesOneDataConnection,
}

fn data() -> Vec<u8> {
    (0..DATA_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

/// A piece's hash as the protocol has it (BLAKE3), from the crate itself.
fn piece(b: &[u8]) -> [u8; 32] {
    blake3::hash(b).into()
}

fn honest_files() -> Vec<RawFile> {
    vec![
        RawFile::of("version.ini", VERSION.as_bytes()),
        RawFile::of("cod5.eti", &data()),
    ]
}

fn manifest_frame(files: Vec<RawFile>) -> Vec<u8> {
    with_folders(files, &[])
}

fn with_folders(files: Vec<RawFile>, folders: &[&str]) -> Vec<u8> {
    let folders = folders.iter().map(|d| d.to_string()).collect();
    encode_frame(&RawResponse::Files(files, folders)).unwrap()
}

fn with_extra(path: &str) -> Lie {
    let mut files = honest_files();
    files.push(RawFile::of(path, b"evil"));
    Lie::Manifest(manifest_frame(files))
}

/// Runs a lying source on its own thread until the returned sender is dropped.
fn lying_source(lie: Lie) -> (String, std::sync::mpsc::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        crate::util::rt().block_on(async move {
            let id = Identity::ephemeral().unwrap();
            let ep = make_endpoint(
                &id,
                "127.0.0.1:0".parse().unwrap(),
                &TransportTuning::default(),
            )
            .unwrap();
            let addr = ep.local_addr().unwrap();
            addr_tx.send(addr.to_string()).unwrap();
            let lost_one = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let serve = async {
                while let Some(inc) = ep.accept().await {
                    let Ok(conn) = inc.await else { continue };
                    let honest = matches!(lie, Lie::Chunk(ChunkLie::HonestWithoutDataConnections));
                    if honest && is_data_connection(&conn) {
                        conn.close(1u32.into(), b"no data connections here");
                        continue;
                    }
                    tokio::spawn(serve_conn(
                        conn,
                        id.peer_id().clone(),
                        addr,
                        lie.clone(),
                        lost_one.clone(),
                    ));
                }
            };
            let stop = tokio::task::spawn_blocking(move || {
                let _ = stop_rx.recv();
            });
            tokio::select! {
                _ = serve => {}
                _ = stop => {}
            }
            ep.close(0u32.into(), b"done");
            ep.wait_idle().await;
        });
    });
    (addr_rx.recv().unwrap(), stop_tx)
}

async fn serve_conn(
    conn: quinn::Connection,
    id: lanspread_proto::PeerId,
    addr: std::net::SocketAddr,
    lie: Lie,
    lost_one: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let data_conn = is_data_connection(&conn);
    let Ok(mut theirs) = conn.accept_uni().await else {
        return;
    };
    let _: Option<Message> = read_frame(&mut theirs).await.ok().flatten();
    let Ok(mut ours) = conn.open_uni().await else {
        return;
    };
    let hello = Message::Hello(Hello {
        peer_id: id,
        listen: addr,
        protocol: PROTOCOL_VERSION,
        agent: "liar".into(),
        proof: None,
    });
    let lib = Message::Library(vec![GameAd {
        id: GameId::new("cod5").unwrap(),
        version: Version::parse(VERSION).unwrap(),
        size: (DATA_LEN + VERSION.len()) as u64,
    }]);
    for m in [hello, lib] {
        if ours.write_all(&encode_frame(&m).unwrap()).await.is_err() {
            return;
        }
    }
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let lie = lie.clone();
        let (conn, lost_one) = (conn.clone(), lost_one.clone());
        tokio::spawn(async move {
            let Ok(Some(req)) = read_frame::<_, PeerRequest>(&mut recv).await else {
                return;
            };
            if let (
                Lie::Chunk(ChunkLie::LosesOneDataConnection),
                PeerRequest::Chunks { ranges, .. },
            ) = (&lie, &req)
            {
                let data_file = ranges.iter().any(|r| r.path.as_str() != "version.ini");
                if data_conn
                    && data_file
                    && !lost_one.swap(true, std::sync::atomic::Ordering::SeqCst)
                {
                    conn.close(0u32.into(), b"lost");
                    return;
                }
            }
            let out: Vec<u8> = match (req, &lie) {
                (PeerRequest::Files { .. }, Lie::Manifest(frame)) => frame.clone(),
                (PeerRequest::Files { .. }, Lie::Chunk(_)) => manifest_frame(honest_files()),
                (PeerRequest::Files { .. }, Lie::SilentManifest) => {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    return;
                }
                (PeerRequest::Chunks { ranges, .. }, Lie::Chunk(how)) => {
                    // Ranges are answered in order (the client batches the small data
                    // file with the sentinel); every data range carries the lie.
                    let mut out = Vec::new();
                    for r in ranges {
                        let (len, sentinel) = (r.len, r.path.as_str() == "version.ini");
                        if matches!(how, ChunkLie::Stall) && !sentinel {
                            // The answer, then nothing: keep the stream open for a minute.
                            out.extend(encode_frame(&RawResponse::Chunk { len }).unwrap());
                            let _ = send.write_all(&out).await;
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        let mut body = if sentinel {
                            VERSION.as_bytes().to_vec()
                        } else {
                            data()[r.offset as usize..(r.offset + len) as usize].to_vec()
                        };
                        let mut announced = len;
                        match (how, sentinel) {
                            (_, true)
                            | (ChunkLie::Stall, _)
                            | (ChunkLie::HonestWithoutDataConnections, _)
                            | (ChunkLie::LosesOneDataConnection, _) => {}
                            (ChunkLie::AnnounceMore, _) => announced += 1,
                            (ChunkLie::AnnounceLess, _) => announced -= 1,
                            (ChunkLie::SendShort, _) => body.truncate(body.len() / 2),
                            // After the last range (inside the answer the extra bytes
                            // would be read as the next range's header).
                            (ChunkLie::SendLong, _) => {}
                            (ChunkLie::WrongBytes, _) => body[0] ^= 1,
                        }
                        out.extend(encode_frame(&RawResponse::Chunk { len: announced }).unwrap());
                        out.extend_from_slice(&body);
                    }
                    if matches!(how, ChunkLie::SendLong) {
                        out.extend_from_slice(b"extra");
                    }
                    out
                }
                (PeerRequest::Chunks { .. }, Lie::Manifest(_) | Lie::SilentManifest) => return,
                // This source never announces a partial copy, and its client downloads
                // alone (offers are made only in a swarm): nobody asks these.
                (PeerRequest::PartialChunks { .. } | PeerRequest::Offer { .. }, _) => return,
            };
            let _ = send.write_all(&out).await;
            let _ = send.finish();
            let _ = send.stopped().await;
        });
    }
}

/// Nothing outside `games/cod5`, and no committed sentinel in it.
fn assert_contained(games: &Path, outside: &Path) {
    for e in std::fs::read_dir(games).unwrap().flatten() {
        assert_eq!(e.file_name(), "cod5", "written outside the root: {e:?}");
    }
    assert!(
        !games.join("cod5/version.ini").exists(),
        "sentinel committed"
    );
    for p in ["escape.eti", "x"] {
        assert!(
            !outside.join(p).exists(),
            "{p} written next to the games dir"
        );
    }
    assert!(!games.join("cod5/local").exists());
}

#[test]
fn s40_lying_sources_are_refused_and_contained() {
    let outer = tempfile::tempdir().unwrap();
    let games = outer.path().join("games");
    std::fs::create_dir(&games).unwrap();
    let abs = outer.path().join("abs.eti");
    let c = Node::start_with(
        "client",
        &games,
        NodeOptions {
            env: vec![("LANSPREAD_STALL_TIMEOUT_MS".into(), "1500".into())],
            ..NodeOptions::default()
        },
    );
    let mut many = honest_files();
    many.extend((0..100_001).map(|i| RawFile::of(&format!("f{i}"), b"")));
    let mut dup = honest_files();
    dup.push(honest_files()[1].clone());
    // 480 GiB: about the most a manifest frame (16 MiB) can describe with a hash per MiB.
    let mut huge = honest_files();
    huge[1].size = 480 << 30;
    huge[1].pieces = vec![[0u8; 32]; 480 << 10];
    huge[1].chunks = lanspread_proto::chunk_hashes(&huge[1].pieces);
    let mut garbage = 40u32.to_le_bytes().to_vec();
    garbage.extend((0..40u8).map(|i| i.wrapping_mul(97) | 0x80));
    let cases: Vec<(&str, Lie, &str)> = vec![
        ("dot-dot", with_extra("../escape.eti"), "no manifest"),
        ("nested dot-dot", with_extra("a/../../x"), "no manifest"),
        ("absolute", with_extra(abs.to_str().unwrap()), "no manifest"),
        ("local/", with_extra("local/x.exe"), "no manifest"),
        (
            ".lanspread",
            with_extra(".lanspread/pieces.json"),
            "no manifest",
        ),
        (
            "duplicate",
            Lie::Manifest(manifest_frame(dup)),
            "listed twice",
        ),
        // More than a manifest may list does not even decode.
        (
            "too many files",
            Lie::Manifest(manifest_frame(many)),
            "no manifest",
        ),
        (
            "folder escapes",
            Lie::Manifest(with_folders(honest_files(), &["../up"])),
            "no manifest",
        ),
        (
            "folder in local/",
            Lie::Manifest(with_folders(honest_files(), &["local/x"])),
            "no manifest",
        ),
        (
            "folder over a file",
            Lie::Manifest(with_folders(honest_files(), &["version.ini/x"])),
            "both a file and a folder",
        ),
        (
            "huge size",
            Lie::Manifest(manifest_frame(huge)),
            "not enough free space",
        ),
        ("malformed postcard", Lie::Manifest(garbage), "no manifest"),
        (
            "oversized frame",
            Lie::Manifest(u32::MAX.to_le_bytes().to_vec()),
            "exceeds",
        ),
        (
            "announces more",
            Lie::Chunk(ChunkLie::AnnounceMore),
            "unexpected answer",
        ),
        (
            "announces less",
            Lie::Chunk(ChunkLie::AnnounceLess),
            "unexpected answer",
        ),
        (
            "short stream",
            Lie::Chunk(ChunkLie::SendShort),
            "stream ended after",
        ),
        (
            "long stream",
            Lie::Chunk(ChunkLie::SendLong),
            "more bytes than announced",
        ),
        ("never ends", Lie::Chunk(ChunkLie::Stall), "stalled"),
        (
            "wrong bytes",
            Lie::Chunk(ChunkLie::WrongBytes),
            "hash mismatch",
        ),
    ];
    for (name, lie, why) in cases {
        let logged = c.log().len();
        let (addr, stop) = lying_source(lie);
        c.json(&["connect", &addr]);
        let out = c.download("cod5", &["--no-install"]);
        assert_eq!(out.code, 1, "{name}: {out:?}");
        let log = c.log();
        assert!(
            log[logged..].contains(why),
            "{name}: expected {why:?} in the log:\n{}",
            &log[logged..]
        );
        assert_contained(&games, outer.path());
        assert!(!abs.exists(), "{name}: absolute path written");
        drop(stop);
        wait_for(&format!("{name}: liar gone"), || {
            c.peer_ids().is_empty().then_some(())
        });
        // Still answering.
        assert!(c.json(&["status"])["operations"]
            .as_array()
            .unwrap()
            .is_empty());
    }
    // And still downloading from honest peers.
    let b = Node::start("bravo", &lab().join(BRAVO));
    c.connect(&b);
    c.download_ok("bfbc2", &["--no-install"]);
}

/// A source that closes every data connection: the client (3 transfer threads) says so
/// and downloads over the link instead; the bytes are the source's.
#[test]
fn lanes_fall_back_to_the_link_when_data_connections_fail() {
    let games = tempfile::tempdir().unwrap();
    let c = crate::util::node_with_args("client", games.path(), &["--transfer-threads", "3"]);
    let (addr, _stop) = lying_source(Lie::Chunk(ChunkLie::HonestWithoutDataConnections));
    c.json(&["connect", &addr]);
    c.download_ok("cod5", &["--no-install"]);
    let root = games.path().join("cod5");
    assert_eq!(std::fs::read(root.join("cod5.eti")).unwrap(), data());
    assert_eq!(
        std::fs::read_to_string(root.join("version.ini")).unwrap(),
        VERSION
    );
    let log = c.log();
    assert!(
        log.contains("no data connection: chunks go over the link"),
        "{log}"
    );
    assert!(!log.contains("data connections open"), "{log}");
}

/// A source loses one data connection in the middle of a download while its link stays
/// up (what a congested 50 Mbit link did to 8 clients at once: the idle timeout): the
/// chunk is retried on another lane and the download finishes from the only source.
/// Counted as the source's loss before, it failed with "no eligible source left".
#[test]
fn a_lost_data_connection_is_a_stall_not_the_source_lost() {
    let games = tempfile::tempdir().unwrap();
    let c = crate::util::node_with_args("client", games.path(), &["--transfer-threads", "3"]);
    let (addr, _stop) = lying_source(Lie::Chunk(ChunkLie::LosesOneDataConnection));
    c.json(&["connect", &addr]);
    c.download_ok("cod5", &["--no-install"]);
    let root = games.path().join("cod5");
    assert_eq!(std::fs::read(root.join("cod5.eti")).unwrap(), data());
    let log = c.log();
    assert!(log.contains("a data connection was lost"), "{log}");
}

/// One of three sources takes the manifest request and never answers. The two that agree
/// settle the vote whatever the third would say, so after a short grace the download goes
/// on without it instead of waiting out the manifest timeout (minutes): it finishes within
/// the harness's wait, from the two, and the log says why the third is not a source.
#[test]
fn a_source_that_never_sends_its_manifest_does_not_hold_the_download() {
    let games = tempfile::tempdir().unwrap();
    let c = crate::util::node_with_args("client", games.path(), &["--transfer-threads", "1"]);
    let honest = [
        lying_source(Lie::Chunk(ChunkLie::HonestWithoutDataConnections)),
        lying_source(Lie::Chunk(ChunkLie::HonestWithoutDataConnections)),
    ];
    let (silent, _stop) = lying_source(Lie::SilentManifest);
    for addr in honest.iter().map(|(a, _)| a).chain([&silent]) {
        c.json(&["connect", addr]);
    }
    wait_for("all three advertise cod5", || {
        let rows = crate::util::remote_rows(&c.json(&["list-games"]));
        (rows.get("cod5").map(|r| r.1) == Some(3)).then_some(())
    });
    let out = std::thread::scope(|s| {
        let download = s.spawn(|| c.download("cod5", &["--no-install"]));
        c.wait_event("download-finished", |e| e["game_id"] == "cod5");
        download.join().unwrap()
    });
    assert_eq!(out.code, 0, "{out:?}{}", c.log_tail());
    let root = games.path().join("cod5");
    assert_eq!(std::fs::read(root.join("cod5.eti")).unwrap(), data());
    let got = c.events_named("got-game-files");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["sources"].as_array().unwrap().len(), 2, "{got:?}");
    let log = c.log();
    assert!(
        log.contains("no manifest 5s after the others settled the vote"),
        "{log}"
    );
}
