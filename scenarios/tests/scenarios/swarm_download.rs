//! Swarm, the downloading side (issue 21): clients told only the server's address find
//! each other (peer exchange), fetch from each other the chunks they verified, and the
//! server, its upload limited, sends less than one copy per client. The server killed
//! once one copy exists in the swarm: every client still finishes; killed before: every
//! client gets what exists, then fails cleanly (no sentinel). A partial holder that sends
//! bad bytes is dropped after its first chunk.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use lanspread_fixtures::{Content, GameSpec};
use lanspread_proto::CHUNK_SIZE;
use lanspread_scenarios::{assert_same_tree, wait_for, Node, NodeOptions};
use serde_json::Value;

const GAME: &str = "cod5";
const CHUNKS: u64 = 8;

/// A server holding an 8-chunk game, its upload limited to `mib_s`.
fn server(dir: &Path, mib_s: &str) -> Node {
    GameSpec::new(GAME, "20250101")
        .file(
            "cod5.eti",
            0o644,
            Content::Random {
                seed: 77,
                size: CHUNKS * CHUNK_SIZE,
            },
        )
        .write(dir)
        .unwrap();
    let args = ["--max-upload-mib-s", mib_s, "--max-links", "64"];
    let opts = NodeOptions {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..NodeOptions::default()
    };
    Node::start_with("server", dir, opts)
}

/// An empty client with these flags and environment, told only the server's address.
fn client(
    i: usize,
    server: &Node,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let owned = |kv: &[(&str, &str)]| {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let opts = NodeOptions {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: owned(env),
        ..NodeOptions::default()
    };
    let node = Node::start_with(&format!("c{i}"), dir.path(), opts);
    node.connect(server);
    (node, dir)
}

/// `n` empty clients told only the server's address, linked to each other by peer
/// exchange before anything starts.
fn clients(n: usize, server: &Node, env: &[(&str, &str)]) -> Vec<(Node, tempfile::TempDir)> {
    let out: Vec<(Node, tempfile::TempDir)> = (0..n)
        .map(|i| client(i, server, &["--max-links", "64"], env))
        .collect();
    wait_for("clients linked to each other", || {
        out.iter()
            .all(|(c, _)| c.peer_ids().len() == n)
            .then_some(())
    });
    out
}

fn start_all(clients: &[(Node, tempfile::TempDir)]) {
    for (c, _) in clients {
        c.download_ok(GAME, &["--no-install", "--detach"]);
    }
}

/// The chunks of the archive each `download-chunk-finished` event of `c` names.
fn chunks_of(c: &Node) -> BTreeSet<u64> {
    c.events_named("download-chunk-finished")
        .iter()
        .filter(|e| e["path"] == "cod5.eti")
        .filter_map(|e| e["offset"].as_u64())
        .map(|o| o / CHUNK_SIZE)
        .collect()
}

fn ended(c: &Node) -> Option<Value> {
    c.events()
        .into_iter()
        .find(|e| e["event"] == "download-finished" || e["event"] == "download-failed")
}

#[test]
fn clients_fetch_from_each_other_and_the_server_sends_less_than_a_copy_each() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path(), "32");
    let cs = clients(3, &s, &[]);
    start_all(&cs);
    // While they download, `list-peers` shows the others' partial copies (not as games).
    let (row, human) = wait_for("a client listed with a partial copy", || {
        let peers = cs[0].0.json(&["list-peers"]);
        let row = peers.as_array()?.iter().find_map(|p| {
            let row = p["partial"].as_array()?.iter().find(|g| g["id"] == GAME)?;
            let listed = p["games"].as_array()?.iter().any(|g| g["id"] == GAME);
            (row["chunks_verified"].as_u64()? >= 1 && !listed).then(|| row.clone())
        })?;
        Some((row, cs[0].0.cli(&["list-peers"]).stdout))
    });
    // Counted in units: four to a chunk, and the sentinel's.
    let units = CHUNKS * (CHUNK_SIZE / lanspread_proto::UNIT_SIZE) + 1;
    assert_eq!(row["chunks"], units, "{row}");
    assert_eq!(row["version"], "20250101", "{row}");
    assert!(human.contains("cod5@20250101 (partial "), "{human}");
    let mut from_server = 0;
    let mut from_peers = BTreeMap::new();
    for (c, dir) in &cs {
        let end = wait_for("the download's end", || ended(c));
        assert_eq!(end["event"], "download-finished", "{end}{}", c.log_tail());
        assert_same_tree(&sdir.path().join(GAME), &dir.path().join(GAME));
        for (peer, bytes) in c.bytes_per_source(GAME) {
            if peer == s.peer_id {
                from_server += bytes;
            } else {
                *from_peers.entry(c.name.clone()).or_insert(0) += bytes;
            }
        }
    }
    let game_bytes = CHUNKS * CHUNK_SIZE + 9;
    eprintln!("server sent {from_server} bytes (game {game_bytes}); from peers {from_peers:?}");
    assert!(
        from_peers.values().sum::<u64>() >= CHUNK_SIZE,
        "no client fetched from another: {from_peers:?}"
    );
    assert!(
        from_server < 3 * game_bytes,
        "the server sent {from_server} bytes for 3 copies of {game_bytes}"
    );
    // Partial holders are not ready peers: the server lists the clients as peers
    // without the game until they commit (they have now).
    for (c, _) in &cs {
        assert!(c.local_row(GAME).is_some(), "{} lists the game", c.name);
    }
}

