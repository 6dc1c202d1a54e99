//! Failures and concurrency: S18, S19, S20, S24, S25, S26, S31, S38.

use std::fs;
use std::path::Path;

use lanspread_fixtures::{Content, GameSpec, ALPHA, BRAVO};
use lanspread_scenarios::{assert_same_tree, lab, skip_privileged, wait_for, Node, Tmpfs};
use serde_json::{json, Value};

use crate::downloads::{assert_not_committed, client, source};

const CHUNK: u64 = lanspread_proto::CHUNK_SIZE;

/// A game big enough to still be in flight a moment after `download-begin`.
fn big_game(dir: &Path, chunks: u64) {
    GameSpec::new("cod5", "20250101")
        .file(
            "cod5.eti",
            0o644,
            Content::Sparse {
                size: chunks * CHUNK,
            },
        )
        .write(dir)
        .unwrap();
}

/// Waits for the terminal download event of a game.
fn terminal(n: &Node, game: &str) -> Value {
    wait_for(&format!("{}: end of {game}", n.name), || {
        n.game_events(game)
            .into_iter()
            .find(|e| e["event"] == "download-finished" || e["event"] == "download-failed")
    })
}

#[test]
fn s18_redundant_source_dies() {
    let d = tempfile::tempdir().unwrap();
    big_game(d.path(), 12);
    let a = source("a", d.path());
    let same = lanspread_scenarios::linked_copy(d.path());
    let mut b = source("b", same.path());
    let (c, games) = client();
    c.connect(&a);
    c.connect(&b);
    let started = c.download_ok("cod5", &["--no-install", "--detach"]);
    assert_eq!(started["started"], "cod5");
    c.wait_event("download-begin", |e| e["game_id"] == "cod5");
    b.kill();
    let end = terminal(&c, "cod5");
    assert_eq!(end["event"], "download-finished", "{end}");
    assert!(c
        .game_events("cod5")
        .iter()
        .all(|e| e["event"] != "download-failed"));
    let per = c.bytes_per_source("cod5");
    assert!(
        per.get(&b.peer_id).copied().unwrap_or(0) < 12 * CHUNK / 2,
        "the killed source delivered its whole share: {per:?}"
    );
    assert_same_tree(&d.path().join("cod5"), &games.path().join("cod5"));
}

#[test]
fn s19_sole_source_dies() {
    let d = tempfile::tempdir().unwrap();
    big_game(d.path(), 12);
    let mut a = source("a", d.path());
    // It waits for a source that may come back (see the next test): 2 s here.
    let games = tempfile::tempdir().unwrap();
    let opts = lanspread_scenarios::NodeOptions {
        env: vec![("LANSPREAD_SWARM_WAIT_MS".into(), "2000".into())],
        ..Default::default()
    };
    let c = Node::start_with("client", games.path(), opts);
    c.connect(&a);
    c.download_ok("cod5", &["--no-install", "--detach"]);
    c.wait_event("download-begin", |e| e["game_id"] == "cod5");
    a.kill();
    let end = terminal(&c, "cod5");
    assert_eq!(end["event"], "download-failed", "{end}");
    assert_not_committed(&c, games.path(), "cod5");
    // Not advertised: a third peer does not see the partial root.
    let g3 = tempfile::tempdir().unwrap();
    let third = Node::start("third", g3.path());
    third.connect(&c);
    assert!(crate::util::remote_rows(&third.json(&["list-games"])).is_empty());
    // The operation is cleared: a retry is accepted (and refused only for want of peers,
    // once the link to the dead source is gone: the download may see the connection lost
    // a moment before the link task does).
    c.wait_event("peer-lost", |e| e["peer_id"] == a.peer_id.as_str());
    let retry = c.download("cod5", &["--no-install"]);
    assert_eq!(retry.code, 1);
    assert_eq!(retry.error_kind(), "no-sources", "{retry:?}");
    assert!(
        retry.stderr.contains("no peers have game cod5"),
        "{}",
        retry.stderr
    );
}

