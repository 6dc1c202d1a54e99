//! Whole chunks out of verified units. A download plans, fetches and verifies units
//! ([`lanspread_proto::UNIT_SIZE`]), but reports chunks: `download-chunk-finished` is
//! per 32 MiB chunk (the contract), emitted when the last unit of the chunk verifies,
//! with every source that sent part of it. Sans-IO: the daemon feeds it each verified
//! unit and emits what it returns.

use lanspread_proto::{PeerId, CHUNK_SIZE};

use crate::ChunkSpec;

/// A chunk whose every unit is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkDone {
    /// Index into the manifest's files.
    pub file: usize,
    /// The chunk's first byte.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// The sources that sent it, with the bytes each sent now (not counting what an
    /// earlier attempt had verified), most bytes first (ties: first to send).
    pub sources: Vec<(PeerId, u64)>,
    /// Bytes of it an earlier attempt had verified (units, or first pieces of units).
    pub resumed: u64,
}

impl ChunkDone {
    /// The source that sent most of it (what `download-chunk-finished` names).
    pub fn main_source(&self) -> Option<&PeerId> {
        self.sources.first().map(|(p, _)| p)
    }
}

#[derive(Debug, Clone)]
struct Tally {
    /// [`ChunkSpec::chunk_key`] of its units.
    key: (usize, u64),
    file: usize,
    offset: u64,
    len: u64,
    /// Units not verified yet.
    left: usize,
    sources: Vec<(PeerId, u64)>,
    resumed: u64,
}

/// The chunks of a download's units (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct ChunkTally {
    /// Each unit's chunk (an index into `chunks`).
    chunk_of: Vec<usize>,
    /// Units already counted (verified before, or now).
    counted: Vec<bool>,
    chunks: Vec<Tally>,
}

