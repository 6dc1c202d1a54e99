//! When a downloading peer tells its links about chunks it verified: batched, so a fast
//! download does not send a frame per chunk, and bounded in delay, so the swarm learns of
//! a chunk soon. Sans-IO: the caller feeds verified chunks and the time, and sends what
//! [`HoldingBatcher::poll`] returns as one `HoldingMore`.

use std::collections::BTreeMap;
use std::time::Duration;

use lanspread_proto::{GameId, Holding, Message};

/// Verified chunks not yet announced.
#[derive(Debug, Clone)]
pub struct HoldingBatcher {
    pending: Vec<u32>,
    since: Option<Duration>,
    max_chunks: usize,
    max_delay: Duration,
}

/// Announce at the latest this long after a chunk verified.
pub const HOLDING_DELAY: Duration = Duration::from_millis(250);
/// Or as soon as this many chunks wait.
pub const HOLDING_BATCH: usize = 8;

impl Default for HoldingBatcher {
    fn default() -> Self {
        Self::new(HOLDING_BATCH, HOLDING_DELAY)
    }
}

impl HoldingBatcher {
    /// Announces every `max_chunks` chunks or `max_delay` after the oldest waiting one.
    pub fn new(max_chunks: usize, max_delay: Duration) -> Self {
        Self {
            pending: Vec::new(),
            since: None,
            max_chunks: max_chunks.max(1),
            max_delay,
        }
    }

    /// Chunk `chunk` verified at `now`.
    pub fn push(&mut self, chunk: u32, now: Duration) {
        self.since.get_or_insert(now);
        self.pending.push(chunk);
    }

    /// The chunks to announce now, if a batch is due.
    pub fn poll(&mut self, now: Duration) -> Option<Vec<u32>> {
        let due = self.pending.len() >= self.max_chunks
            || self.since.is_some_and(|t| now >= t + self.max_delay);
        if !due || self.pending.is_empty() {
            return None;
        }
        self.since = None;
        Some(std::mem::take(&mut self.pending))
    }

    /// When the waiting chunks are due (for the caller's timer), if any wait.
    pub fn deadline(&self) -> Option<Duration> {
        self.since.map(|t| t + self.max_delay)
    }

