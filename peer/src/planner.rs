//! The chunk planner: a sans-IO state machine that spreads 32 MiB chunks over the sources,
//! keeps per-source totals within one chunk of each other (S14), bounds chunks in flight
//! per source, retries a failed chunk elsewhere (S18) and drops a source that sent bad
//! bytes (S38). The caller drives it: `poll_assign` → transfer → `on_done`/`on_failed`.
//!
//! Sources are *complete* (a ready peer at the newest version: every chunk) or *partial*
//! (a peer downloading the same manifest: the chunks it verified, see `holders.rs`).
//! Chunks go out in a per-download shuffled order ([`Planner::shuffled`]), so downloaders
//! that start together ask the server for different chunks; a partial source gets the
//! rarest chunk it holds, and a complete source only chunks no partial source holds
//! (those come from the swarm). Without partial sources and without a shuffle this is
//! the plain in-order planner.

mod holders;
mod lag;
mod outcomes;
mod race;
mod source;
pub use lag::LAG_RACE_AFTER;
pub use race::{Settled, RACE_LAST_CHUNKS};

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use lanspread_catalog::{chunk_ranges, ChunkHash, FileManifest, CHUNK_SIZE, PIECE_SIZE};
use lanspread_proto::{chunk_hash, PeerId, UNIT_SIZE};

/// One chunk (the planner's unit: see [`Planner::with_unit`]): a byte range of one file
/// with its expected hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSpec {
    /// Index into the manifest's files.
    pub file: usize,
    /// First byte.
    pub offset: u64,
    /// Length (1..=the unit).
    pub len: u64,
    /// Expected hash (BLAKE3 over its pieces' hashes).
    pub hash: ChunkHash,
    /// Expected hash (BLAKE3) of each of its 1 MiB pieces.
    pub pieces: Vec<ChunkHash>,
}

impl ChunkSpec {
    /// The 32 MiB chunk this unit belongs to: its file and the chunk's index in it (what
    /// events report, and what the shuffle keeps together).
    pub fn chunk_key(&self) -> (usize, u64) {
        (self.file, self.offset / CHUNK_SIZE)
    }
}

/// A chunk to fetch from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Index into [`Planner::chunks`].
    pub chunk: usize,
    /// The source.
    pub peer: PeerId,
}

/// Chunks to fetch from one source in one request: a run of consecutive small chunks
/// (whole small files, usually), or a single chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Indices into [`Planner::chunks`], in order.
    pub chunks: Vec<usize>,
    /// The source.
    pub peer: PeerId,
    /// The chunks are an offer to a complete source, which sends the one it chooses
    /// ([`Planner::offer_to_complete_sources`]); the others come back
    /// [`FailKind::NotChosen`].
    pub offer: bool,
    /// A second request for a chunk on its way from another source (the end game, see
    /// `race.rs`): the first verified copy wins.
    pub race: bool,
}

/// Which chunks may share a request (see [`Planner::batch_small_chunks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Batching {
    max_chunks: usize,
    max_chunk_len: u64,
    max_bytes: u64,
}

/// Why a chunk transfer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The source vanished or refused: it is dropped for this download.
    SourceGone,
    /// The bytes did not match the hash: the source is dropped for this download.
    BadData,
    /// A local problem (the chunk is retried; the source is kept).
    Transient,
    /// The source is linked but sent nothing for a while: busy, not dead. The chunk is
    /// retried (there or elsewhere), the source is kept but asked for less at once
    /// (its window halves, and grows back one step per verified chunk); it is dropped
    /// only after [`MAX_STALLS`] stalls with no verified chunk in between.
    Stalled,
    /// An offered chunk the source did not choose to send: pending again, nobody's fault.
    NotChosen,
    /// The connection the request went on closed with the source's link (the peer left,
    /// or restarted): the source is dropped until it is back ([`Planner::add_complete`],
    /// [`Planner::set_partial`]), and while nothing else can send, the download waits
    /// for it ([`PlannerStatus::Starved`]). After [`MAX_STALLS`] losses with no verified
    /// chunk in between, the source is not waited for any more.
    Disconnected,
}

