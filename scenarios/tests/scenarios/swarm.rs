//! Swarm, the partial-copy side (issue 21): a daemon that is downloading a game announces
//! on its announce stream which chunks it holds verified (`Holding`, then `HoldingMore`),
//! serves exactly those chunks at exactly that manifest (`PartialChunks`), and withdraws
//! the partial copy when the download commits (`HoldingGone`, then the game in its
//! `Library`). The observer is a raw protocol peer the downloader links to; the bytes it
//! gets are checked against the source's file.

use std::sync::mpsc;
use std::time::Duration;

use lanspread_catalog::{manifest_digest, GameId, Version};
use lanspread_fixtures::{Content, GameSpec};
use lanspread_proto::{
    encode_frame, unit_count, ChunkHash, ChunkRange, Hello, Holding, Message, PeerRequest,
    PeerResponse, RelPath, PROTOCOL_VERSION, UNIT_SIZE,
};
use lanspread_scenarios::{Node, NodeOptions};
use lanspread_transfer::{make_endpoint, read_frame, Identity, TransportTuning};
use sha2::{Digest, Sha256};

const CHUNKS: u64 = 8;
const FILE: &str = "cod5.eti";

/// What the observer saw and got.
#[derive(Debug, Default)]
struct Seen {
    frames: Vec<Message>,
    /// (chunk, SHA-256 of the bytes served) for a verified chunk asked at once.
    served: Option<(u64, [u8; 32])>,
    /// SHA-256 of the same chunk's rest from its second piece on (a downloader that kept
    /// the first piece asks for that).
    served_rest: Option<[u8; 32]>,
    /// The answers to the requests that must be refused.
    refused: Vec<String>,
    /// The answer to a request for a chunk after the copy was withdrawn.
    after_gone: Option<Result<usize, String>>,
}

fn is_holding(m: &Message) -> Option<&Holding> {
    match m {
        Message::Holding(h) if h.game.as_str() == "cod5" => Some(h),
        _ => None,
    }
}