impl ChunkTally {
    /// The chunks of `units` (the planner's list: a chunk's units are consecutive).
    pub fn new(units: &[ChunkSpec]) -> Self {
        let mut t = Self {
            chunk_of: Vec::with_capacity(units.len()),
            counted: vec![false; units.len()],
            chunks: Vec::new(),
        };
        for u in units {
            let start = u.offset - u.offset % CHUNK_SIZE;
            if t.chunks.last().map(|c| c.key) != Some(u.chunk_key()) {
                t.chunks.push(Tally {
                    key: u.chunk_key(),
                    file: u.file,
                    offset: start,
                    len: 0,
                    left: 0,
                    sources: Vec::new(),
                    resumed: 0,
                });
            }
            let c = t.chunks.len() - 1;
            let chunk = &mut t.chunks[c];
            chunk.len = u.offset + u.len - start;
            chunk.left += 1;
            t.chunk_of.push(c);
        }
        t
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Chunks whose every unit is counted.
    pub fn whole(&self) -> usize {
        self.chunks.iter().filter(|c| c.left == 0).count()
    }

    /// A unit an earlier attempt verified, of `len` bytes: counted as resumed. Its chunk
    /// is reported when its other units verify (never, when it has none left).
    pub fn present(&mut self, unit: usize, len: u64) {
        if let Some(c) = self.count(unit) {
            self.chunks[c].resumed += len;
        }
    }

    /// A unit verified now: each of `sent` sent that many bytes of it (a source that
    /// went mid-unit, then the one that finished it), the rest (`resumed`) was kept from
    /// an earlier attempt. Returns its chunk once every unit of it is verified.
    pub fn verified(
        &mut self,
        unit: usize,
        sent: &[(PeerId, u64)],
        resumed: u64,
    ) -> Option<ChunkDone> {
        let c = self.count(unit)?;
        let chunk = &mut self.chunks[c];
        chunk.resumed += resumed;
        for (peer, bytes) in sent {
            match chunk.sources.iter_mut().find(|(p, _)| p == peer) {
                Some((_, b)) => *b += bytes,
                None => chunk.sources.push((peer.clone(), *bytes)),
            }
        }
        if chunk.left > 0 {
            return None;
        }
        let mut sources = std::mem::take(&mut chunk.sources);
        // Stable: among equals, the first to send stays first.
        sources.sort_by_key(|s| std::cmp::Reverse(s.1));
        Some(ChunkDone {
            file: chunk.file,
            offset: chunk.offset,
            len: chunk.len,
            sources,
            resumed: chunk.resumed,
        })
    }

    /// Counts a unit once: its chunk's index, `None` for an unknown or counted unit.
    fn count(&mut self, unit: usize) -> Option<usize> {
        let counted = self.counted.get_mut(unit)?;
        if *counted {
            return None;
        }
        *counted = true;
        let c = self.chunk_of[unit];
        self.chunks[c].left -= 1;
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn spec(file: usize, offset: u64, len: u64) -> ChunkSpec {
        ChunkSpec {
            file,
            offset,
            len,
            hash: [0; 32],
            pieces: Vec::new(),
        }
    }

    fn pid(n: u8) -> PeerId {
        PeerId::from_spki(&[n])
    }

    /// File 0: a whole chunk in four 8 MiB units and a 9 MiB chunk in two; file 1: one
    /// small unit.
    fn units() -> Vec<ChunkSpec> {
        let c = CHUNK_SIZE;
        vec![
            spec(0, 0, 8 * MIB),
            spec(0, 8 * MIB, 8 * MIB),
            spec(0, 16 * MIB, 8 * MIB),
            spec(0, 24 * MIB, 8 * MIB),
            spec(0, c, 8 * MIB),
            spec(0, c + 8 * MIB, MIB),
            spec(1, 0, 5),
        ]
    }

    #[test]
    fn a_chunk_is_reported_once_when_its_last_unit_verifies_with_every_source() {
        let mut t = ChunkTally::new(&units());
        assert_eq!(t.chunk_count(), 3);
        assert_eq!(t.verified(1, &[(pid(1), 8 * MIB)], 0), None);
        assert_eq!(t.verified(0, &[(pid(2), 8 * MIB)], 0), None);
        assert_eq!(t.verified(0, &[(pid(2), 8 * MIB)], 0), None, "counted once");
        assert_eq!(t.verified(3, &[(pid(2), 6 * MIB)], 2 * MIB), None);
        // A unit begun by one source and finished by another: both are counted.
        let mut split = ChunkTally::new(&units());
        for u in 0..3 {
            assert_eq!(split.verified(u, &[(pid(1), 8 * MIB)], 0), None);
        }
        let both = split.verified(3, &[(pid(3), 5 * MIB), (pid(1), 3 * MIB)], 0);
        let both = both.expect("whole");
        assert_eq!(both.sources, vec![(pid(1), 27 * MIB), (pid(3), 5 * MIB)]);
        let done = t
            .verified(2, &[(pid(1), 8 * MIB)], 0)
            .expect("the chunk is whole");
        assert_eq!((done.file, done.offset, done.len), (0, 0, CHUNK_SIZE));
        assert_eq!(done.sources, vec![(pid(1), 16 * MIB), (pid(2), 14 * MIB)]);
        assert_eq!(done.main_source(), Some(&pid(1)));
        assert_eq!(done.resumed, 2 * MIB);
        assert_eq!(
            t.verified(2, &[(pid(1), 8 * MIB)], 0),
            None,
            "reported once"
        );
        let small = t
            .verified(6, &[(pid(3), 5)], 0)
            .expect("one unit, one chunk");
        assert_eq!((small.file, small.offset, small.len), (1, 0, 5));
        assert_eq!(t.verified(99, &[(pid(3), 5)], 0), None, "no such unit");
    }

    #[test]
    fn units_verified_before_count_as_resumed_and_whole_chunks_are_not_reported() {
        let mut t = ChunkTally::new(&units());
        t.present(4, 8 * MIB);
        t.present(6, 5);
        assert_eq!(t.whole(), 1, "the small file's");
        let done = t
            .verified(5, &[(pid(1), MIB)], 0)
            .expect("its other unit was there");
        assert_eq!((done.offset, done.len), (CHUNK_SIZE, 9 * MIB));
        assert_eq!(done.resumed, 8 * MIB);
        assert_eq!(done.sources, vec![(pid(1), MIB)]);
        assert_eq!(
            t.verified(6, &[(pid(1), 5)], 0),
            None,
            "present before: not reported"
        );
    }

    #[test]
    fn whole_chunk_units_map_one_to_one() {
        let whole = vec![spec(0, 0, CHUNK_SIZE), spec(0, CHUNK_SIZE, 3)];
        let mut t = ChunkTally::new(&whole);
        assert_eq!(t.chunk_count(), 2);
        let d = t.verified(1, &[(pid(1), 3)], 0).expect("whole");
        assert_eq!((d.offset, d.len), (CHUNK_SIZE, 3));
    }
}