/// Stalls in a row (no verified chunk in between) after which a source is dropped.
pub const MAX_STALLS: u32 = 3;
/// A partial source that answers `Later` when the download has verified nothing from
/// anyone for this long is dropped (not banned; it comes back when its holding changes):
/// a peer that only ever says later cannot hold a download forever. Time, not a count: rests end on every holdings change, so counts
/// grow with the size of the party (the N = 1,000 simulation dropped its server).
pub const LATER_DROP: std::time::Duration = std::time::Duration::from_secs(300);
/// The deepest back-off: a source's window shrinks to 1/2^this of the caps (at least one
/// chunk): one chunk at a time for a source that keeps stalling.
const MAX_BACKOFF: u32 = 8;
const _: () = assert!(crate::engine::MAX_IN_FLIGHT >> MAX_BACKOFF <= 1);

/// Where the download stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannerStatus {
    /// Chunks remain.
    Running,
    /// Every chunk is verified.
    Finished,
    /// Chunks remain but no source can send them (every source dropped and nothing in
    /// flight), or one chunk kept failing locally.
    Failed(String),
    /// No source can send a missing chunk now, but some may later: partial sources may
    /// verify more, sources whose link closed may come back (the caller decides how long
    /// to wait).
    Starved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    InFlight,
    Done,
}

use source::Source;

/// Most times one chunk is retried after transient failures.
const MAX_TRANSIENT_RETRIES: u32 = 5;

/// The planner.
#[derive(Debug, Clone)]
pub struct Planner {
    /// Bytes of a unit (a whole chunk unless [`Planner::with_unit`] said less).
    unit: u64,
    chunks: Vec<ChunkSpec>,
    state: Vec<State>,
    owner: Vec<Option<PeerId>>,
    /// The owner's stall epoch when each chunk was assigned.
    epoch_at: Vec<u32>,
    retries: Vec<u32>,
    /// Pending chunks by (rank, index): the order they are started in.
    queue: BTreeSet<(u32, usize)>,
    /// Failed pending chunks, retried before the queue.
    retry: VecDeque<usize>,
    /// Each chunk's place in the order (its index unless shuffled).
    rank: Vec<u32>,
    /// Live partial sources holding each chunk.
    rarity: Vec<u32>,
    /// The second source of a chunk raced in the end game (`race.rs`).
    second: Vec<Option<PeerId>>,
    /// A race's loser, still sending a chunk already verified.
    late: Vec<Option<PeerId>>,
    /// The epoch of the source of a race's second request when it was made (a loser's,
    /// once the race is won).
    race_epoch: Vec<u32>,
    /// When each chunk was last started (a sequence number): the end game races the
    /// oldest first.
    started: Vec<u64>,
    next_start: u64,
    /// Whether the end game races the last chunks.
    race: bool,
    /// Chunks of an offer whose source has not said yet which it sends: not raced.
    offered: Vec<bool>,
    /// The shuffle's seed (0: not shuffled): also orders the holders (`spread`).
    seed: u64,
    sources: BTreeMap<PeerId, Source>,
    max_in_flight: usize,
    max_in_flight_bytes: u64,
    batching: Batching,
    /// Most chunks offered to a complete source at once in a swarm (0: no offers).
    offer: usize,
    done: usize,
    failed: Option<String>,
}

impl Planner {
    /// Plans every unit ([`UNIT_SIZE`]) of every file (empty files have none) over
    /// `sources`, with at most `max_in_flight` units per source at once.
    pub fn new(files: &[FileManifest], sources: &[PeerId], max_in_flight: usize) -> Self {
        Self::with_unit(files, sources, max_in_flight, UNIT_SIZE)
    }

