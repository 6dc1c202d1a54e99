//! The partial copies this daemon holds while it downloads (swarm): what every link
//! announces (`Holding`, then `HoldingMore`, `HoldingGrowing`, `HoldingGone`, through a
//! watch each link writer diffs with `holding_frames`), and what a `PartialChunks` request
//! may read — only chunks verified against the manifest, from the files the download
//! writes, and the chunks being fetched now, each piece once it is verified and written
//! (`Growing`: cut-through).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lanspread_catalog::{FileManifest, GameId, Version};
use lanspread_peer::{gate_partial_chunk, ChunkIndex, HeldCopy, PeerError};
use lanspread_proto::{ChunkHash, ChunkRange, ChunkSet, Holding, MAX_GROWING};
use tokio::sync::watch;

/// What the links announce: one holding per game being downloaded.
pub type Announced = Arc<BTreeMap<GameId, HeldCopy>>;

/// Whether chunks being fetched are announced and served as they arrive: on unless
/// `LANSPREAD_CUT_THROUGH=0` (for comparisons). The swarm simulation, N = 16: 1.45 →
/// 1.18 × T_min; the real lab (2 cores, 1 GiB, 100 Mbit/s): N = 16 1.64–1.71 → 1.59 ×,
/// the server's upload 1.12–1.22 → 1.00–1.03 F (`bench/README.md`).
fn cut_through() -> bool {
    std::env::var("LANSPREAD_CUT_THROUGH").map_or(true, |v| v != "0")
}

/// A chunk being fetched: how far its bytes are verified and written, for the answers
/// that relay it as it arrives.
#[derive(Debug)]
pub struct Growing {
    /// The file offset up to which the chunk's bytes are verified and written.
    written_to: AtomicU64,
    /// The fetch failed: nothing more of it will be written by this fetch.
    failed: AtomicBool,
    /// Wakes the answers waiting for more ([`Growing::wait_past`]).
    moved: (Mutex<()>, Condvar),
}

impl Growing {
    pub(crate) fn new(written_to: u64) -> Self {
        Self {
            written_to: AtomicU64::new(written_to),
            failed: AtomicBool::new(false),
            moved: (Mutex::new(()), Condvar::new()),
        }
    }

    /// The bytes before file offset `to` are verified and written.
    pub fn wrote(&self, to: u64) {
        self.written_to.fetch_max(to, Ordering::Release);
        self.wake();
    }

