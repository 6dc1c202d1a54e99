//! Installs of archives no one here wrote: libarchive's RAR test suite (RAR 2.9 to 7,
//! Windows and Unix, compressed, solid, SFX, links, Unicode names, volume sets in both
//! naming schemes renamed to `.eti`, encrypted and damaged ones). Every valid one must
//! install to the tree an independent reader extracts (`fixtures/rar/libarchive/
//! expected`), every other one must be refused with a message naming the cause and
//! leave nothing behind.

mod common;

use common::{assert_nothing_left, expected, manifest, root_of};
use lanspread_install::{install_root, InstallError};

fn installs(files: &[(&str, &str)], expect: &str) {
    let (_t, root) = root_of(files);
    let summary = install_root(&root).unwrap_or_else(|e| panic!("{expect}: {e}"));
    assert_eq!(manifest(&root.join("local")), expected(expect), "{expect}");
    assert!(summary.archives >= 1, "{expect}: {summary:?}");
}

fn refused(files: &[(&str, &str)], needle: &str) -> InstallError {
    let (t, root) = root_of(files);
    let err = install_root(&root).expect_err(needle);
    assert!(
        err.to_string().contains(needle),
        "expected {needle:?} in: {err}"
    );
    // Named as in the root, never by the private links UnRAR reads through.
    assert!(
        !err.to_string().contains("lanspread-volumes-"),
        "a private path in: {err}"
    );
    assert_nothing_left(&t, &root, needle);
    err
}

fn single(name: &str) {
    let file = if name.ends_with("_sfx") {
        format!("{name}.exe")
    } else {
        format!("{name}.rar")
    };
    installs(&[(&file, "game.eti")], name);
}

#[test]
fn single_archives_install_as_libarchive_extracts_them() {
    for name in [
        "test_read_format_rar",          // RAR 4, Unix symlink, empty folder
        "test_read_format_rar5_symlink", // RAR 5 file and folder symlinks
        "test_read_format_rar5_hardlink",
        "test_read_format_rar_unicode", // RAR 4 Unicode names, a symlink among them
        "test_read_format_rar5_unicode", // names outside the BMP, a hard link, a symlink
        "test_read_format_rar_windows", // made on Windows
        "test_read_format_rar5_win32",
        "test_read_format_rar5_solid",
        "test_read_format_rar_compress_best",
        "test_read_format_rar_sfx", // self-extracting
    ] {
        single(name);
    }
}

/// `stem.partN.rar` → the names a lanspread server would hold.
fn parts(
    fixture: &str,
    n: usize,
    width: usize,
    rename: impl Fn(usize) -> String,
) -> Vec<(String, String)> {
    (1..=n)
        .map(|i| (format!("{fixture}.part{i:0width$}.rar"), rename(i)))
        .collect()
}

fn installs_set(files: &[(String, String)], expect: &str) {
    let v: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    installs(&v, expect);
}

#[test]
fn volume_sets_install_in_both_naming_schemes() {
    let sets = [
        ("test_rar_multivolume_multiple_files", 6, 1),
        ("test_rar_multivolume_single_file", 3, 1),
        ("test_rar_multivolume_uncompressed_files", 10, 2),
        ("test_read_format_rar5_multiarchive", 8, 2),
        ("test_read_format_rar5_multiarchive_solid", 4, 2),
    ];
    for (fixture, n, width) in sets {
        // `game.partNN.rar` renamed to `game.partNN.eti`.
        installs_set(
            &parts(fixture, n, width, |i| format!("game.part{i:0width$}.eti")),
            fixture,
        );
        // The old scheme: `game.rar, game.r00, game.r01 …`, each with `.eti`.
        let old = parts(fixture, n, width, |i| match i {
            1 => "game.eti".to_owned(),
            i => format!("game.r{:02}.eti", i - 2),
        });
        installs_set(&old, fixture);
    }
}