    /// The same with chunks cut into units of `unit` bytes: a divisor of [`CHUNK_SIZE`]
    /// that is a whole number of pieces (anything else is taken as [`CHUNK_SIZE`]). Each
    /// unit is checked by its own pieces' hashes, and the swarm's in-flight caps count
    /// units ([`holders::SWARM_INBOUND_UNITS`]). The protocol's unit is [`UNIT_SIZE`];
    /// the swarm simulation judges others.
    pub fn with_unit(
        files: &[FileManifest],
        sources: &[PeerId],
        max_in_flight: usize,
        unit: u64,
    ) -> Self {
        let unit = if unit >= PIECE_SIZE
            && unit.is_multiple_of(PIECE_SIZE)
            && CHUNK_SIZE.is_multiple_of(unit)
        {
            unit
        } else {
            CHUNK_SIZE
        };
        let per = (unit / PIECE_SIZE) as usize;
        let mut chunks = Vec::new();
        for (i, f) in files.iter().enumerate() {
            for (c, ((offset, len), hash)) in chunk_ranges(f.size).zip(&f.chunks).enumerate() {
                let pieces = f.pieces_of(c);
                // A validated manifest has every chunk's pieces (`FileManifest::consistent`).
                let parts: Vec<&[ChunkHash]> = if unit == CHUNK_SIZE || pieces.len() <= per {
                    vec![pieces]
                } else {
                    pieces.chunks(per).collect()
                };
                for (k, part) in parts.into_iter().enumerate() {
                    let at = k as u64 * unit;
                    chunks.push(ChunkSpec {
                        file: i,
                        offset: offset + at,
                        len: unit.min(len.saturating_sub(at)),
                        hash: if unit == CHUNK_SIZE {
                            *hash
                        } else {
                            chunk_hash(part)
                        },
                        pieces: part.to_vec(),
                    });
                }
            }
        }
        let n = chunks.len();
        Self {
            unit,
            chunks,
            state: vec![State::Pending; n],
            owner: vec![None; n],
            epoch_at: vec![0; n],
            retries: vec![0; n],
            queue: (0..n).map(|c| (c as u32, c)).collect(),
            retry: VecDeque::new(),
            rank: (0..n as u32).collect(),
            rarity: vec![0; n],
            second: vec![None; n],
            late: vec![None; n],
            race_epoch: vec![0; n],
            started: vec![0; n],
            next_start: 0,
            race: false,
            offered: vec![false; n],
            seed: 0,
            sources: sources
                .iter()
                .map(|p| (p.clone(), Source::default()))
                .collect(),
            max_in_flight: max_in_flight.max(1),
            max_in_flight_bytes: u64::MAX,
            batching: Batching {
                max_chunks: 1,
                max_chunk_len: 0,
                max_bytes: 0,
            },
            offer: 0,
            done: 0,
            failed: None,
        }
    }

    /// Also caps the bytes in flight per source: a source takes another chunk only while
    /// less than `bytes` is in flight from it (at least one chunk always fits). With a
    /// high chunk cap this keeps a few big chunks in flight but many small files at
    /// once, whose cost is round trips rather than bytes.
    pub fn limit_in_flight_bytes(mut self, bytes: u64) -> Self {
        self.max_in_flight_bytes = bytes.max(1);
        self
    }

    /// Lets [`Planner::poll_batch`] put up to `max_chunks` consecutive chunks of at most
    /// `max_chunk_len` bytes each, `max_bytes` in all, into one request to one source:
    /// small files then cost one round trip per batch, not per file.
    pub fn batch_small_chunks(
        mut self,
        max_chunks: usize,
        max_chunk_len: u64,
        max_bytes: u64,
    ) -> Self {
        self.batching = Batching {
            max_chunks: max_chunks.max(1),
            max_chunk_len,
            max_bytes,
        };
        self
    }

    /// All chunks.
    pub fn chunks(&self) -> &[ChunkSpec] {
        &self.chunks
    }

