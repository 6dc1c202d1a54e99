//! A set of chunk indices of one manifest: which chunks a peer holds verified. A bitmap of
//! `len` bits in 64-bit words; on the wire it is checked against the manifest's chunk
//! count before use ([`ChunkSet::check`]), so a peer cannot make us index past the end.

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// Most chunks a game may have (32 TiB in 32 MiB chunks; a 128 KiB bitmap): a peer's
/// announced set beyond it is refused before it is stored.
pub const MAX_CHUNKS: usize = 1 << 20;

/// Chunk indices `0..len`, as a bitmap.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct ChunkSet {
    len: u32,
    words: Vec<u64>,
}

fn words_for(len: u32) -> usize {
    (len as usize).div_ceil(64)
}

impl ChunkSet {
    /// No chunk of `len`.
    pub fn empty(len: usize) -> Self {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        Self {
            len,
            words: vec![0; words_for(len)],
        }
    }

    /// Every chunk of `len`.
    pub fn full(len: usize) -> Self {
        let mut s = Self::empty(len);
        for i in 0..s.len() {
            s.insert(i);
        }
        s
    }

    /// A set received from a peer, checked: `len` must be the manifest's chunk count,
    /// the words exactly enough for it and no bit set past `len`.
    pub fn check(self, chunks: usize) -> Result<Self, ProtoError> {
        let bad = |why: &str| Err(ProtoError::Malformed(format!("chunk set: {why}")));
        if self.len as usize != chunks {
            return bad(&format!("{} chunks, the manifest has {chunks}", self.len));
        }
        if self.words.len() != words_for(self.len) {
            return bad("wrong number of words");
        }
        let tail = self.len % 64;
        if tail != 0 && self.words.last().is_some_and(|w| w >> tail != 0) {
            return bad("bits past the last chunk");
        }
        Ok(self)
    }

    /// How many chunks the set ranges over.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// True when it ranges over no chunk at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds chunk `i`; false when it is out of range or was already there.
    pub fn insert(&mut self, i: usize) -> bool {
        if i >= self.len() {
            return false;
        }
        let (w, b) = (i / 64, 1u64 << (i % 64));
        let new = self.words[w] & b == 0;
        self.words[w] |= b;
        new
    }

    /// Whether chunk `i` is in the set.
    pub fn contains(&self, i: usize) -> bool {
        i < self.len() && self.words[i / 64] & (1u64 << (i % 64)) != 0
    }

    /// How many chunks are in the set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// True when every chunk is in the set.
    pub fn is_full(&self) -> bool {
        self.count() == self.len()
    }

    /// The chunks in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                Some(w * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_contains_count_iter() {
        let mut s = ChunkSet::empty(130);
        assert!(s.insert(0) && s.insert(64) && s.insert(129));
        assert!(!s.insert(64), "already there");
        assert!(!s.insert(130), "out of range");
        assert!(s.contains(129) && !s.contains(1) && !s.contains(500));
        assert_eq!(s.count(), 3);
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 64, 129]);
        assert!(ChunkSet::full(130).is_full());
        assert_eq!(ChunkSet::full(130).count(), 130);
        assert!(ChunkSet::full(0).is_full() && ChunkSet::empty(0).is_empty());
    }

    #[test]
    fn a_set_from_a_peer_is_checked_against_the_manifest() {
        let s = ChunkSet::full(70);
        assert!(s.clone().check(70).is_ok());
        assert!(s.clone().check(71).is_err(), "another chunk count");
        let mut wire = postcard::to_allocvec(&s).unwrap();
        let back: ChunkSet = postcard::from_bytes(&wire).unwrap();
        assert_eq!(back, s);
        // Words for more chunks than announced, and bits past the end.
        let long = ChunkSet {
            len: 70,
            words: vec![0; 3],
        };
        assert!(long.check(70).is_err());
        let past = ChunkSet {
            len: 70,
            words: vec![0, 1 << 6],
        };
        assert!(past.check(70).is_err());
        wire.truncate(1);
        assert!(postcard::from_bytes::<ChunkSet>(&wire).is_err());
    }
}
