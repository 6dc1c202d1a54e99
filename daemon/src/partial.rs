//! The partial copies this daemon holds while it downloads (swarm): what every link
//! announces (`Holding`, then `HoldingMore`, `HoldingGone`, through a watch each link
//! writer diffs with `holding_frames`), and what a `PartialChunks` request may read — only
//! chunks verified against the manifest, from the files the download writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lanspread_catalog::{FileManifest, GameId, Version};
use lanspread_peer::{gate_partial_chunk, PeerError};
use lanspread_proto::{ChunkHash, ChunkRange, ChunkSet, Holding};
use tokio::sync::watch;

/// What the links announce: one holding per game being downloaded.
pub type Announced = Arc<BTreeMap<GameId, Holding>>;

struct Copy {
    holding: Holding,
    files: Arc<Vec<FileManifest>>,
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
}

impl Default for Partials {
    fn default() -> Self {
        Self {
            copies: Mutex::default(),
            announced: watch::channel(Arc::default()).0,
        }
    }
}

/// The files to read for a gated partial request, in order, and the refusal that cut the
/// list (if a range was refused).
pub type Gated = (PathBuf, Vec<(PathBuf, u64, u64)>, Option<String>);

impl Partials {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<GameId, Copy>> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, copies: &BTreeMap<GameId, Copy>) {
        let now: BTreeMap<GameId, Holding> = copies
            .iter()
            .map(|(g, c)| (g.clone(), c.holding.clone()))
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
            .map(|f| lanspread_catalog::chunk_count(f.size) as usize)
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
        }
        self.publish(&copies);
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

    /// What link writers watch.
    pub fn watch(&self) -> watch::Receiver<Announced> {
        self.announced.subscribe()
    }

    /// Gates a `PartialChunks` request: every range must be one verified chunk (whole, or
    /// its rest from a piece on) of
    /// the copy of `game` at `version` with manifest `digest`; the first refused range
    /// cuts the list.
    pub fn gate(
        &self,
        (game, version): (&GameId, Version),
        digest: &ChunkHash,
        ranges: &[ChunkRange],
    ) -> Result<(Gated, Arc<AtomicBool>), PeerError> {
        let copies = self.lock();
        let Some(c) = copies.get(game).filter(|c| c.holding.version == version) else {
            return Err(PeerError::Refused(format!(
                "no partial copy of {game} at version {version} here"
            )));
        };
        let mut files = Vec::with_capacity(ranges.len());
        for r in ranges {
            let gated = gate_partial_chunk(
                &c.files,
                &c.holding.chunks,
                (&c.holding.digest, digest),
                &r.path,
                (r.offset, r.len),
            );
            let dest = c
                .files
                .iter()
                .position(|f| f.path == r.path)
                .and_then(|i| c.dests.get(i));
            match (gated, dest) {
                (Ok(_), Some(dest)) => files.push((dest.clone(), r.offset, r.len)),
                (Err(e), _) => {
                    return Ok(((c.root.clone(), files, Some(e.to_string())), c.live.clone()))
                }
                (Ok(_), None) => {
                    let why = format!("no destination for {}", r.path);
                    return Ok(((c.root.clone(), files, Some(why)), c.live.clone()));
                }
            }
        }
        Ok(((c.root.clone(), files, None), c.live.clone()))
    }
}
