//! What a manifest is: files with a BLAKE3 hash per 1 MiB piece and, over those, per
//! 32 MiB chunk, and the chunk and piece arithmetic both sides of a transfer share.
//!
//! A chunk's hash is BLAKE3 over the BLAKE3 of each of its pieces, in order (a hash list
//! of depth two): the bytes are hashed once, a piece at a time as each piece is complete,
//! so a source that lies is caught after one piece, not one chunk, and the chunk hashes
//! the rest of the protocol names (votes, journals, partial holdings) follow from the
//! pieces.
//!
//! BLAKE3, not SHA-256 (protocol 10): the downloader hashes every byte it receives and a
//! source every byte it serves once, and on one core here BLAKE3 hashes a 1 MiB piece at
//! 6.0 GiB/s against 1.67 GiB/s for SHA-256 with SHA-NI (sha2 and ring alike); on CPUs
//! without SHA-NI (most Intel desktops before 2021) SHA-256 runs at a fraction of that.
//! Both are 256-bit cryptographic hashes: a lying source cannot forge a piece either way.
//! [`piece_hash`] is the one place content is hashed.

use serde::{Deserialize, Serialize};

use crate::RelPath;

/// Size of a transfer chunk: 32 MiB. A file is split into chunks of this size; the last
/// one may be shorter; an empty file has none.
pub const CHUNK_SIZE: u64 = 32 << 20;

/// Chunks a downloader may have asked of one source and not yet received, at least:
/// the planner's per-source budget never goes below it, and a connection's receive
/// window is sized to hold exactly that many.
pub const MIN_CHUNKS_IN_FLIGHT: u64 = 4;

/// Size of a verification piece: 1 MiB. Chunks start on piece boundaries
/// (`CHUNK_SIZE` is a multiple of it); a chunk's last piece may be shorter.
pub const PIECE_SIZE: u64 = 1 << 20;

/// Pieces in a whole chunk.
pub const PIECES_PER_CHUNK: u64 = CHUNK_SIZE / PIECE_SIZE;

/// Size of a unit: 8 MiB, what a download plans, fetches, journals and verifies as one,
/// and what partial holders announce and serve (`Holding*` count units): a chunk is cut
/// into units from its start, the last one may be shorter, a file shorter than a unit
/// is one. A quarter of a chunk so that what a client fetched from the server reaches
/// the swarm four times sooner (the swarm simulation: N = 32, slowest 1.30 → 1.19 × the
/// bound, bench/README.md); events still report whole chunks.
pub const UNIT_SIZE: u64 = 8 << 20;
const _: () = assert!(CHUNK_SIZE.is_multiple_of(UNIT_SIZE) && UNIT_SIZE.is_multiple_of(PIECE_SIZE));

/// A BLAKE3 hash (256 bits): of a piece, of a chunk (over its pieces' hashes), or of a
/// manifest.
pub type ChunkHash = [u8; 32];

/// A file with its piece and chunk hashes: what a source tells a downloader.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileManifest {
    /// Path relative to the root.
    pub path: RelPath,
    /// Size in bytes.
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Each chunk's hash ([`chunk_hash`] of its pieces), in order.
    pub chunks: Vec<ChunkHash>,
    /// [`piece_hash`] of each 1 MiB piece, in order.
    pub pieces: Vec<ChunkHash>,
}

impl FileManifest {
    /// A file described by its piece hashes; the chunk hashes follow from them.
    pub fn from_pieces(path: RelPath, size: u64, mode: u32, pieces: Vec<ChunkHash>) -> Self {
        Self {
            path,
            size,
            mode,
            chunks: chunk_hashes(&pieces),
            pieces,
        }
    }

    /// The hashes of the pieces of chunk `chunk` (empty past the end).
    pub fn pieces_of(&self, chunk: usize) -> &[ChunkHash] {
        let per = PIECES_PER_CHUNK as usize;
        let start = chunk.saturating_mul(per).min(self.pieces.len());
        let end = start.saturating_add(per).min(self.pieces.len());
        &self.pieces[start..end]
    }

