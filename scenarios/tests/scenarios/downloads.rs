//! Downloads and validation: S4, S7, S8, S9, S13, S14, S15, S16, S17, S34, S35, S36, S37.

use std::fs;
use std::path::Path;

use lanspread_fixtures::{Content, GameSpec, ALPHA, BRAVO};
use lanspread_scenarios::{assert_same_tree, lab, Node, NodeOptions};
use serde_json::Value;

use crate::util::remote_rows;

const CHUNK: u64 = lanspread_proto::CHUNK_SIZE;

pub fn source(name: &str, dir: &Path) -> Node {
    Node::start(name, dir)
}

pub fn client() -> (Node, tempfile::TempDir) {
    let games = tempfile::tempdir().unwrap();
    (Node::start("client", games.path()), games)
}

/// Alpha and bravo from the lab, and an empty client connected to both.
fn client_of_lab() -> (Node, Node, Node, tempfile::TempDir) {
    let a = source("alpha", &lab().join(ALPHA));
    let b = source("bravo", &lab().join(BRAVO));
    let (c, games) = client();
    c.connect(&a);
    c.connect(&b);
    (a, b, c, games)
}

/// Names of a game's events in order, chunk events left out.
pub fn flow(n: &Node, game: &str) -> Vec<String> {
    n.game_events(game)
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_owned())
        .filter(|e| e != "download-chunk-finished")
        .collect()
}

/// A root must have no committed sentinel and must not be listed as Ready.
pub fn assert_not_committed(n: &Node, games: &Path, game: &str) {
    assert!(
        !games.join(game).join("version.ini").exists(),
        "{game}: version.ini committed"
    );
    if let Some(row) = n.local_row(game) {
        assert_ne!(row["availability"], "Ready", "{row}");
        assert_eq!(row["downloaded"], false, "{row}");
    }
    assert!(
        n.json(&["status"])["operations"]
            .as_array()
            .unwrap()
            .is_empty(),
        "operation left active"
    );
}

#[test]
fn s04_single_source_no_install() {
    let b = source("bravo", &lab().join(BRAVO));
    let (c, games) = client();
    c.connect(&b);
    let done = c.download_ok("bfbc2", &["--no-install"]);
    assert_eq!(done["event"], "download-finished");
    assert_eq!(done["game_id"], "bfbc2");
    assert_eq!(
        flow(&c, "bfbc2"),
        ["got-game-files", "download-begin", "download-finished"]
    );
    let begin = &c.game_events("bfbc2")[1];
    let src = lab().join(BRAVO).join("bfbc2");
    let size = crate::util::root_size(&src);
    assert_eq!(begin["bytes"].as_u64(), Some(size));
    assert_eq!(done["bytes"].as_u64(), Some(size));
    assert_eq!(done["chunks"], begin["chunks"]);
    for k in ["duration_ms", "mib_per_s", "mbit_per_s"] {
        assert!(done[k].is_number(), "{k} in {done}");
    }
    let row = c.local_row("bfbc2").unwrap();
    assert_eq!(
        (row["downloaded"].clone(), row["installed"].clone()),
        (Value::Bool(true), Value::Bool(false))
    );
    assert_eq!(row["availability"], "Ready");
    assert_same_tree(&src, &games.path().join("bfbc2"));
    assert!(!games.path().join("bfbc2/local").exists());
    // Modes survive the transfer.
    let ggoo_src = lab().join(ALPHA).join("ggoo");
    let a = source("alpha", &lab().join(ALPHA));
    c.connect(&a);
    c.download_ok("ggoo", &["--no-install"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(&games.path().join("ggoo/bin/ggoo.sh")),
        mode(&ggoo_src.join("bin/ggoo.sh"))
    );
    assert_eq!(mode(&games.path().join("ggoo/bin/ggoo.sh")), 0o755);
}

#[test]
fn s07_two_sources_agree() {
    let (a, b, c, games) = client_of_lab();
    c.download_ok("ggoo", &["--no-install"]);
    let got = c
        .game_events("ggoo")
        .into_iter()
        .find(|e| e["event"] == "got-game-files")
        .unwrap();
    let mut sources: Vec<_> = got["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    sources.sort();
    let mut want = vec![a.peer_id.clone(), b.peer_id.clone()];
    want.sort();
    assert_eq!(sources, want);
    assert_eq!(c.local_row("ggoo").unwrap()["installed"], false);
    assert_same_tree(&lab().join(ALPHA).join("ggoo"), &games.path().join("ggoo"));
}

/// One source per spec, each with its own games dir holding that root.
pub fn sources_of(specs: Vec<GameSpec>) -> (Vec<Node>, Vec<tempfile::TempDir>) {
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let d = tempfile::tempdir().unwrap();
        spec.write(d.path()).unwrap();
        nodes.push(source(&format!("p{i}"), d.path()));
        dirs.push(d);
    }
    (nodes, dirs)
}

/// `cnc4` roots whose `.eti` differ in size: (version, size).
fn conflict_setup(specs: &[(&str, u64)]) -> (Vec<Node>, Vec<tempfile::TempDir>) {
    sources_of(
        specs
            .iter()
            .enumerate()
            .map(|(i, (version, size))| {
                GameSpec::new("cnc4", version).file(
                    "cnc4.eti",
                    0o644,
                    Content::Random {
                        seed: 40 + i as u64,
                        size: *size,
                    },
                )
            })
            .collect(),
    )
}

#[test]
fn s08_conflicting_metadata() {
    let (srcs, _dirs) = conflict_setup(&[("20250101", 1000), ("20250101", 2000)]);
    let (c, games) = client();
    for s in &srcs {
        c.connect(s);
    }
    let out = c.download("cnc4", &["--no-install"]);
    assert_eq!(out.code, 1, "{out:?}");
    let failed = out.json();
    assert_eq!(failed["event"], "download-failed");
    assert_eq!(out.error_kind(), "metadata-conflict", "{failed}");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("conflicting metadata"),
        "{failed}"
    );
    assert_not_committed(&c, games.path(), "cnc4");
}

