//! S12 end to end: a raw protocol client asks a source for what the gates must refuse.

use std::time::Duration;

use lanspread_catalog::{GameId, RelPath, Version};
use lanspread_fixtures::{Content, GameSpec};
use lanspread_proto::{
    close_code, encode_frame, ChunkRange, Hello, Message, PeerRequest, PeerResponse, MAX_RANGES,
    PROTOCOL_VERSION,
};
use lanspread_scenarios::Node;
use lanspread_transfer::{read_frame, write_frame};
use quinn::{Connection, ConnectionError, VarInt};

async fn raw_peer(addr: &str) -> (Connection, quinn::Endpoint) {
    let (id, ep, conn) = crate::util::raw_client(addr).await;
    let mut announce = conn.open_uni().await.unwrap();
    let hello = Message::Hello(Hello {
        peer_id: id.peer_id().clone(),
        listen: ep.local_addr().unwrap(),
        protocol: PROTOCOL_VERSION,
        agent: "raw".into(),
        proof: None,
    });
    write_frame(&mut announce, &hello).await.unwrap();
    write_frame(&mut announce, &Message::Library(Vec::new()))
        .await
        .unwrap();
    // Keep the announce stream open: finishing it would end the link.
    std::mem::forget(announce);
    (conn, ep)
}

async fn ask(conn: &Connection, req: &PeerRequest) -> PeerResponse {
    let answer = async {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        write_frame(&mut send, req).await.unwrap();
        send.finish().unwrap();
        read_frame(&mut recv).await.unwrap().unwrap()
    };
    tokio::time::timeout(lanspread_scenarios::WAIT, answer)
        .await
        .expect("an answer within WAIT")
}

/// Every answer frame of a request, each `Chunk` with the bytes that followed it.
async fn ask_all(conn: &Connection, req: &PeerRequest) -> Vec<(PeerResponse, Vec<u8>)> {
    let answers = async {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        write_frame(&mut send, req).await.unwrap();
        send.finish().unwrap();
        let mut out = Vec::new();
        while let Some(frame) = read_frame::<_, PeerResponse>(&mut recv).await.unwrap() {
            let mut body = Vec::new();
            if let PeerResponse::Chunk { len } = frame {
                body = vec![0; len as usize];
                recv.read_exact(&mut body).await.unwrap();
            }
            out.push((frame, body));
        }
        out
    };
    tokio::time::timeout(lanspread_scenarios::WAIT, answers)
        .await
        .expect("every answer within WAIT")
}

/// Sends `frame` as a request from a fresh raw peer: nothing may be served, and the
/// source must close the connection as a protocol error.
async fn disconnected_for(addr: &str, frame: &[u8], what: &str) {
    let (conn, _ep) = raw_peer(addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(frame).await.unwrap();
    send.finish().unwrap();
    let got: Result<Option<PeerResponse>, _> = read_frame(&mut recv).await;
    assert!(
        !matches!(got, Ok(Some(PeerResponse::Chunk { .. }))),
        "{what}: served"
    );
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(&closed, ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(close_code::PROTOCOL_ERROR)),
        "{what}: {closed:?}"
    );
}

fn refused(r: &PeerResponse, needle: &str) -> bool {
    matches!(r, PeerResponse::Refused { reason } if reason.contains(needle))
}

#[test]
fn s12_serve_gates() {
    let games = tempfile::tempdir().unwrap();
    GameSpec::new("ggoo", "20250301")
        .with_archive(1, &[5000])
        .write(games.path())
        .unwrap();
    GameSpec::new("cnc4", "2025")
        .with_archive(2, &[100])
        .write(games.path())
        .unwrap();
    GameSpec::new("mystery-game", "20250101")
        .file("x.bin", 0o644, Content::Bytes(vec![1]))
        .write(games.path())
        .unwrap();
    std::fs::create_dir_all(games.path().join("ggoo/local")).unwrap();
    std::fs::write(games.path().join("ggoo/local/secret.txt"), b"installed").unwrap();
    let n = Node::start("source", games.path());
    crate::util::rt().block_on(async {
        let (conn, _ep) = raw_peer(&n.addr).await;
        let g = |s: &str| GameId::new(s).unwrap();
        let v = |s: &str| Version::parse(s).unwrap();
        let files = |game: &str, version: &str| PeerRequest::Files {
            game: g(game),
            version: v(version),
        };
        let range = |path: &str, offset: u64, len: u64| ChunkRange {
            path: RelPath::new(path).unwrap(),
            offset,
            len,
        };
        let chunks = |ranges: Vec<ChunkRange>| PeerRequest::Chunks {
            game: g("ggoo"),
            version: v("20250301"),
            ranges,
        };
        let chunk = |path: &str, offset: u64, len: u64| chunks(vec![range(path, offset, len)]);
        // Allowed: the manifest of a ready root, and a chunk of it.
        let PeerResponse::Files(m) = ask(&conn, &files("ggoo", "20250301")).await else {
            panic!("ggoo refused")
        };
        assert!(
            m.files
                .iter()
                .all(|f| !f.path.as_str().starts_with("local")),
            "local/ advertised"
        );
        let eti = m
            .files
            .iter()
            .find(|f| f.path.as_str() == "ggoo.eti")
            .unwrap()
            .size;
        assert_eq!(
            ask(&conn, &chunk("ggoo.eti", 0, 10)).await,
            PeerResponse::Chunk { len: 10 }
        );
        // Refused: not in the catalog, no valid sentinel, wrong version, not a listed file,
        // past the end of the file.
        for (request, why) in [
            (files("mystery-game", "20250101"), "not in the catalog"),
            (files("cnc4", "20250101"), "not ready"),
            (files("ggoo", "20250101"), "version"),
            (files("bf1942", "20250101"), "not here"),
            (chunk("nope.bin", 0, 1), "no file"),
            (chunk("ggoo.eti", eti - 1, 2), "past the end"),
        ] {
            let got = ask(&conn, &request).await;
            assert!(refused(&got, why), "{request:?}: {got:?}");
        }
        // Several ranges are answered in order; the first refused one ends the answer.
        let batch = chunks(vec![
            range("ggoo.eti", 0, 3),
            range("version.ini", 0, 8),
            range("nope.bin", 0, 1),
            range("ggoo.eti", 3, 1),
        ]);
        let answer = ask_all(&conn, &batch).await;
        assert_eq!(answer.len(), 3, "{answer:?}");
        assert_eq!(answer[0].0, PeerResponse::Chunk { len: 3 });
        assert_eq!(
            answer[1],
            (PeerResponse::Chunk { len: 8 }, b"20250301".to_vec())
        );
        assert!(refused(&answer[2].0, "no file"), "{answer:?}");
        // No ranges, or more than MAX_RANGES, break the protocol.
        for count in [0, MAX_RANGES + 1] {
            let frame = encode_frame(&chunks(vec![range("ggoo.eti", 0, 1); count])).unwrap();
            disconnected_for(&n.addr, &frame, &format!("{count} ranges")).await;
        }
        // Paths under local/ or .lanspread*, or escaping the root, cannot even be decoded:
        // the request is malformed and the peer is disconnected.
        #[derive(serde::Serialize)]
        enum RawRequest {
            #[allow(dead_code)]
            Files(String, String),
            Chunks(String, String, Vec<(String, u64, u64)>),
        }
        for bad in [
            "local/secret.txt",
            ".lanspread/pieces.json",
            "../ggoo/version.ini",
            "/etc/passwd",
        ] {
            let frame = encode_frame(&RawRequest::Chunks(
                "ggoo".into(),
                "20250301".into(),
                vec![(bad.into(), 0, 1)],
            ))
            .unwrap();
            disconnected_for(&n.addr, &frame, bad).await;
        }
    });
    // The source is still healthy.
    assert_eq!(n.json(&["status"])["peer_id"], n.peer_id.as_str());
}