    /// Whether the piece and chunk hashes fit the size and each other: as many pieces as
    /// the size has, and every chunk hash the one its pieces give.
    pub fn consistent(&self) -> bool {
        self.pieces.len() as u64 == piece_count(self.size)
            && self.chunks.len() as u64 == chunk_count(self.size)
            && self
                .chunks
                .iter()
                .enumerate()
                .all(|(i, c)| *c == chunk_hash(self.pieces_of(i)))
    }
}

/// Name of the content hash, stored beside hashes kept on disk (a hash cache of another
/// one is not read).
pub const CONTENT_HASH: &str = "blake3";

/// A piece's hash: BLAKE3 of its bytes (hand it the whole piece at once: BLAKE3 hashes
/// a long slice on all SIMD lanes, small updates one 1 KiB block at a time).
pub fn piece_hash(bytes: &[u8]) -> ChunkHash {
    blake3::hash(bytes).into()
}

/// A chunk's hash: BLAKE3 over its pieces' hashes, in order.
pub fn chunk_hash(pieces: &[ChunkHash]) -> ChunkHash {
    let mut h = blake3::Hasher::new();
    for p in pieces {
        h.update(p);
    }
    h.finalize().into()
}

/// Every chunk's hash from a file's piece hashes.
pub fn chunk_hashes(pieces: &[ChunkHash]) -> Vec<ChunkHash> {
    pieces
        .chunks(PIECES_PER_CHUNK as usize)
        .map(chunk_hash)
        .collect()
}

/// What a source tells a downloader of a game (the answer to `Files`): its files, and
/// its empty folders (protocol 13; a folder that holds a file is implied by the file's
/// path). A copy has both: a game may need a folder it ships empty (saves, logs).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Manifest {
    /// The files (at most [`MAX_MANIFEST_ENTRIES`]; more do not decode).
    #[serde(deserialize_with = "at_most_files")]
    pub files: Vec<FileManifest>,
    /// The folders with nothing in them that travels, each without its own
    /// sub-folders listed (`a/b` implies `a`; at most [`MAX_MANIFEST_ENTRIES`]).
    #[serde(deserialize_with = "at_most_folders")]
    pub folders: Vec<RelPath>,
}

/// The mode a file is described with and a copy gets: its permission bits (setuid,
/// setgid and sticky bits never travel) plus owner read — a daemon that is not root must
/// read what it committed to serve, install or hash it again, and the sentinel to commit
/// it. Sources describe their files so too, so a copy votes with its original.
pub fn file_mode(mode: u32) -> u32 {
    (mode & 0o777) | 0o400
}

/// Most files, and most empty folders, a manifest may list (a real game has a few
/// thousand files): a longer list does not decode, so a frame of tiny entries cannot
/// make a downloader allocate millions of them.
pub const MAX_MANIFEST_ENTRIES: usize = 100_000;

fn at_most_files<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<FileManifest>, D::Error> {
    crate::wire::at_most(d, MAX_MANIFEST_ENTRIES, "files")
}

fn at_most_folders<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RelPath>, D::Error> {
    crate::wire::at_most(d, MAX_MANIFEST_ENTRIES, "empty folders")
}

/// A manifest of these files and no empty folder.
impl From<Vec<FileManifest>> for Manifest {
    fn from(files: Vec<FileManifest>) -> Self {
        Self {
            files,
            folders: Vec::new(),
        }
    }
}

/// BLAKE3 over everything a manifest says of its files (paths, sizes, modes, chunk and
/// piece hashes), in order: two manifests with the same digest describe the same bytes
/// at the same places. The empty folders are no part of it: downloads of the same bytes
/// swarm together, and resume each other's journals, whatever folders their sources
/// listed (a copy made before protocol 13 has none).
pub fn manifest_digest(files: &[FileManifest]) -> ChunkHash {
    let mut h = blake3::Hasher::new();
    h.update(&(files.len() as u64).to_le_bytes());
    for f in files {
        // Every field (a new one fails to compile here until the digest covers it: a
        // source shares one encoded manifest between the answers of equal digests).
        let FileManifest {
            path,
            size,
            mode,
            chunks,
            pieces,
        } = f;
        h.update(&(path.as_str().len() as u64).to_le_bytes());
        h.update(path.as_str().as_bytes());
        h.update(&size.to_le_bytes());
        h.update(&mode.to_le_bytes());
        h.update(&(chunks.len() as u64).to_le_bytes());
        for c in chunks {
            h.update(c);
        }
        h.update(&(pieces.len() as u64).to_le_bytes());
        for p in pieces {
            h.update(p);
        }
    }
    h.finalize().into()
}

