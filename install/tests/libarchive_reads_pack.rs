//! `pack` output read by libarchive (`bsdtar`), the reader behind many desktop archive
//! tools, then installed by lanspread: both trees equal the packed folder — folders (a
//! read-only one among them), an empty file, symlinks and a non-ASCII name included.
//!
//! Ignored in `cargo test` (a fresh machine has no `bsdtar`); `.ci/run` installs Debian's
//! `libarchive-tools` and runs it with `--ignored`.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::process::Command;

use common::manifest;

#[test]
#[ignore = "needs bsdtar (libarchive-tools); .ci/run runs it"]
fn libarchive_lists_and_extracts_pack_output_byte_exact() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("sub/empty_dir")).unwrap();
    fs::create_dir_all(src.join("ro")).unwrap();
    fs::write(src.join("a.txt"), b"hello").unwrap();
    fs::write(src.join("empty.bin"), b"").unwrap();
    fs::write(src.join("sub/データ.bin"), vec![7u8; 100_000]).unwrap();
    fs::write(src.join("ro/f"), b"ro").unwrap();
    symlink("a.txt", src.join("link")).unwrap();
    symlink("../a.txt", src.join("sub/up")).unwrap();
    fs::set_permissions(src.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    let root = t.path().join("games/g");
    fs::create_dir_all(&root).unwrap();
    let archive = root.join("g.eti");
    lanspread_install::pack_dir(&src, &archive).unwrap();

    let list = Command::new("bsdtar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .expect("bsdtar runs");
    assert!(
        list.status.success(),
        "bsdtar -t: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    let mut listed: Vec<String> = String::from_utf8(list.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "a.txt",
            "empty.bin",
            "link",
            "ro",
            "ro/f",
            "sub",
            "sub/empty_dir",
            "sub/up",
            "sub/データ.bin"
        ]
    );

    let out = t.path().join("bsdtar");
    fs::create_dir(&out).unwrap();
    let x = Command::new("bsdtar")
        .arg("-xf")
        .arg(&archive)
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        x.status.success(),
        "bsdtar -x: {}",
        String::from_utf8_lossy(&x.stderr)
    );
    assert_eq!(
        manifest(&out),
        manifest(&src),
        "libarchive's extraction differs from the source"
    );
    lanspread_install::install_root(&root).unwrap();
    assert_eq!(
        manifest(&root.join("local")),
        manifest(&src),
        "lanspread's install differs"
    );
    assert_eq!(
        fs::metadata(out.join("ro")).unwrap().permissions().mode() & 0o777,
        0o555
    );
}
