//! Fuzz target bodies. Each takes arbitrary bytes and checks invariants (not only "no
//! panic"): whatever a decoder accepts re-encodes to something it decodes to the same
//! value, and checked types keep their guarantees. `fuzz/libfuzzer` drives them with
//! cargo-fuzz; `tests/replay.rs` replays the committed corpora in the normal test run.
#![allow(clippy::missing_panics_doc)]

use lanspread_catalog::{Catalog, RelPath, Version};
use lanspread_control::{Event, Reply, Request};
use lanspread_proto::{decode_frame, encode_frame, Message, PeerRequest, PeerResponse};

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (the corpus folder names).
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_frame", wire_frame),
    ("control_json", control_json),
    ("catalog_text", catalog_text),
    ("rar5_roundtrip", rar5_roundtrip),
];

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(Some((msg, used))) = decode_frame::<T>(data) {
        assert!(used <= data.len());
        let again = encode_frame(&msg).expect("a decoded message encodes");
        let (back, n) = decode_frame::<T>(&again)
            .expect("re-encoded frame decodes")
            .expect("whole frame");
        assert_eq!(n, again.len());
        assert_eq!(back, msg);
    }
}

/// The peer wire: one frame decoded as each message type the daemon reads.
pub fn wire_frame(data: &[u8]) {
    round_trip::<Message>(data);
    round_trip::<PeerRequest>(data);
    round_trip::<PeerResponse>(data);
}

/// The control protocol: a JSON line as a request (daemon side) and as a reply or event
/// (CLI side).
pub fn control_json(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = serde_json::from_str::<Request>(line) {
        let text = serde_json::to_string(&req).expect("request serializes");
        assert_eq!(
            serde_json::from_str::<Request>(&text).expect("re-parse"),
            req
        );
    }
    if let Ok(reply) = serde_json::from_str::<Reply>(line) {
        let _ = serde_json::to_string(&reply).expect("reply serializes");
    }
    if let Ok(event) = serde_json::from_str::<Event>(line) {
        let _ = serde_json::to_string(&event).expect("event serializes");
    }
}

/// `version.ini`, catalog files and relative paths.
pub fn catalog_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(v) = Version::parse(&text) {
        let s = v.to_string();
        assert_eq!(s.len(), 8);
        assert!(s.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(Version::parse(&s).expect("re-parse"), v);
    }
    if let Ok(c) = Catalog::parse(&text) {
        for e in c.entries() {
            assert!(c.get(e.id.as_str()).is_some());
        }
    }
    for line in text.lines() {
        if let Ok(p) = RelPath::new(line) {
            let s = p.as_str();
            assert!(!s.starts_with('/'), "{s}");
            assert!(
                s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
                "{s}"
            );
            let root = std::path::Path::new("/games/root");
            assert!(p.to_path(root).starts_with(root));
            assert!(!lanspread_catalog::is_reserved_top_level(
                s.split('/').next().unwrap_or("")
            ));
        }
    }
}

/// The RAR5 writer against UnRAR: entries derived from the input are written, read back
/// and compared byte for byte (names, sizes, contents).
pub fn rar5_roundtrip(data: &[u8]) {
    let entries = entries_of(data);
    let dir = scratch();
    let path = dir.0.join("a.rar");
    let file = std::fs::File::create(&path).expect("scratch file");
    let mut w = lanspread_install::Rar5Writer::new(file).expect("writer");
    let mut written = Vec::new();
    for (name, body) in entries {
        if w.add_file(&name, 0o644, 1_700_000_000, body.len() as u64, &body[..])
            .is_ok()
        {
            written.push((name, body));
        }
    }
    if w.finish().is_err() {
        return;
    }
    let mut open = unrar::Archive::new(&path)
        .open_for_processing()
        .expect("UnRAR opens what we wrote");
    let mut read = Vec::new();
    while let Some(header) = open.read_header().expect("header") {
        let name = header.entry().filename.to_string_lossy().into_owned();
        let (body, next) = header.read().expect("entry data");
        read.push((name, body));
        open = next;
    }
    assert_eq!(read, written);
}

/// Splits the input into up to 8 entries: a name (letters from the input, so every name
/// the writer accepts is exercised) and a body.
fn entries_of(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < 8 {
        let Some((&n, tail)) = rest.split_first() else {
            break;
        };
        let name_len = (n % 24) as usize + 1;
        let (name, tail) = tail.split_at(name_len.min(tail.len()));
        let Some((&b, tail)) = tail.split_first() else {
            break;
        };
        let body_len = (b as usize * 37).min(tail.len());
        let (body, tail) = tail.split_at(body_len);
        let name: String = name
            .iter()
            .map(|&c| match c % 40 {
                0..=25 => (b'a' + c % 40) as char,
                26..=35 => (b'0' + c % 40 - 26) as char,
                36 => '/',
                37 => '.',
                38 => '-',
                _ => '_',
            })
            .collect();
        out.push((name, body.to_vec()));
        rest = tail;
    }
    out
}

/// A per-thread scratch folder, removed when the guard drops (no leftovers in /dev/shm).
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A per-thread scratch folder, on tmpfs when there is one.
fn scratch() -> Scratch {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "lanspread-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::create_dir_all(&dir);
    Scratch(dir)
}
