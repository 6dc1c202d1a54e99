//! A daemon that is not root (the shipped unit runs as its own user) installs, uninstalls
//! and reinstalls an archive whose folders are read-only (0555) or unreadable (0311) and
//! files 0444: every step works, and none leaves staging or trash behind. The steps run as
//! uid 65534 in a process of their own (this test binary again: [`NobodyCopy::rerun`]).
//! Needs root to become uid 65534; fails without it unless `LANSPREAD_SKIP_PRIVILEGED=1`.

use std::ffi::CString;
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use lanspread_install::{install_root, uninstall_root, Rar5Writer};
use lanspread_scenarios::{nobody_part, skip_privileged, NobodyCopy, NOBODY};

fn archive(path: &Path) {
    const MTIME: u32 = 1_700_000_000;
    let mut w = Rar5Writer::new(fs::File::create(path).unwrap()).unwrap();
    // Folders their owner may read and enter but not write, and one it may enter and
    // write but not read (removing it takes the make-writable step's handle: `O_PATH`,
    // chmod, then open), each with a read-only file.
    for (folder, mode, file, bytes) in [
        ("ro", 0o555, "ro/file", &b"abc"[..]),
        ("ro/sub", 0o555, "ro/sub/deep", b"d"),
        ("ro/sub/unread", 0o311, "ro/sub/unread/x", b"x"),
    ] {
        w.add_dir(folder, mode, MTIME).unwrap();
        let len = bytes.len() as u64;
        w.add_file(file, 0o444, MTIME, len, Cursor::new(bytes.to_vec()))
            .unwrap();
    }
    w.finish().unwrap();
}

/// The steps, run as uid 65534; the exit code names the failed step.
fn steps(root: &Path) -> i32 {
    let leftovers =
        || root.join(".lanspread-staging").exists() || root.join(".lanspread-trash").exists();
    let mode = |p: &str| {
        fs::symlink_metadata(root.join("local").join(p)).map(|m| m.permissions().mode() & 0o777)
    };
    if let Err(e) = install_root(root) {
        eprintln!("install: {e}");
        return 10;
    }
    let modes = [mode("ro"), mode("ro/sub/deep"), mode("ro/sub/unread")];
    if modes
        .iter()
        .map(|m| m.as_ref().ok())
        .ne([Some(&0o555), Some(&0o444), Some(&0o311)])
        || leftovers()
    {
        eprintln!("install: modes {modes:?}");
        return 11;
    }
    // Reinstall over the read-only tree: the old one moves aside and is removed.
    if let Err(e) = install_root(root) {
        eprintln!("reinstall: {e}");
        return 20;
    }
    if leftovers() {
        return 21;
    }
    if let Err(e) = uninstall_root(root) {
        eprintln!("uninstall: {e}");
        return 30;
    }
    if root.join("local").exists() || leftovers() {
        return 31;
    }
    if let Err(e) = install_root(root) {
        eprintln!("install after uninstall: {e}");
        return 40;
    }
    0
}

fn chown_tree(p: &Path) {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C path; lchown does not follow links.
    assert_eq!(
        unsafe { libc::lchown(c.as_ptr(), NOBODY, NOBODY) },
        0,
        "chown {}",
        p.display()
    );
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path());
        }
    }
}

#[test]
fn a_daemon_that_is_not_root_installs_uninstalls_and_reinstalls_read_only_folders() {
    if let Some(root) = nobody_part() {
        std::process::exit(steps(Path::new(&root)));
    }
    if skip_privileged(
        "a_daemon_that_is_not_root_installs_uninstalls_and_reinstalls_read_only_folders",
    ) {
        return;
    }
    let (t, root) = root_with_archive();
    chown_tree(t.path());
    as_nobody(
        "non_root::a_daemon_that_is_not_root_installs_uninstalls_and_reinstalls_read_only_folders",
        &root,
    );
    // What a restart would read from the disk: installed, nothing left over.
    assert!(root
        .join("local")
        .join(lanspread_install::INSTALLED_MARKER)
        .is_file());
    assert_eq!(fs::read(root.join("local/ro/sub/deep")).unwrap(), b"d");
    assert!(!root.join(".lanspread-staging").exists() && !root.join(".lanspread-trash").exists());
}

/// A root `games/g` in a fresh temporary folder with its sentinel and `game.eti`.
fn root_with_archive() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("games/g");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("version.ini"), "20250101\n").unwrap();
    archive(&root.join("game.eti"));
    (t, root)
}

/// Runs test `test` again as uid 65534 with `root` for its steps; fails unless every
/// step succeeds (the exit code names the one that failed).
fn as_nobody(test: &str, root: &Path) {
    let copy = NobodyCopy::of_this_test();
    let mut cmd = copy.rerun(test, root.as_os_str());
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = lanspread_scenarios::collect_within(
        lanspread_scenarios::spawn_copy(&mut cmd),
        lanspread_scenarios::CLI_LIMIT,
        test,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a step failed as uid {NOBODY}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A name that selects no test would run nothing and succeed.
    assert!(
        stdout.contains("running 1 test"),
        "{test} not run: {stdout}"
    );
}

/// Old trees the daemon cannot remove (a player's folder in `local/` owned by another
/// user; a crash's trash the same): a reinstall still succeeds — its new `local/` is in
/// place, so a failure would be a lie — and neither blocks the next uninstall or
/// install; both are moved aside for the start-up sweep.
#[test]
fn old_trees_the_daemon_cannot_remove_block_no_install_or_uninstall() {
    if let Some(root) = nobody_part() {
        std::process::exit(steps_beside_stuck_trees(Path::new(&root)));
    }
    if skip_privileged("old_trees_the_daemon_cannot_remove_block_no_install_or_uninstall") {
        return;
    }
    let (t, root) = root_with_archive();
    install_root(&root).unwrap();
    fs::create_dir(root.join(".lanspread-trash")).unwrap();
    chown_tree(t.path());
    // Made by root after the chown: uid 65534 cannot remove what is in them.
    for stuck in ["local/stuck", ".lanspread-trash/stuck"] {
        fs::create_dir(root.join(stuck)).unwrap();
        fs::write(root.join(stuck).join("save.dat"), b"mine").unwrap();
    }
    as_nobody(
        "non_root::old_trees_the_daemon_cannot_remove_block_no_install_or_uninstall",
        &root,
    );
    assert_eq!(fs::read(root.join("local/ro/sub/deep")).unwrap(), b"d");
    assert_eq!(aside(&root), 2, "what could not be removed is kept, aside");
}

/// How many trees were moved aside in `root`.
fn aside(root: &Path) -> usize {
    fs::read_dir(root)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(lanspread_install::TRASH_ASIDE)
        })
        .count()
}

/// The steps beside trees uid 65534 cannot remove; the exit code names the failed step.
fn steps_beside_stuck_trees(root: &Path) -> i32 {
    if let Err(e) = install_root(root) {
        eprintln!("reinstall: {e}");
        return 10;
    }
    let fresh = root.join("local").join(lanspread_install::INSTALLED_MARKER);
    if !fresh.is_file() || root.join("local/stuck").exists() {
        return 11;
    }
    if root.join(".lanspread-trash").exists() || aside(root) != 2 {
        eprintln!("aside: {}", aside(root));
        return 12;
    }
    if let Err(e) = uninstall_root(root) {
        eprintln!("uninstall: {e}");
        return 20;
    }
    if root.join("local").exists() {
        return 21;
    }
    if let Err(e) = install_root(root) {
        eprintln!("install after uninstall: {e}");
        return 30;
    }
    0
}
