//! Streamed verification (issue 22): every 1 MiB piece is checked against the validated
//! manifest as it arrives, before it is written. A lying source is caught at its first
//! bad piece, no unverified byte reaches the file, the pieces verified before are kept
//! (journalled, re-checked on disk at the next attempt) and only the rest of the chunk
//! is fetched again.

use std::fs;

use lanspread_fixtures::{Content, GameSpec};
use lanspread_scenarios::assert_same_tree;

use crate::downloads::{assert_not_committed, client, source};
use crate::failures::make_liar;
use crate::metrics::{scrape, with_metrics};

const MIB: u64 = 1 << 20;
/// One chunk of 12 pieces and a bit (a 13th, short piece).
const SIZE: u64 = 12 * MIB + 100;
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
        reason.contains(&format!("cod5.eti at {}: SHA-256 mismatch", 5 * MIB)),
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
