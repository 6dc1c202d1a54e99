//! What a manifest is: files with SHA-256 per 32 MiB chunk, and the chunk arithmetic
//! both sides of a transfer share.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RelPath;

/// Size of a transfer chunk: 32 MiB. A file is split into chunks of this size; the last
/// one may be shorter; an empty file has none.
pub const CHUNK_SIZE: u64 = 32 << 20;

/// Chunks a downloader may have asked of one source and not yet received, at least:
/// the planner's per-source budget never goes below it, and a connection's receive
/// window is sized to hold exactly that many.
pub const MIN_CHUNKS_IN_FLIGHT: u64 = 4;

/// SHA-256 of one chunk.
pub type ChunkHash = [u8; 32];

/// A file with its chunk hashes: what a source tells a downloader.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileManifest {
    /// Path relative to the root.
    pub path: RelPath,
    /// Size in bytes.
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// SHA-256 of each chunk, in order.
    pub chunks: Vec<ChunkHash>,
}

/// SHA-256 over everything a manifest says (paths, sizes, modes, chunk hashes), in order:
/// two manifests with the same digest describe the same bytes at the same places.
pub fn manifest_digest(files: &[FileManifest]) -> ChunkHash {
    let mut h = Sha256::new();
    h.update((files.len() as u64).to_le_bytes());
    for f in files {
        h.update((f.path.as_str().len() as u64).to_le_bytes());
        h.update(f.path.as_str().as_bytes());
        h.update(f.size.to_le_bytes());
        h.update(f.mode.to_le_bytes());
        h.update((f.chunks.len() as u64).to_le_bytes());
        for c in &f.chunks {
            h.update(c);
        }
    }
    h.finalize().into()
}

/// Number of chunks of a file of `size` bytes.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE)
}

/// `(offset, len)` of every chunk of a file of `size` bytes.
pub fn chunk_ranges(size: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..chunk_count(size)).map(move |i| {
        let off = i * CHUNK_SIZE;
        (off, CHUNK_SIZE.min(size - off))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_file() {
        assert_eq!(chunk_ranges(0).count(), 0);
        assert_eq!(chunk_ranges(1).collect::<Vec<_>>(), [(0, 1)]);
        let r: Vec<_> = chunk_ranges(CHUNK_SIZE * 2 + 5).collect();
        assert_eq!(
            r,
            [
                (0, CHUNK_SIZE),
                (CHUNK_SIZE, CHUNK_SIZE),
                (2 * CHUNK_SIZE, 5)
            ]
        );
        assert_eq!(chunk_count(CHUNK_SIZE), 1);
    }

    #[test]
    fn the_digest_covers_every_field() {
        let f = FileManifest {
            path: RelPath::new("a.eti").unwrap(),
            size: 1,
            mode: 0o644,
            chunks: vec![[1; 32]],
        };
        let base = manifest_digest(std::slice::from_ref(&f));
        let mut g = f.clone();
        g.mode = 0o755;
        assert_ne!(manifest_digest(&[g]), base);
        let mut g = f.clone();
        g.chunks[0][31] = 2;
        assert_ne!(manifest_digest(&[g]), base);
        assert_ne!(manifest_digest(&[f.clone(), f.clone()]), base);
        assert_eq!(manifest_digest(&[f]), base);
    }
}