/// S19's source restarted in the middle of the download (SIGKILL, then started again on
/// its address, as a service manager does): the client redials it, the download waits
/// for it and goes on from where it was — one download, no failure, every byte from it,
/// the tree equal. (A source stopped with SIGTERM first ends the answers it is sending.)
#[test]
fn sole_source_restarted_mid_download_is_waited_for() {
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .file(
            "cod5.eti",
            0o644,
            Content::Random {
                seed: 19,
                size: 6 * CHUNK,
            },
        )
        .write(d.path())
        .unwrap();
    // Slow enough to be in the middle when it goes (192 MiB at 24 MiB/s; a limit on the
    // sender, so that no bytes sent before wait in the client's receive windows).
    let opts = lanspread_scenarios::NodeOptions {
        args: vec!["--max-upload-mib-s".into(), "24".into()],
        ..Default::default()
    };
    let mut a = Node::start_with("a", d.path(), opts);
    let games = tempfile::tempdir().unwrap();
    let c = Node::start("client", games.path());
    c.connect(&a);
    c.download_ok("cod5", &["--no-install", "--detach"]);
    // `status`' bytes done, sampled all along: they never go back (the pieces verified
    // of the chunks on their way when the source went stay counted).
    let mut shown: Vec<u64> = Vec::new();
    let mut sample = |c: &Node| {
        let op = c.json(&["status"])["operations"].get(0).cloned();
        if let Some(b) = op.as_ref().and_then(|o| o["done_bytes"].as_u64()) {
            shown.push(b);
        }
        op
    };
    wait_for("client: a chunk verified", || {
        sample(&c);
        c.game_events("cod5")
            .iter()
            .any(|e| e["event"] == "download-chunk-finished")
            .then_some(())
    });
    a.kill();
    // The download waits for it, and says so.
    wait_for("client: the download waits for its source", || {
        sample(&c).filter(|op| op["state"] == "waiting")
    });
    let human = c.cli(&["status"]).stdout;
    assert!(human.contains("waiting for its sources"), "{human}");
    // The game's first download is listed with the local games meanwhile.
    let row = c.local_row("cod5").expect("a first download is listed");
    let begin = c.wait_event("download-begin", |_| true);
    assert_eq!(
        (&row["availability"], &row["downloaded"], &row["size"]),
        (&json!("Downloading"), &json!(false), &begin["bytes"]),
        "{row}"
    );
    // Back 2 s later (a download that waited 1 s says so in an event).
    std::thread::sleep(std::time::Duration::from_secs(2));
    a.restart_at_same_address();
    wait_for("client: the download ends", || {
        sample(&c).is_none().then_some(())
    });
    assert!(
        shown.windows(2).all(|w| w[0] <= w[1]),
        "status went back: {shown:?}"
    );
    let end = terminal(&c, "cod5");
    assert_eq!(end["event"], "download-finished", "{end}");
    let events = c.game_events("cod5");
    let count = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    assert_eq!(count("download-begin"), 1, "one download: {events:?}");
    assert_eq!(count("download-failed"), 0);
    // It said when it began and ended waiting, between its chunks.
    let waits: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "download-waiting")
        .collect();
    assert_eq!(waits.len(), 2, "{waits:?}");
    assert_eq!(
        (&waits[0]["waiting"], &waits[1]["waiting"]),
        (&true.into(), &false.into())
    );
    assert_eq!(waits[0]["wait_ms"], 30_000);
    let at = |w: &Value| events.iter().position(|e| e == w).unwrap();
    let last_chunk = events
        .iter()
        .rposition(|e| e["event"] == "download-chunk-finished")
        .unwrap();
    assert!(at(waits[1]) < last_chunk, "{events:?}");
    let per = c.bytes_per_source("cod5");
    assert_eq!(per.keys().collect::<Vec<_>>(), [&a.peer_id], "{per:?}");
    assert_same_tree(&d.path().join("cod5"), &games.path().join("cod5"));
    let log = c.log();
    assert!(
        log.contains("or for disconnected ones to come back"),
        "the wait is logged:\n{}",
        log.lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A folder of games `cod5` and `cnc4`, each one `.eti` file of `content`.
fn two_games(content: Content) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for id in ["cod5", "cnc4"] {
        GameSpec::new(id, "20250101")
            .file(&format!("{id}.eti"), 0o644, content.clone())
            .write(d.path())
            .unwrap();
    }
    d
}

