//! Streamed verification (issue 22): every 1 MiB piece is checked against the validated
//! manifest as it arrives, before it is written. A lying source is caught at its first
//! bad piece, no unverified byte reaches the file, the pieces verified before are kept
//! (journalled, re-checked on disk at the next attempt) and only the rest of the chunk
//! is fetched again.

use std::fs;

use lanspread_fixtures::{Content, GameSpec};
use lanspread_scenarios::{assert_same_tree, WAIT};

use crate::downloads::{assert_not_committed, client, source};
use crate::failures::make_liar;
use crate::metrics::{scrape, with_metrics};

const MIB: u64 = 1 << 20;
/// One unit (and chunk) of 7 pieces and a bit (an 8th, short piece).
const SIZE: u64 = 7 * MIB + 100;
const _: () = assert!(SIZE <= lanspread_proto::UNIT_SIZE);
/// The liar's flipped byte: in piece 5.
const BAD_AT: u64 = 5 * MIB + 7;

fn game(dir: &std::path::Path) {
    GameSpec::new("cod5", "20250101")
        .file(
            "cod5.eti",
            0o644,
            Content::Random {
                seed: 22,
                size: SIZE,
            },
        )
        .write(dir)
        .unwrap();
}

#[test]
fn a_liar_is_caught_at_its_bad_piece_and_only_the_rest_is_fetched_again() {
    let (good, bad) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    game(good.path());
    game(bad.path());
    make_liar(bad.path(), &["cod5.eti"], BAD_AT);
    let mut liar = source("liar", bad.path());
    let (c, games) = client();
    c.connect(&liar);

    // The liar alone: the download fails at the piece that holds the bad byte.
    let out = c.download("cod5", &["--no-install"]);
    assert_eq!(out.code, 1, "{out:?}");
    let reason = out.json()["reason"].as_str().unwrap_or_default().to_owned();
    assert!(
        reason.contains(&format!("cod5.eti at {}: hash mismatch", 5 * MIB)),
        "the bad piece is named: {reason}"
    );
    assert_not_committed(&c, games.path(), "cod5");
    // The five pieces before it were verified and written; nothing after them was.
    let root = games.path().join("cod5");
    let want = fs::read(good.path().join("cod5/cod5.eti")).unwrap();
    let have = fs::read(root.join("cod5.eti")).unwrap();
    assert_eq!(have.len() as u64, SIZE);
    assert!(have[..5 * MIB as usize] == want[..5 * MIB as usize]);
    assert!(
        have[5 * MIB as usize..].iter().all(|&b| b == 0),
        "no unverified byte was written"
    );
    let journal = fs::read_to_string(root.join(".lanspread/partial")).unwrap();
    assert!(
        journal.lines().any(|l| l == format!("0+{}", 5 * MIB)),
        "the kept pieces are journalled: {journal}"
    );
    liar.shutdown();

    // Piece 2 rots on the client's disk meanwhile: the next attempt re-checks the kept
    // pieces, keeps the two good ones in front of it and fetches the rest alone.
    let mut rotten = have;
    rotten[2 * MIB as usize + 1] ^= 0xff;
    fs::write(root.join("cod5.eti"), &rotten).unwrap();
    let g = with_metrics("good", good.path(), &[]);
    c.connect(&g);
    c.download_ok("cod5", &["--no-install"]);
    assert_same_tree(&good.path().join("cod5"), &root);
    // The two kept pieces count as resumed (not in the rate), at the start and the end.
    for name in ["download-begin", "download-finished"] {
        let last = c.events_named(name).pop().unwrap();
        assert_eq!(last["resumed_bytes"], 2 * MIB, "{last}");
    }
    // ... and the chunk they belong to says so when it is verified (a progress bar and
    // the received-bytes metrics count only the rest).
    let chunk = c
        .events_named("download-chunk-finished")
        .into_iter()
        .rfind(|e| e["path"] == "cod5.eti")
        .unwrap();
    assert_eq!(chunk["offset"], 0, "{chunk}");
    assert_eq!(chunk["resumed_bytes"], 2 * MIB, "{chunk}");
    // The source counts an answer's bytes once it ends: wait for the figure to settle.
    let sentinel = fs::metadata(root.join("version.ini")).unwrap().len();
    let expected = SIZE - 2 * MIB + sentinel;
    let sent = || {
        scrape(&g)
            .value("lanspread_game_sent_bytes_total", &[("game", "cod5")])
            .unwrap_or(0.0) as u64
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sent() != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        sent(),
        expected,
        "the good source sent the chunk from piece 2 on and the sentinel"
    );
}

