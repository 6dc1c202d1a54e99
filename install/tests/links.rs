//! Links in archives: hard links and file copies resolve inside the install only — a decoy
//! of the linked name in the process's working directory is never opened, linked or
//! chmod-ed — and symlinks follow one policy for RAR 4 and RAR 5: inside kept, outside
//! refused naming link and target.

mod common;

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{assert_nothing_left, expected, fixtures, manifest, root_of};
use lanspread_install::{install_root, InstallError, LinkKind, Rar5Writer};

/// Files (name, bytes) of a crafted archive.
type Files<'a> = &'a [(&'a str, &'a [u8])];
/// Links (name, kind, target, size) of a crafted archive, after its files.
type Links<'a> = &'a [(&'a str, LinkKind, &'a str, u64)];

/// Writes `root/game.eti` with files and links, in order.
fn crafted(root: &Path, files: Files<'_>, links: Links<'_>) {
    let f = fs::File::create(root.join("game.eti")).unwrap();
    let mut w = Rar5Writer::new(f).unwrap();
    for (name, data) in files {
        w.add_file(
            name,
            0o644,
            1_700_000_000,
            data.len() as u64,
            Cursor::new(data.to_vec()),
        )
        .unwrap();
    }
    for (name, kind, target, size) in links {
        w.add_link(name, *kind, target, 1_700_000_000, *size)
            .unwrap();
    }
    w.finish().unwrap();
}

fn decoy(dir: &Path, name: &str) {
    let p = dir.join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, b"DECOY").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
}

fn assert_decoy_untouched(dir: &Path, name: &str) {
    let p = dir.join(name);
    let m = fs::symlink_metadata(&p).unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"DECOY", "{name}");
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o600,
        "{name} mode changed"
    );
    assert_eq!(m.nlink(), 1, "{name} was hard-linked");
}

#[test]
fn hard_links_and_copies_resolve_inside_the_install_not_the_working_directory() {
    let cwd = tempfile::tempdir().unwrap();
    for name in ["file.txt", "👋🌎.txt", "data/file.txt"] {
        decoy(cwd.path(), name);
    }
    std::env::set_current_dir(cwd.path()).unwrap();

    // Archives made by RAR itself.
    for fixture in [
        "test_read_format_rar5_hardlink",
        "test_read_format_rar5_unicode",
    ] {
        let (_t, root) = root_of(&[(&format!("{fixture}.rar"), "game.eti")]);
        install_root(&root).unwrap();
        assert_eq!(
            manifest(&root.join("local")),
            expected(fixture),
            "{fixture}"
        );
    }
    let (_t, root) = root_of(&[("test_read_format_rar5_hardlink.rar", "game.eti")]);
    install_root(&root).unwrap();
    let local = root.join("local");
    let a = fs::metadata(local.join("file.txt")).unwrap();
    let b = fs::metadata(local.join("hardlink.txt")).unwrap();
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "the hard link joins the extracted file"
    );

    // A hard link and two file copies of a file in a folder.
    let (_t, root) = root_of(&[]);
    crafted(
        &root,
        &[("data/file.txt", b"REAL")],
        &[
            ("hard.txt", LinkKind::HardLink, "data/file.txt", 4),
            ("copy1.txt", LinkKind::FileCopy, "data/file.txt", 4),
            ("sub/copy2.txt", LinkKind::FileCopy, "data/file.txt", 4),
        ],
    );
    let s = install_root(&root).unwrap();
    assert_eq!((s.files, s.bytes), (4, 12), "{s:?}");
    let local = root.join("local");
    for f in ["data/file.txt", "hard.txt", "copy1.txt", "sub/copy2.txt"] {
        assert_eq!(fs::read(local.join(f)).unwrap(), b"REAL", "{f}");
    }
    assert_eq!(fs::metadata(local.join("copy1.txt")).unwrap().nlink(), 1);
    assert_eq!(fs::metadata(local.join("hard.txt")).unwrap().nlink(), 2);

    for name in ["file.txt", "👋🌎.txt", "data/file.txt"] {
        assert_decoy_untouched(cwd.path(), name);
    }
}