/// Peer exchange at the cap: a client allowed one link (the server's) does not link to
/// another client while idle, and does once both download the same game (the server's
/// lists name what each peer holds a partial copy of; such holders may take links over
/// the cap), then they fetch from each other. The other client has peer exchange off,
/// so only the capped one can make the link. `capped_first`: the capped client starts
/// first and is told of the holder while it downloads; otherwise it was told before its
/// download began and weighs the lists it kept again when it starts (no peer sends the
/// same list twice).
fn capped_client_links_to_a_holder(capped_first: bool) {
    let sdir = tempfile::tempdir().unwrap();
    // Slow enough that the first download is still running when the second starts.
    let s = server(sdir.path(), "16");
    let capped = client(0, &s, &["--max-links", "1"], &[]);
    let other = client(1, &s, &["--max-links", "0"], &[]);
    let linked = |a: &Node, b: &Node| a.peer_ids().contains(&b.peer_id);
    wait_for("the server linked to both", || {
        (s.peer_ids().len() == 2).then_some(())
    });
    let holds = |c: &Node| {
        let peers = s.json(&["list-peers"]);
        peers
            .as_array()?
            .iter()
            .find(|p| p["peer_id"] == c.peer_id.as_str())?["partial"]
            .as_array()?
            .iter()
            .any(|g| g["id"] == GAME)
            .then_some(())
    };
    let (first, second) = if capped_first {
        (&capped, &other)
    } else {
        (&other, &capped)
    };
    first.0.download_ok(GAME, &["--no-install", "--detach"]);
    wait_for("the server told of the first download", || holds(&first.0));
    // The capped client has heard of the other by now; give it time to (not) dial.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(
        !linked(&capped.0, &other.0),
        "linked over the cap before both downloaded"
    );
    second.0.download_ok(GAME, &["--no-install", "--detach"]);
    wait_for("the clients linked to each other", || {
        (linked(&capped.0, &other.0) && linked(&other.0, &capped.0)).then_some(())
    });
    let mut from_peers = 0;
    for (c, dir) in [&capped, &other] {
        let end = wait_for("the download's end", || ended(c));
        assert_eq!(end["event"], "download-finished", "{end}{}", c.log_tail());
        assert_same_tree(&sdir.path().join(GAME), &dir.path().join(GAME));
        from_peers += c
            .bytes_per_source(GAME)
            .into_iter()
            .filter(|(peer, _)| *peer != s.peer_id)
            .map(|(_, bytes)| bytes)
            .sum::<u64>();
    }
    assert!(
        from_peers >= CHUNK_SIZE,
        "the clients fetched {from_peers} bytes from each other"
    );
    let dialled = capped
        .0
        .log()
        .lines()
        .any(|l| l.contains("linked a peer learned by peer exchange") && l.contains(GAME));
    assert!(dialled, "{}", capped.0.log_tail());
}

#[test]
fn a_capped_client_links_to_a_holder_it_hears_of_while_downloading() {
    capped_client_links_to_a_holder(true);
}

#[test]
fn a_capped_client_links_to_a_holder_it_heard_of_when_its_download_starts() {
    capped_client_links_to_a_holder(false);
}

