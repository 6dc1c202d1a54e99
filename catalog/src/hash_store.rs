//! The hash cache on disk: `<root>/.lanspread/pieces.json`, each file's identity with its
//! piece hashes as one hex string. A file of another format (another piece size, another
//! hash) reads as empty, so its roots are hashed once again. The SHA-256 caches of
//! protocols 7 to 9 were `chunks.json`: a new name, so that an older daemon started on the
//! same roots (a rollback) never reads BLAKE3 hashes as SHA-256 ones; the old file is
//! removed when the new one is written.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use lanspread_proto::{piece_count, ChunkHash, CONTENT_HASH, PIECE_SIZE};

use crate::game_dir::{Access, GameDir};
use crate::hashes::FileKey;
use crate::RelPath;

/// Folder of daemon metadata inside a root.
const META_DIR: &str = ".lanspread";
const CACHE_FILE: &str = "pieces.json";
/// The cache of protocols 7 to 9 (SHA-256), removed when [`CACHE_FILE`] is written.
const OLD_CACHE_FILE: &str = "chunks.json";

/// The persisted cache of one root.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CacheFile {
    /// The piece size the hashes are of; a file without it (or with another) is ignored.
    #[serde(default)]
    piece_size: u64,
    /// The hash function ([`CONTENT_HASH`]); a file without it (or with another) is ignored.
    #[serde(default)]
    hash: String,
    /// Path → identity and the piece hashes, concatenated, in hex.
    pub(crate) entries: BTreeMap<String, (FileKey, String)>,
}

/// A cache entry for a file with identity `key` and these piece hashes.
pub(crate) fn to_persisted(key: FileKey, pieces: &[ChunkHash]) -> (FileKey, String) {
    (key, hex::encode(pieces.concat()))
}

/// Whether `path` is persisted with identity `key` and as many piece hashes as its size
/// has (not decoded: a damaged entry that passes this is hashed again after a restart).
pub(crate) fn persisted_as(c: &CacheFile, path: &RelPath, key: FileKey) -> bool {
    c.entries.get(path.as_str()).is_some_and(|(k, hex)| {
        *k == key && Some(hex.len() as u64) == piece_count(key.size()).checked_mul(64)
    })
}