#[test]
fn s09_missing_game() {
    let a = source("alpha", &lab().join(ALPHA));
    let (c, games) = client();
    c.connect(&a);
    let out = c.download("cod5", &[]);
    assert_eq!(out.code, 1);
    assert_eq!(out.error_kind(), "no-sources", "{out:?}");
    assert!(
        out.stderr.contains("no peers have game cod5"),
        "{}",
        out.stderr
    );
    c.wait_event("no-peers-have-game", |e| e["game_id"] == "cod5");
    assert!(!games.path().join("cod5").exists());
    assert_eq!(
        fs::read_dir(games.path()).unwrap().count(),
        0,
        "nothing created"
    );
}

#[test]
fn s13_exactness() {
    let (_a, _b, c, games) = client_of_lab();
    c.download_ok("bfbc2", &["--no-install"]);
    c.download_ok("alienswarm", &["--no-install"]);
    assert_same_tree(
        &lab().join(BRAVO).join("bfbc2"),
        &games.path().join("bfbc2"),
    );
    assert_same_tree(
        &lab().join(ALPHA).join("alienswarm"),
        &games.path().join("alienswarm"),
    );
    // 126 MB in 32 MiB chunks plus version.ini.
    let begin = c
        .game_events("alienswarm")
        .into_iter()
        .find(|e| e["event"] == "download-begin")
        .unwrap();
    assert_eq!(begin["chunks"], 5);
}

