//! A local user who can write to the games folder (a group-writable share on a LAN file
//! server) while the daemon, perhaps running as root, downloads or serves there: links put
//! in the daemon's way never take a write, a mode change or a removal outside the root,
//! and a file swapped during a download is never committed as the game.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use lanspread_fixtures::{Content, GameSpec};
use lanspread_scenarios::{Node, NodeOptions};

/// Every file under `dir` with its size and hash (what a folder outside the root holds).
fn contents(dir: &Path) -> lanspread_scenarios::Manifest {
    lanspread_scenarios::manifest(dir)
}

/// A folder standing for `/etc`: a private file named like the game's.
fn outside() -> tempfile::TempDir {
    let o = tempfile::tempdir().unwrap();
    fs::write(o.path().join("x.bin"), b"secret").unwrap();
    fs::create_dir(o.path().join("incoming")).unwrap();
    fs::write(o.path().join("incoming/version.ini"), b"19990101").unwrap();
    o
}

#[test]
fn a_folder_swapped_for_a_symlink_mid_download_takes_nothing_and_is_not_committed() {
    let src = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .file(
            "data/x.bin",
            0o644,
            Content::Random {
                seed: 7,
                size: 24 << 20,
            },
        )
        .write(src.path())
        .unwrap();
    let s = Node::start("src", src.path());
    let games = tempfile::tempdir().unwrap();
    let out = outside();
    let before = contents(out.path());
    let c = Node::start_with(
        "client",
        games.path(),
        NodeOptions {
            args: vec!["--max-download-mib-s".into(), "4".into()],
            ..Default::default()
        },
    );
    c.connect(&s);
    let r = c.cli(&["download", "cod5", "--no-install", "--detach"]);
    assert_eq!(r.code, 0, "{r:?}");
    // The files exist once the download has begun: then `data` goes, a symlink to the
    // outside folder comes in its place.
    c.wait_event("download-begin", |_| true);
    let root = games.path().join("cod5");
    fs::rename(root.join("data"), root.join("data.old")).unwrap();
    symlink(out.path(), root.join("data")).unwrap();
    let failed = c.wait_event("download-failed", |_| true);
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("data/x.bin") && reason.contains("gone"),
        "{failed}"
    );
    assert!(!root.join("version.ini").exists());
    assert_eq!(contents(out.path()), before, "the outside folder changed");
    assert!(c.events_named("download-finished").is_empty());
}

/// A source's files of mode 0 (its `version.ini` too): the copy keeps owner read, so a
/// daemon that is not root can still serve, install and commit it (the manifest's mode
/// alone left a committed game no one could read, or a sentinel no commit could).
#[test]
fn a_copy_keeps_owner_read_whatever_mode_the_source_gives() {
    use std::os::unix::fs::PermissionsExt;
    let src = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .file("data/x.bin", 0o000, Content::Bytes(b"game bytes".to_vec()))
        .write(src.path())
        .unwrap();
    let sentinel = src.path().join("cod5/version.ini");
    fs::set_permissions(&sentinel, fs::Permissions::from_mode(0o000)).unwrap();
    let s = Node::start("src", src.path());
    let games = tempfile::tempdir().unwrap();
    let c = Node::start("client", games.path());
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    let mode = |p: &str| {
        fs::metadata(games.path().join("cod5").join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!((mode("data/x.bin"), mode("version.ini")), (0o400, 0o400));
    assert_eq!(c.local_row("cod5").unwrap()["availability"], "Ready");
    // The copy and its original describe the files alike: a third peer's download from
    // both has two voters for one manifest, not a tie of two.
    let third = tempfile::tempdir().unwrap();
    let d = Node::start("third", third.path());
    d.connect(&s);
    d.connect(&c);
    d.download_ok("cod5", &["--no-install"]);
    let got = d.wait_event("got-game-files", |_| true);
    assert_eq!(got["sources"].as_array().map(Vec::len), Some(2), "{got}");
}

#[test]
fn links_left_in_a_root_lead_nowhere_outside_on_either_side() {
    let src = tempfile::tempdir().unwrap();
    let spec = GameSpec::new("cod5", "20250101")
        .with_archive(5, &[3 << 20])
        .file("data/x.bin", 0o444, Content::Bytes(b"game bytes".to_vec()));
    spec.write(src.path()).unwrap();
    // The source's `.lanspread` (where it keeps its hash cache) is a symlink out.
    let src_out = outside();
    let src_before = contents(src_out.path());
    symlink(src_out.path(), src.path().join("cod5/.lanspread")).unwrap();
    let s = Node::start("src", src.path());

    // On the client, a game root left from before: its file is a hard link to a private
    // file, a file it must remove is a symlink to another.
    let games = tempfile::tempdir().unwrap();
    let out = outside();
    fs::write(out.path().join("old.bin"), b"keep").unwrap();
    let before = contents(out.path());
    let root = games.path().join("cod5");
    fs::create_dir_all(root.join("data")).unwrap();
    fs::hard_link(out.path().join("x.bin"), root.join("data/x.bin")).unwrap();
    symlink(out.path().join("old.bin"), root.join("old.bin")).unwrap();
    let c = Node::start("client", games.path());
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    assert_eq!(fs::read(root.join("data/x.bin")).unwrap(), b"game bytes");
    let mode = fs::metadata(root.join("data/x.bin")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o7777,
        0o444
    );
    assert!(fs::symlink_metadata(root.join("old.bin")).is_err());
    assert_eq!(
        contents(out.path()),
        before,
        "the client's outside folder changed"
    );
    assert_eq!(
        contents(src_out.path()),
        src_before,
        "the source's outside folder changed"
    );

    // The client's own `.lanspread` a symlink out: the next download of the game fails
    // up front, naming it, and creates nothing there.
    let newer = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250202")
        .file("data/x.bin", 0o644, Content::Bytes(b"newer".to_vec()))
        .write(newer.path())
        .unwrap();
    let s2 = Node::start("src2", newer.path());
    fs::remove_dir_all(root.join(".lanspread")).ok();
    symlink(out.path(), root.join(".lanspread")).unwrap();
    c.connect(&s2);
    let r = c.download("cod5", &["--no-install"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains(".lanspread"), "{r:?}");
    // The version it had stays committed.
    assert_eq!(
        fs::read_to_string(root.join("version.ini")).unwrap().trim(),
        "20250101"
    );
    assert_eq!(
        contents(out.path()),
        before,
        "the client's outside folder changed"
    );
}