/// A disk mounted at a game root has its own room: the download counts what lands on
/// it against that disk, not the games filesystem (full here), and a root on a disk too
/// small is refused up front naming it.
#[test]
fn a_root_on_its_own_disk_counts_that_disks_room() {
    if skip_privileged("a_root_on_its_own_disk_counts_that_disks_room") {
        return;
    }
    let d = two_games(Content::Random {
        seed: 5,
        size: 24 << 20,
    });
    let s = source("src", d.path());
    let games = Tmpfs::mount(8);
    for id in ["cod5", "cnc4"] {
        std::fs::create_dir(games.path().join(id)).unwrap();
    }
    let big = Tmpfs::mount_on(&games.path().join("cod5"), 64);
    let small = Tmpfs::mount_on(&games.path().join("cnc4"), 4);
    let c = Node::start("client", games.path());
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    assert_same_tree(&d.path().join("cod5"), big.path());
    let out = c.download("cnc4", &["--no-install"]);
    assert_eq!(out.error_kind(), "disk-full", "{out:?}");
    let reason = out.json()["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("not enough free space in") && reason.contains("cnc4"),
        "{reason}"
    );
    assert_not_committed(&c, games.path(), "cnc4");
    drop(c);
    drop((small, big));
}

#[test]
fn s20_disk_full() {
    if skip_privileged("s20_disk_full") {
        return;
    }
    let fs32 = Tmpfs::mount(32);
    let a = source("alpha", &lab().join(ALPHA));
    let c = Node::start("client", fs32.path());
    c.connect(&a);
    let out = c.download("alienswarm", &["--no-install"]);
    assert_eq!(out.code, 1, "{out:?}");
    let failed = out.json();
    assert_eq!(failed["event"], "download-failed");
    assert_eq!(out.error_kind(), "disk-full", "{failed}");
    // Refused up front, with the numbers, before anything is preallocated.
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("not enough free space") && reason.contains("need"),
        "{failed}"
    );
    assert!(c
        .game_events("alienswarm")
        .iter()
        .all(|e| e["event"] != "download-begin"));
    assert_not_committed(&c, fs32.path(), "alienswarm");
    // Healthy afterwards: a small game still fits and downloads.
    c.download_ok("ggoo", &["--no-install"]);
    assert_same_tree(&lab().join(ALPHA).join("ggoo"), &fs32.path().join("ggoo"));
    drop(c);

    // Two downloads that each fit alone but not together: whichever path catches it (the
    // up-front check, or fallocate's ENOSPC when both passed the check at once, which may
    // fail both), at least one fails, a failed one commits nothing, and a finished one is
    // exact.
    let fs32 = Tmpfs::mount(32);
    let d = two_games(Content::Sparse { size: 20 << 20 });
    let s = source("two", d.path());
    let c = Node::start("client", fs32.path());
    c.connect(&s);
    let outs = std::thread::scope(|sc| {
        let t1 = sc.spawn(|| c.download("cod5", &["--no-install"]));
        let t2 = sc.spawn(|| c.download("cnc4", &["--no-install"]));
        [("cod5", t1.join().unwrap()), ("cnc4", t2.join().unwrap())]
    });
    assert!(
        outs.iter().any(|(_, o)| o.code != 0),
        "40 MiB fitted into 32: {outs:?}"
    );
    for (id, out) in &outs {
        if out.code == 0 {
            assert_same_tree(&d.path().join(id), &fs32.path().join(id));
        } else {
            assert_eq!(out.json()["event"], "download-failed", "{out:?}");
            assert_not_committed(&c, fs32.path(), id);
        }
    }
    drop(c);
}