#[test]
fn s14_multi_source_large_file() {
    let a = source("alpha", &lab().join(ALPHA));
    let (b, b_games) = {
        let g = tempfile::tempdir().unwrap();
        (Node::start("b", g.path()), g)
    };
    b.connect(&a);
    b.download_ok("alienswarm", &["--no-install"]);
    let (c, games) = client();
    c.connect(&a);
    c.connect(&b);
    c.download_ok("alienswarm", &["--no-install"]);
    let per = c.bytes_per_source("alienswarm");
    assert_eq!(per.len(), 2, "chunks from both sources: {per:?}");
    // Each chunk event lists who sent its bytes (units may come from both sources): the
    // bytes add up to the chunk, and `peer_id` is the one that sent most.
    for e in c.events_named("download-chunk-finished") {
        let sources = lanspread_scenarios::chunk_sources(&e);
        let sum: u64 = sources.iter().map(|(_, b)| b).sum();
        assert_eq!(Some(sum), e["len"].as_u64(), "{e}");
        let most = sources.iter().map(|(_, b)| *b).max();
        assert!(
            sources
                .iter()
                .any(|(p, b)| e["peer_id"] == p.as_str() && Some(*b) == most),
            "{e}"
        );
        assert!(
            e["sources"].as_array().is_some_and(|s| !s.is_empty()),
            "{e}"
        );
    }
    let (x, y) = (per[&a.peer_id], per[&b.peer_id]);
    assert!(
        x.abs_diff(y) < CHUNK,
        "per-source totals {x} and {y} differ by a chunk or more"
    );
    assert_same_tree(
        &lab().join(ALPHA).join("alienswarm"),
        &games.path().join("alienswarm"),
    );
    assert_same_tree(
        &lab().join(ALPHA).join("alienswarm"),
        &b_games.path().join("alienswarm"),
    );
}