#[test]
fn the_server_killed_once_a_copy_is_in_the_swarm_every_client_finishes() {
    let sdir = tempfile::tempdir().unwrap();
    let mut s = server(sdir.path(), "24");
    let cs = clients(2, &s, &[]);
    start_all(&cs);
    // One whole copy among the clients (the sentinel is the server's last chunk: wait
    // for the archive's chunks).
    wait_for("one copy of the archive in the swarm", || {
        let held: BTreeSet<u64> = cs.iter().flat_map(|(c, _)| chunks_of(c)).collect();
        (held.len() as u64 == CHUNKS).then_some(())
    });
    let sentinel = |c: &Node| {
        c.events_named("download-chunk-finished")
            .iter()
            .any(|e| e["path"] == "version.ini")
    };
    wait_for("the sentinel in the swarm", || {
        cs.iter().any(|(c, _)| sentinel(c)).then_some(())
    });
    s.kill();
    for (c, dir) in &cs {
        let end = wait_for("the download's end", || ended(c));
        assert_eq!(end["event"], "download-finished", "{end}{}", c.log_tail());
        assert_same_tree(&sdir.path().join(GAME), &dir.path().join(GAME));
    }
}

#[test]
fn the_server_killed_early_clients_get_what_exists_then_fail_cleanly() {
    let sdir = tempfile::tempdir().unwrap();
    let mut s = server(sdir.path(), "16");
    let cs = clients(2, &s, &[("LANSPREAD_SWARM_WAIT_MS", "2000")]);
    start_all(&cs);
    wait_for("a first chunk", || {
        cs.iter()
            .any(|(c, _)| !chunks_of(c).is_empty())
            .then_some(())
    });
    s.kill();
    let held: BTreeSet<u64> = cs.iter().flat_map(|(c, _)| chunks_of(c)).collect();
    assert!((held.len() as u64) < CHUNKS);
    for (c, dir) in &cs {
        let end = wait_for("the download's end", || ended(c));
        assert_eq!(end["event"], "download-failed", "{end}");
        let reason = end["reason"].as_str().unwrap_or("");
        assert!(reason.contains("missing unit"), "{reason}");
        assert!(
            !dir.path().join(GAME).join("version.ini").exists(),
            "no sentinel for an incomplete copy"
        );
    }
    // Every chunk that existed on a living peer when the server died is on both now.
    let union: BTreeSet<u64> = cs.iter().flat_map(|(c, _)| chunks_of(c)).collect();
    for (c, _) in &cs {
        assert_eq!(chunks_of(c), union, "{} got all the swarm had", c.name);
    }
}

/// A raw protocol peer that announces a partial copy of the server's game (every chunk, at
/// the right manifest digest) and answers every `PartialChunks` range with zeros. Returns
/// its address and the number of ranges it was asked for so far.
fn liar(game_dir: &Path) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use lanspread_catalog::{manifest_digest, GameId, Version};
    use lanspread_proto::{
        encode_frame, unit_count, ChunkSet, Hello, Holding, Message, PeerRequest, PeerResponse,
        PROTOCOL_VERSION,
    };
    use lanspread_transfer::{make_endpoint, read_frame, Identity, TransportTuning};
    use std::sync::atomic::Ordering;

    let id = GameId::new(GAME).unwrap();
    let root = lanspread_catalog::scan_root(game_dir, id.clone());
    let files = lanspread_catalog::HashCache::new().manifest(&root).unwrap();
    let total: u64 = files.files.iter().map(|f| unit_count(f.size)).sum();
    let holding = Holding {
        game: id,
        version: Version::parse("20250101").unwrap(),
        digest: manifest_digest(&files.files),
        chunks: ChunkSet::full(total as usize),
    };
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        crate::util::rt().block_on(async move {
            let ident = Identity::ephemeral().unwrap();
            let ep = make_endpoint(
                &ident,
                "127.0.0.1:0".parse().unwrap(),
                &TransportTuning::default(),
            )
            .unwrap();
            let addr = ep.local_addr().unwrap();
            addr_tx.send(addr.to_string()).unwrap();
            let conn = ep.accept().await.unwrap().await.unwrap();
            let _theirs = conn.accept_uni().await.unwrap();
            let mut ours = conn.open_uni().await.unwrap();
            let hello = Message::Hello(Hello {
                peer_id: ident.peer_id().clone(),
                listen: addr,
                protocol: PROTOCOL_VERSION,
                agent: "liar".into(),
                proof: None,
            });
            for m in [
                hello,
                Message::Library(Vec::new()),
                Message::Holding(holding),
            ] {
                ours.write_all(&encode_frame(&m).unwrap()).await.unwrap();
            }
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let Ok(Some(PeerRequest::PartialChunks { ranges, .. })) =
                    read_frame::<_, PeerRequest>(&mut recv).await
                else {
                    continue;
                };
                for r in ranges {
                    count.fetch_add(1, Ordering::SeqCst);
                    let head = encode_frame(&PeerResponse::Chunk { len: r.len }).unwrap();
                    let _ = send.write_all(&head).await;
                    let _ = send.write_all(&vec![0u8; r.len as usize]).await;
                }
                let _ = send.finish();
            }
        });
    });
    (addr_rx.recv().unwrap(), asked)
}

