//! Crash-safety loop: the client daemon is SIGKILLed at spread-out points of downloads and
//! installs, restarted, and checked every time: never a committed `version.ini` over
//! wrong bytes, never a half-installed `local/` reported as installed, no stuck operation.
//! At the end the game downloads and installs cleanly.

use std::fs;
use std::path::Path;
use std::time::Duration;

use lanspread_fixtures::ALPHA;
use lanspread_scenarios::{assert_same_tree, lab};

use crate::downloads::{client, source};

const GAME: &str = "alienswarm";
/// Kills per run; `LANSPREAD_CRASH_ITERATIONS` raises it for a longer soak.
const ITERATIONS: u64 = 10;

/// What `local/` must hold once installed: the archive extracted by the install crate.
fn reference_install(src: &Path) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join(GAME);
    fs::create_dir(&root).unwrap();
    for e in fs::read_dir(src).unwrap().flatten() {
        if !e.file_type().unwrap().is_file() {
            continue;
        }
        fs::copy(e.path(), root.join(e.file_name())).unwrap();
    }
    lanspread_install::install_root(&root).unwrap();
    t
}

/// The invariants, checked on disk while the daemon is down.
fn check_disk(src: &Path, root: &Path, reference: &Path, round: u64) -> (bool, bool) {
    let committed = root.join("version.ini").exists();
    if committed {
        // A committed sentinel vouches for every byte.
        assert_same_tree(src, root);
    }
    let installed = root.join("local/.lanspread-installed").exists();
    if installed {
        assert!(
            committed,
            "round {round}: installed without a committed download"
        );
        assert_same_tree(&reference.join("local"), &root.join("local"));
    }
    (committed, installed)
}

#[test]
fn crash_loop_keeps_roots_consistent() {
    let iterations = std::env::var("LANSPREAD_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ITERATIONS);
    let src = lab().join(ALPHA).join(GAME);
    let reference = reference_install(&src);
    let reference = reference.path().join(GAME);
    let s = source("src", &lab().join(ALPHA));
    let (mut c, games) = client();
    let root = games.path().join(GAME);
    // A simple deterministic spread of kill points (milliseconds after the request).
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut states = std::collections::BTreeSet::new();
    for round in 0..iterations {
        c.connect(&s);
        let (committed, installed) = {
            let row = c.local_row(GAME);
            let flag = |k: &str| row.as_ref().is_some_and(|r| r[k] == true);
            (flag("downloaded"), flag("installed"))
        };
        let args: &[&str] = match (committed, installed) {
            (false, _) => &["download", GAME, "--detach"],
            (true, false) => &["install", GAME],
            // Installed: start over from an empty root (daemon down) next round.
            (true, true) => &[],
        };
        if args.is_empty() {
            c.kill();
            fs::remove_dir_all(&root).unwrap();
            c.restart();
            continue;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = seed % 900;
        let mut cmd = std::process::Command::new(lanspread_scenarios::bin("lanspread"));
        cmd.arg("--socket").arg(c.socket_path()).args(args);
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        c.kill();
        let _ = child.wait();
        let state = check_disk(&src, &root, &reference, round);
        states.insert(state);
        eprintln!(
            "round {round}: {args:?} killed after {delay} ms -> committed/installed {state:?}"
        );

        c.restart();
        // Nothing stuck, and the library says what the disk says.
        let status = c.json(&["status"]);
        assert!(
            status["operations"].as_array().unwrap().is_empty(),
            "round {round}: {status}"
        );
        let row = c.local_row(GAME);
        let flag = |k: &str| row.as_ref().is_some_and(|r| r[k] == true);
        assert_eq!((flag("downloaded"), flag("installed")), state, "{row:?}");
        assert!(!root.join(".lanspread-staging").exists());
        assert!(!root.join(".lanspread/incoming").exists());
    }
    // The kill points covered more than one outcome.
    assert!(
        states.len() >= 2,
        "all kills landed in one state: {states:?}"
    );

    // Finally everything completes from whatever was left.
    c.connect(&s);
    let row = c.local_row(GAME);
    if !row.as_ref().is_some_and(|r| r["downloaded"] == true) {
        c.download_ok(GAME, &[]);
    } else if !row.as_ref().is_some_and(|r| r["installed"] == true) {
        assert_eq!(c.cli(&["install", GAME]).code, 0);
    }
    c.kill();
    assert_eq!(
        check_disk(&src, &root, &reference, iterations),
        (true, true)
    );
}