#[test]
fn link_targets_outside_the_install_or_not_yet_extracted_are_refused() {
    let cases: &[(Files<'_>, Links<'_>, &str)] = &[
        (
            &[],
            &[("random_link", LinkKind::Symlink, "../random123", 0)],
            "symlink random_link -> ../random123: points outside the install folder",
        ),
        (
            &[],
            &[("etc", LinkKind::Symlink, "/etc/passwd", 0)],
            "symlink etc -> /etc/passwd: has an absolute target",
        ),
        (
            &[],
            &[("d/deep", LinkKind::Symlink, "../../x", 0)],
            "symlink d/deep -> ../../x: points outside",
        ),
        // Each target looks harmless alone; together they leave the install folder.
        (
            &[("d/f", b"x")],
            &[
                ("d/l", LinkKind::Symlink, "..", 0),
                ("m", LinkKind::Symlink, "d/l/..", 0),
            ],
            "symlink m -> d/l/..: points outside the install folder through another link",
        ),
        (
            &[("a", b"x")],
            &[("h", LinkKind::HardLink, "../outside.txt", 1)],
            "hard link h -> ../outside.txt: target is not a name inside the archive",
        ),
        (
            &[("a", b"x")],
            &[("h", LinkKind::HardLink, "later.txt", 1)],
            "hard link h -> later.txt: target is not a file extracted before it",
        ),
        (
            &[("a", b"x")],
            &[("c", LinkKind::FileCopy, "/etc/passwd", 1)],
            "file copy c -> /etc/passwd",
        ),
        // A copy is the size its header says (what the free-space check counted), or
        // refused before a byte is written: thirty 1-byte copies of a 1 MiB file filled
        // a disk the check had passed.
        (
            &[("big", &[7u8; 4096])],
            &[("c", LinkKind::FileCopy, "big", 1)],
            "file copy c -> big: its source holds 4096 bytes, its header says 1",
        ),
        (
            &[("small", b"x")],
            &[("c", LinkKind::FileCopy, "small", 1000)],
            "file copy c -> small: its source holds 1 bytes, its header says 1000",
        ),
        // A link to a folder is not a file to copy.
        (
            &[("dir/a", b"x")],
            &[("c", LinkKind::FileCopy, "dir", 1)],
            "file copy c -> dir: target is not a file extracted before it",
        ),
    ];
    for (files, links, needle) in cases {
        let (t, root) = root_of(&[]);
        crafted(&root, files, links);
        let err = install_root(&root).expect_err(needle);
        assert!(matches!(err, InstallError::Link { .. }), "{err}");
        assert!(
            err.to_string().contains(needle),
            "expected {needle:?} in: {err}"
        );
        assert_nothing_left(&t, &root, needle);
    }
    // Links that stay inside are kept as they are.
    let (_t, root) = root_of(&[]);
    crafted(
        &root,
        &[("d/f", b"x")],
        &[
            ("d/up", LinkKind::Symlink, "../d/f", 0),
            ("dl", LinkKind::Symlink, "d", 0),
            ("dangling", LinkKind::Symlink, "not/yet", 0),
        ],
    );
    install_root(&root).unwrap();
    let local = root.join("local");
    assert_eq!(
        fs::read_link(local.join("d/up")).unwrap(),
        Path::new("../d/f")
    );
    assert_eq!(fs::read(local.join("dl/f")).unwrap(), b"x");
    assert_eq!(
        fs::read_link(local.join("dangling")).unwrap(),
        Path::new("not/yet")
    );
}