#[test]
fn a_volume_set_is_put_together_from_its_headers_not_its_names() {
    // Four RAR 4 volumes under names that sort in another order and share no stem; the
    // set holds a 241 MB PPMd file, a symlink and folders.
    let names = ["zz.eti", "aa.eti", "mm.eti", "bb.eti"];
    let files = parts("test_read_format_rar_multivolume", 4, 4, |i| {
        names[i - 1].to_owned()
    });
    installs_set(&files, "test_read_format_rar_multivolume");
    // And under the old naming scheme, though its headers say `partNNNN` numbering.
    let old = parts("test_read_format_rar_multivolume", 4, 4, |i| match i {
        1 => "game.eti".to_owned(),
        i => format!("game.r{:02}.eti", i - 2),
    });
    installs_set(&old, "test_read_format_rar_multivolume");
}

#[test]
fn two_sets_and_a_single_archive_install_side_by_side() {
    let mut files = parts("test_read_format_rar5_multiarchive_solid", 4, 2, |i| {
        format!("a.part{i}.eti")
    });
    files.extend(parts("test_rar_multivolume_single_file", 3, 1, |i| {
        format!("b.part{i}.eti")
    }));
    files.push(("test_read_format_rar5_hardlink.rar".into(), "c.eti".into()));
    let v: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (_t, root) = root_of(&v);
    let s = install_root(&root).unwrap();
    assert_eq!(s.archives, 3);
    let mut want = expected("test_read_format_rar5_multiarchive_solid");
    want.extend(expected("test_rar_multivolume_single_file"));
    want.extend(expected("test_read_format_rar5_hardlink"));
    want.sort();
    assert_eq!(manifest(&root.join("local")), want);
}

#[test]
fn incomplete_volume_sets_are_refused_naming_the_missing_volume() {
    let f = "test_read_format_rar5_multiarchive_solid";
    let all = parts(f, 4, 2, |i| format!("game.part{i:02}.eti"));
    let pick = |which: &[usize]| -> Vec<(&str, &str)> {
        which
            .iter()
            .map(|&i| (all[i].0.as_str(), all[i].1.as_str()))
            .collect()
    };
    let e = refused(
        &pick(&[0, 1, 3]),
        "volume 3 is missing (after game.part02.eti)",
    );
    assert!(matches!(e, InstallError::VolumeSet(_)), "{e}");
    refused(
        &pick(&[0, 1, 2]),
        "volume 4 is missing (after game.part03.eti, which says more follow)",
    );
    refused(&pick(&[1, 2, 3]), "has no first volume");
    // The same volume twice under two names.
    let mut twice = pick(&[0, 1, 2, 3]);
    twice.push((all[1].0.as_str(), "game.part02.copy.eti"));
    refused(&twice, "are both volume 2 of one set");
}

#[test]
fn encrypted_archives_are_refused() {
    for f in [
        "test_read_format_rar5_encrypted.rar",
        "test_read_format_rar4_encrypted_filenames.rar",
    ] {
        let e = refused(&[(f, "game.eti")], "encrypted");
        assert!(matches!(e, InstallError::Encrypted(_)), "{f}: {e}");
    }
}

#[test]
fn damaged_archives_are_refused_never_installed_short() {
    // Headers without a CRC: UnRAR produces fewer bytes than the header announces.
    refused(
        &[("test_read_format_rar5_bad_tables.rar", "game.eti")],
        "unpacked 34 bytes, its header says 64",
    );
    refused(
        &[("test_read_format_rar5_loop_bug.rar", "game.eti")],
        "unpacked 0 bytes, its header says 196608",
    );
    // A file header UnRAR skips as broken: the second count of headers notices.
    refused(
        &[("test_read_format_rar_overflow.rar", "game.eti")],
        "its headers hold 1 entries but UnRAR reads 0",
    );
    refused(
        &[("test_read_format_rar5_truncated_huff.rar", "game.eti")],
        "damaged data",
    );
    refused(
        &[("test_read_format_rar_invalid1.rar", "game.eti")],
        "archive",
    );
}