    /// The next chunk to start, if a source has room and balance allows it. Call until
    /// `None` after every event.
    pub fn poll_assign(&mut self) -> Option<Assignment> {
        if self.failed.is_some() {
            return None;
        }
        if let Some(a) = self.assign_partial() {
            return Some(a);
        }
        let chunk = self.next_for_complete(|_| true)?;
        let pick = |this: &Self| {
            let floor = this.floor()?;
            this.sources
                .iter()
                .filter(|(_, s)| s.has.is_none() && this.has_room(s, floor))
                // (Lagging sources last: what they take may have to be sent again.)
                .min_by_key(|(p, s)| (s.lagging, s.assigned, s.in_flight, (*p).clone()))
                .map(|(p, _)| p.clone())
        };
        // A source idle only for the balance: those holding it back lag (`lag.rs`).
        let peer = match pick(self) {
            Some(p) => p,
            None if self.find_laggards() => pick(self)?,
            None => return None,
        };
        self.take_pending(chunk);
        self.assign(chunk, &peer);
        Some(Assignment { chunk, peer })
    }

    /// Like [`Planner::poll_assign`], then adds the following pending chunks to the same
    /// request while they are small, the batch limits allow and the source still has room
    /// under the same rules (in flight, bytes, balance). Call until `None` after every event.
    pub fn poll_batch(&mut self) -> Option<Batch> {
        let Some(first) = self.poll_assign() else {
            let a = self.assign_racer().or_else(|| self.assign_lag_racer())?;
            return Some(Batch {
                chunks: vec![a.chunk],
                peer: a.peer,
                offer: false,
                race: true,
            });
        };
        if self.offer > 1
            && !self.is_partial(&first.peer)
            && self.partial_sources().next().is_some()
        {
            return Some(self.offer_more(first));
        }
        let b = self.batching;
        let mut chunks = vec![first.chunk];
        let mut bytes = self.chunks[first.chunk].len;
        // (A lagging source gets one unit per request: a race's loser is cancelled.)
        let small = bytes <= b.max_chunk_len && !self.is_lagging(&first.peer);
        while small && chunks.len() < b.max_chunks {
            let fits = |len: u64| len <= b.max_chunk_len && bytes + len <= b.max_bytes;
            if !self.sources.get(&first.peer).is_some_and(|s| self.room(s)) {
                break;
            }
            // A complete source's batch takes the next chunks in order while they fit;
            // a partial source's, the next it holds that fit.
            let next = match self.is_partial(&first.peer) {
                false => self
                    .next_for_complete(|_| true)
                    .filter(|&c| fits(self.chunks[c].len)),
                true => self
                    .sources
                    .get(&first.peer)
                    .and_then(|s| Some((s.has.as_ref()?, &s.growing)))
                    .and_then(|(has, growing)| self.rarest_held(has, growing, fits)),
            };
            let Some(next) = next else {
                break;
            };
            self.take_pending(next);
            self.assign(next, &first.peer);
            chunks.push(next);
            bytes += self.chunks[next].len;
        }
        Some(Batch {
            chunks,
            peer: first.peer,
            offer: false,
            race: false,
        })
    }

    /// In a swarm, a complete source is offered up to [`Planner::offer_to_complete_sources`]
    /// chunks no partial source holds and sends one of them: the one it has sent least
    /// and is not sending to another downloader right now (`SeedChooser`). Downloaders
    /// cannot see each other's requests; the server can, so its uplink carries each chunk
    /// once before it carries any twice.
    pub fn offer_to_complete_sources(mut self, chunks: usize) -> Self {
        self.offer = chunks;
        self
    }

    fn offer_more(&mut self, first: Assignment) -> Batch {
        self.offered[first.chunk] = true;
        let mut chunks = vec![first.chunk];
        while chunks.len() < self.offer {
            let Some(next) = self.next_for_complete(|_| true) else {
                break;
            };
            self.take_pending(next);
            self.assign(next, &first.peer);
            self.offered[next] = true;
            chunks.push(next);
        }
        Batch {
            chunks,
            peer: first.peer,
            offer: true,
            race: false,
        }
    }