/// libarchive's RAR 4 archive with its Unix symlink `testlink -> test.txt` given another
/// name and target of 8 bytes each (RAR 4 keeps the target in the entry's data: data CRC
/// and header CRC redone).
fn rar4_with_link(name: &[u8; 8], target: &[u8; 8]) -> Vec<u8> {
    let mut bytes = fs::read(fixtures().join("test_read_format_rar.rar")).unwrap();
    let mut at = 7;
    let mut patched = false;
    while at + 7 <= bytes.len() {
        let kind = bytes[at + 2];
        let flags = u16::from_le_bytes([bytes[at + 3], bytes[at + 4]]);
        let size = usize::from(u16::from_le_bytes([bytes[at + 5], bytes[at + 6]]));
        let mut data = 0usize;
        if kind == 0x74 {
            data = u32::from_le_bytes(bytes[at + 7..at + 11].try_into().unwrap()) as usize;
            let name_len = usize::from(u16::from_le_bytes([bytes[at + 26], bytes[at + 27]]));
            if &bytes[at + 32..at + 32 + name_len] == b"testlink" {
                assert_eq!(data, target.len());
                bytes[at + 32..at + 40].copy_from_slice(name);
                bytes[at + size..at + size + data].copy_from_slice(target);
                bytes[at + 16..at + 20].copy_from_slice(&crc32fast::hash(target).to_le_bytes());
                let head_crc = (crc32fast::hash(&bytes[at + 2..at + size]) & 0xffff) as u16;
                bytes[at..at + 2].copy_from_slice(&head_crc.to_le_bytes());
                patched = true;
            }
        } else if flags & 0x8000 != 0 {
            data = u32::from_le_bytes(bytes[at + 7..at + 11].try_into().unwrap()) as usize;
        }
        at += size + data;
    }
    assert!(patched, "the fixture's symlink entry was not found");
    bytes
}

/// A RAR 4 symlink in a folder whose target climbs with `..` but stays inside installs
/// (UnRAR makes it by path and refuses it when any folder on that path is a link).
#[test]
fn a_rar4_symlink_with_dot_dot_inside_the_archive_is_kept() {
    let bytes = rar4_with_link(b"d/testlk", b"../t.txt");
    let (_t, root) = root_of(&[]);
    fs::write(root.join("game.eti"), &bytes).unwrap();
    install_root(&root).unwrap();
    assert_eq!(
        fs::read_link(root.join("local/d/testlk")).unwrap(),
        Path::new("../t.txt")
    );
}

/// The same symlink pointing out of the archive is refused.
#[test]
fn a_rar4_symlink_leaving_the_archive_is_refused() {
    let bytes = rar4_with_link(b"testlink", b"../x.txt");
    let (t, root) = root_of(&[]);
    fs::write(root.join("game.eti"), &bytes).unwrap();
    let err = install_root(&root).unwrap_err();
    assert!(
        matches!(&err, InstallError::Link { entry, .. } if entry == "testlink"),
        "{err}"
    );
    assert!(err.to_string().contains("leaves the archive"), "{err}");
    assert_nothing_left(&t, &root, "rar4 symlink");
}

/// An entry whose name is not UTF-8 is refused before anything is written: UnRAR cut
/// `bad\xff\xfename` to `bad` and the install said done (two such names would have
/// become one file).
#[test]
fn an_entry_name_that_is_not_utf8_is_refused() {
    let (t, root) = root_of(&[]);
    crafted(&root, &[("bad@@name", b"x"), ("good", b"y")], &[]);
    let path = root.join("game.eti");
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.windows(2).position(|w| w == b"@@").unwrap();
    bytes[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    // The header's CRC over again, so that only the name is wrong: headers start after
    // the 8-byte signature, each a CRC32, a vint size and that many bytes.
    let mut pos = 8;
    loop {
        let (mut size, mut len) = (0usize, 0);
        while bytes[pos + 4 + len] & 0x80 != 0 {
            size |= usize::from(bytes[pos + 4 + len] & 0x7f) << (7 * len);
            len += 1;
        }
        size |= usize::from(bytes[pos + 4 + len]) << (7 * len);
        let end = pos + 4 + len + 1 + size;
        if (pos..end).contains(&at) {
            let crc = crc32fast::hash(&bytes[pos + 4..end]);
            bytes[pos..pos + 4].copy_from_slice(&crc.to_le_bytes());
            break;
        }
        // The body's first vints: type, flags (bit 2: a data area), and the data size.
        let body = pos + 4 + len + 1;
        let flags = bytes[body + 1];
        let mut p = body + 2;
        if flags & 0x01 != 0 {
            p += 1; // extra area size (one byte in our own headers)
        }
        let data = if flags & 0x02 != 0 {
            usize::from(bytes[p])
        } else {
            0
        };
        pos = end + data;
    }
    fs::write(&path, &bytes).unwrap();
    let err = install_root(&root).expect_err("a name that is not UTF-8");
    assert!(err.to_string().contains("not UTF-8"), "{err}");
    assert_nothing_left(&t, &root, "a name that is not UTF-8");
}
