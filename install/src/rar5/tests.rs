//! The writer's archives are read back with the independent UnRAR library (the `unrar`
//! crate, a dev-dependency only) and compared byte for byte, mode for mode.

use super::*;
use std::collections::BTreeMap;
use std::io::Cursor;

#[test]
fn vint_encoding() {
    let enc = |v| {
        let mut o = Vec::new();
        put_vint(&mut o, v);
        o
    };
    assert_eq!(enc(0), [0x00]);
    assert_eq!(enc(0x7f), [0x7f]);
    assert_eq!(enc(0x80), [0x80, 0x01]);
    assert_eq!(enc(300), [0xac, 0x02]);
    assert_eq!(enc(u64::MAX).len(), 10);
}

#[test]
fn empty_archive_layout() {
    let w = Rar5Writer::new(Cursor::new(Vec::new())).unwrap();
    let bytes = w.finish().unwrap().into_inner();
    assert_eq!(&bytes[..8], &SIGNATURE);
    // main header: crc(4) size(1)=3 type=1 flags=0 archive_flags=0
    assert_eq!(&bytes[12..16], &[3, 1, 0, 0]);
    let crc = crc32fast::hash(&bytes[12..16]);
    assert_eq!(&bytes[8..12], &crc.to_le_bytes());
    assert_eq!(&bytes[bytes.len() - 4..], &[3, 5, 0, 0]);
}

struct Entry {
    data: Vec<u8>,
    attr: u32,
    dir: bool,
}

/// Reads an archive with UnRAR, extracting into `dest`, and returns what it listed.
fn read_back(archive: &Path, dest: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut open = unrar::Archive::new(archive)
        .open_for_processing()
        .expect("unrar opens the archive");
    while let Some(header) = open.read_header().expect("unrar reads the header") {
        let entry = header.entry();
        let name = entry.filename.to_string_lossy().replace('\\', "/");
        let attr = entry.file_attr;
        let dir = entry.is_directory();
        let (data, next) = if dir {
            (Vec::new(), header.skip().expect("skip dir"))
        } else {
            header.read().expect("unrar reads and checks the data CRC")
        };
        out.insert(name, Entry { data, attr, dir });
        open = next;
    }
    // Also extract to disk and check that Unix modes survive extraction.
    let mut open = unrar::Archive::new(archive).open_for_processing().unwrap();
    while let Some(header) = open.read_header().unwrap() {
        open = header.extract_with_base(dest).expect("unrar extracts");
    }
    out
}

#[test]
fn unrar_reads_back_bytes_and_modes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("bin/deep")).unwrap();
    fs::write(src.join("readme.txt"), b"hello rar5\n").unwrap();
    fs::write(src.join("empty.dat"), b"").unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(src.join("bin/deep/big.bin"), &big).unwrap();
    fs::write(src.join("bin/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(src.join("bin/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(src.join("readme.txt"), fs::Permissions::from_mode(0o640)).unwrap();

    let archive = t.path().join("game.eti");
    let summary = pack_dir(&src, &archive).unwrap();
    assert_eq!(summary.files, 4);
    assert_eq!(summary.dirs, 2);
    assert_eq!(summary.bytes, 11 + 3_000_000 + 18);

    let dest = t.path().join("out");
    fs::create_dir_all(&dest).unwrap();
    let got = read_back(&archive, &dest);
    let names: Vec<_> = got.keys().cloned().collect();
    assert_eq!(
        names,
        [
            "bin",
            "bin/deep",
            "bin/deep/big.bin",
            "bin/run.sh",
            "empty.dat",
            "readme.txt"
        ]
    );
    assert!(got["bin"].dir);
    assert_eq!(got["bin/deep/big.bin"].data, big);
    assert_eq!(got["readme.txt"].data, b"hello rar5\n");
    assert_eq!(got["empty.dat"].data, b"");
    assert_eq!(got["bin/run.sh"].attr & 0o7777, 0o755);
    assert_eq!(got["readme.txt"].attr & 0o7777, 0o640);

    for (rel, mode) in [("bin/run.sh", 0o755), ("readme.txt", 0o640)] {
        let m = fs::metadata(dest.join(rel)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{rel} mode after unrar extraction");
    }
    assert_eq!(fs::read(dest.join("bin/deep/big.bin")).unwrap(), big);
}

#[test]
fn streamed_entry_has_the_right_crc() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("a.eti");
    let f = File::create(&path).unwrap();
    let mut w = Rar5Writer::new(f).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    w.add_file(
        "x/data.bin",
        0o600,
        1_735_689_600,
        data.len() as u64,
        &data[..],
    )
    .unwrap();
    w.finish().unwrap();
    let got = read_back(&path, t.path());
    assert_eq!(got["x/data.bin"].data, data);
}

#[test]
fn lying_reader_is_refused() {
    let mut w = Rar5Writer::new(Cursor::new(Vec::new())).unwrap();
    let err = w.add_file("a", 0o644, 0, 10, &b"short"[..]).unwrap_err();
    assert!(
        matches!(err, InstallError::SizeMismatch { read: 5, .. }),
        "{err}"
    );
    let err = w.add_file("b", 0o644, 0, 2, &b"toolong"[..]).unwrap_err();
    assert!(matches!(err, InstallError::SizeMismatch { .. }), "{err}");
}

#[test]
fn unsafe_names_need_the_test_option() {
    let mut w = Rar5Writer::new(Cursor::new(Vec::new())).unwrap();
    for bad in ["../x", "/abs", "a/../../x", "", "a//b"] {
        assert!(
            w.add_file(bad, 0o644, 0, 0, &b""[..]).is_err(),
            "{bad:?} accepted"
        );
    }
    let opts = WriterOptions {
        allow_unsafe_names: true,
    };
    let mut w = Rar5Writer::with_options(Cursor::new(Vec::new()), opts).unwrap();
    w.add_file("../x", 0o644, 0, 1, &b"x"[..]).unwrap();
}
