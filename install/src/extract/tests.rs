//! Installs of archives made by our writer, and hostile archives made with the writer's
//! test-only option: each hostile one is refused, nothing lands outside staging, no
//! `local/` is left.

use super::*;
use crate::tree::uninstall_root;
use crate::{Rar5Writer, WriterOptions};
use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;

fn archive(path: &Path, entries: &[(&str, u32, &[u8])], unsafe_names: bool) {
    let f = fs::File::create(path).unwrap();
    let mut w = Rar5Writer::with_options(
        f,
        WriterOptions {
            allow_unsafe_names: unsafe_names,
        },
    )
    .unwrap();
    for (name, mode, data) in entries {
        w.add_file(
            name,
            *mode,
            1_700_000_000,
            data.len() as u64,
            Cursor::new(data.to_vec()),
        )
        .unwrap();
    }
    w.finish().unwrap();
}

fn root_with(entries: &[(&str, u32, &[u8])], unsafe_names: bool) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("games/cnctw");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("version.ini"), "20250101\n").unwrap();
    archive(&root.join("cnctw.eti"), entries, unsafe_names);
    (t, root)
}

fn assert_failed_clean(t: &tempfile::TempDir, root: &Path, err: InstallError) {
    assert!(!root.join("local").exists(), "{err}: local/ left behind");
    assert!(!root.join(STAGING).exists(), "{err}: staging left behind");
    // Nothing was written next to the root or the games dir.
    let mut top: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["games"], "{err}");
    let games: Vec<_> = fs::read_dir(t.path().join("games"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(games, ["cnctw"], "{err}");
}

#[test]
fn installs_bytes_and_modes_and_reinstalls() {
    let (_t, root) = root_with(
        &[
            ("bin/run.sh", 0o755, b"#!/bin/sh\n"),
            ("data/a.bin", 0o640, b"abc"),
        ],
        false,
    );
    archive(
        &root.join("b-extra.eti"),
        &[("extra.txt", 0o644, b"more")],
        false,
    );
    let mut seen = Vec::new();
    let s = install_root_with(&root, &mut |p| seen.push((p.done, p.total))).unwrap();
    assert_eq!((s.archives, s.files, s.bytes), (2, 3, 17));
    // Size known before the first byte, then once per extracted file, ending at the total.
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!((seen[0], seen[3]), ((0, 17), (17, 17)), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    let local = root.join("local");
    assert_eq!(fs::read(local.join("bin/run.sh")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::read(local.join("extra.txt")).unwrap(), b"more");
    assert_eq!(
        fs::metadata(local.join("bin/run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::metadata(local.join("data/a.bin"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert!(local.join(INSTALLED_MARKER).exists());
    // Reinstall after the archive changed: local/ holds the new contents only.
    archive(
        &root.join("b-extra.eti"),
        &[("other.txt", 0o644, b"new")],
        false,
    );
    install_root(&root).unwrap();
    assert!(!local.join("extra.txt").exists());
    assert_eq!(fs::read(local.join("other.txt")).unwrap(), b"new");
    uninstall_root(&root).unwrap();
    assert!(!local.exists());
    assert!(root.join("cnctw.eti").exists() && root.join("version.ini").exists());
}

#[test]
fn a_root_without_archives_installs_empty() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("version.ini"), "20250101").unwrap();
    let s = install_root(t.path()).unwrap();
    assert_eq!(s.files, 0);
    assert!(t.path().join("local").join(INSTALLED_MARKER).exists());
}

#[test]
fn hostile_names_are_refused() {
    for bad in ["../x", "../../x", "/abs/x", "a/../../x"] {
        let (t, root) = root_with(&[("ok.txt", 0o644, b"fine"), (bad, 0o644, b"evil")], true);
        let err = install_root(&root).unwrap_err();
        assert!(matches!(err, InstallError::UnsafeName(_)), "{bad}: {err}");
        assert_failed_clean(&t, &root, err);
    }
}

#[test]
fn clashing_archives_are_refused() {
    let (t, root) = root_with(&[("same.txt", 0o644, b"one")], false);
    archive(&root.join("z.eti"), &[("same.txt", 0o644, b"two")], false);
    let err = install_root(&root).unwrap_err();
    assert!(matches!(err, InstallError::Clash { .. }), "{err}");
    assert_failed_clean(&t, &root, err);
}

#[test]
fn corrupt_archives_are_refused() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8).collect();
    // A flipped data byte: the CRC check fails.
    let (t, root) = root_with(&[("big.bin", 0o644, &data)], false);
    let eti = root.join("cnctw.eti");
    let mut bytes = fs::read(&eti).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&eti, &bytes).unwrap();
    let err = install_root(&root).unwrap_err();
    assert!(matches!(err, InstallError::Archive { .. }), "{err}");
    assert_failed_clean(&t, &root, err);
    // A truncated archive.
    let (t, root) = root_with(&[("big.bin", 0o644, &data)], false);
    let eti = root.join("cnctw.eti");
    let bytes = fs::read(&eti).unwrap();
    fs::write(&eti, &bytes[..bytes.len() / 3]).unwrap();
    let err = install_root(&root).unwrap_err();
    assert!(matches!(err, InstallError::Archive { .. }), "{err}");
    assert_failed_clean(&t, &root, err);
}

#[test]
fn a_failed_reinstall_keeps_the_old_install() {
    let (_t, root) = root_with(&[("a.txt", 0o644, b"one")], false);
    install_root(&root).unwrap();
    archive(&root.join("cnctw.eti"), &[("../evil", 0o644, b"x")], true);
    assert!(install_root(&root).is_err());
    assert_eq!(fs::read(root.join("local/a.txt")).unwrap(), b"one");
}

#[test]
fn entry_paths() {
    let b = Path::new("/s");
    assert_eq!(safe_entry_path(b, "a/b").unwrap(), PathBuf::from("/s/a/b"));
    assert_eq!(safe_entry_path(b, "a\\b").unwrap(), PathBuf::from("/s/a/b"));
    for bad in ["", "..", "../a", "/a", "a/../../b", "."] {
        assert!(safe_entry_path(b, bad).is_err(), "{bad}");
    }
    // One component past 255 bytes (what a filesystem takes) is the archive's fault.
    let long = "é".repeat(128); // 256 bytes
    assert!(safe_entry_path(b, &format!("a/{long}")).is_err());
    assert!(
        safe_entry_path(b, &format!("a/{}", &long[2..])).is_ok(),
        "254 bytes"
    );
}

#[test]
fn a_cancelled_install_leaves_nothing_and_keeps_the_earlier_install() {
    let (t, root) = root_with(&[("a.txt", 0o644, b"one")], false);
    install_root(&root).unwrap();
    archive(
        &root.join("cnctw.eti"),
        &[("a.txt", 0o644, b"new"), ("b.txt", 0o644, &[5u8; 300_000])],
        false,
    );
    let stop = Arc::new(AtomicBool::new(false));
    // Stop as soon as the first file is out: the rest must not be installed.
    let mut seen = 0;
    let err = install_root_until(
        &root,
        &mut |p| {
            seen += 1;
            if p.done > 0 {
                stop.store(true, Ordering::Relaxed);
            }
        },
        &stop,
    )
    .unwrap_err();
    assert!(matches!(err, InstallError::Cancelled), "{err}");
    assert!(seen >= 2);
    assert_eq!(fs::read(root.join("local/a.txt")).unwrap(), b"one");
    assert!(!root.join("local/b.txt").exists());
    assert!(!root.join(STAGING).exists());
    // Stopped before it starts: same.
    let err = install_root_until(&root, &mut |_| {}, &stop).unwrap_err();
    assert!(matches!(err, InstallError::Cancelled), "{err}");
    let _ = t;
}

/// A folder standing for `/etc` beside the games dir: a private file.
fn outside(t: &tempfile::TempDir) -> PathBuf {
    let o = t.path().join("etc");
    fs::create_dir(&o).unwrap();
    // Not named like an entry: a file created through a swapped folder would show.
    fs::write(o.join("shadow"), b"secret").unwrap();
    fs::set_permissions(o.join("shadow"), fs::Permissions::from_mode(0o600)).unwrap();
    o
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let mode = fs::symlink_metadata(&p).unwrap().permissions().mode();
            let bytes = fs::read(&p).unwrap_or_default();
            (p.display().to_string(), bytes, mode)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_staging_folder_swapped_for_a_symlink_mid_install_takes_nothing_outside() {
    // A local user who can write the root swaps `d` of staging for a symlink to a folder
    // outside once the first file is out: the next file, and every mode, must not land
    // there (the daemon may run as root).
    let (t, root) = root_with(
        &[
            ("d/a.bin", 0o644, b"first"),
            ("d/b.bin", 0o666, &[7u8; 200_000]),
        ],
        false,
    );
    let out = outside(&t);
    let before = listing(&out);
    let staging = root.join(STAGING);
    let mut swapped = false;
    let err = install_root_with(&root, &mut |p| {
        if p.done > 0 && !swapped {
            swapped = true;
            fs::rename(staging.join("d"), staging.join("d.old")).unwrap();
            std::os::unix::fs::symlink(&out, staging.join("d")).unwrap();
        }
    })
    .unwrap_err();
    assert!(swapped, "{err}");
    assert_eq!(listing(&out), before, "{err}");
    assert!(!root.join("local").exists(), "{err}");
    assert!(!staging.exists(), "{err}");
}

#[test]
fn links_left_where_staging_local_and_trash_go_are_removed_not_followed() {
    let (t, root) = root_with(&[("a.txt", 0o444, b"one")], false);
    let out = outside(&t);
    fs::create_dir(out.join("sub")).unwrap();
    fs::write(out.join("sub/keep"), b"keep").unwrap();
    let before = listing(&out);
    // Left by someone: staging and trash as symlinks to the outside folder, `local` too.
    for name in [STAGING, TRASH, LOCAL] {
        std::os::unix::fs::symlink(&out, root.join(name)).unwrap();
    }
    install_root(&root).unwrap();
    assert_eq!(fs::read(root.join("local/a.txt")).unwrap(), b"one");
    assert!(fs::symlink_metadata(root.join(TRASH)).is_err());
    assert_eq!(listing(&out), before);
    assert_eq!(fs::read(out.join("sub/keep")).unwrap(), b"keep");
    // Uninstall with `local` a symlink again: the link goes, its target stays.
    fs::remove_dir_all(root.join("local")).unwrap();
    std::os::unix::fs::symlink(&out, root.join(LOCAL)).unwrap();
    uninstall_root(&root).unwrap();
    assert!(fs::symlink_metadata(root.join(LOCAL)).is_err());
    assert_eq!(listing(&out), before);
    // remove_tree of a symlink: the link only.
    std::os::unix::fs::symlink(&out, root.join("gone")).unwrap();
    crate::remove_tree(&root.join("gone")).unwrap();
    assert_eq!(listing(&out), before);
}
