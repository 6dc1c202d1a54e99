//! Names that are one entry on the client's filesystem. On a filesystem that ignores
//! case (vfat, exFAT, CIFS, ext4 or tmpfs with casefold) `a.bin` and `A.bin` are one
//! file and `LOCAL` is the installer's `local`. This kernel has no such filesystem, so a
//! bind mount stands in: it makes two names one folder the same way.

use std::fs;

use lanspread_fixtures::{Content, GameSpec};
use lanspread_scenarios::{skip_privileged, BindMount, Node};

use crate::downloads::{assert_not_committed, source};

fn bytes(b: &[u8]) -> Content {
    Content::Bytes(b.to_vec())
}

#[test]
fn two_listed_files_that_are_one_file_here_fail_the_download_and_commit_nothing() {
    if skip_privileged("two_listed_files_that_are_one_file_here_fail_the_download") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250301")
        .file("a/x.bin", 0o644, bytes(b"the first file"))
        .file("b/x.bin", 0o644, bytes(b"the second one"))
        .write(d.path())
        .unwrap();
    let s = source("src", d.path());
    let games = tempfile::tempdir().unwrap();
    let root = games.path().join("cod5");
    for f in ["a", "b"] {
        fs::create_dir_all(root.join(f)).unwrap();
    }
    let one = BindMount::new(&root.join("a"), &root.join("b"));
    let c = Node::start("client", games.path());
    c.connect(&s);
    let out = c.download("cod5", &["--no-install"]);
    assert_eq!(out.code, 1, "both files' bytes went into one: {out:?}");
    let reason = out.json()["reason"].as_str().unwrap_or("").to_owned();
    assert!(
        reason.contains("a/x.bin") && reason.contains("b/x.bin") && reason.contains("one file"),
        "{reason}"
    );
    assert_not_committed(&c, games.path(), "cod5");
    drop(c);
    drop(one);
}

/// An older copy (20250101, `x.bin` = "old") of `id` in `games`, whose root looks to the
/// daemon like one on a filesystem that ignores case: `.LANSPREAD` is `.lanspread`.
fn case_blind_copy(games: &std::path::Path, id: &str) -> (std::path::PathBuf, BindMount) {
    GameSpec::new(id, "20250101")
        .file("x.bin", 0o644, bytes(b"old"))
        .write(games)
        .unwrap();
    let root = games.join(id);
    for f in [".lanspread", ".LANSPREAD"] {
        fs::create_dir_all(root.join(f)).unwrap();
    }
    let folded = BindMount::new(&root.join(".lanspread"), &root.join(".LANSPREAD"));
    (root, folded)
}

/// The older copy at `root` is as [`case_blind_copy`] made it, still committed.
fn still_the_older_copy(c: &Node, root: &std::path::Path, id: &str) {
    assert_eq!(
        fs::read_to_string(root.join("version.ini")).unwrap().trim(),
        "20250101"
    );
    assert_eq!(fs::read(root.join("x.bin")).unwrap(), b"old");
    assert_eq!(c.local_row(id).unwrap()["version"], "20250101");
}

#[test]
fn names_that_differ_only_in_case_are_refused_where_the_filesystem_ignores_case() {
    if skip_privileged("names_that_differ_only_in_case_are_refused") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("cnc4", "20250301")
        .file("x.bin", 0o644, bytes(b"new"))
        .file("data/a.bin", 0o644, bytes(b"lower"))
        .file("data/A.bin", 0o644, bytes(b"upper"))
        .write(d.path())
        .unwrap();
    let s = source("src", d.path());
    let games = tempfile::tempdir().unwrap();
    let (root, folded) = case_blind_copy(games.path(), "cnc4");
    let c = Node::start("client", games.path());
    c.connect(&s);
    let out = c.download("cnc4", &["--no-install"]);
    assert_eq!(out.code, 1, "{out:?}");
    let reason = out.json()["reason"].as_str().unwrap_or("").to_owned();
    assert!(
        reason.contains("data/A.bin") && reason.contains("are one name"),
        "{reason}"
    );
    // Refused before the committed version went (the inode check alone comes after).
    still_the_older_copy(&c, &root, "cnc4");
    assert!(!root.join("data").exists());
    drop(c);
    drop(folded);
}

#[test]
fn names_that_fold_to_reserved_ones_are_refused_where_the_filesystem_ignores_case() {
    if skip_privileged("names_that_fold_to_reserved_ones_are_refused") {
        return;
    }
    // The new version has a top-level folder `LOCAL`: an ordinary name on the source's
    // filesystem, the player's installed `local/` on one that ignores case (where the
    // update would have written into it, or removed it to put a file there).
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250301")
        .file("x.bin", 0o644, bytes(b"new"))
        .file("LOCAL/readme.txt", 0o644, bytes(b"from the source"))
        .write(d.path())
        .unwrap();
    let s = source("src", d.path());
    let games = tempfile::tempdir().unwrap();
    let (root, folded) = case_blind_copy(games.path(), "cod5");
    fs::create_dir_all(root.join("local")).unwrap();
    fs::write(root.join("local/save.dat"), b"the player's save").unwrap();
    let c = Node::start("client", games.path());
    c.connect(&s);
    let out = c.download("cod5", &["--no-install"]);
    assert_eq!(out.code, 1, "LOCAL/ written where it is local/: {out:?}");
    let reason = out.json()["reason"].as_str().unwrap_or("").to_owned();
    assert!(
        reason.contains("ignores case") && reason.contains("`LOCAL`"),
        "{reason}"
    );
    // Refused before anything changed: the committed version stays, and so does the
    // player's tree.
    still_the_older_copy(&c, &root, "cod5");
    assert_eq!(
        fs::read(root.join("local/save.dat")).unwrap(),
        b"the player's save"
    );
    assert!(!root.join("LOCAL").exists());
    drop(c);
    drop(folded);
}
