//! Serve gates (S12): what a source agrees to send. Pure functions over the scanned root.

use lanspread_catalog::{
    Catalog, ChunkHash, FileDescriptor, FileManifest, GameId, GameRoot, RelPath, Version,
    CHUNK_SIZE,
};
use lanspread_proto::ChunkSet;
use lanspread_proto::{unit_count, unit_of_rest};

use crate::PeerError;

/// Checks a manifest or chunk request for a game: it must be in the catalog, present with
/// a valid sentinel at exactly the requested version, and not under an operation.
pub fn gate_files<'a>(
    catalog: &Catalog,
    id: &GameId,
    root: Option<&'a GameRoot>,
    operation_active: bool,
    version: Version,
) -> Result<&'a GameRoot, PeerError> {
    let refuse = |why: String| Err(PeerError::Refused(why));
    if !catalog.contains(id) {
        return refuse(format!("game {id} is not in the catalog"));
    }
    let Some(root) = root else {
        return refuse(format!("game {id} is not here"));
    };
    let Some(have) = root.version else {
        return refuse(format!("game {id} is not ready (no valid version.ini)"));
    };
    if let Some(problem) = &root.problem {
        return refuse(format!("game {id} is not offered: {problem}"));
    }
    if operation_active {
        return refuse(format!("game {id} is busy (an operation is in progress)"));
    }
    if have != version {
        return refuse(format!("game {id} is at version {have}, not {version}"));
    }
    Ok(root)
}

/// Checks a chunk request against a gated root: the path must be one of the scanned files
/// (never `local/`, `.lanspread*` or outside the root — `RelPath` cannot even express
/// those) and the range must lie inside the file and within one chunk.
pub fn gate_chunk<'a>(
    root: &'a GameRoot,
    path: &RelPath,
    offset: u64,
    len: u64,
) -> Result<&'a FileDescriptor, PeerError> {
    let Some(file) = root.file(path.as_str()) else {
        return Err(PeerError::Refused(format!(
            "no file {path} in game {}",
            root.id
        )));
    };
    if len == 0 || len > CHUNK_SIZE {
        return Err(PeerError::Refused(format!(
            "chunk length {len} outside 1..={CHUNK_SIZE}"
        )));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file.size => Ok(file),
        _ => Err(PeerError::Refused(format!(
            "range {offset}+{len} past the end of {path} ({} bytes)",
            file.size
        ))),
    }
}

/// A manifest's files by path, with where each file's units start in the game's unit
/// numbering (holdings count units): a request names a file per range, and a scan of the file list per range
/// made serving a download of n small files cost O(n²). A validated manifest is sorted
/// by path (binary search); any other list is searched in order.
#[derive(Debug, Clone, Default)]
pub struct ChunkIndex {
    /// Index of each file's first unit.
    first: Vec<usize>,
    sorted: bool,
}

impl ChunkIndex {
    /// The index of `files`.
    pub fn new(files: &[FileManifest]) -> Self {
        let mut next = 0usize;
        let first = files
            .iter()
            .map(|f| {
                let at = next;
                next = next.saturating_add(unit_count(f.size) as usize);
                at
            })
            .collect();
        Self {
            first,
            sorted: files.windows(2).all(|w| w[0].path < w[1].path),
        }
    }

    /// The position of the file at `path` in `files` (the list this index was made of),
    /// and the index of its first chunk.
    pub fn find(&self, files: &[FileManifest], path: &RelPath) -> Option<(usize, usize)> {
        let i = if self.sorted {
            files.binary_search_by(|f| f.path.cmp(path)).ok()?
        } else {
            files.iter().position(|f| &f.path == path)?
        };
        Some((i, *self.first.get(i)?))
    }
}