#[test]
fn a_partial_holder_that_sends_bad_bytes_is_dropped_and_nothing_bad_is_committed() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path(), "64");
    let (addr, asked) = liar(&sdir.path().join(GAME));
    let cdir = tempfile::tempdir().unwrap();
    let c = Node::start("client", cdir.path());
    c.connect(&s);
    let out = c.cli(&["connect", &addr]);
    assert_eq!(out.code, 0, "{out:?}");
    // Its `Holding` follows its hello on the link `connect` made.
    std::thread::sleep(std::time::Duration::from_millis(500));
    c.download_ok(GAME, &["--no-install"]);
    assert_same_tree(&sdir.path().join(GAME), &cdir.path().join(GAME));
    let asked = asked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(asked, 1, "the liar was asked once, then dropped");
    let per = c.bytes_per_source(GAME);
    assert_eq!(per.keys().collect::<Vec<_>>(), [&s.peer_id], "{per:?}");
}

#[test]
fn a_chunk_still_arriving_is_passed_on_as_its_pieces_verify() {
    // Cut-through (protocol 9; on by default, set here explicitly): a partial holder
    // announces the chunks it is fetching and serves them as they arrive. c0 starts first against a server limited to 32 MiB/s
    // (8 chunks: about 8 s), c1 right after: every chunk c1 asks c0 for is still on its
    // way to c0, which passes it on piece by piece.
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path(), "32");
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let cs: Vec<Node> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let args = ["--metrics-listen", "127.0.0.1:0", "--max-links", "64"];
            let opts = NodeOptions {
                args: args.iter().map(|a| a.to_string()).collect(),
                env: vec![("LANSPREAD_CUT_THROUGH".into(), "1".into())],
                ..NodeOptions::default()
            };
            let c = Node::start_with(&format!("c{i}"), d.path(), opts);
            c.connect(&s);
            c
        })
        .collect();
    wait_for("clients linked to each other", || {
        cs.iter().all(|c| c.peer_ids().len() == 2).then_some(())
    });
    cs[0].download_ok(GAME, &["--no-install", "--detach"]);
    let listed = |n: &Node| {
        let peers = n.json(&["list-peers"]);
        peers.as_array().is_some_and(|a| {
            a.iter().any(|p| {
                p["partial"]
                    .as_array()
                    .is_some_and(|g| g.iter().any(|g| g["id"] == GAME))
            })
        })
    };
    wait_for("c0's partial copy known to c1", || {
        listed(&cs[1]).then_some(())
    });
    cs[1].download_ok(GAME, &["--no-install", "--detach"]);
    for (c, dir) in cs.iter().zip(&dirs) {
        let end = wait_for("the download's end", || ended(c));
        assert_eq!(end["event"], "download-finished", "{end}{}", c.log_tail());
        assert_same_tree(&sdir.path().join(GAME), &dir.path().join(GAME));
    }
    let relayed = crate::metrics::scrape(&cs[0])
        .value("lanspread_chunks_relayed_total", &[])
        .unwrap_or(0.0);
    let from_c0 = cs[1]
        .bytes_per_source(GAME)
        .get(&cs[0].peer_id)
        .copied()
        .unwrap_or(0);
    eprintln!("c0 relayed {relayed} chunks; c1 got {from_c0} bytes from c0");
    assert!(relayed >= 1.0, "c0 passed on no chunk while it arrived");
    assert!(from_c0 >= CHUNK_SIZE, "c1 got {from_c0} bytes from c0");
}
