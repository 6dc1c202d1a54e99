//! Install: S5, S6, S32, S33.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use lanspread_fixtures::{Content, GameSpec, RandomReader, BRAVO};
use lanspread_scenarios::{assert_same_tree, lab};

use crate::downloads::{client, flow, source};

/// What the writer packed into a spec's archive: name → bytes.
fn packed(spec: &GameSpec) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for f in &spec.files {
        if let Content::Archive(entries) = &f.content {
            for e in entries {
                let bytes = match &e.content {
                    Content::Random { seed, size } => {
                        let mut v = Vec::new();
                        RandomReader::new(*seed, *size).read_to_end(&mut v).unwrap();
                        v
                    }
                    Content::Bytes(b) => b.clone(),
                    other => panic!("unexpected entry content {other:?}"),
                };
                out.insert(e.name.clone(), bytes);
            }
        }
    }
    out
}

/// Every regular file under `local/` except the install marker.
fn installed(local: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(local).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != ".lanspread-installed" && e.path().is_file() {
            out.insert(name, fs::read(e.path()).unwrap());
        }
    }
    out
}

#[test]
fn s05_auto_install() {
    let b = source("bravo", &lab().join(BRAVO));
    let (c, games) = client();
    c.connect(&b);
    let done = c.download_ok("cnctw", &[]);
    assert_eq!(done["event"], "download-finished");
    assert_eq!(done["install"]["event"], "install-finished");
    assert_eq!(
        flow(&c, "cnctw"),
        [
            "got-game-files",
            "download-begin",
            "download-finished",
            "install-begin",
            "install-finished"
        ]
    );
    let row = c.local_row("cnctw").unwrap();
    assert_eq!(
        (row["downloaded"].as_bool(), row["installed"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(
        installed(&games.path().join("cnctw/local")),
        packed(&GameSpec::lab_cnctw())
    );
    assert_same_tree(
        &lab().join(BRAVO).join("cnctw"),
        &games.path().join("cnctw"),
    );
}

#[test]
fn s06_install_uninstall_and_s32_reinstall() {
    let b = source("bravo", &lab().join(BRAVO));
    let (c, games) = client();
    c.connect(&b);
    c.download_ok("bfbc2", &["--no-install"]);
    let local = games.path().join("bfbc2/local");
    assert!(!local.exists());
    let done = c.json(&["install", "bfbc2"]);
    assert_eq!(done["event"], "install-finished");
    assert_eq!(done["game_id"], "bfbc2");
    assert_eq!(c.local_row("bfbc2").unwrap()["installed"], true);
    assert_eq!(installed(&local), packed(&GameSpec::lab_bfbc2()));
    assert_eq!(
        c.json(&["uninstall", "bfbc2"])["event"],
        "uninstall-finished"
    );
    let human = c.cli(&["install", "bfbc2"]);
    assert_eq!((human.code, human.stdout.trim()), (0, "installed bfbc2"));
    c.json(&["uninstall", "bfbc2"]);
    assert!(!local.exists());
    assert_eq!(c.local_row("bfbc2").unwrap()["installed"], false);
    assert_eq!(c.local_row("bfbc2").unwrap()["downloaded"], true);
    assert_same_tree(
        &lab().join(BRAVO).join("bfbc2"),
        &games.path().join("bfbc2"),
    );
    // S32: install again, without any transfer.
    c.json(&["install", "bfbc2"]);
    assert_eq!(c.local_row("bfbc2").unwrap()["installed"], true);
    let begins = c
        .game_events("bfbc2")
        .iter()
        .filter(|e| e["event"] == "download-begin")
        .count();
    assert_eq!(begins, 1, "no second transfer");
    let names: Vec<_> = c
        .game_events("bfbc2")
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.iter().filter(|n| *n == "install-finished").count(), 3);
    assert_eq!(
        names.iter().filter(|n| *n == "uninstall-finished").count(),
        2
    );
    // Refusals: unknown id, not downloaded.
    let out = c.cli(&["--json", "install", "mystery-game"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.error_kind(), "not-in-catalog", "{out:?}");
    assert!(
        out.stderr.contains("not in the local catalog"),
        "{}",
        out.stderr
    );
    let out = c.cli(&["--json", "install", "cod5"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.error_kind(), "not-found", "{out:?}");
}

#[test]
fn s33_install_after_external_change() {
    let b = source("bravo", &lab().join(BRAVO));
    let (c, games) = client();
    c.connect(&b);
    c.download_ok("cnc4", &["--no-install"]);
    // Replace the downloaded archive by another valid one.
    let other = tempfile::tempdir().unwrap();
    let spec = GameSpec::new("cnc4", "20250101").with_archive(4242, &[12345, 678]);
    spec.write(other.path()).unwrap();
    fs::copy(
        other.path().join("cnc4/cnc4.eti"),
        games.path().join("cnc4/cnc4.eti"),
    )
    .unwrap();
    c.json(&["install", "cnc4"]);
    assert_eq!(installed(&games.path().join("cnc4/local")), packed(&spec));
}

#[test]
fn a_damaged_archive_fails_the_install_with_its_kind() {
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("ggoo", "20250301")
        .file(
            "ggoo.eti",
            0o644,
            Content::Random {
                seed: 77,
                size: 4096,
            },
        )
        .write(d.path())
        .unwrap();
    let n = lanspread_scenarios::Node::start("damaged", d.path());
    let out = n.cli(&["--json", "install", "ggoo"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_kind(), "bad-archive", "{out:?}");
    let failed = n.wait_event("install-failed", |e| e["game_id"] == "ggoo");
    assert_eq!(failed["kind"], "bad-archive", "{failed}");
    assert!(
        failed["reason"].as_str().unwrap().contains("ggoo.eti"),
        "{failed}"
    );
    assert!(!d.path().join("ggoo/local").exists());
}

/// An install whose client hangs up (a Ctrl-C) goes on to its end: the wait ends (its
/// control slot is given back), the operation does not stop half-way.
#[test]
fn an_install_goes_on_when_its_client_hangs_up() {
    use std::io::Write;
    let d = tempfile::tempdir().unwrap();
    let spec = GameSpec::new("ggoo", "20250301").with_archive(4242, &[128 << 20, 128 << 20]);
    spec.write(d.path()).unwrap();
    let n = lanspread_scenarios::Node::start("hangs-up", d.path());
    let mut s = std::os::unix::net::UnixStream::connect(n.socket_path()).unwrap();
    s.write_all(b"{\"cmd\":\"install\",\"game\":\"ggoo\"}\n")
        .unwrap();
    n.wait_event("install-begin", |_| true);
    drop(s);
    n.wait_event("install-finished", |_| true);
    assert!(
        n.events_named("install-failed").is_empty(),
        "{:?}",
        n.events()
    );
    assert!(d.path().join("ggoo/local/.lanspread-installed").is_file());
    assert_eq!(n.local_row("ggoo").unwrap()["installed"], true);
}

/// `cancel GAME` during an install stops it: `install-failed` with kind `cancelled`, no
/// `local/` left behind (nothing was installed before), the game still downloaded, and
/// the next install succeeds. An install can finish before the cancel lands (it is
/// fast): then `cancel` says nothing runs, and the round is tried again.
#[test]
fn cancel_stops_a_running_install() {
    let d = tempfile::tempdir().unwrap();
    let spec = GameSpec::new("ggoo", "20250301").with_archive(4242, &[128 << 20, 128 << 20]);
    spec.write(d.path()).unwrap();
    let n = lanspread_scenarios::Node::start("installer", d.path());
    let local = d.path().join("ggoo/local");
    let mut cancelled = None;
    // `list-games` rows seen while an install ran: not *downloaded* (the contract: no
    // operation on it), whatever its sentinel says.
    let mut installing = Vec::new();
    for round in 0..8 {
        let before = n.events_named("install-begin").len();
        let out = std::thread::scope(|s| {
            let install = s.spawn(|| n.cli(&["--json", "install", "ggoo"]));
            lanspread_scenarios::wait_for("install-begin", || {
                (n.events_named("install-begin").len() > before).then_some(())
            });
            installing.extend(
                n.local_row("ggoo")
                    .filter(|r| r["availability"] == "Installing"),
            );
            let cancel = n.cli(&["--json", "cancel", "ggoo"]);
            (install.join().unwrap(), cancel)
        });
        match out {
            (install, cancel) if cancel.code == 0 => {
                cancelled = Some((install, round));
                break;
            }
            (install, cancel) => {
                // Too late: the install had finished.
                assert_eq!(install.code, 0, "{install:?}");
                assert_eq!(cancel.error_kind(), "not-found", "{cancel:?}");
                assert_eq!(n.cli(&["uninstall", "ggoo"]).code, 0);
            }
        }
    }
    let (install, round) = cancelled.expect("no cancel landed during an install in 8 rounds");
    assert!(!installing.is_empty(), "no row seen while an install ran");
    for row in &installing {
        assert_eq!(row["downloaded"], false, "{row}");
    }
    assert_eq!(install.code, 1, "round {round}: {install:?}");
    assert_eq!(install.error_kind(), "cancelled", "{install:?}");
    let failed = n.events_named("install-failed");
    assert_eq!(failed.last().unwrap()["kind"], "cancelled", "{failed:?}");
    assert!(!local.exists(), "a cancelled first install left local/");
    let row = n.local_row("ggoo").unwrap();
    assert_eq!(
        (row["downloaded"].clone(), row["installed"].clone()),
        (true.into(), false.into())
    );
    // No staging or trash left in the root.
    let names: Vec<String> = fs::read_dir(d.path().join("ggoo"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".lanspread-")),
        "{names:?}"
    );
    // And the next install succeeds.
    assert_eq!(n.cli(&["install", "ggoo"]).code, 0);
    assert_eq!(installed(&local), packed(&spec));
}