/// Two sources of unlike speeds (a file server and a peer on a slow link, here one
/// limited to 2 MiB/s): the slow one does not hold the download to its pace — the fast
/// one sends nearly everything, and the slow one's units still on their way at the end
/// are sent again by the fast one (with the balance alone each sent half: 96 MiB at
/// 2 MiB/s). Counted in bytes per source, not timed.
#[test]
fn a_slow_source_does_not_hold_a_fast_one_to_its_pace() {
    let spec = || {
        GameSpec::new("cod5", "20250101").file(
            "cod5.eti",
            0o644,
            Content::Random {
                seed: 23,
                size: 6 * CHUNK,
            },
        )
    };
    let (fast_dir, slow_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    spec().write(fast_dir.path()).unwrap();
    spec().write(slow_dir.path()).unwrap();
    let fast = source("fast", fast_dir.path());
    let slow = Node::start_with(
        "slow",
        slow_dir.path(),
        NodeOptions {
            args: vec!["--max-upload-mib-s".into(), "2".into()],
            ..Default::default()
        },
    );
    let (c, games) = client();
    c.connect(&fast);
    c.connect(&slow);
    c.download_ok("cod5", &["--no-install"]);
    let begin = c.wait_event("got-game-files", |_| true);
    assert_eq!(
        begin["sources"].as_array().map(Vec::len),
        Some(2),
        "{begin}"
    );
    let per = c.bytes_per_source("cod5");
    let from_slow = per.get(&slow.peer_id).copied().unwrap_or(0);
    let total: u64 = per.values().sum();
    assert!(
        from_slow < total / 4,
        "the slow source sent {from_slow} of {total} bytes: {per:?}"
    );
    assert_same_tree(&fast_dir.path().join("cod5"), &games.path().join("cod5"));
}

/// `cnc4` roots with archives: (version, seed, payload size).
fn skewed(versions: &[(&str, u64, u64)]) -> (Vec<Node>, Vec<tempfile::TempDir>) {
    sources_of(
        versions
            .iter()
            .map(|(v, seed, size)| GameSpec::new("cnc4", v).with_archive(*seed, &[*size]))
            .collect(),
    )
}

#[test]
fn s15_three_way_skew() {
    let (srcs, dirs) = skewed(&[
        ("20250101", 1, 3 << 20),
        ("20250201", 2, 5 << 20),
        ("20250301", 3, 4 << 20),
    ]);
    let (c, games) = client();
    for s in &srcs {
        c.connect(s);
    }
    let rows = remote_rows(&c.json(&["list-games"]));
    assert_eq!(rows["cnc4"].0, "20250301");
    assert_eq!(rows["cnc4"].1, 3);
    c.download_ok("cnc4", &["--no-install"]);
    let got = c
        .game_events("cnc4")
        .into_iter()
        .find(|e| e["event"] == "got-game-files")
        .unwrap();
    assert_eq!(got["sources"], serde_json::json!([srcs[2].peer_id]));
    assert_eq!(got["version"], "20250301");
    let per = c.bytes_per_source("cnc4");
    assert_eq!(
        per.keys().collect::<Vec<_>>(),
        [&srcs[2].peer_id],
        "every chunk from the newest peer"
    );
    assert_same_tree(&dirs[2].path().join("cnc4"), &games.path().join("cnc4"));
}

#[test]
fn s16_stale_peer_present() {
    // B and C hold the same newest bytes (a 3-chunk file); A is older.
    let newest = |d: &Path| {
        GameSpec::new("cnc4", "20250201")
            .file(
                "cnc4.eti",
                0o644,
                Content::Random {
                    seed: 77,
                    size: 2 * CHUNK + 12345,
                },
            )
            .write(d)
            .unwrap();
    };
    let da = tempfile::tempdir().unwrap();
    GameSpec::new("cnc4", "20250101")
        .with_archive(5, &[1 << 20])
        .write(da.path())
        .unwrap();
    let (db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    newest(db.path());
    newest(dc.path());
    let (a, b, cc) = (
        source("a", da.path()),
        source("b", db.path()),
        source("c", dc.path()),
    );
    let (client, games) = client();
    for s in [&a, &b, &cc] {
        client.connect(s);
    }
    assert_eq!(remote_rows(&client.json(&["list-games"]))["cnc4"].1, 3);
    client.download_ok("cnc4", &["--no-install"]);
    let per = client.bytes_per_source("cnc4");
    assert!(
        !per.contains_key(&a.peer_id),
        "bytes from the stale peer: {per:?}"
    );
    assert!(per.keys().all(|p| *p == b.peer_id || *p == cc.peer_id));
    assert_same_tree(&db.path().join("cnc4"), &games.path().join("cnc4"));
}

#[test]
fn s17_latest_conflict() {
    let (srcs, _dirs) =
        conflict_setup(&[("20250101", 500), ("20250201", 1000), ("20250201", 2000)]);
    let (c, games) = client();
    for s in &srcs {
        c.connect(s);
    }
    let out = c.download("cnc4", &["--no-install"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.json()["reason"]
            .as_str()
            .unwrap()
            .contains("conflicting"),
        "{}",
        out.stdout
    );
    assert_not_committed(&c, games.path(), "cnc4");
}

#[test]
fn s34_many_small_files() {
    for count in [20usize, 2000] {
        let d = tempfile::tempdir().unwrap();
        GameSpec::new("cod5", "20250101")
            .with_small_files(count as u64, count, 1000)
            .write(d.path())
            .unwrap();
        let s = source("many", d.path());
        let (c, games) = client();
        c.connect(&s);
        let done = c.download_ok("cod5", &["--no-install"]);
        // Every file (and version.ini) is one chunk.
        assert_eq!(done["chunks"].as_u64(), Some(count as u64 + 1));
        let chunks = c
            .game_events("cod5")
            .into_iter()
            .filter(|e| e["event"] == "download-chunk-finished")
            .count();
        assert_eq!(chunks, count + 1);
        assert_same_tree(&d.path().join("cod5"), &games.path().join("cod5"));
    }
}

#[test]
fn s34_empty_files_and_folders() {
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .file("empty.dat", 0o644, Content::Bytes(Vec::new()))
        .file("deep/er/still.txt", 0o600, Content::Bytes(b"x".to_vec()))
        .write(d.path())
        .unwrap();
    // Folders the game ships empty (saves, logs): a copy has them too (protocol 13).
    let empty = ["saves", "mods/maps/custom", "deep/er/logs", "with space"];
    for f in empty {
        fs::create_dir_all(d.path().join("cod5").join(f)).unwrap();
    }
    let s = source("src", d.path());
    let (c, games) = client();
    // An empty folder of an earlier attempt that the game does not have goes.
    fs::create_dir_all(games.path().join("cod5/old/empty")).unwrap();
    c.connect(&s);
    let done = c.download_ok("cod5", &["--no-install"]);
    assert_eq!(done["chunks"], 2, "empty files need no chunk");
    assert_same_tree(&d.path().join("cod5"), &games.path().join("cod5"));
    for f in empty {
        assert!(games.path().join("cod5").join(f).is_dir(), "{f} not made");
    }
    assert!(!games.path().join("cod5/old").exists());
    // The copy serves them on: a third peer that knows only the client gets them too.
    let (third, games3) = client();
    third.connect(&c);
    third.download_ok("cod5", &["--no-install"]);
    assert_same_tree(&d.path().join("cod5"), &games3.path().join("cod5"));
    assert_eq!(
        fs::metadata(games.path().join("cod5/empty.dat"))
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_copy_without_the_empty_folders_still_serves_and_the_folders_are_made() {
    // Two sources of the same bytes: one lists an empty folder, the other (a copy made
    // before protocol 13, which dropped empty folders) does not. Both serve; the copy
    // gets the folder (on a tie the longer list wins).
    let spec = GameSpec::new("cod5", "20250101").with_archive(3, &[3 << 20]);
    let (with, without) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    spec.write(with.path()).unwrap();
    spec.write(without.path()).unwrap();
    fs::create_dir_all(with.path().join("cod5/saves")).unwrap();
    let (a, b) = (
        source("with", with.path()),
        source("without", without.path()),
    );
    let (c, games) = client();
    c.connect(&a);
    c.connect(&b);
    let done = c.download_ok("cod5", &["--no-install"]);
    let events = c.game_events("cod5");
    let got = events
        .iter()
        .find(|e| e["event"] == "got-game-files")
        .unwrap();
    assert_eq!(got["sources"].as_array().unwrap().len(), 2, "{got}");
    assert_eq!(done["event"], "download-finished");
    assert_same_tree(&with.path().join("cod5"), &games.path().join("cod5"));
}

/// An update of `cod5` from the older copy `old` writes to the version 20250301 that
/// `new` writes: the copy then equals the source.
fn updates_over(new: impl FnOnce(&Path), old: impl FnOnce(&Path)) {
    let d = tempfile::tempdir().unwrap();
    new(d.path());
    let games = tempfile::tempdir().unwrap();
    old(games.path());
    let s = source("src", d.path());
    let c = Node::start("client", games.path());
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    assert_same_tree(&d.path().join("cod5"), &games.path().join("cod5"));
    assert_eq!(c.local_row("cod5").unwrap()["version"], "20250301");
}

#[test]
fn an_update_that_turns_files_into_folders_replaces_them() {
    // The older copy has files named `saves` and `data`; the new version has folders
    // there (one empty, one holding a file).
    updates_over(
        |d| {
            GameSpec::new("cod5", "20250301")
                .file("data/x.bin", 0o644, Content::Bytes(b"x".to_vec()))
                .write(d)
                .unwrap();
            fs::create_dir_all(d.join("cod5/saves/slot1")).unwrap();
        },
        |games| {
            GameSpec::new("cod5", "20250101")
                .file("saves", 0o644, Content::Bytes(b"old".to_vec()))
                .file("data", 0o644, Content::Bytes(b"old".to_vec()))
                .write(games)
                .unwrap();
        },
    );
}

#[test]
fn an_update_that_turns_folders_into_files_replaces_them() {
    // The older copy has a folder `data` holding files and an empty folder `saves`; the
    // new version has files of those names. (Before: "Is a directory" on every retry,
    // the old copy's sentinel already gone.)
    updates_over(
        |d| {
            GameSpec::new("cod5", "20250301")
                .file("data", 0o644, Content::Bytes(b"new".to_vec()))
                .file("saves", 0o644, Content::Bytes(b"new".to_vec()))
                .write(d)
                .unwrap();
        },
        |games| {
            GameSpec::new("cod5", "20250101")
                .file("data/x.bin", 0o644, Content::Bytes(b"old".to_vec()))
                .file("data/deep/y.bin", 0o644, Content::Bytes(b"old".to_vec()))
                .write(games)
                .unwrap();
            fs::create_dir_all(games.join("cod5/saves/slot1")).unwrap();
        },
    );
}

#[test]
fn s35_unknown_id() {
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("mystery-game", "20250101")
        .with_archive(9, &[1000])
        .write(d.path())
        .unwrap();
    let s = Node::start_with(
        "mystery",
        d.path(),
        NodeOptions {
            catalog: Some("mystery-game Mystery\nggoo\n".into()),
            ..Default::default()
        },
    );
    assert_eq!(s.json(&["list-games"])["local"][0]["id"], "mystery-game");
    let (c, games) = client();
    c.connect(&s);
    assert!(remote_rows(&c.json(&["list-games"])).is_empty());
    let out = c.download("mystery-game", &[]);
    assert_eq!(out.code, 1);
    assert_eq!(out.error_kind(), "not-in-catalog", "{out:?}");
    assert!(
        out.stderr.contains("not in the local catalog"),
        "{}",
        out.stderr
    );
    assert_eq!(fs::read_dir(games.path()).unwrap().count(), 0);
}

#[test]
fn s36_latest_singleton() {
    let mut specs = vec![("20260501", 1u64, 2u64 << 20)];
    for i in 0..4 {
        specs.push(("20250101", 10 + i, 1 << 20));
    }
    let (srcs, dirs) = skewed(&specs);
    let (c, games) = client();
    for s in &srcs {
        c.connect(s);
    }
    let rows = remote_rows(&c.json(&["list-games"]));
    assert_eq!((rows["cnc4"].0.as_str(), rows["cnc4"].1), ("20260501", 5));
    c.download_ok("cnc4", &["--no-install"]);
    let per = c.bytes_per_source("cnc4");
    assert_eq!(per.keys().collect::<Vec<_>>(), [&srcs[0].peer_id]);
    assert_same_tree(&dirs[0].path().join("cnc4"), &games.path().join("cnc4"));
}

#[test]
fn s37_single_source_throughput() {
    let bytes: u64 = std::env::var("LANSPREAD_S37_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256 << 20);
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .file("cod5.eti", 0o644, Content::Sparse { size: bytes })
        .write(d.path())
        .unwrap();
    let s = source("src", d.path());
    let (c, games) = client();
    c.connect(&s);
    let done = c.download_ok("cod5", &["--no-install"]);
    assert_eq!(done["bytes"].as_u64(), Some(bytes + 9));
    for k in ["duration_ms", "mib_per_s", "mbit_per_s"] {
        assert!(done[k].as_f64().is_some_and(|v| v >= 0.0), "{k} in {done}");
    }
    eprintln!(
        "S37 ({} MiB): {:.1} MiB/s, {:.0} Mbit/s",
        bytes >> 20,
        done["mib_per_s"].as_f64().unwrap_or(0.0),
        done["mbit_per_s"].as_f64().unwrap_or(0.0)
    );
    assert_eq!(
        fs::metadata(games.path().join("cod5/cod5.eti"))
            .unwrap()
            .len(),
        bytes
    );
    assert_same_tree(&d.path().join("cod5"), &games.path().join("cod5"));
}

#[test]
fn update_replaces_an_older_root_and_removes_its_stale_files() {
    let (src, dirs) = skewed(&[("20250301", 3, 3 << 20)]);
    let games = tempfile::tempdir().unwrap();
    GameSpec::new("cnc4", "20250101")
        .with_archive(1, &[1 << 20])
        .file(
            "old/stale.dat",
            0o644,
            Content::Bytes(b"from the old version".to_vec()),
        )
        .write(games.path())
        .unwrap();
    let c = Node::start("client", games.path());
    c.connect(&src[0]);
    c.download_ok("cnc4", &["--no-install"]);
    assert_same_tree(&dirs[0].path().join("cnc4"), &games.path().join("cnc4"));
    assert!(!games.path().join("cnc4/old").exists(), "stale folder left");
    assert_eq!(c.local_row("cnc4").unwrap()["version"], "20250301");
}