/// BLAKE3 over a list of empty folders, in order: two lists with the same digest name
/// the same folders. How a manifest vote tells folder lists apart without keeping them.
pub fn folders_digest(folders: &[RelPath]) -> ChunkHash {
    let mut h = blake3::Hasher::new();
    h.update(&(folders.len() as u64).to_le_bytes());
    for d in folders {
        h.update(&(d.as_str().len() as u64).to_le_bytes());
        h.update(d.as_str().as_bytes());
    }
    h.finalize().into()
}

/// At most how many bytes the `Files` frame describing files of these `(path length,
/// size)` takes (an empty folder counts as an empty file): each file's fields at their longest varints and 32 bytes per chunk and
/// per piece. A game is served only when this fits in one frame
/// ([`manifest_fits_a_frame`]); about 490 GiB in all, since a piece hash is 1/32768 of
/// its bytes.
pub fn manifest_len_bound(files: impl IntoIterator<Item = (usize, u64)>) -> u64 {
    files.into_iter().fold(16, |sum: u64, (path, size)| {
        let hashes = chunk_count(size).saturating_add(piece_count(size));
        sum.saturating_add(path as u64 + 10 + 10 + 5 + 10 + 10)
            .saturating_add(hashes.saturating_mul(32))
    })
}

/// Whether a game of these `(path length, size)` files can be described in one frame.
pub fn manifest_fits_a_frame(files: impl IntoIterator<Item = (usize, u64)>) -> bool {
    manifest_len_bound(files) <= crate::MAX_FRAME_LEN as u64
}

/// Number of pieces of a file of `size` bytes.
pub fn piece_count(size: u64) -> u64 {
    size.div_ceil(PIECE_SIZE)
}

/// The index within its file of the unit ([`UNIT_SIZE`]) that `[offset, offset + len)`
/// completes: a whole unit, or the rest of one from a piece boundary on (what a
/// downloader that kept a unit's first pieces asks for). `None` for any other range of a
/// file of `size` bytes.
pub fn unit_of_rest(size: u64, offset: u64, len: u64) -> Option<u64> {
    if !offset.is_multiple_of(PIECE_SIZE) || offset >= size {
        return None;
    }
    let unit = offset / UNIT_SIZE;
    let end = (unit + 1).saturating_mul(UNIT_SIZE).min(size);
    (offset.checked_add(len) == Some(end)).then_some(unit)
}

/// Number of units ([`UNIT_SIZE`]) of a file of `size` bytes.
pub fn unit_count(size: u64) -> u64 {
    size.div_ceil(UNIT_SIZE)
}