#[test]
fn s24_two_clients_one_source() {
    let a = source("alpha", &lab().join(ALPHA));
    let (c1, g1) = client();
    let (c2, g2) = client();
    c1.connect(&a);
    c2.connect(&a);
    std::thread::scope(|s| {
        let t1 = s.spawn(|| c1.download_ok("alienswarm", &["--no-install"]));
        let t2 = s.spawn(|| c2.download_ok("alienswarm", &["--no-install"]));
        // The source keeps answering while it serves.
        while !(t1.is_finished() && t2.is_finished()) {
            assert_eq!(a.json(&["status"])["peer_id"], a.peer_id.as_str());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        t1.join().unwrap();
        t2.join().unwrap();
    });
    assert_same_tree(
        &lab().join(ALPHA).join("alienswarm"),
        &g1.path().join("alienswarm"),
    );
    assert_same_tree(
        &lab().join(ALPHA).join("alienswarm"),
        &g2.path().join("alienswarm"),
    );
}

#[test]
fn s25_two_games_at_once() {
    let b = source("bravo", &lab().join(BRAVO));
    let (c, games) = client();
    c.connect(&b);
    std::thread::scope(|s| {
        let t1 = s.spawn(|| c.download_ok("bfbc2", &["--no-install"]));
        let t2 = s.spawn(|| c.download_ok("cnctw", &[]));
        t1.join().unwrap();
        t2.join().unwrap();
    });
    assert_same_tree(
        &lab().join(BRAVO).join("bfbc2"),
        &games.path().join("bfbc2"),
    );
    assert_same_tree(
        &lab().join(BRAVO).join("cnctw"),
        &games.path().join("cnctw"),
    );
    assert_eq!(c.local_row("bfbc2").unwrap()["installed"], false);
    assert_eq!(c.local_row("cnctw").unwrap()["installed"], true);
}

#[test]
fn s26_single_flight() {
    let d = tempfile::tempdir().unwrap();
    big_game(d.path(), 8);
    let a = source("a", d.path());
    let (c, games) = client();
    c.connect(&a);
    c.download_ok("cod5", &["--no-install", "--detach"]);
    let second = c.download("cod5", &["--no-install"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert_eq!(second.error_kind(), "busy", "{second:?}");
    assert!(
        second
            .stderr
            .contains("operation already in progress for game cod5"),
        "{}",
        second.stderr
    );
    let status = c.json(&["status"]);
    assert_eq!(status["operations"][0]["game_id"], "cod5");
    assert_eq!(status["operations"][0]["kind"], "download");
    assert_eq!(terminal(&c, "cod5")["event"], "download-finished");
    assert_eq!(
        c.game_events("cod5")
            .iter()
            .filter(|e| e["event"] == "download-begin")
            .count(),
        1
    );
    assert_same_tree(&d.path().join("cod5"), &games.path().join("cod5"));
}

#[test]
fn s31_bootstrapped_source() {
    let mut b = source("bravo", &lab().join(BRAVO));
    let (c, c_games) = client();
    c.connect(&b);
    c.download_ok("bfbc2", &["--no-install"]);
    b.shutdown();
    let g3 = tempfile::tempdir().unwrap();
    let third = Node::start("third", g3.path());
    third.connect(&c);
    third.download_ok("bfbc2", &["--no-install"]);
    let per = third.bytes_per_source("bfbc2");
    assert_eq!(per.keys().collect::<Vec<_>>(), [&c.peer_id]);
    assert_same_tree(&lab().join(BRAVO).join("bfbc2"), &g3.path().join("bfbc2"));
    assert_same_tree(
        &lab().join(BRAVO).join("bfbc2"),
        &c_games.path().join("bfbc2"),
    );
}

/// Makes the root in `dir` serve a flipped byte at `offset` of each of `files` while its
/// cached chunk hashes still describe the good bytes (bit rot under an unchanged mtime).
pub fn make_liar(dir: &Path, files: &[&str], offset: u64) {
    use lanspread_catalog::{scan_root, GameId, HashCache};
    use std::io::{Seek, SeekFrom, Write};
    let root = dir.join("cod5");
    HashCache::new()
        .manifest(&scan_root(&root, GameId::new("cod5").unwrap()))
        .unwrap();
    let cache = root.join(".lanspread/pieces.json");
    let mut persisted: serde_json::Value =
        serde_json::from_slice(&fs::read(&cache).unwrap()).unwrap();
    for file in files {
        let path = root.join(file);
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&[0xff]).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        // The cache notices the change (ctime); a liar's cache keeps the old hashes under
        // the file's new identity.
        use std::os::unix::fs::MetadataExt;
        let m = fs::metadata(&path).unwrap();
        persisted["entries"][*file][0]["ctime_ns"] =
            (m.ctime() * 1_000_000_000 + m.ctime_nsec()).into();
    }
    fs::write(&cache, serde_json::to_vec(&persisted).unwrap()).unwrap();
}

/// A client downloads cod5 from a good source and a liar and gets the good tree.
/// Returns the client, the good source, the liar and the client's games dir.
fn download_past_a_liar(good: &Path, bad: &Path) -> (Node, Node, Node, tempfile::TempDir) {
    let g = source("good", good);
    let liar = source("liar", bad);
    let (c, games) = client();
    c.connect(&g);
    c.connect(&liar);
    c.download_ok("cod5", &["--no-install"]);
    assert_same_tree(&good.join("cod5"), &games.path().join("cod5"));
    (c, g, liar, games)
}

fn random_game(dir: &Path) {
    GameSpec::new("cod5", "20250101")
        .file(
            "cod5.eti",
            0o644,
            Content::Random {
                seed: 38,
                size: 3 * CHUNK + 100,
            },
        )
        .write(dir)
        .unwrap();
}

#[test]
fn s38_corrupted_source() {
    let (good, bad) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    random_game(good.path());
    random_game(bad.path());
    make_liar(bad.path(), &["cod5.eti"], CHUNK + 5);
    let (c, g, liar, _games) = download_past_a_liar(good.path(), bad.path());
    // The corrupted unit came from the good source in the end: the chunk names it among
    // the sources that sent it (its other units may be the liar's good bytes).
    let second = c
        .game_events("cod5")
        .into_iter()
        .find(|e| {
            e["event"] == "download-chunk-finished"
                && e["path"] == "cod5.eti"
                && e["offset"] == CHUNK
        })
        .unwrap();
    let from_good: u64 = lanspread_scenarios::chunk_sources(&second)
        .into_iter()
        .filter(|(p, _)| p == g.peer_id.as_str())
        .map(|(_, b)| b)
        .sum();
    assert!(from_good >= lanspread_proto::UNIT_SIZE, "{second}");

    // A single lying source: the download fails and nothing is committed.
    let (c2, games2) = client();
    c2.connect(&liar);
    let out = c2.download("cod5", &["--no-install"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_kind(), "source-failed", "{out:?}");
    assert!(
        out.json()["reason"]
            .as_str()
            .unwrap()
            .contains("no eligible source"),
        "{}",
        out.stdout
    );
    // The real cause is named, in the reason and per source.
    let failed = out.json();
    assert!(
        failed["reason"].as_str().unwrap().contains("hash mismatch"),
        "{failed}"
    );
    assert_eq!(
        failed["sources"][0]["peer_id"],
        liar.peer_id.as_str(),
        "{failed}"
    );
    assert!(
        failed["sources"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("hash mismatch"),
        "{failed}"
    );
    assert_not_committed(&c2, games2.path(), "cod5");
}

/// S38 with small files, which travel in batches (many ranges per request): the corrupted
/// file in the middle of the liar's batch is refetched from the good source, the liar is
/// dropped, and the files around it that matched their hashes are kept.
#[test]
fn s38_corrupted_small_file_inside_a_batch() {
    let (good, bad) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let spec = GameSpec::new("cod5", "20250101").with_small_files(3, 200, 3000);
    spec.write(good.path()).unwrap();
    spec.write(bad.path()).unwrap();
    // Every 16th file is bit-rotten, so whichever run of files the liar is asked for
    // first (batches hold up to 32), one in its middle is bad.
    let corrupt: Vec<String> = (5..200)
        .step_by(16)
        .map(|i| format!("files/{:03}/f{i:05}.bin", i / 100))
        .collect();
    make_liar(
        bad.path(),
        &corrupt.iter().map(String::as_str).collect::<Vec<_>>(),
        10,
    );
    let (c, g, liar, _games) = download_past_a_liar(good.path(), bad.path());
    let chunks: Vec<_> = c
        .game_events("cod5")
        .into_iter()
        .filter(|e| e["event"] == "download-chunk-finished")
        .collect();
    assert_eq!(chunks.len(), 201, "one event per file and the sentinel");
    for bad in &corrupt {
        let fixed = chunks.iter().find(|e| e["path"] == bad.as_str()).unwrap();
        assert_eq!(fixed["peer_id"], g.peer_id.as_str(), "{bad}");
    }
    assert!(
        c.log().contains("hash mismatch"),
        "the corrupted file was detected"
    );
    // The liar was dropped after its first batch: the good source sent nearly everything.
    let from_liar = chunks
        .iter()
        .filter(|e| e["peer_id"] == liar.peer_id.as_str())
        .count();
    assert!(from_liar < 100, "{from_liar} files from the liar");

    // The liar alone: the download fails and nothing is committed.
    let (c2, games2) = client();
    c2.connect(&liar);
    let out = c2.download("cod5", &["--no-install"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_not_committed(&c2, games2.path(), "cod5");
}
