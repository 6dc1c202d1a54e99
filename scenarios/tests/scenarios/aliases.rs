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
    GameSpec::new("cod5", "20250101")
        .file("x.bin", 0o644, bytes(b"old"))
        .write(games.path())
        .unwrap();
    let root = games.path().join("cod5");
    fs::create_dir_all(root.join("local")).unwrap();
    fs::write(root.join("local/save.dat"), b"the player's save").unwrap();
    // `.LANSPREAD` is `.lanspread`, as on a filesystem that ignores case.
    for f in [".lanspread", ".LANSPREAD"] {
        fs::create_dir_all(root.join(f)).unwrap();
    }
    let folded = BindMount::new(&root.join(".lanspread"), &root.join(".LANSPREAD"));
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
    assert_eq!(
        fs::read_to_string(root.join("version.ini")).unwrap().trim(),
        "20250101"
    );
    assert_eq!(fs::read(root.join("x.bin")).unwrap(), b"old");
    assert_eq!(
        fs::read(root.join("local/save.dat")).unwrap(),
        b"the player's save"
    );
    assert!(!root.join("LOCAL").exists());
    assert_eq!(c.local_row("cod5").unwrap()["version"], "20250101");
    drop(c);
    drop(folded);
}