/// The piece hashes of `path` if its persisted identity is `key` and they are as many as
/// its size has pieces (a damaged entry is hashed again, never trusted).
pub(crate) fn from_persisted(
    c: &CacheFile,
    path: &RelPath,
    key: FileKey,
) -> Option<Vec<ChunkHash>> {
    let (k, hex) = c.entries.get(path.as_str())?;
    if *k != key || hex.len() as u64 != piece_count(key.size()).checked_mul(64)? {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    hex.as_bytes()
        .chunks(64)
        .map(|h| {
            let mut out = [0u8; 32];
            for (byte, two) in out.iter_mut().zip(h.chunks(2)) {
                *byte = nibble(two[0])? << 4 | nibble(two[1])?;
            }
            Some(out)
        })
        .collect()
}

/// The largest cache file read: the piece hashes of a 4 TiB root (64 hex digits per MiB),
/// far more than a manifest may describe. A larger one (a file someone grew: `truncate -s
/// 1T`) reads as empty without being read: the root is hashed again, and the daemon does
/// not read it into memory at every start.
const MAX_CACHE_FILE: u64 = 256 << 20;

/// The persisted cache of the root at `root`, empty when there is none, it is of another
/// format or larger than [`MAX_CACHE_FILE`].
pub(crate) fn load_cache(root: &Path) -> CacheFile {
    load_capped(root, MAX_CACHE_FILE)
}

fn load_capped(root: &Path, cap: u64) -> CacheFile {
    let read = || -> std::io::Result<CacheFile> {
        let g = GameDir::open(root)?;
        let (file, meta) = g.open_file(&Path::new(META_DIR).join(CACHE_FILE), Access::Read)?;
        if meta.len() > cap {
            return Err(std::io::Error::other("larger than a cache can be"));
        }
        // Never past the cap (a file that grows meanwhile).
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        std::io::Read::read_to_end(&mut std::io::Read::take(file, cap), &mut bytes)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    };
    read()
        .ok()
        .filter(|c| c.piece_size == PIECE_SIZE && c.hash == CONTENT_HASH)
        .unwrap_or_default()
}

/// Writes the cache of the root at `root` (temp file, rename); a failure only costs a
/// re-hash after a restart.
pub(crate) fn store_cache(root: &Path, c: &CacheFile) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let c = CacheFile {
        piece_size: PIECE_SIZE,
        hash: CONTENT_HASH.to_owned(),
        entries: c.entries.clone(),
    };
    let res = (|| {
        // Through the root's descriptor: a `.lanspread` or temporary file that is a
        // symlink takes no write outside the root.
        let g = GameDir::open(root)?;
        // Only the metadata folder itself: a root removed meanwhile is not brought back.
        match g.dir().create_dir(META_DIR) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        // Unique per writer: the indexer and a request may finish the same root at once.
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Path::new(META_DIR);
        let tmp = dir.join(format!("{CACHE_FILE}.{}.{n}.tmp", std::process::id()));
        let bytes = serde_json::to_vec(&c).map_err(std::io::Error::other)?;
        g.replace(&dir.join(CACHE_FILE), &tmp, &bytes)?;
        // Best effort: an old cache left behind is only a few wasted bytes.
        let _ = g.dir().remove_file(dir.join(OLD_CACHE_FILE));
        Ok(())
    })();
    if let Err(e) = res {
        tracing::debug!(root = %root.display(), "hash cache not persisted: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// The identity of a file of two pieces.
    fn key() -> FileKey {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut t, &[1; 1 << 21]).unwrap();
        FileKey::of(&t.as_file().metadata().unwrap())
    }

    #[test]
    fn pieces_round_trip_and_other_formats_read_as_empty() {
        let t = tempfile::tempdir().unwrap();
        let k = key();
        let path = RelPath::new("a.eti").unwrap();
        let pieces = vec![[0xab; 32], [0x01; 32]];
        assert!(!persisted_as(&CacheFile::default(), &path, k));
        let mut c = CacheFile::default();
        c.entries.insert("a.eti".into(), to_persisted(k, &pieces));
        store_cache(t.path(), &c);
        let back = load_cache(t.path());
        assert_eq!(from_persisted(&back, &path, k), Some(pieces.clone()));
        assert!(persisted_as(&back, &path, k));
        // An old cache under the old name is removed when the new one is written.
        let old_name = t.path().join(".lanspread").join(OLD_CACHE_FILE);
        fs::write(&old_name, "{}").unwrap();
        store_cache(t.path(), &back);
        assert!(!old_name.exists());
        assert_eq!(
            from_persisted(&load_cache(t.path()), &path, k),
            Some(pieces)
        );
        // The chunk hashes of protocol 7 (a list of hex strings, no piece size).
        let old = serde_json::json!({"entries": {"a.eti": [k, ["00".repeat(32)]]}});
        fs::write(
            t.path().join(".lanspread").join(CACHE_FILE),
            old.to_string(),
        )
        .unwrap();
        assert!(load_cache(t.path()).entries.is_empty());
        // Another piece size.
        let other = serde_json::json!({"piece_size": 4096, "entries": {}});
        fs::write(
            t.path().join(".lanspread").join(CACHE_FILE),
            other.to_string(),
        )
        .unwrap();
        assert_eq!(load_cache(t.path()).piece_size, 0);
        // The SHA-256 pieces of protocols 8 and 9: the right piece size, no hash name.
        let sha = serde_json::json!({"piece_size": PIECE_SIZE, "entries": {"a.eti": [k, "ab".repeat(64)]}});
        fs::write(
            t.path().join(".lanspread").join(CACHE_FILE),
            sha.to_string(),
        )
        .unwrap();
        assert!(load_cache(t.path()).entries.is_empty());
        let named = serde_json::json!({"piece_size": PIECE_SIZE, "hash": CONTENT_HASH, "entries": {"a.eti": [k, "ab".repeat(64)]}});
        fs::write(
            t.path().join(".lanspread").join(CACHE_FILE),
            named.to_string(),
        )
        .unwrap();
        assert_eq!(
            load_cache(t.path()).entries.len(),
            1,
            "the same with the name reads"
        );
        // A damaged entry is not trusted: not hex, a sign, upper case, a length that is
        // not the file's piece count (two pieces here).
        let mut c = CacheFile::default();
        for bad in [
            "zz".repeat(64),
            format!("+f{}", "0".repeat(126)),
            "AB".repeat(64),
            "0".repeat(127),
            "0".repeat(64),
            "0".repeat(192),
        ] {
            c.entries.insert("a.eti".into(), (k, bad));
            assert_eq!(from_persisted(&c, &path, k), None);
        }
        c.entries.insert("a.eti".into(), (k, "0a".repeat(64)));
        assert_eq!(from_persisted(&c, &path, k), Some(vec![[10; 32]; 2]));
    }

    /// A cache file grown past any cache's size (sparse: `truncate -s 1T`) reads as empty
    /// at once, never read into memory; one past the cap after a valid document too.
    #[test]
    fn a_cache_file_larger_than_a_cache_can_be_reads_as_empty() {
        let t = tempfile::tempdir().unwrap();
        let k = key();
        let path = RelPath::new("a.eti").unwrap();
        let mut c = CacheFile::default();
        c.entries
            .insert("a.eti".into(), to_persisted(k, &[[7; 32], [8; 32]]));
        store_cache(t.path(), &c);
        let file = t.path().join(".lanspread").join(CACHE_FILE);
        let valid = fs::read(&file).unwrap();
        assert!(from_persisted(&load_capped(t.path(), 4096), &path, k).is_some());
        // Valid JSON followed by whitespace past the cap: not read to its end.
        let mut padded = valid.clone();
        padded.resize(5000, b' ');
        fs::write(&file, &padded).unwrap();
        assert!(load_capped(t.path(), 4096).entries.is_empty());
        assert!(from_persisted(&load_capped(t.path(), 8192), &path, k).is_some());
        // A terabyte, sparse.
        let f = fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(1 << 40).unwrap();
        assert!(load_cache(t.path()).entries.is_empty());
    }
}