/// Asks for `ranges` of the partial copy; returns the bytes or the refusal.
async fn ask(
    conn: &quinn::Connection,
    digest: ChunkHash,
    version: Version,
    ranges: Vec<ChunkRange>,
) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let req = PeerRequest::PartialChunks {
        game: GameId::new("cod5").unwrap(),
        version,
        digest,
        ranges,
    };
    send.write_all(&encode_frame(&req).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    match read_frame::<_, PeerResponse>(&mut recv).await {
        Ok(Some(PeerResponse::Chunk { len })) => {
            let mut buf = vec![0u8; len as usize];
            recv.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok(buf)
        }
        Ok(Some(PeerResponse::Refused { reason })) => Err(reason),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// A raw peer: accepts the downloader's link, says hello with an empty library, records
/// every announce frame, and once a chunk is announced verified asks for it (and for
/// things it must be refused). Ends at the downloader's `Library` holding the game.
fn observer() -> (String, mpsc::Receiver<Seen>) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (seen_tx, seen_rx) = mpsc::channel();
    std::thread::spawn(move || {
        crate::util::rt().block_on(async move {
            let id = Identity::ephemeral().unwrap();
            let tuning = TransportTuning::default();
            let ep = make_endpoint(&id, "127.0.0.1:0".parse().unwrap(), &tuning).unwrap();
            let addr = ep.local_addr().unwrap();
            addr_tx.send(addr.to_string()).unwrap();
            let conn = ep.accept().await.unwrap().await.unwrap();
            let mut theirs = conn.accept_uni().await.unwrap();
            let mut ours = conn.open_uni().await.unwrap();
            let hello = Message::Hello(Hello {
                peer_id: id.peer_id().clone(),
                listen: addr,
                protocol: PROTOCOL_VERSION,
                agent: "observer".into(),
                proof: None,
            });
            for m in [hello, Message::Library(Vec::new())] {
                ours.write_all(&encode_frame(&m).unwrap()).await.unwrap();
            }
            let mut seen = Seen::default();
            let mut asked = false;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while let Ok(Ok(Some(m))) =
                tokio::time::timeout_at(deadline, read_frame::<_, Message>(&mut theirs)).await
            {
                let done =
                    matches!(&m, Message::Library(l) if l.iter().any(|g| g.id.as_str() == "cod5"));
                seen.frames.push(m);
                if !asked {
                    asked = ask_when_verified(&conn, &mut seen).await;
                }
                if done {
                    // The partial copy is gone: nothing of it is served any more.
                    if let Some(h) = seen.frames.iter().find_map(is_holding).cloned() {
                        let range = ChunkRange {
                            path: RelPath::new(FILE).unwrap(),
                            offset: 0,
                            len: UNIT_SIZE,
                        };
                        let got = ask(&conn, h.digest, h.version, vec![range]).await;
                        seen.after_gone = Some(got.map(|b| b.len()));
                    }
                    break;
                }
            }
            let _ = seen_tx.send(seen);
            conn.close(0u32.into(), b"bye");
            ep.wait_idle().await;
        });
    });
    (addr_rx.recv().unwrap(), seen_rx)
}

/// Once some chunk is announced verified: asks for it, for half of it, and for it at
/// another manifest. True when it asked.
async fn ask_when_verified(conn: &quinn::Connection, seen: &mut Seen) -> bool {
    let Some(h) = seen.frames.iter().find_map(is_holding).cloned() else {
        return false;
    };
    let mut have = h.chunks.clone();
    for m in &seen.frames {
        if let Message::HoldingMore { chunks, .. } = m {
            for &c in chunks {
                have.insert(c as usize);
            }
        }
    }
    let Some(chunk) = have.iter().next() else {
        return false;
    };
    let chunk = chunk as u64;
    let range = |len| ChunkRange {
        path: RelPath::new(FILE).unwrap(),
        offset: chunk * UNIT_SIZE,
        len,
    };
    match ask(conn, h.digest, h.version, vec![range(UNIT_SIZE)]).await {
        Ok(bytes) => seen.served = Some((chunk, Sha256::digest(&bytes).into())),
        Err(e) => seen.refused.push(format!("the verified chunk itself: {e}")),
    }
    let piece = lanspread_proto::PIECE_SIZE;
    let rest = ChunkRange {
        offset: chunk * UNIT_SIZE + piece,
        ..range(UNIT_SIZE - piece)
    };
    match ask(conn, h.digest, h.version, vec![rest]).await {
        Ok(bytes) => seen.served_rest = Some(Sha256::digest(&bytes).into()),
        Err(e) => seen.refused.push(format!("the verified chunk's rest: {e}")),
    }
    for (digest, len) in [(h.digest, UNIT_SIZE / 2), ([0xEE; 32], UNIT_SIZE)] {
        match ask(conn, digest, h.version, vec![range(len)]).await {
            Ok(_) => seen.refused.push("SERVED".into()),
            Err(e) => seen.refused.push(e),
        }
    }
    true
}

#[test]
fn a_downloading_peer_announces_and_serves_exactly_its_verified_chunks() {
    let size = CHUNKS * lanspread_proto::CHUNK_SIZE;
    let src_dir = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .file(FILE, 0o644, Content::Random { seed: 21, size })
        .write(src_dir.path())
        .unwrap();
    let s = crate::downloads::source("src", src_dir.path());
    let client_dir = tempfile::tempdir().unwrap();
    // Slow enough that chunks verify one after another while the observer asks.
    let c = Node::start_with(
        "client",
        client_dir.path(),
        NodeOptions {
            args: vec!["--max-download-mib-s".into(), "32".into()],
            ..NodeOptions::default()
        },
    );
    let (addr, seen) = observer();
    let out = c.cli(&["connect", &addr]);
    assert_eq!(out.code, 0, "{out:?}");
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    let seen = seen.recv_timeout(Duration::from_secs(150)).unwrap();

    // The holding names the manifest the client validated.
    let h = seen
        .frames
        .iter()
        .find_map(is_holding)
        .expect("a Holding frame");
    let root =
        lanspread_catalog::scan_root(&src_dir.path().join("cod5"), GameId::new("cod5").unwrap());
    let files = lanspread_catalog::HashCache::new().manifest(&root).unwrap();
    assert_eq!(h.digest, manifest_digest(&files.files), "{files:?}");
    let total: u64 = files.files.iter().map(|f| unit_count(f.size)).sum();
    assert_eq!(h.chunks.len() as u64, total);
    let more: usize = seen
        .frames
        .iter()
        .map(|m| match m {
            Message::HoldingMore { chunks, .. } => chunks.len(),
            _ => 0,
        })
        .sum();
    assert!(more > 0, "no HoldingMore: {:?}", seen.frames.len());
    // Withdrawn, then ready: HoldingGone before the Library that holds the game.
    let gone = seen
        .frames
        .iter()
        .position(|m| matches!(m, Message::HoldingGone { game } if game.as_str() == "cod5"));
    let ready = seen.frames.iter().rposition(
        |m| matches!(m, Message::Library(l) if l.iter().any(|g| g.id.as_str() == "cod5")),
    );
    assert!(
        gone.is_some() && gone < ready,
        "gone {gone:?}, ready {ready:?}"
    );

    // The verified chunk it was asked for is the source's bytes.
    let (chunk, sha) = seen.served.expect("a verified chunk served");
    let data = std::fs::read(src_dir.path().join("cod5").join(FILE)).unwrap();
    let start = (chunk * UNIT_SIZE) as usize;
    let want: [u8; 32] = Sha256::digest(&data[start..start + UNIT_SIZE as usize]).into();
    assert_eq!(sha, want, "chunk {chunk}");
    let rest = start + lanspread_proto::PIECE_SIZE as usize;
    let want: [u8; 32] = Sha256::digest(&data[rest..start + UNIT_SIZE as usize]).into();
    assert_eq!(
        seen.served_rest,
        Some(want),
        "chunk {chunk} from its second piece"
    );
    // Half a chunk and another manifest: refused.
    assert_eq!(seen.refused.len(), 2, "{:?}", seen.refused);
    assert!(
        seen.refused[0].contains("not a unit or its rest"),
        "{:?}",
        seen.refused
    );
    assert!(
        seen.refused[1].contains("another manifest"),
        "{:?}",
        seen.refused
    );
    // After HoldingGone the copy is not served as a partial one any more.
    match &seen.after_gone {
        Some(Err(why)) => assert!(why.contains("no partial copy"), "{why}"),
        other => panic!("a chunk of a withdrawn copy: {other:?}"),
    }
}

/// Peer exchange: clients told only the server's address find each other (their links
/// carry each other's listen addresses), `--max-links` bounds what it dials, and
/// `--max-links-per-address` where it dials (every node here is on 127.0.0.1).
#[test]
fn clients_told_only_the_server_link_to_each_other() {
    let empty = |name: &str| {
        let dir = tempfile::tempdir().unwrap();
        let opts = NodeOptions {
            args: vec!["--max-links".into(), "64".into()],
            ..NodeOptions::default()
        };
        (Node::start_with(name, dir.path(), opts), dir)
    };
    let (server, _s) = empty("server");
    let (a, _a) = empty("a");
    let (b, _b) = empty("b");
    let cap_dir = tempfile::tempdir().unwrap();
    // One link at most: the server's; it learns of a and b but dials neither.
    let capped = Node::start_with(
        "capped",
        cap_dir.path(),
        NodeOptions {
            args: vec!["--max-links".into(), "1".into()],
            ..NodeOptions::default()
        },
    );
    // One link per address: the server's, on 127.0.0.1 like a and b.
    let one_dir = tempfile::tempdir().unwrap();
    let one_each = Node::start_with(
        "one-each",
        one_dir.path(),
        NodeOptions {
            args: ["--max-links", "64", "--max-links-per-address", "1"]
                .map(String::from)
                .to_vec(),
            ..NodeOptions::default()
        },
    );
    a.connect(&server);
    b.connect(&server);
    capped.connect(&server);
    one_each.connect(&server);
    let linked = |n: &Node, other: &Node| n.peer_ids().contains(&other.peer_id);
    lanspread_scenarios::wait_for("a and b linked by peer exchange", || {
        (linked(&a, &b) && linked(&b, &a)).then_some(())
    });
    // The capped node learned of a and b too but dialled neither (they may dial it: the
    // cap bounds what peer exchange dials, not what others do).
    std::thread::sleep(Duration::from_secs(2));
    const PEX: &str = "linked a peer learned by peer exchange";
    assert!(a.log().contains(PEX) || b.log().contains(PEX));
    assert!(!capped.log().contains(PEX), "{}", capped.log_tail());
    assert!(!one_each.log().contains(PEX), "{}", one_each.log_tail());
    assert_eq!(
        one_each.peer_ids(),
        std::slice::from_ref(&server.peer_id),
        "nor were they let in"
    );
    assert!(linked(&a, &server) && linked(&b, &server));
}