/// The source's count of bytes it sent of cod5, once it stopped moving.
fn settled_sent(n: &lanspread_scenarios::Node) -> u64 {
    let read = || {
        scrape(n)
            .value("lanspread_game_sent_bytes_total", &[("game", "cod5")])
            .unwrap_or(0.0) as u64
    };
    let mut last = read();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// A source folder with `cod5`: one 32 MiB chunk of random bytes; and its size.
fn one_chunk_game(seed: u64) -> (tempfile::TempDir, u64) {
    let src = tempfile::tempdir().unwrap();
    let size = lanspread_proto::CHUNK_SIZE;
    GameSpec::new("cod5", "20250101")
        .file("cod5.eti", 0o644, Content::Random { seed, size })
        .write(src.path())
        .unwrap();
    (src, size)
}

/// Bytes of the archive of [`one_chunk_game`] (four 8 MiB units, 0–3; the sentinel is
/// unit 4, always fetched again) a journal records: whole units, and the latest first
/// pieces of others.
fn journalled(journal: &str) -> u64 {
    let unit = lanspread_proto::UNIT_SIZE;
    let mut units = std::collections::BTreeMap::new();
    for line in journal.lines().skip(1) {
        let (u, b) = match line.split_once('+') {
            None => (line, unit),
            Some((u, b)) => (u, b.parse().unwrap()),
        };
        let u: u64 = u.parse().unwrap();
        if u < 4 && units.get(&u) != Some(&unit) {
            units.insert(u, b);
        }
    }
    units.values().sum()
}

#[test]
fn a_cancelled_download_keeps_the_pieces_its_running_fetch_verified() {
    // One 32 MiB chunk (four units) at 4 MiB/s: its fetches are part-way when the
    // download is cancelled.
    let (src, size) = one_chunk_game(23);
    let s = with_metrics("src", src.path(), &[]);
    let games = tempfile::tempdir().unwrap();
    let c = crate::util::node_with_args("client", games.path(), &["--max-download-mib-s", "4"]);
    c.connect(&s);
    let out = c.cli(&["download", "cod5", "--no-install", "--detach"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    c.wait_event("download-begin", |_| true);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(c.cli(&["cancel", "cod5"]).code, 0);
    c.wait_event("download-failed", |_| true);
    let root = games.path().join("cod5");
    let journal = fs::read_to_string(root.join(".lanspread/partial")).unwrap();
    let kept = journalled(&journal);
    assert!(
        kept >= MIB && kept.is_multiple_of(MIB) && kept < size,
        "the running fetches' verified pieces are journalled: {journal}"
    );
    let before = settled_sent(&s);

    // Resumed without the limit: only the rest of each unit comes again.
    assert_eq!(c.cli(&["limit", "--download-mib-s", "off"]).code, 0);
    c.download_ok("cod5", &["--no-install"]);
    assert_same_tree(&src.path().join("cod5"), &root);
    let begin = c.events_named("download-begin").pop().unwrap();
    assert_eq!(begin["resumed_bytes"], kept, "{begin} {journal}");
    assert_eq!(begin["resumed_chunks"], 0, "{begin}");
    // A failed attempt never leaves a received sentinel behind: it comes again.
    let sentinel = fs::metadata(root.join("version.ini")).unwrap().len();
    assert_eq!(
        settled_sent(&s) - before,
        size - kept + sentinel,
        "kept {kept} of {size}: {journal}"
    );
}

#[test]
fn a_crashed_download_keeps_what_its_running_fetch_verified_and_status_showed_it() {
    // One 32 MiB chunk at 4 MiB/s: no chunk ends for 8 s, so nothing but the fetch's own
    // progress tells `status` or the journal what arrived.
    let (src, size) = one_chunk_game(24);
    let s = source("src", src.path());
    let games = tempfile::tempdir().unwrap();
    let mut c = crate::util::node_with_args("client", games.path(), &["--max-download-mib-s", "4"]);
    c.connect(&s);
    // A CLI waits for the download to end.
    let waiter = std::process::Command::new(lanspread_scenarios::bin("lanspread"))
        .arg("--socket")
        .arg(c.socket_path())
        .args(["--json", "download", "cod5", "--no-install"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    c.wait_event("download-begin", |_| true);
    // `status` counts the verified bytes of the chunk on its way.
    let start = std::time::Instant::now();
    let shown = loop {
        let st = c.json(&["status"]);
        let done = st["operations"][0]["done_bytes"].as_u64().unwrap_or(0);
        if done >= 12 * MIB {
            break done;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "status stayed at {done} bytes: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(shown < size, "the chunk is still on its way: {shown}");
    // The game is busy, not missing, for an install or uninstall meanwhile.
    for op in ["install", "uninstall"] {
        let out = c.cli(&["--json", op, "cod5"]);
        assert_eq!(out.code, 1, "{op}: {out:?}");
        assert_eq!(out.error_kind(), "busy", "{op}: {out:?}");
    }
    let whole = c.events_named("download-chunk-finished");
    assert!(
        whole.iter().all(|e| e["path"] != "cod5.eti"),
        "the chunk ended already: {whole:?}"
    );
    // A crash: what the fetches verified was journalled as it went (every 2 MiB of a
    // unit).
    c.kill();
    // The waiting CLI says the daemon is gone (exit 3), not that it has a bug.
    let out = lanspread_scenarios::collect_within(waiter, WAIT, "the waiting CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains(r#""kind":"daemon-unreachable""#),
        "{stdout}"
    );
    c.restart();
    assert_not_committed(&c, games.path(), "cod5");
    assert_eq!(c.cli(&["limit", "--download-mib-s", "off"]).code, 0);
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    let begin = c.events_named("download-begin").pop().unwrap();
    let resumed = begin["resumed_bytes"].as_u64().unwrap();
    assert!(
        resumed >= 8 * MIB && resumed <= shown && resumed.is_multiple_of(MIB),
        "resumed {resumed} after {shown} shown: {begin}"
    );
    assert_same_tree(&src.path().join("cod5"), &games.path().join("cod5"));
}
