//! The complete holder's side of piece selection. A downloader asking a complete holder
//! (the file server) offers the chunks it needs that no partial holder it knows has
//! (`Planner::offer_to_complete_sources`); the holder sends the one it has sent least often, and none
//! that it is sending to someone else right now — that copy will be in the swarm soon,
//! and the downloader can fetch it there. Downloaders cannot see each other's requests in
//! flight, so without this many of them ask the server for the same rare chunk at once
//! and its uplink carries it several times; with it, the server's first pass reaches each
//! chunk once (one complete copy in the swarm after about F/U), and it sends a chunk again
//! only to a downloader that cannot get it elsewhere.

use std::collections::HashMap;

use lanspread_catalog::FileDescriptor;
use lanspread_proto::{unit_count, unit_of_rest, ChunkRange};

/// The chunk numbers (in the game's chunk order: files in order, chunks within) of the
/// offered ranges that are whole chunks of `files` or their rest from a piece on
/// ([`unit_of_rest`]), `None` for any other range; and the game's chunk count.
pub fn offered_chunks(
    files: &[FileDescriptor],
    ranges: &[ChunkRange],
) -> (usize, Vec<Option<usize>>) {
    let mut base = HashMap::with_capacity(files.len());
    let mut total = 0u64;
    for f in files {
        base.insert(f.path.as_str(), (total, f.size));
        total += unit_count(f.size);
    }
    let index = |r: &ChunkRange| {
        let &(first, size) = base.get(r.path.as_str())?;
        unit_of_rest(size, r.offset, r.len).map(|c| (first + c) as usize)
    };
    (total as usize, ranges.iter().map(index).collect())
}

/// What one complete holder has sent of one game.
#[derive(Debug, Clone, Default)]
pub struct SeedChooser {
    sent: Vec<u32>,
    sending: Vec<u32>,
}

impl SeedChooser {
    /// For a game of `chunks` chunks.
    pub fn new(chunks: usize) -> Self {
        Self {
            sent: vec![0; chunks],
            sending: vec![0; chunks],
        }
    }

    /// Picks among `candidates` the chunk sent least often that is not being sent right
    /// now (the requester's order breaks ties) and counts it as sending; `None` when every
    /// candidate is on its way to someone else or none is a chunk of the game.
    pub fn choose(&mut self, candidates: &[usize]) -> Option<usize> {
        let best = candidates
            .iter()
            .copied()
            .filter(|&c| c < self.sent.len() && self.sending[c] == 0)
            .min_by_key(|&c| self.sent[c])?;
        self.sent[best] += 1;
        self.sending[best] += 1;
        Some(best)
    }

    /// `chunk` is being sent without an offer (a plain request at the server of a swarm):
    /// counted as sent and sending, so an offer's choice leaves it alone until
    /// [`SeedChooser::finished`]. It is sent even when it is on its way elsewhere: a
    /// downloader asks plainly only while it knows no other holder, so a `Later` would
    /// only make it wait. Out of range: nothing.
    pub fn sending(&mut self, chunk: usize) {
        if let (Some(n), Some(s)) = (self.sent.get_mut(chunk), self.sending.get_mut(chunk)) {
            *n += 1;
            *s += 1;
        }
    }

    /// The game's chunk count.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// True for a game without chunks.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// The send of `chunk` ended (delivered, failed or cancelled).
    pub fn finished(&mut self, chunk: usize) {
        if let Some(s) = self.sending.get_mut(chunk) {
            *s = s.saturating_sub(1);
        }
    }

    /// How often `chunk` was sent (or started).
    pub fn sent(&self, chunk: usize) -> u32 {
        self.sent.get(chunk).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanspread_catalog::RelPath;

    #[test]
    fn offered_ranges_are_numbered_in_the_games_chunk_order_and_only_chunks_or_their_rests_count() {
        use lanspread_proto::{PIECE_SIZE, UNIT_SIZE};
        let file = |p: &str, size| FileDescriptor {
            path: RelPath::new(p).unwrap(),
            size,
            mode: 0o644,
        };
        let files = [file("a.eti", 2 * UNIT_SIZE + 5), file("version.ini", 8)];
        let range = |p: &str, offset, len| ChunkRange {
            path: RelPath::new(p).unwrap(),
            offset,
            len,
        };
        let (total, idx) = offered_chunks(
            &files,
            &[
                range("a.eti", UNIT_SIZE, UNIT_SIZE),
                range("a.eti", 2 * UNIT_SIZE, 5),
                range("version.ini", 0, 8),
                range("a.eti", 0, 7),
                range("a.eti", 1, UNIT_SIZE),
                range("b.eti", 0, 8),
                range("a.eti", 3 * UNIT_SIZE, 5),
                range("a.eti", UNIT_SIZE + PIECE_SIZE, UNIT_SIZE - PIECE_SIZE),
                range("a.eti", UNIT_SIZE + PIECE_SIZE, PIECE_SIZE),
            ],
        );
        assert_eq!(total, 4);
        let rest_of_1 = Some(1);
        assert_eq!(
            idx,
            [
                Some(1),
                Some(2),
                Some(3),
                None,
                None,
                None,
                None,
                rest_of_1,
                None
            ]
        );
    }

    #[test]
    fn the_least_sent_candidate_not_on_its_way_then_the_requesters_order() {
        let mut s = SeedChooser::new(4);
        assert_eq!(s.choose(&[2, 1]), Some(2), "requester's order on a tie");
        assert_eq!(s.choose(&[2, 1]), Some(1), "2 is being sent");
        assert_eq!(s.choose(&[2, 1]), None, "both are on their way");
        s.finished(2);
        assert_eq!(s.choose(&[2, 1, 3]), Some(3), "never sent beats sent once");
        assert_eq!(s.choose(&[2]), Some(2), "sent, but no longer on its way");
        assert_eq!(s.choose(&[9]), None, "not a chunk of the game");
        assert_eq!(s.choose(&[]), None);
        assert_eq!((s.sent(2), s.sent(1), s.sent(0)), (2, 1, 0));
        s.finished(9);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn a_chunk_sent_without_an_offer_is_not_chosen_while_it_is_on_its_way() {
        let mut s = SeedChooser::new(3);
        s.sending(0); // a plain request for chunk 0
        s.sending(7); // not a chunk: nothing
        assert_eq!(s.choose(&[0, 1]), Some(1));
        assert_eq!(s.choose(&[0]), None, "0 is on its way");
        s.finished(0);
        assert_eq!(s.choose(&[0, 2]), Some(2), "sent once already");
        assert_eq!(s.sent(0), 1);
    }
}
