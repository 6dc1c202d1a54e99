//! Helpers of the install integration tests: the libarchive fixtures, game roots built
//! from them, and a manifest of an installed tree in the format of `expected/*.txt`.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The folder of libarchive's RAR test archives.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/rar/libarchive")
}

/// A game root `games/g` in a fresh temporary folder holding `files` (fixture name,
/// name in the root).
pub fn root_of(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("games/g");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("version.ini"), "20250101\n").unwrap();
    for (src, name) in files {
        fs::copy(fixtures().join(src), root.join(name)).unwrap();
    }
    (t, root)
}

/// The expected manifest of a fixture, sorted.
pub fn expected(name: &str) -> Vec<String> {
    let text = fs::read_to_string(fixtures().join("expected").join(format!("{name}.txt"))).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The manifest of an installed tree (the install marker left out), sorted.
pub fn manifest(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        let rel = path
            .strip_prefix(base)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        if rel == lanspread_install::INSTALLED_MARKER {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            let t = fs::read_link(&path).unwrap();
            out.push(format!("l {rel} -> {}", t.display()));
        } else if meta.is_dir() {
            out.push(format!("d {rel}"));
            walk(base, &path, out);
        } else {
            let bytes = fs::read(&path).unwrap();
            let sum = hex(&Sha256::digest(&bytes));
            out.push(format!("f {rel} {} {sum}", meta.size()));
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Asserts a refused install left nothing: no `local/`, no staging, nothing new next to
/// the root or the games folder.
pub fn assert_nothing_left(t: &tempfile::TempDir, root: &Path, what: &str) {
    assert!(!root.join("local").exists(), "{what}: local/ left behind");
    assert!(
        !root.join(".lanspread-staging").exists(),
        "{what}: staging left behind"
    );
    let top: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top, ["games"], "{what}");
    let games: Vec<_> = fs::read_dir(t.path().join("games"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(games, ["g"], "{what}");
}