    /// Everything still waiting (the download ends: announce it before `HoldingGone` or
    /// the commit's `Library`).
    pub fn flush(&mut self) -> Option<Vec<u32>> {
        self.since = None;
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// What a downloading peer announces of one game: the chunks it verified and those it is
/// fetching now (it serves them as their pieces verify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCopy {
    /// The chunks verified.
    pub holding: Holding,
    /// The chunks being fetched now (at most `MAX_GROWING`).
    pub growing: Vec<u32>,
}

/// The frames that bring a link from the holdings it was told (`sent`) to the current
/// ones (`now`): `Holding` for a game new to it (or at another manifest), `HoldingMore` with
/// the chunks verified since, `HoldingGrowing` when the chunks being fetched changed,
/// `HoldingGone` for a game no longer held in part. A link writer calls it whenever the
/// holdings change, so a new link gets the whole state and an old one only deltas.
pub fn holding_frames(
    sent: &BTreeMap<GameId, HeldCopy>,
    now: &BTreeMap<GameId, HeldCopy>,
) -> Vec<Message> {
    let mut out = Vec::new();
    for (game, copy) in now {
        let h = &copy.holding;
        let old = sent.get(game);
        let same =
            old.is_some_and(|o| o.holding.digest == h.digest && o.holding.version == h.version);
        match old.map(|o| &o.holding) {
            Some(old) if same => {
                let more: Vec<u32> = h
                    .chunks
                    .iter()
                    .filter(|&c| !old.chunks.contains(c))
                    .filter_map(|c| u32::try_from(c).ok())
                    .collect();
                if !more.is_empty() {
                    out.push(Message::HoldingMore {
                        game: game.clone(),
                        digest: h.digest,
                        chunks: more,
                    });
                }
            }
            _ => out.push(Message::Holding(h.clone())),
        }
        // A new holding starts with nothing growing; after it (or the chunks verified
        // since), what is being fetched now.
        let told = old.filter(|_| same).map_or(&[][..], |o| &o.growing[..]);
        if told != copy.growing {
            out.push(Message::HoldingGrowing {
                game: game.clone(),
                digest: h.digest,
                chunks: copy.growing.clone(),
            });
        }
    }
    for game in sent.keys().filter(|g| !now.contains_key(*g)) {
        out.push(Message::HoldingGone { game: game.clone() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn batches_by_count_or_by_delay() {
        let mut b = HoldingBatcher::new(3, 250 * MS);
        assert_eq!(b.poll(Duration::ZERO), None);
        assert_eq!(b.deadline(), None);
        b.push(4, 10 * MS);
        b.push(5, 20 * MS);
        assert_eq!(b.deadline(), Some(260 * MS));
        assert_eq!(b.poll(100 * MS), None, "neither full nor late");
        assert_eq!(
            b.poll(260 * MS),
            Some(vec![4, 5]),
            "the oldest waited 250 ms"
        );
        assert_eq!(b.deadline(), None);
        for c in 0..3 {
            b.push(c, 300 * MS);
        }
        assert_eq!(
            b.poll(300 * MS),
            Some(vec![0, 1, 2]),
            "a full batch at once"
        );
        b.push(9, 400 * MS);
        assert_eq!(b.flush(), Some(vec![9]));
        assert_eq!(b.flush(), None);
        assert_eq!(b.poll(Duration::from_secs(9)), None);
    }

    #[test]
    fn a_link_gets_the_whole_state_then_deltas_then_gone() {
        use lanspread_proto::{ChunkSet, Version};
        let game: GameId = "cod5".parse().unwrap();
        let holding = |chunks: &[usize], digest: u8| {
            let mut set = ChunkSet::empty(6);
            for &c in chunks {
                set.insert(c);
            }
            Holding {
                game: game.clone(),
                version: Version::parse("20250101").unwrap(),
                digest: [digest; 32],
                chunks: set,
            }
        };
        let map = |h: Option<Holding>| {
            h.map(|h| {
                let growing = Vec::new();
                (
                    h.game.clone(),
                    HeldCopy {
                        holding: h,
                        growing,
                    },
                )
            })
            .into_iter()
            .collect()
        };
        let none = BTreeMap::new();
        let a: BTreeMap<_, _> = map(Some(holding(&[0], 1)));
        let b: BTreeMap<_, _> = map(Some(holding(&[0, 2, 5], 1)));
        let c: BTreeMap<_, _> = map(Some(holding(&[1], 2)));
        assert_eq!(
            holding_frames(&none, &a),
            [Message::Holding(holding(&[0], 1))]
        );
        assert_eq!(
            holding_frames(&a, &b),
            [Message::HoldingMore {
                game: game.clone(),
                digest: [1; 32],
                chunks: vec![2, 5]
            }]
        );
        assert!(holding_frames(&b, &b).is_empty(), "nothing new");
        assert_eq!(
            holding_frames(&b, &c),
            [Message::Holding(holding(&[1], 2))],
            "another manifest: the whole state again"
        );
        assert_eq!(
            holding_frames(&c, &none),
            [Message::HoldingGone { game: game.clone() }]
        );
        // Chunks being fetched: the list after the holding, again when it changes, an
        // empty list when the last one verified; another manifest starts afresh.
        let growing = |copy: &BTreeMap<GameId, HeldCopy>, chunks: &[u32]| {
            let mut copy = copy.clone();
            copy.values_mut().for_each(|c| c.growing = chunks.to_vec());
            copy
        };
        let frame = |digest: u8, chunks: &[u32]| Message::HoldingGrowing {
            game: game.clone(),
            digest: [digest; 32],
            chunks: chunks.to_vec(),
        };
        let a3 = growing(&a, &[3]);
        assert_eq!(
            holding_frames(&none, &a3),
            [Message::Holding(holding(&[0], 1)), frame(1, &[3])]
        );
        assert!(holding_frames(&a3, &a3).is_empty());
        let b4 = growing(&b, &[4]);
        assert_eq!(
            holding_frames(&a3, &b4),
            [
                Message::HoldingMore {
                    game: game.clone(),
                    digest: [1; 32],
                    chunks: vec![2, 5]
                },
                frame(1, &[4])
            ]
        );
        assert_eq!(holding_frames(&b4, &b), [frame(1, &[])]);
        assert_eq!(
            holding_frames(&b4, &growing(&c, &[4])),
            [Message::Holding(holding(&[1], 2)), frame(2, &[4])]
        );
    }
}