/// The rest of a chunk from `kept` bytes on, when its first `kept` bytes are already
/// verified: `(offset, len, first piece within the chunk)` of what is still to fetch.
/// `kept` counts whole pieces only (rounded down), and never the whole chunk: at least
/// its last piece is fetched again, so a range is never empty.
pub fn chunk_rest(offset: u64, len: u64, kept: u64) -> (u64, u64, usize) {
    let last_piece = len.saturating_sub(1) / PIECE_SIZE;
    let pieces = (kept / PIECE_SIZE).min(last_piece);
    let skip = pieces * PIECE_SIZE;
    (offset + skip, len - skip, pieces as usize)
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
    fn piece_hash_is_blake3() {
        // Known answers of BLAKE3 (the empty input and "abc"), not from this crate.
        assert_eq!(
            hex::encode(piece_hash(b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            hex::encode(piece_hash(b"abc")),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn chunk_hashes_are_over_their_pieces() {
        let size = 2 * CHUNK_SIZE + PIECE_SIZE + 1;
        assert_eq!(piece_count(size), 2 * PIECES_PER_CHUNK + 2);
        let pieces: Vec<ChunkHash> = (0..piece_count(size)).map(|i| [i as u8; 32]).collect();
        let f = FileManifest::from_pieces(RelPath::new("a.eti").unwrap(), size, 0o644, pieces);
        assert_eq!(f.chunks.len(), 3);
        assert_eq!(f.pieces_of(1)[0], [PIECES_PER_CHUNK as u8; 32]);
        assert_eq!(f.pieces_of(2).len(), 2);
        assert!(f.pieces_of(3).is_empty());
        let mut flat = Vec::new();
        for p in f.pieces_of(2) {
            flat.extend_from_slice(p);
        }
        assert_eq!(f.chunks[2], <[u8; 32]>::from(blake3::hash(&flat)));
        assert!(f.consistent());
        let mut bad = f.clone();
        bad.pieces[5][0] ^= 1;
        assert!(
            !bad.consistent(),
            "a piece that its chunk hash does not cover"
        );
        let mut bad = f.clone();
        bad.pieces.pop();
        assert!(!bad.consistent(), "a piece missing");
        let mut bad = f;
        bad.chunks.push([0; 32]);
        assert!(!bad.consistent(), "a chunk too many");
        let empty = FileManifest::from_pieces(RelPath::new("e").unwrap(), 0, 0o644, vec![]);
        assert!(empty.consistent() && empty.chunks.is_empty());
    }

    #[test]
    fn the_rest_of_a_chunk_starts_on_a_piece() {
        assert_eq!(
            chunk_rest(CHUNK_SIZE, CHUNK_SIZE, 0),
            (CHUNK_SIZE, CHUNK_SIZE, 0)
        );
        assert_eq!(
            chunk_rest(CHUNK_SIZE, CHUNK_SIZE, 3 * PIECE_SIZE + 7),
            (CHUNK_SIZE + 3 * PIECE_SIZE, CHUNK_SIZE - 3 * PIECE_SIZE, 3)
        );
        // Never the whole chunk: its last piece is fetched again.
        assert_eq!(
            chunk_rest(0, CHUNK_SIZE, CHUNK_SIZE),
            (CHUNK_SIZE - PIECE_SIZE, PIECE_SIZE, 31)
        );
        assert_eq!(chunk_rest(0, 5, PIECE_SIZE), (0, 5, 0));
        assert_eq!(
            chunk_rest(0, PIECE_SIZE + 5, 2 * PIECE_SIZE),
            (PIECE_SIZE, 5, 1)
        );
    }

    #[test]
    fn a_unit_or_its_rest_from_a_piece_is_a_unit() {
        let size = UNIT_SIZE + 5;
        assert_eq!(unit_of_rest(size, 0, UNIT_SIZE), Some(0));
        assert_eq!(
            unit_of_rest(size, PIECE_SIZE, UNIT_SIZE - PIECE_SIZE),
            Some(0)
        );
        assert_eq!(unit_of_rest(size, UNIT_SIZE, 5), Some(1));
        assert_eq!(unit_of_rest(size, 1, UNIT_SIZE - 1), None, "not on a piece");
        assert_eq!(
            unit_of_rest(size, 0, PIECE_SIZE),
            None,
            "not to the unit's end"
        );
        assert_eq!(unit_of_rest(size, 0, UNIT_SIZE + 5), None, "two units");
        assert_eq!(
            unit_of_rest(size, UNIT_SIZE + PIECE_SIZE, 0),
            None,
            "past the end"
        );
        assert_eq!(unit_of_rest(size, 0, u64::MAX), None);
        let top = u64::MAX - u64::MAX % PIECE_SIZE;
        assert_eq!(
            unit_of_rest(u64::MAX, top, u64::MAX - top),
            Some(top / UNIT_SIZE)
        );
    }

    #[test]
    fn the_frame_bound_holds_real_manifests_and_limits_game_size() {
        let files: Vec<FileManifest> = [("a/b.eti", 3 * CHUNK_SIZE + 7), ("version.ini", 8)]
            .iter()
            .map(|&(p, size)| {
                let pieces = vec![[0xff; 32]; piece_count(size) as usize];
                FileManifest::from_pieces(RelPath::new(p).unwrap(), size, 0o100_755, pieces)
            })
            .collect();
        let folders = vec![RelPath::new("saves/slot one").unwrap()];
        let bound = manifest_len_bound(
            files
                .iter()
                .map(|f| (f.path.as_str().len(), f.size))
                .chain(folders.iter().map(|d| (d.as_str().len(), 0))),
        );
        let frame =
            crate::encode_frame(&crate::PeerResponse::Files(Manifest { files, folders })).unwrap();
        assert!(frame.len() as u64 <= bound, "{} > {bound}", frame.len());
        assert!(manifest_fits_a_frame([(9, 480 << 30)]));
        assert!(!manifest_fits_a_frame([(9, 520 << 30)]));
        assert!(!manifest_fits_a_frame([(9, u64::MAX)]));
    }

    #[test]
    fn a_manifest_lists_at_most_so_many_entries_of_each_kind() {
        let folders = |n: usize| -> Vec<RelPath> {
            (0..n)
                .map(|i| RelPath::new(&format!("d{i}")).unwrap())
                .collect()
        };
        let decode = |m: &Manifest| {
            let frame = crate::encode_frame(&crate::PeerResponse::Files(m.clone())).unwrap();
            crate::decode_frame::<crate::PeerResponse>(&frame)
        };
        let most = Manifest {
            files: vec![],
            folders: folders(MAX_MANIFEST_ENTRIES),
        };
        let (back, _) = decode(&most).unwrap().unwrap();
        assert_eq!(back, crate::PeerResponse::Files(most));
        let over = Manifest {
            files: vec![],
            folders: folders(MAX_MANIFEST_ENTRIES + 1),
        };
        assert!(decode(&over).is_err());
        let empty = FileManifest::from_pieces(RelPath::new("e").unwrap(), 0, 0o644, vec![]);
        let over = Manifest {
            files: vec![empty; MAX_MANIFEST_ENTRIES + 1],
            folders: vec![],
        };
        assert!(decode(&over).is_err());
    }

    #[test]
    fn the_digest_is_the_one_journals_were_written_with() {
        // Resume journals and partial holders name a manifest by its digest: a change
        // of the function (protocol 13 nearly added the empty folders to it) would void
        // every journal of an upgraded daemon. This value was computed by protocol 12.
        let f =
            FileManifest::from_pieces(RelPath::new("a/b.eti").unwrap(), 9, 0o644, vec![[7; 32]]);
        let v = FileManifest::from_pieces(
            RelPath::new("version.ini").unwrap(),
            8,
            0o644,
            vec![[1; 32]],
        );
        let hex: String = manifest_digest(&[f, v])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "d87ab07dfb12409e1ff61af91a7c7065a72e6a76c764557ab9c95e5b40c7ef63"
        );
    }

    #[test]
    fn a_folder_list_digest_tells_lists_apart() {
        let list = |names: &[&str]| -> Vec<RelPath> {
            names.iter().map(|n| RelPath::new(n).unwrap()).collect()
        };
        let ab = folders_digest(&list(&["a", "b"]));
        assert_eq!(ab, folders_digest(&list(&["a", "b"])));
        for other in [&["a/b"][..], &["ab"], &["a"], &[], &["b", "a"]] {
            assert_ne!(folders_digest(&list(other)), ab, "{other:?}");
        }
    }

    #[test]
    fn the_digest_covers_every_field() {
        let f = FileManifest::from_pieces(RelPath::new("a.eti").unwrap(), 1, 0o644, vec![[1; 32]]);
        let base = manifest_digest(std::slice::from_ref(&f));
        let mut g = f.clone();
        g.mode = 0o755;
        assert_ne!(manifest_digest(&[g]), base);
        let mut g = f.clone();
        g.chunks[0][31] = 2;
        assert_ne!(manifest_digest(&[g]), base);
        let mut g = f.clone();
        g.pieces[0][31] = 2;
        assert_ne!(manifest_digest(&[g]), base);
        assert_ne!(manifest_digest(&[f.clone(), f.clone()]), base);
        assert_eq!(manifest_digest(&[f]), base);
    }
}