    /// The next pending chunk for a complete source that passes `ok`: failed ones first,
    /// then in order, skipping chunks a live partial source holds.
    fn next_for_complete(&self, ok: impl Fn(u64) -> bool) -> Option<usize> {
        let free = |c: usize| self.rarity[c] == 0 && ok(self.chunks[c].len);
        self.retry
            .iter()
            .copied()
            .find(|&c| free(c))
            .or_else(|| self.queue.iter().map(|&(_, c)| c).find(|&c| free(c)))
    }

    fn take_pending(&mut self, chunk: usize) {
        if !self.queue.remove(&(self.rank[chunk], chunk)) {
            self.retry.retain(|&c| c != chunk);
        }
    }

    /// The least any live complete source was assigned (`None`: no live complete source).
    /// Partial sources are not balanced: each has few chunks, one at a time.
    fn floor(&self) -> Option<u64> {
        let live = || {
            self.sources
                .values()
                .filter(|s| !s.dropped && !s.resting && s.has.is_none())
        };
        // Lagging sources are out of the balance (`lag.rs`), unless only they are left.
        live()
            .filter(|s| !s.lagging)
            .map(|s| s.assigned)
            .min()
            .or_else(|| live().map(|s| s.assigned).min())
    }

    /// Whether a source may take another chunk: live, below both in-flight caps, and not
    /// a chunk ahead of the least loaded source (S14).
    /// In a swarm (a live partial source is known) a complete source gets one chunk's
    /// worth at a time too: downloaders cannot see each other's requests, and with more
    /// each asks the server for chunks another is being sent (see `holders.rs`). Offered
    /// chunks go one offer at a time: the source sends one answer per downloader (its
    /// upload turns), and a second offer while a small chosen chunk is on its way would
    /// only be answered `Later`.
    fn has_room(&self, s: &Source, floor: u64) -> bool {
        let (bytes, one_offer) = match self.partial_sources().next() {
            Some(_) => (
                self.max_in_flight_bytes.min(self.partial_in_flight_bytes()),
                self.offer > 1,
            ),
            None => (self.max_in_flight_bytes, false),
        };
        let requests = if one_offer {
            1
        } else if s.lagging {
            (self.max_in_flight >> s.backoff).clamp(1, lag::LAGGING_IN_FLIGHT)
        } else {
            (self.max_in_flight >> s.backoff).max(1)
        };
        !s.dropped
            && !s.resting
            && s.in_flight < requests
            && s.in_flight_bytes < (bytes >> s.backoff).max(1)
            && s.assigned < floor + self.unit
    }

    /// Whether a source may take another chunk now, complete or partial.
    fn room(&self, s: &Source) -> bool {
        match s.has {
            None => self.floor().is_some_and(|floor| self.has_room(s, floor)),
            Some(_) => self.partial_room(s),
        }
    }

    fn assign(&mut self, chunk: usize, peer: &PeerId) {
        let len = self.chunks[chunk].len;
        if let Some(s) = self.sources.get_mut(peer) {
            s.in_flight += 1;
            s.in_flight_bytes += len;
            s.assigned += len;
            self.epoch_at[chunk] = s.epoch;
        }
        self.state[chunk] = State::InFlight;
        self.owner[chunk] = Some(peer.clone());
        self.started[chunk] = self.next_start;
        self.next_start += 1;
        self.offered[chunk] = false;
    }

    /// Marks a chunk as already present and verified (resumed from an earlier attempt);
    /// it is not fetched and counts for no source. Only a pending chunk can be marked.
    pub fn mark_present(&mut self, chunk: usize) -> bool {
        if self.state.get(chunk) != Some(&State::Pending) {
            return false;
        }
        self.take_pending(chunk);
        self.state[chunk] = State::Done;
        self.done += 1;
        true
    }