    /// The fetch failed: nothing more will be written.
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.wake();
    }

    /// Under the lock, so a waiter between its check and its wait is not missed.
    fn wake(&self) {
        let _seen = self.moved.0.lock().unwrap_or_else(|p| p.into_inner());
        self.moved.1.notify_all();
    }

    /// Blocks (on a blocking thread) until the bytes are written past file offset `pos`,
    /// the fetch failed, or `timeout` passed; then says how far they are written, as
    /// [`Growing::written_to`].
    pub fn wait_past(&self, pos: u64, timeout: Duration) -> Option<u64> {
        let until = Instant::now() + timeout;
        let mut seen = self.moved.0.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match self.written_to() {
                Some(to) if to <= pos => {}
                done => return done,
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.written_to();
            }
            seen = match self.moved.1.wait_timeout(seen, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// How far the bytes are verified and written, or `None` once the fetch failed.
    pub fn written_to(&self) -> Option<u64> {
        if self.failed.load(Ordering::Acquire) {
            return None;
        }
        Some(self.written_to.load(Ordering::Acquire))
    }
}

struct Copy {
    holding: Holding,
    /// The chunks being fetched now (announced, and served as they arrive).
    growing: BTreeMap<u32, Arc<Growing>>,
    files: Arc<Vec<FileManifest>>,
    /// `files` by path, with each file's first chunk.
    index: ChunkIndex,
    root: PathBuf,
    /// Where each file is written (the sentinel goes under `.lanspread/incoming/`).
    dests: Vec<PathBuf>,
    /// Cleared when the download ends: a read that was gated before stops there.
    live: Arc<AtomicBool>,
}

/// The partial copies, under a leaf lock (never held across an `.await`).
pub struct Partials {
    copies: Mutex<BTreeMap<GameId, Copy>>,
    announced: watch::Sender<Announced>,
    /// Chunks being fetched are served as they arrive ([`cut_through`]).
    cut_through: bool,
}

impl Default for Partials {
    fn default() -> Self {
        Self {
            copies: Mutex::default(),
            announced: watch::channel(Arc::default()).0,
            cut_through: cut_through(),
        }
    }
}

/// The files to read for a gated partial request, in order, and the refusal that cut the
/// list (if a range was refused).
pub type Gated = (PathBuf, Vec<(PathBuf, u64, u64)>, Option<String>);

/// Per gated range: the progress of its chunk when it is still being fetched here.
pub type Relayed = Vec<Option<Arc<Growing>>>;

impl Partials {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<GameId, Copy>> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, copies: &BTreeMap<GameId, Copy>) {
        let now: BTreeMap<GameId, HeldCopy> = copies
            .iter()
            .map(|(g, c)| {
                let copy = HeldCopy {
                    holding: c.holding.clone(),
                    growing: c.growing.keys().copied().collect(),
                };
                (g.clone(), copy)
            })
            .collect();
        self.announced.send_replace(Arc::new(now));
    }

    /// A download of `game` holds `have` verified (a resume's re-verified chunks, or
    /// none) of the manifest `files` in `root`.
    pub fn begin(
        &self,
        (game, version): (&GameId, Version),
        files: Arc<Vec<FileManifest>>,
        (root, dests): (PathBuf, Vec<PathBuf>),
        have: &[usize],
    ) {
        let n = files
            .iter()
            .map(|f| lanspread_proto::unit_count(f.size) as usize)
            .sum();
        let mut chunks = ChunkSet::empty(n);
        for &c in have {
            chunks.insert(c);
        }
        let holding = Holding {
            game: game.clone(),
            version,
            digest: lanspread_catalog::manifest_digest(&files),
            chunks,
        };
        let mut copies = self.lock();
        let copy = Copy {
            holding,
            growing: BTreeMap::new(),
            index: ChunkIndex::new(&files),
            files,
            root,
            dests,
            live: Arc::new(AtomicBool::new(true)),
        };
        if let Some(old) = copies.insert(game.clone(), copy) {
            old.live.store(false, Ordering::SeqCst);
        }
        self.publish(&copies);
    }

    /// More chunks of `game` verified (and written).
    pub fn verified(&self, game: &GameId, chunks: &[u32]) {
        let mut copies = self.lock();
        let Some(c) = copies.get_mut(game) else {
            return;
        };
        for &chunk in chunks {
            c.holding.chunks.insert(chunk as usize);
            c.growing.remove(&chunk);
        }
        self.publish(&copies);
    }

    /// The download of `game` is fetching `chunk` (called at its first verified piece),
    /// whose bytes before file offset `written_to` are verified and written already: it
    /// is served as it arrives, its fetch reporting each piece written. `None` when there is no copy, or already
    /// [`MAX_GROWING`] chunks grow (this one is then served once verified).
    pub fn grow(&self, game: &GameId, chunk: u32, written_to: u64) -> Option<Arc<Growing>> {
        if !self.cut_through {
            return None;
        }
        let mut copies = self.lock();
        let c = copies.get_mut(game)?;
        if c.growing.len() >= MAX_GROWING && !c.growing.contains_key(&chunk) {
            return None;
        }
        let g = Arc::new(Growing::new(written_to));
        if let Some(old) = c.growing.insert(chunk, g.clone()) {
            old.fail();
        }
        self.publish(&copies);
        Some(g)
    }

    /// The fetch of a growing chunk failed: answers relaying it end, and it is no longer
    /// announced (a verified chunk stays until [`Partials::verified`] announces it).
    pub fn grow_failed(&self, game: &GameId, chunk: u32) {
        let mut copies = self.lock();
        let Some(c) = copies.get_mut(game) else {
            return;
        };
        if let Some(g) = c.growing.remove(&chunk) {
            g.fail();
            self.publish(&copies);
        }
    }

    /// Every byte of growing `chunk`, up to file offset `end`, is verified and written
    /// (another request for it was verified first: the end game's race): answers relaying
    /// it read on to its end.
    pub fn grown_whole(&self, game: &GameId, chunk: u32, end: u64) {
        if let Some(g) = self.lock().get(game).and_then(|c| c.growing.get(&chunk)) {
            g.wrote(end);
        }
    }

    /// The download of `game` ended (committed, failed or cancelled): nothing of it is
    /// served as a partial copy any more.
    pub fn end(&self, game: &GameId) {
        let mut copies = self.lock();
        if let Some(c) = copies.remove(game) {
            c.live.store(false, Ordering::SeqCst);
            self.publish(&copies);
        }
    }

    /// The games this daemon downloads now (a partial copy of each).
    pub fn games(&self) -> BTreeSet<GameId> {
        self.lock().keys().cloned().collect()
    }

    /// What link writers watch.
    pub fn watch(&self) -> watch::Receiver<Announced> {
        self.announced.subscribe()
    }

    /// Gates a `PartialChunks` request: every range must be one verified or growing
    /// chunk (whole, or its rest from a piece on) of the copy of `game` at `version` with
    /// manifest `digest`; the first refused range cuts the list. With the gated files:
    /// the copy's liveness, and for each range of a growing chunk its progress (the
    /// reader waits for each piece). `None`: the first range is a chunk of this copy
    /// that it does not hold now (announced growing, its fetch failed since) — `Later`,
    /// not a refusal, so the asker does not drop this holder for a crossed message.
    pub fn gate(
        &self,
        (game, version): (&GameId, Version),
        digest: &ChunkHash,
        ranges: &[ChunkRange],
    ) -> Result<Option<(Gated, Arc<AtomicBool>, Relayed)>, PeerError> {
        let copies = self.lock();
        let Some(c) = copies.get(game).filter(|c| c.holding.version == version) else {
            return Err(PeerError::Refused(format!(
                "no partial copy of {game} at version {version} here"
            )));
        };
        let mut files = Vec::with_capacity(ranges.len());
        let mut growing = Vec::with_capacity(ranges.len());
        let mut servable = c.holding.chunks.clone();
        for &chunk in c.growing.keys() {
            servable.insert(chunk as usize);
        }
        for r in ranges {
            let gated = gate_partial_chunk(
                (&c.files, &c.index),
                &servable,
                (&c.holding.digest, digest),
                &r.path,
                (r.offset, r.len),
            );
            if let Ok(chunk) = gated {
                let grows = (!c.holding.chunks.contains(chunk))
                    .then(|| u32::try_from(chunk).ok())
                    .flatten()
                    .and_then(|k| c.growing.get(&k).cloned());
                growing.push(grows);
            }
            let dest = c
                .index
                .find(&c.files, &r.path)
                .and_then(|(i, _)| c.dests.get(i));
            match (gated, dest) {
                (Ok(_), Some(dest)) => files.push((dest.clone(), r.offset, r.len)),
                (Err(e), _) => {
                    // A chunk of this very copy that it does not hold now (a growing
                    // one whose fetch failed since it was announced): ask again later.
                    let whole = ChunkSet::full(servable.len());
                    let valid = (&c.holding.digest, digest);
                    let ours = gate_partial_chunk(
                        (&c.files, &c.index),
                        &whole,
                        valid,
                        &r.path,
                        (r.offset, r.len),
                    );
                    if files.is_empty() && ours.is_ok() {
                        return Ok(None);
                    }
                    let gated = (c.root.clone(), files, Some(e.to_string()));
                    return Ok(Some((gated, c.live.clone(), growing)));
                }
                (Ok(_), None) => {
                    let why = format!("no destination for {}", r.path);
                    let gated = (c.root.clone(), files, Some(why));
                    return Ok(Some((gated, c.live.clone(), growing)));
                }
            }
        }
        Ok(Some((
            (c.root.clone(), files, None),
            c.live.clone(),
            growing,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanspread_catalog::{piece_count, RelPath};
    use lanspread_proto::UNIT_SIZE;

    #[test]
    fn a_growing_chunk_is_announced_served_as_it_arrives_and_dropped_when_its_fetch_fails() {
        let size = 3 * UNIT_SIZE;
        let pieces = (0..piece_count(size)).map(|i| [i as u8; 32]).collect();
        let path = RelPath::new("g.eti").unwrap();
        let files = Arc::new(vec![FileManifest::from_pieces(
            path.clone(),
            size,
            0o644,
            pieces,
        )]);
        let digest = lanspread_catalog::manifest_digest(&files);
        let game = GameId::new("cod5").unwrap();
        let version = Version::parse("20250101").unwrap();
        let p = Partials {
            cut_through: true,
            ..Partials::default()
        };
        let mut watch = p.watch();
        let dest = (PathBuf::from("/r"), vec![PathBuf::from("/r/g.eti")]);
        let off = Partials {
            cut_through: false,
            ..Partials::default()
        };
        off.begin((&game, version), files.clone(), dest.clone(), &[0]);
        assert!(
            off.grow(&game, 1, UNIT_SIZE).is_none(),
            "cut-through is off"
        );
        p.begin((&game, version), files, dest, &[0]);
        let range = |chunk: u64| ChunkRange {
            path: path.clone(),
            offset: chunk * UNIT_SIZE,
            len: UNIT_SIZE,
        };
        let gate = |chunk: u64| {
            p.gate((&game, version), &digest, &[range(chunk)])
                .unwrap()
                .expect("held or not a chunk of ours")
        };
        let later = |chunk: u64| {
            p.gate((&game, version), &digest, &[range(chunk)])
                .unwrap()
                .is_none()
        };
        let growing_of =
            |w: &mut watch::Receiver<Announced>| w.borrow_and_update()[&game].growing.clone();
        // Not fetched yet (or a crossed message): later, not refused; a range that is
        // no chunk of ours is refused.
        assert!(later(1));
        let odd = ChunkRange {
            path: path.clone(),
            offset: 5,
            len: 7,
        };
        let refused = p.gate((&game, version), &digest, &[odd]).unwrap().unwrap();
        assert!(refused.0 .2.is_some());
        let g = p.grow(&game, 1, UNIT_SIZE).unwrap();
        assert_eq!(growing_of(&mut watch), [1]);
        let ((_, files, refused), _, growing) = gate(1);
        assert!(refused.is_none() && files.len() == 1);
        let relayed = growing[0].as_ref().expect("served as it arrives");
        assert!(Arc::ptr_eq(relayed, &g));
        assert_eq!(relayed.written_to(), Some(UNIT_SIZE), "nothing written yet");
        g.wrote(UNIT_SIZE + (1 << 20));
        g.wrote(UNIT_SIZE); // never backwards
        assert_eq!(relayed.written_to(), Some(UNIT_SIZE + (1 << 20)));
        // A verified chunk is served whole: no progress to wait for.
        let ((_, _, refused), _, growing) = gate(0);
        assert!(refused.is_none() && growing[0].is_none());
        // The fetch fails: answers relaying it stop, it is no longer announced or served.
        p.grow_failed(&game, 1);
        assert_eq!(relayed.written_to(), None);
        assert!(growing_of(&mut watch).is_empty());
        assert!(later(1));
        // Fetched again and verified: served whole once announced, no longer growing.
        let again = p.grow(&game, 1, UNIT_SIZE).unwrap();
        again.wrote(2 * UNIT_SIZE);
        p.verified(&game, &[1]);
        assert!(growing_of(&mut watch).is_empty());
        let ((_, _, refused), _, growing) = gate(1);
        assert!(refused.is_none() && growing[0].is_none());
        // The download's end: nothing grows or is served any more (readers stop on the
        // copy's liveness).
        let g2 = p.grow(&game, 2, 2 * UNIT_SIZE).unwrap();
        p.end(&game);
        assert!(
            p.grow(&game, 2, 2 * UNIT_SIZE).is_none(),
            "no copy any more"
        );
        assert_eq!(g2.written_to(), Some(2 * UNIT_SIZE));
        assert!(p.gate((&game, version), &digest, &[range(2)]).is_err());
    }

    #[test]
    fn a_waiting_answer_wakes_when_more_is_written_or_the_fetch_fails() {
        // An answer's reader blocks in `wait_past` on its own thread: a write past its
        // position wakes it (it does not wait out its long timeout: a lost wake-up fails
        // the test rather than passing an hour later), a failure too, and a write that
        // does not reach past it does not end the wait early.
        const LONG: Duration = Duration::from_secs(600);
        let wait = |g: &Arc<Growing>, pos: u64| {
            let g = g.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let got = g.wait_past(pos, LONG);
                (got, started.elapsed() < LONG)
            })
        };
        let g = Arc::new(Growing::new(100));
        let waiter = wait(&g, 100);
        // Most likely waiting by then (if not, it finds 150 at once: the same answer).
        std::thread::sleep(Duration::from_millis(50));
        g.wrote(100); // not past 100
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "woken by a write not past its position"
        );
        g.wrote(150);
        assert_eq!(waiter.join().unwrap(), (Some(150), true));
        let waiter = wait(&g, 150);
        std::thread::sleep(Duration::from_millis(50));
        g.fail();
        assert_eq!(waiter.join().unwrap(), (None, true));
        // Nothing comes: the timeout ends the wait with where it stands.
        let g = Growing::new(7);
        assert_eq!(g.wait_past(7, Duration::from_millis(1)), Some(7));
    }
}
