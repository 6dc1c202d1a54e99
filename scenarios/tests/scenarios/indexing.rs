//! Time to first byte (issue 22): a source hashes its ready games in the background after
//! its scan and after every library change (`local-game-indexed`), so a manifest request
//! is answered from its cache; a source asked before it got there hashes on request and
//! tells the downloader how far it is (`download-hashing`, `status` state `hashing`),
//! which keeps the download waiting however long the hashing takes.
//!
//! The sources report hashing progress every 20 ms here (`LANSPREAD_HASH_REPORT_MS`), so
//! any hashing on request shows up at the downloader.

use lanspread_fixtures::{Content, GameSpec};
use lanspread_scenarios::{wait_for, Node, NodeOptions};

use crate::downloads::client;

const MIB: u64 = 1 << 20;

fn spec(id: &str, size: u64) -> GameSpec {
    GameSpec::new(id, "20250101").file(&format!("{id}.eti"), 0o644, Content::Sparse { size })
}

/// A source that reports hashing often; `index_delay_ms` holds its background indexer
/// back (a source asked before it indexed).
fn source(dir: &std::path::Path, index_delay_ms: u64) -> Node {
    Node::start_with(
        "src",
        dir,
        NodeOptions {
            env: vec![
                ("LANSPREAD_HASH_REPORT_MS".into(), "20".into()),
                (
                    "LANSPREAD_INDEX_DELAY_MS".into(),
                    index_delay_ms.to_string(),
                ),
            ],
            ..NodeOptions::default()
        },
    )
}

#[test]
fn a_source_indexes_its_games_in_the_background_and_answers_manifests_from_the_cache() {
    let src = tempfile::tempdir().unwrap();
    spec("cnc4", 256 * MIB).write(src.path()).unwrap();
    let s = source(src.path(), 0);
    // Hashed after the start-up scan, with nobody asking.
    let indexed = s.wait_event("local-game-indexed", |e| e["game_id"] == "cnc4");
    assert_eq!(indexed["hashed_bytes"], indexed["bytes"], "{indexed}");
    assert!(indexed["bytes"].as_u64().unwrap() > 256 * MIB, "{indexed}");
    // A game copied in while it runs is hashed after the rescan that finds it. Written
    // next to the games dir and moved in whole: written in place on a loaded machine, a
    // pause longer than the watch's debounce lets a rescan index it half-written, and
    // the rest of the copy makes it hash again (the manifest request then waits for it).
    let staging = tempfile::tempdir_in(src.path().parent().unwrap()).unwrap();
    spec("ggoo", 128 * MIB).write(staging.path()).unwrap();
    std::fs::rename(staging.path().join("ggoo"), src.path().join("ggoo")).unwrap();
    let added = s.wait_event("local-game-indexed", |e| e["game_id"] == "ggoo");
    assert_eq!(added["hashed_bytes"], added["bytes"], "{added}");
    assert!(added["bytes"].as_u64().unwrap() > 128 * MIB, "{added}");

    let (c, _games) = client();
    c.connect(&s);
    for game in ["cnc4", "ggoo"] {
        c.download_ok(game, &["--no-install"]);
    }
    // The manifests came from the cache: no source hashed while a download waited.
    assert_eq!(
        c.events_named("download-hashing"),
        Vec::<serde_json::Value>::new()
    );
    // Each game was read once, by the indexer.
    let per_game = |g: &str| {
        s.events_named("local-game-indexed")
            .iter()
            .filter(|e| e["game_id"] == g)
            .count()
    };
    assert_eq!((per_game("cnc4"), per_game("ggoo")), (1, 1));
    // The downloaded copies are known by their verified hashes: the client's indexer had
    // nothing to read either.
    wait_for("the client's library", || {
        (c.local_row("ggoo")?["availability"] == "Ready").then_some(())
    });
    assert_eq!(
        c.events_named("local-game-indexed"),
        Vec::<serde_json::Value>::new()
    );
}

#[test]
fn a_source_asked_before_it_indexed_reports_its_hashing_and_is_waited_for() {
    let src = tempfile::tempdir().unwrap();
    spec("cnc4", 512 * MIB).write(src.path()).unwrap();
    let s = source(src.path(), 600_000);
    let (c, _games) = client();
    c.connect(&s);
    let done = c.download_ok("cnc4", &["--no-install"]);
    assert_eq!(done["event"], "download-finished", "{done}");
    let reports = c.events_named("download-hashing");
    assert!(!reports.is_empty(), "no hashing reported");
    let total = done["bytes"].as_u64().unwrap();
    let mut last = 0;
    for r in &reports {
        assert_eq!(r["peer_id"], s.peer_id.as_str(), "{r}");
        assert_eq!(r["total_bytes"], total, "{r}");
        let d = r["done_bytes"].as_u64().unwrap();
        assert!(
            d > last || last == 0 && d == 0,
            "progress moves forward: {reports:?}"
        );
        assert!(d <= total);
        last = d;
    }
    // Reports come before the manifest is taken.
    let names: Vec<String> = c
        .game_events("cnc4")
        .iter()
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    let first_files = names.iter().position(|n| n == "got-game-files").unwrap();
    let last_report = names.iter().rposition(|n| n == "download-hashing").unwrap();
    assert!(last_report < first_files, "{names:?}");
    // The source hashed on request, not in the background.
    assert_eq!(
        s.events_named("local-game-indexed"),
        Vec::<serde_json::Value>::new()
    );
}

#[test]
fn status_shows_a_download_waiting_for_a_source_that_hashes() {
    // 4 GiB (sparse): seconds of hashing, enough to watch; cancelled before any transfer.
    let src = tempfile::tempdir().unwrap();
    spec("cod5", 4096 * MIB).write(src.path()).unwrap();
    let s = source(src.path(), 600_000);
    let (c, games) = client();
    c.connect(&s);
    let out = c.cli(&["download", "cod5", "--no-install", "--detach"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let op = wait_for("a download waiting for the source's hashing", || {
        let st = c.json(&["status"]);
        let op = st["operations"].as_array()?.first()?.clone();
        (op["state"] == "hashing").then_some(op)
    });
    assert_eq!(op["kind"], "download", "{op}");
    assert_eq!(op["total_bytes"], 0, "not sized yet: {op}");
    let h = &op["hashing"];
    let total = h["total_bytes"].as_u64().unwrap();
    assert!(total > 4096 * MIB && total < 4096 * MIB + 16, "{op}");
    assert!(h["done_bytes"].as_u64().unwrap() < total, "{op}");
    let human = c.cli(&["status"]).stdout;
    assert!(
        human.contains("download cod5: waiting for a source to hash it"),
        "{human}"
    );
    let out = c.cli(&["cancel", "cod5"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    c.wait_event("download-failed", |e| e["game_id"] == "cod5");
    assert!(!games.path().join("cod5/version.ini").exists());
}