/// Symlinks inside a served root never export files from outside it: a root holding one
/// is not offered (and says why), chunk requests for such links are refused, and a file
/// swapped for such a symlink after the scan is refused when it is opened.
#[test]
fn symlinks_in_a_served_root_never_export_outside_files() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("shadow");
    std::fs::write(&secret, vec![b'S'; 6000]).unwrap();
    std::fs::create_dir(outside.path().join("dir")).unwrap();
    std::fs::write(outside.path().join("dir/inner.txt"), b"outside").unwrap();
    let games = tempfile::tempdir().unwrap();
    GameSpec::new("ggoo", "20250301")
        .with_archive(1, &[5000])
        .file("notes.txt", 0o644, Content::Bytes(vec![b'n'; 6000]))
        .write(games.path())
        .unwrap();
    let root = games.path().join("ggoo");
    symlink(&secret, root.join("leak.txt")).unwrap();
    symlink(outside.path().join("dir"), root.join("dirlink")).unwrap();
    symlink(root.join("notes.txt"), root.join("alias.txt")).unwrap();
    let n = Node::start("source", games.path());
    let row = n.local_row("ggoo").unwrap();
    assert_eq!(row["availability"], "NotReady", "{row}");
    assert!(row["reason"].as_str().unwrap().contains("symlink"), "{row}");
    let game = GameId::new("ggoo").unwrap();
    let version = Version::parse("20250301").unwrap();
    let files = PeerRequest::Files {
        game: game.clone(),
        version,
    };
    let chunk = |path: &str| PeerRequest::Chunks {
        game: game.clone(),
        version,
        ranges: vec![ChunkRange {
            path: RelPath::new(path).unwrap(),
            offset: 0,
            len: 10,
        }],
    };
    crate::util::rt().block_on(async {
        let (conn, _ep) = raw_peer(&n.addr).await;
        let got = ask(&conn, &files).await;
        assert!(matches!(got, PeerResponse::Refused { .. }), "{got:?}");
        for path in ["leak.txt", "dirlink/inner.txt", "alias.txt"] {
            let got = ask(&conn, &chunk(path)).await;
            assert!(
                matches!(got, PeerResponse::Refused { .. }),
                "{path}: {got:?}"
            );
        }
    });
    // Without the links out of the root it is offered; the one inside is followed.
    std::fs::remove_file(root.join("leak.txt")).unwrap();
    std::fs::remove_file(root.join("dirlink")).unwrap();
    n.wait_games("ggoo offered", |v| {
        v["local"].as_array().is_some_and(|l| {
            l.iter()
                .any(|r| r["id"] == "ggoo" && r["availability"] == "Ready")
        })
    });
    crate::util::rt().block_on(async {
        let (conn, _ep) = raw_peer(&n.addr).await;
        let PeerResponse::Files(m) = ask(&conn, &files).await else {
            panic!("ggoo refused")
        };
        let listed: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        assert!(listed.contains(&"alias.txt"), "{listed:?}");
        // Swap a scanned file for a symlink out of the root: refused at open.
        std::fs::remove_file(root.join("notes.txt")).unwrap();
        symlink(&secret, root.join("notes.txt")).unwrap();
        let got = ask(&conn, &chunk("notes.txt")).await;
        assert!(
            matches!(&got, PeerResponse::Refused { .. }),
            "swapped file served: {got:?}"
        );
    });
    assert!(n.log().contains("leaves the game root"), "{}", n.log_tail());
    assert!(
        n.log().contains("game ggoo not offered"),
        "{}",
        n.log_tail()
    );
}
