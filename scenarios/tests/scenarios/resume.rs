//! S39: a download interrupted by SIGKILL resumes after a restart, fetching only the
//! chunks that were not verified; a partial download of an older version is discarded.

use std::path::Path;
use std::time::{Duration, Instant};

use lanspread_fixtures::{Content, GameSpec};
use lanspread_scenarios::{assert_same_tree, Node};

use crate::downloads::{assert_not_committed, client, source};

/// Size of the test game's data file: 10 chunks of 32 MiB (plus version.ini).
const DATA: u64 = 10 * CHUNK_SIZE;
use lanspread_proto::CHUNK_SIZE;

fn game(dir: &Path, version: &str, seed: u64) {
    GameSpec::new("cod5", version)
        .file("cod5.eti", 0o644, Content::Random { seed, size: DATA })
        .write(dir)
        .unwrap();
}

/// Starts a detached download, lets `at_least` chunks finish, freezes the source so the
/// rest cannot finish, SIGKILLs the client, then thaws the source. Returns how many chunk
/// events the killed client had reported.
fn interrupt(c: &mut Node, s: &Node, at_least: usize) -> usize {
    let out = c.cli(&["download", "cod5", "--no-install", "--detach"]);
    assert_eq!(out.code, 0, "{out:?}");
    let start = Instant::now();
    let done = loop {
        let n = c.events_named("download-chunk-finished").len();
        if n >= at_least {
            break n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress{}",
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    s.signal(libc::SIGSTOP);
    c.kill();
    s.signal(libc::SIGCONT);
    done
}

#[test]
fn s39_resume_fetches_only_unverified_chunks() {
    let src = tempfile::tempdir().unwrap();
    game(src.path(), "20250101", 39);
    let s = source("src", src.path());
    let (mut c, games) = client();
    c.connect(&s);
    let before = interrupt(&mut c, &s, 3);
    assert!(!games.path().join("cod5/version.ini").exists());

    c.restart();
    assert_not_committed(&c, games.path(), "cod5");
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    let begin = &c.events_named("download-begin")[0];
    let chunks = begin["chunks"].as_u64().unwrap();
    let resumed = begin["resumed_chunks"].as_u64().unwrap();
    assert_eq!(chunks, 11, "{begin}");
    // Everything the killed client reported (and maybe a few in flight) is reused, and
    // the download really was cut short.
    assert!(
        resumed as usize >= before && resumed < chunks,
        "resumed {resumed} of {chunks}, {before} reported before the kill"
    );
    // The resumed bytes are the whole chunks and the pieces the fetches running at the
    // kill had verified of others (journalled as they went).
    let extra = begin["resumed_bytes"].as_u64().unwrap() - resumed * CHUNK_SIZE;
    assert!(
        extra.is_multiple_of(lanspread_proto::PIECE_SIZE)
            && extra < (chunks - resumed) * CHUNK_SIZE,
        "{begin}"
    );
    // Only the missing chunks crossed the network.
    let fetched = c.events_named("download-chunk-finished").len() as u64;
    assert_eq!(fetched, chunks - resumed);
    let done = &c.events_named("download-finished")[0];
    assert_eq!(done["resumed_bytes"], begin["resumed_bytes"]);
    assert_same_tree(&src.path().join("cod5"), &games.path().join("cod5"));
    // The journal is gone once committed.
    assert!(!games.path().join("cod5/.lanspread/partial").exists());
}

#[test]
fn s39_bytes_damaged_while_down_are_fetched_again() {
    let src = tempfile::tempdir().unwrap();
    game(src.path(), "20250101", 40);
    let s = source("src", src.path());
    let (mut c, games) = client();
    c.connect(&s);
    interrupt(&mut c, &s, 3);
    // Damage the first chunk on disk while the daemon is down: its journal line must not
    // be trusted.
    let data = games.path().join("cod5/cod5.eti");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();

    c.restart();
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    let begin = &c.events_named("download-begin")[0];
    let resumed = begin["resumed_chunks"].as_u64().unwrap();
    let fetched: Vec<u64> = c
        .events_named("download-chunk-finished")
        .iter()
        .filter(|e| e["path"] == "cod5.eti")
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert!(
        fetched.contains(&0),
        "damaged chunk not fetched: {fetched:?}"
    );
    // At least three chunks were verified before the kill and one of them may be the
    // damaged one.
    assert!(resumed >= 2, "{begin}");
    assert_eq!(
        c.events_named("download-chunk-finished").len() as u64,
        11 - resumed
    );
    assert_same_tree(&src.path().join("cod5"), &games.path().join("cod5"));
}

#[test]
fn s39_a_partial_download_of_an_older_version_is_discarded() {
    let src = tempfile::tempdir().unwrap();
    game(src.path(), "20250101", 41);
    let mut s = source("src", src.path());
    let (mut c, games) = client();
    c.connect(&s);
    interrupt(&mut c, &s, 3);

    // The source moves to a new version with other bytes.
    s.shutdown();
    std::fs::remove_dir_all(src.path().join("cod5")).unwrap();
    game(src.path(), "20250202", 42);
    s.restart();
    c.restart();
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    let begin = &c.events_named("download-begin")[0];
    assert_eq!(begin["version"], "20250202");
    assert_eq!(begin["resumed_chunks"], 0, "{begin}");
    assert_eq!(
        c.events_named("download-chunk-finished").len() as u64,
        begin["chunks"].as_u64().unwrap()
    );
    assert_same_tree(&src.path().join("cod5"), &games.path().join("cod5"));
}