/// Every volume of a set replaced by a FIFO once the archives are listed (someone who
/// can write the root, mid-install): UnRAR still reads the files that were listed (they
/// stay open and it opens them through `/proc/self/fd`), and never blocks opening a FIFO.
#[test]
fn volumes_swapped_for_fifos_after_the_listing_are_not_opened() {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    use std::sync::mpsc;
    use std::time::Duration;

    let fixture = "test_rar_multivolume_single_file";
    let files = parts(fixture, 3, 1, |i| format!("game.part{i}.eti"));
    let v: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let (_t, root) = root_of(&v);
    let volume = |i: usize| root.join(format!("game.part{i}.eti"));
    let swap = {
        let root = root.clone();
        move || {
            for i in 1..=3 {
                let path = root.join(format!("game.part{i}.eti"));
                std::fs::rename(&path, root.join(format!("moved{i}"))).unwrap();
                let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: a NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            }
        }
    };
    let (tx, rx) = mpsc::channel();
    let at = root.clone();
    std::thread::spawn(move || {
        let mut swap = Some(swap);
        let result = lanspread_install::install_root_with(&at, &mut |_| {
            if let Some(swap) = swap.take() {
                swap();
            }
        });
        let _ = tx.send(result);
    });
    let result = rx
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| {
            // Let a reader blocked on a FIFO go (a writer that closes at once), then fail.
            for i in 1..=3 {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(volume(i));
            }
            panic!("the install blocked opening a FIFO put in place of a volume")
        });
    let summary = result.unwrap_or_else(|e| panic!("{fixture}: {e}"));
    assert_eq!(manifest(&root.join("local")), expected(fixture));
    assert_eq!(summary.archives, 1);
    assert!(std::fs::symlink_metadata(volume(1))
        .unwrap()
        .file_type()
        .is_fifo());
}

/// A FIFO among the archives before the install: refused naming it (never opened, so
/// never waited on), not passed over — the install would be incomplete and say it is
/// done (the scan already offers no such root to peers) — and nothing is left behind.
#[test]
fn a_fifo_named_like_an_archive_is_refused_not_read() {
    let (t, root) = root_of(&[("test_read_format_rar.rar", "game.eti")]);
    let path = root.join("other.eti");
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let err = lanspread_install::install_root(&root).expect_err("a FIFO archive");
    assert!(err.to_string().contains("other.eti"), "{err}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    assert_nothing_left(&t, &root, "a FIFO archive");
}

/// An archive that is a symlink to a file inside the root is served to peers as a
/// file (the scan follows such links), so it is installed as one; a link out of the
/// root is refused naming it — never passed over with an install called complete.
#[test]
fn an_archive_linked_inside_the_root_installs_and_one_linked_out_is_refused() {
    let (_t, root) = root_of(&[]);
    std::fs::create_dir(root.join("files")).unwrap();
    std::fs::copy(
        common::fixtures().join("test_read_format_rar.rar"),
        root.join("files/game.rar"),
    )
    .unwrap();
    std::os::unix::fs::symlink("files/game.rar", root.join("game.eti")).unwrap();
    let summary = install_root(&root).unwrap();
    assert_eq!(summary.archives, 1);
    assert_eq!(
        manifest(&root.join("local")),
        expected("test_read_format_rar")
    );
    // A link to an archive listed already (`Game.eti -> game.eti`) is that archive, not a
    // second one whose entries clash; its volume sets neither.
    let (_t, root) = root_of(&[("test_read_format_rar.rar", "game.eti")]);
    std::os::unix::fs::symlink("game.eti", root.join("Game.eti")).unwrap();
    std::os::unix::fs::symlink("game.eti", root.join("zz.eti")).unwrap();
    let summary = install_root(&root).unwrap();
    assert_eq!(summary.archives, 1);
    assert_eq!(
        manifest(&root.join("local")),
        expected("test_read_format_rar")
    );
    let (t, root) = root_of(&[]);
    let other = tempfile::tempdir().unwrap();
    let elsewhere = other.path().join("elsewhere.rar");
    std::fs::copy(
        common::fixtures().join("test_read_format_rar.rar"),
        &elsewhere,
    )
    .unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("game.eti")).unwrap();
    let err = install_root(&root).unwrap_err();
    assert!(err.to_string().contains("game.eti"), "{err}");
    assert!(err.to_string().contains("leaves the game root"), "{err}");
    assert_nothing_left(&t, &root, "a link out of the root");
}