/// Checks a request to a partial holder (`PeerRequest::PartialChunks`): the
/// downloader's manifest must be ours (same digest), and the range must be exactly one
/// unit ([`lanspread_proto::UNIT_SIZE`]) of the manifest that we verified, or its rest
/// from a piece on (a downloader that kept the unit's first pieces). Returns the unit's
/// index. Nothing else of a partial root is ever served. `index` is [`ChunkIndex::new`]
/// of `files`.
pub fn gate_partial_chunk(
    (files, index): (&[FileManifest], &ChunkIndex),
    verified: &ChunkSet,
    (ours, asked): (&ChunkHash, &ChunkHash),
    path: &RelPath,
    (offset, len): (u64, u64),
) -> Result<usize, PeerError> {
    let refuse = |why: String| Err(PeerError::Refused(why));
    if ours != asked {
        return refuse("another manifest than the one this partial copy holds".into());
    }
    let Some((i, first)) = index.find(files, path) else {
        return refuse(format!("no file {path} in this partial copy"));
    };
    let Some(chunk) = unit_of_rest(files[i].size, offset, len) else {
        return refuse(format!(
            "{path}: {len} bytes at {offset} is not a unit or its rest from a piece"
        ));
    };
    let chunk = first + chunk as usize;
    if !verified.contains(chunk) {
        return refuse(format!(
            "{path}: the unit at {offset} is not verified here yet"
        ));
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanspread_proto::{PIECE_SIZE, UNIT_SIZE};
    use std::path::PathBuf;

    fn root(version: Option<&str>) -> GameRoot {
        GameRoot {
            id: GameId::new("ggoo").unwrap(),
            dir: PathBuf::from("/g/ggoo"),
            version: version.map(|v| Version::parse(v).unwrap()),
            files: vec![
                FileDescriptor {
                    path: RelPath::new("ggoo.eti").unwrap(),
                    size: 100,
                    mode: 0o644,
                },
                FileDescriptor {
                    path: RelPath::new("version.ini").unwrap(),
                    size: 9,
                    mode: 0o644,
                },
            ],
            folders: vec![],
            installed: false,
            problem: None,
        }
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn files_gate() {
        let c = Catalog::builtin();
        let id = GameId::new("ggoo").unwrap();
        let r = root(Some("20250301"));
        assert!(gate_files(&c, &id, Some(&r), false, v("20250301")).is_ok());
        let unknown = GameId::new("mystery-game").unwrap();
        let err = gate_files(&c, &unknown, Some(&r), false, v("20250301")).unwrap_err();
        assert!(err.to_string().contains("not in the catalog"));
        assert!(gate_files(&c, &id, None, false, v("20250301"))
            .unwrap_err()
            .to_string()
            .contains("not here"));
        let nr = root(None);
        assert!(gate_files(&c, &id, Some(&nr), false, v("20250301"))
            .unwrap_err()
            .to_string()
            .contains("not ready"));
        assert!(gate_files(&c, &id, Some(&r), true, v("20250301"))
            .unwrap_err()
            .to_string()
            .contains("busy"));
        assert!(gate_files(&c, &id, Some(&r), false, v("20250101"))
            .unwrap_err()
            .to_string()
            .contains("version"));
    }

    #[test]
    fn chunk_gate() {
        let r = root(Some("20250301"));
        let p = RelPath::new("ggoo.eti").unwrap();
        assert!(gate_chunk(&r, &p, 0, 100).is_ok());
        assert!(gate_chunk(&r, &p, 99, 1).is_ok());
        assert!(gate_chunk(&r, &p, 99, 2).is_err());
        assert!(gate_chunk(&r, &p, u64::MAX, 2).is_err(), "overflow");
        assert!(gate_chunk(&r, &p, 0, 0).is_err());
        assert!(gate_chunk(&r, &RelPath::new("other.bin").unwrap(), 0, 1).is_err());
        // Paths under local/ or .lanspread*, or escaping the root, are not even RelPaths.
        for bad in [
            "local/game.exe",
            ".lanspread/pieces.json",
            "../ggoo.eti",
            "/etc/passwd",
        ] {
            assert!(RelPath::new(bad).is_err(), "{bad}");
        }
    }

    fn manifest(sizes: &[(&str, u64)]) -> Vec<FileManifest> {
        sizes
            .iter()
            .map(|&(p, size)| {
                let pieces = vec![[0; 32]; lanspread_proto::piece_count(size) as usize];
                FileManifest::from_pieces(RelPath::new(p).unwrap(), size, 0o644, pieces)
            })
            .collect()
    }

    #[test]
    fn a_partial_copy_serves_exactly_its_verified_chunks_at_its_manifest() {
        let files = manifest(&[("a.eti", UNIT_SIZE + 10), ("b.eti", 5)]);
        // Units: 0 = a@0, 1 = a@8Mi (10 bytes), 2 = b@0 (5 bytes).
        let mut verified = ChunkSet::empty(3);
        verified.insert(1);
        verified.insert(2);
        let d = [9u8; 32];
        let a = RelPath::new("a.eti").unwrap();
        let b = RelPath::new("b.eti").unwrap();
        let index = ChunkIndex::new(&files);
        let gate = |path: &RelPath, off, len, asked: &ChunkHash| {
            gate_partial_chunk((&files, &index), &verified, (&d, asked), path, (off, len))
        };
        assert_eq!(gate(&a, UNIT_SIZE, 10, &d).unwrap(), 1);
        assert_eq!(gate(&b, 0, 5, &d).unwrap(), 2);
        assert!(gate(&a, 0, UNIT_SIZE, &d).is_err(), "not verified yet");
        assert!(gate(&b, 0, 5, &[1; 32]).is_err(), "another manifest");
        assert!(gate(&a, UNIT_SIZE, 5, &d).is_err(), "part of a chunk");
        assert!(gate(&a, UNIT_SIZE + 1, 9, &d).is_err(), "not a chunk start");
        assert!(gate(&a, 2 * UNIT_SIZE, 1, &d).is_err(), "past the end");
        assert!(gate(&b, 0, 6, &d).is_err(), "longer than the chunk");
        let c = RelPath::new("c.eti").unwrap();
        assert!(gate(&c, 0, 1, &d).is_err(), "no such file");
        // The rest of a verified chunk from a piece on (its first pieces kept elsewhere).
        verified.insert(0);
        let index = ChunkIndex::new(&files);
        let gate =
            |off, len| gate_partial_chunk((&files, &index), &verified, (&d, &d), &a, (off, len));
        assert_eq!(gate(PIECE_SIZE, UNIT_SIZE - PIECE_SIZE).unwrap(), 0);
        assert!(gate(PIECE_SIZE + 1, UNIT_SIZE - PIECE_SIZE - 1).is_err());
        assert!(
            gate(PIECE_SIZE, PIECE_SIZE).is_err(),
            "not to the chunk's end"
        );
    }

    #[test]
    fn the_chunk_index_finds_every_file_sorted_or_not() {
        // A sorted manifest is searched by halves, any other list in order: both find
        // every file with the number of its first chunk, and nothing else.
        let sorted = manifest(&[
            ("a-b.eti", 5),
            ("a.eti", 2 * UNIT_SIZE + 1),
            ("a/b.eti", 0),
            ("b.eti", UNIT_SIZE),
            ("version.ini", 9),
        ]);
        // Units in list order (an empty file has none): sorted a-b 0, a 1..=3, a/b -,
        // b 4, version.ini 5; reversed version.ini 0, b 1, a/b -, a 2..=4, a-b 5.
        let mut shuffled = sorted.clone();
        shuffled.reverse();
        let cases = [(&sorted, [0, 1, 4, 4, 5]), (&shuffled, [5, 2, 2, 1, 0])];
        for (files, firsts) in cases {
            let index = ChunkIndex::new(files);
            for (f, want) in sorted.iter().zip(firsts) {
                let (i, first) = index.find(files, &f.path).expect("found");
                assert_eq!(files[i].path, f.path);
                assert_eq!(first, want, "{}", f.path);
            }
            for missing in ["a", "a/b", "c.eti", "zzz"] {
                assert!(index.find(files, &RelPath::new(missing).unwrap()).is_none());
            }
        }
    }
}