    /// Where the download stands.
    pub fn status(&self) -> PlannerStatus {
        if self.done == self.chunks.len() {
            PlannerStatus::Finished
        } else if let Some(f) = &self.failed {
            PlannerStatus::Failed(f.clone())
        } else if self.sources.values().any(|s| !s.dropped && s.has.is_none())
            || self.sources.values().any(|s| s.in_flight > 0)
            || self.partial_can_send()
        {
            PlannerStatus::Running
        } else if self
            .sources
            .values()
            .any(|s| !s.banned && (!s.dropped || s.lost))
        {
            PlannerStatus::Starved
        } else {
            PlannerStatus::Failed("no eligible source left".into())
        }
    }

    /// Bytes done or in flight per source (dropped sources included).
    pub fn per_source(&self) -> BTreeMap<PeerId, u64> {
        self.sources
            .iter()
            .map(|(p, s)| (p.clone(), s.assigned))
            .collect()
    }

    /// `peer` had none of the offered chunks free (all on their way to others): it is not
    /// offered more until [`Planner::wake`].
    /// `peer` answered `Later`: it rests until [`Planner::wake`]. `quiet`: how long the
    /// download has verified nothing from anyone. After `holders::LATER_UNCOUNT` a resting
    /// partial source no longer counts as a holder (the server may send what only it
    /// holds); after [`LATER_DROP`] a partial source is dropped.
    pub fn rest(&mut self, peer: &PeerId, quiet: std::time::Duration) {
        if let Some(s) = self.sources.get_mut(peer) {
            s.resting = true;
            s.quiet = quiet >= holders::LATER_UNCOUNT;
            // Only a partial source: it comes back when its holding changes. A complete
            // source (the file server) that is busy for minutes in a party of hundreds is
            // still the only holder of what the swarm lacks.
            if quiet >= LATER_DROP && s.has.is_some() {
                s.dropped = true;
            }
        }
        self.recount(peer);
    }

    /// Resting sources may be offered chunks again (a chunk verified, holdings changed,
    /// or the caller's timer).
    pub fn wake(&mut self) {
        // A complete source that rested starts level with the others (S14's balance
        // would otherwise hold them back while it catches up).
        let floor = self.floor().unwrap_or(0);
        let resting: Vec<PeerId> = self
            .sources
            .iter()
            .filter(|(_, s)| s.resting)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in resting {
            if let Some(s) = self.sources.get_mut(&peer) {
                s.resting = false;
                if s.has.is_none() {
                    s.assigned = s.assigned.max(floor);
                }
            }
            self.recount(&peer);
        }
    }

    /// Whether a source rests (see [`Planner::rest`]).
    pub fn resting(&self) -> bool {
        self.sources.values().any(|s| s.resting && !s.dropped)
    }

    /// Chunks verified (or present) so far.
    pub fn done_count(&self) -> usize {
        self.done
    }

    /// Whether `peer` is a complete source still asked: not dropped (for cause, or lost
    /// with its link until it is back).
    pub fn is_live_complete(&self, peer: &PeerId) -> bool {
        self.sources
            .get(peer)
            .is_some_and(|s| s.has.is_none() && !s.dropped)
    }

    /// Whether `peer` was dropped for cause (bad bytes, gone while asked): never asked
    /// again in this download.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.sources.get(peer).is_some_and(|s| s.banned)
    }

    /// Whether `peer` is a partial source.
    pub fn is_partial(&self, peer: &PeerId) -> bool {
        self.sources.get(peer).is_some_and(|s| s.has.is_some())
    }

    fn is_in_flight_from(&self, chunk: usize, peer: &PeerId) -> bool {
        self.state.get(chunk) == Some(&State::InFlight)
            && (self.owner[chunk].as_ref() == Some(peer)
                || self.second[chunk].as_ref() == Some(peer))
    }
}

#[cfg(test)]
mod tests;
