//! Download orchestration: pick the sources with the newest version, validate their
//! manifests by plurality, drive the chunk planner over QUIC streams, write through the
//! io_uring writer into preallocated files, and commit `version.ini` last.

mod commit;
mod fetch;
mod in_flight;
mod journal;
mod lanes;
mod metadata;
mod stop;
mod transfer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use lanspread_catalog::{manifest_digest, FileManifest, GameId, RelPath, Version, VERSION_FILE};
use lanspread_peer::{Chosen, ChunkTally, Engine, EngineConfig, OpKind, Sources};
use lanspread_proto::PeerId;
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use stop::stop_requested;
pub use stop::{cancel, cancellable};

/// What a download killed midway leaves in a root besides its data files and journal
/// (the received sentinel, a half-rewritten journal): safe to remove while no operation
/// runs on it.
pub const LEFTOVERS: [&str; 2] = [commit::INCOMING, journal::JOURNAL_TMP];

use crate::failure::peer_failure;
use crate::state::Shared;
use crate::writer::Writer;
use lanspread_control::api::{Event, EventKind, FileSize};
use lanspread_control::{ErrorKind, Failure};

/// Checks a download request and registers the operation. Refusals leave nothing behind.
pub fn begin(shared: &Arc<Shared>, game: &str) -> Result<(GameId, Sources), Failure> {
    let Some(id) = shared.catalog().get(game) else {
        return Err(Failure::new(
            ErrorKind::NotInCatalog,
            format!("game {game} is not in the local catalog"),
        ));
    };
    let mut inner = shared.lock();
    if inner.operations.get(&id).is_some() {
        return Err(peer_failure(lanspread_peer::PeerError::Busy(id)));
    }
    let Some(sources) = shared.peers.sources(&id) else {
        drop(inner);
        shared.events.emit(EventKind::NoPeersHaveGame {
            game_id: id.clone(),
        });
        return Err(Failure::new(
            ErrorKind::NoSources,
            format!("no peers have game {id}"),
        ));
    };
    if let Some(root) = inner.library.get(&id) {
        if let Some(have) = root.version.filter(|&v| v >= sources.version) {
            let hint = if root.installed {
                String::new()
            } else {
                format!("; `lanspread install {id}` extracts it")
            };
            return Err(Failure::new(
                ErrorKind::AlreadyDone,
                format!(
                    "game {id} is already downloaded at version {have} (newest on peers: {}){hint}",
                    sources.version
                ),
            ));
        }
    }
    inner
        .operations
        .begin(&id, OpKind::Download)
        .map_err(peer_failure)?;
    shared.net.metrics.started(OpKind::Download.as_str());
    shared
        .cancels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), Arc::default());
    drop(inner);
    shared.refresh_advert();
    Ok((id, sources))
}

/// Runs a registered download and, when asked and it succeeded, installs the game.
/// Every log line of it, chunk tasks included, carries a `download{game=..}` span.
/// Returns the event that ended it (as emitted; an install's failure as its event says).
pub async fn run_with_install(
    shared: Arc<Shared>,
    id: GameId,
    sources: Sources,
    install: bool,
) -> Event {
    let span = info_span!("download", game = %id, version = %sources.version);
    async move {
        let done = run(shared.clone(), id.clone(), sources).await;
        if !install || !matches!(done.kind, EventKind::DownloadFinished { .. }) {
            return done;
        }
        match crate::install::install(&shared, &id, true).await {
            Ok(finished) => finished,
            Err(failure) => Event {
                ts_ms: done.ts_ms,
                kind: EventKind::InstallFailed {
                    game_id: id.clone(),
                    reason: failure.message,
                    kind: failure.kind,
                },
            },
        }
    }
    .instrument(span)
    .await
}

/// Runs a registered download to its end and emits the terminal event, which it
/// returns. The operation is cleared before that event, so a retry right after a
/// failure is accepted.
pub async fn run(shared: Arc<Shared>, id: GameId, sources: Sources) -> Event {
    let mut files = Vec::new();
    // Registered by `begin`, so a `cancel` right after a detached start finds it.
    let cancel = shared
        .cancels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned()
        .unwrap_or_default();
    let mut why = BTreeMap::new();
    let result = download(&shared, &id, &sources, &mut files, &cancel, &mut why).await;
    shared.net.writer.close_all(&files).await;
    if result.is_err() {
        commit::discard_incoming(&shared.games_dir.join(id.as_str())).await;
    }
    shared.partials.end(&id);
    shared.rescan_root_ending(&id).await;
    let ended = match result {
        Ok(done) => {
            let secs = done.duration.as_secs_f64().max(1e-6);
            // The rate counts what crossed the network in this attempt.
            let moved = done.bytes.saturating_sub(done.resumed_bytes);
            info!(game = %id, bytes = done.bytes, ms = done.duration.as_millis() as u64, "download finished");
            shared.events.emit(EventKind::DownloadFinished {
                game_id: id.clone(),
                version: sources.version,
                bytes: done.bytes,
                chunks: done.chunks,
                duration_ms: done.duration.as_millis() as u64,
                resumed_bytes: done.resumed_bytes,
                mib_per_s: moved as f64 / (1024.0 * 1024.0) / secs,
                mbit_per_s: moved as f64 * 8.0 / 1e6 / secs,
            })
        }
        Err(failure) => {
            warn!(game = %id, "download failed: {failure}");
            shared.events.emit(EventKind::DownloadFailed {
                game_id: id.clone(),
                reason: failure.message,
                kind: failure.kind,
                sources: why
                    .into_iter()
                    .map(|(peer_id, reason)| lanspread_control::api::SourceFailure {
                        peer_id,
                        reason,
                    })
                    .collect(),
            })
        }
    };
    // Last: `cancel` answers once this entry is gone, after the terminal event.
    shared
        .cancels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    ended
}

struct Done {
    bytes: u64,
    resumed_bytes: u64,
    chunks: u64,
    duration: Duration,
}

async fn download(
    shared: &Arc<Shared>,
    id: &GameId,
    sources: &Sources,
    files_open: &mut Vec<u64>,
    cancel: &tokio::sync::Notify,
    why: &mut BTreeMap<PeerId, String>,
) -> Result<Done, Failure> {
    let mut shutdown = shared.shutdown.subscribe();
    let linked = shared.peers.linked(&sources.peers);
    let config = engine_config(shared.net.threads.len());
    let mut engine = Engine::new(id.clone(), &linked, config, std::time::Instant::now());
    let what = (id, sources.version);
    let chosen = metadata::validated(shared, &mut engine, what, &mut shutdown, cancel).await;
    why.extend(engine.why().clone());
    chosen?;
    let Some(chosen) = engine.chosen().cloned() else {
        return Err(Failure::internal("the download engine chose no manifest"));
    };
    shared
        .events
        .emit(got_game_files(id, sources.version, &chosen));
    let root = shared.games_dir.join(id.as_str());
    // A stop while the files are prepared (a resume re-reads what its journal claims:
    // gigabytes) ends it between files and units, never in the middle of one.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (prepared, stopped) = {
        let prepared = prepare(
            (&shared.games_dir, &shared.net.writer),
            &root,
            (&chosen.files, &chosen.folders),
            (&engine, &stop),
            sources.version,
            files_open,
        );
        tokio::pin!(prepared);
        let mut stopped = None;
        let prepared = loop {
            tokio::select! {
                r = &mut prepared => break r,
                why = stop_requested(&mut shutdown, cancel), if stopped.is_none() => {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    stopped = Some(why);
                }
            }
        };
        (prepared, stopped)
    };
    if let Some(why) = stopped {
        return Err(why);
    }
    let (dests, mut journal, verified, root_dir) = prepared?;
    let bytes: u64 = chosen.files.iter().map(|f| f.size).sum();
    let lanes = lanes::Lanes::open(shared, &chosen.sources).await;
    let present: Vec<usize> = verified.chunks.iter().copied().collect();
    // Nothing kept from an earlier attempt: every byte is written through this download.
    let fresh = verified.chunks.is_empty() && verified.kept.is_empty();
    let (_, whole) = engine.on_prepared(&present, &lanes.opened());
    // Events count 32 MiB chunks, made of the engine's units.
    let mut tally = ChunkTally::new(engine.chunks());
    for &u in &present {
        tally.present(u, engine.chunks()[u].len);
    }
    let (chunks, resumed_chunks) = (tally.chunk_count() as u64, tally.whole() as u64);
    // The pieces an earlier attempt kept of chunks it did not finish are resumed too
    // (the rate counts only what crosses the network in this attempt).
    let resumed_bytes = whole + verified.kept.values().sum::<u64>();
    // From now on the verified chunks are served to peers downloading the same manifest.
    let manifest = Arc::new(chosen.files.clone());
    shared.partials.begin(
        (id, sources.version),
        manifest,
        (root.clone(), dests.iter().map(|d| root.join(d)).collect()),
        &present,
    );
    if resumed_bytes > 0 {
        info!(game = %id, chunks = resumed_chunks, bytes = resumed_bytes, "resuming");
    }
    shared.lock().operations.sized(id, bytes, resumed_bytes);
    let resumed = (resumed_chunks, resumed_bytes);
    let begin = download_begin(id, sources.version, &chosen.files, chunks, resumed);
    shared.events.emit(begin);
    let started = Instant::now();
    let mut in_flight = in_flight::InFlight::default();
    let work = transfer::Work {
        files: &chosen.files,
        file_ids: files_open,
        journal: &mut journal,
        kept: verified.kept.into_iter().collect(),
        tally,
        in_flight: &mut in_flight,
        lanes,
    };
    let transferred = tokio::select! {
        r = transfer::transfer(shared, what, work, &mut engine) => r,
        why = stop_requested(&mut shutdown, cancel) => Err(why),
    };
    why.extend(engine.why().clone());
    if transferred.is_err() {
        // Stopped half-way: every piece the running fetches verified is journalled.
        in_flight.journal(&mut journal, engine.chunks(), 1);
        journal.flush();
    }
    transferred?;
    let t_transfer = started.elapsed();
    commit_files(
        shared,
        (&root_dir, fresh),
        (&chosen.files, &chosen.folders),
        &dests,
        sources.version,
        files_open,
    )
    .await?;
    adopt_hashes(shared, &root, &chosen.files).await;
    tracing::debug!(
        transfer_ms = t_transfer.as_millis() as u64,
        commit_ms = (started.elapsed() - t_transfer).as_millis() as u64,
        "download phases"
    );
    journal::remove(&root).await;
    Ok(Done {
        bytes,
        resumed_bytes,
        chunks,
        duration: started.elapsed(),
    })
}

/// Gives the hash cache the verified piece hashes of the committed files: the new copy
/// serves at once (to downloads still running, which take it as a source), without a
/// re-hash. A failure only costs that re-hash later.
async fn adopt_hashes(shared: &Arc<Shared>, root: &std::path::Path, files: &[FileManifest]) {
    let (hashes, root, files) = (
        shared.net.hashes.clone(),
        root.to_path_buf(),
        files.to_vec(),
    );
    let adopted = tokio::task::spawn_blocking(move || hashes.adopt(&root, &files)).await;
    if let Ok(Err(e)) = adopted {
        warn!("the committed files' hashes are not cached: {e}");
    }
}

/// The engine's settings: the daemon's transfer threads, a fetch order shuffled
/// differently by every download (downloaders that start together ask the server for
/// different chunks), and the swarm wait (`LANSPREAD_SWARM_WAIT_MS` for tests).
fn engine_config(threads: usize) -> EngineConfig {
    use std::hash::{BuildHasher, Hasher};
    let mut config = EngineConfig::new(threads);
    config.shuffle = Some(
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish(),
    );
    config.swarm_wait = crate::config::env_ms("LANSPREAD_SWARM_WAIT_MS", config.swarm_wait);
    config.offer = lanspread_peer::OFFER_CHUNKS;
    config
}

fn download_begin(
    id: &GameId,
    version: Version,
    files: &[FileManifest],
    chunks: u64,
    (resumed_chunks, resumed_bytes): (u64, u64),
) -> EventKind {
    EventKind::DownloadBegin {
        game_id: id.clone(),
        version,
        bytes: files.iter().map(|f| f.size).sum(),
        files: files.len() as u64,
        chunks,
        resumed_chunks,
        resumed_bytes,
    }
}

fn got_game_files(id: &GameId, version: Version, chosen: &Chosen) -> EventKind {
    EventKind::GotGameFiles {
        game_id: id.clone(),
        version,
        files: chosen
            .files
            .iter()
            .map(|f| FileSize {
                path: f.path.to_string(),
                size: f.size,
            })
            .collect(),
        sources: chosen.sources.clone(),
    }
}

/// From this many files on, a commit makes them durable with one `syncfs` instead of one
/// `fdatasync` per file and one `fsync` per folder.
const SYNCFS_FROM_FILES: usize = 64;

/// How a commit makes its files durable.
#[derive(Debug, PartialEq, Eq)]
struct SyncPlan {
    /// One `fdatasync` per file.
    each_file: bool,
    /// One `syncfs` through each filesystem's folder as opened before the first write
    /// (it reports every writeback error of the filesystem since; it also replaces the
    /// per-folder fsyncs).
    syncfs: bool,
}

/// Many files, all written in this attempt: one `syncfs` per filesystem makes them and
/// their folders durable at once (data kept from an earlier attempt was written before
/// the folders were opened: a writeback error of it that someone else saw would not be
/// reported again, so then each file is synced). Otherwise every file's fdatasync at
/// once: the io_uring writer runs them concurrently, so a few files cost one round of
/// syncs. A file the descriptor cache closed with writes not known synced
/// (`closed_dirty`, see `Writer::closed_dirty`) needs the `syncfs` too: alone when all was
/// written in this attempt, after the fdatasyncs otherwise.
fn sync_plan(files: usize, fresh: bool, closed_dirty: bool) -> SyncPlan {
    let alone = fresh && (files >= SYNCFS_FROM_FILES || closed_dirty);
    SyncPlan {
        each_file: !alone,
        syncfs: alone || closed_dirty,
    }
}

/// Makes every file durable and commits the sentinel.
async fn commit_files(
    shared: &Arc<Shared>,
    (root_dir, fresh): (&commit::RootDir, bool),
    (files, folders): (&[FileManifest], &[RelPath]),
    dests: &[std::path::PathBuf],
    version: Version,
    files_open: &[u64],
) -> Result<(), Failure> {
    let started = Instant::now();
    let plan = sync_plan(
        files_open.len(),
        fresh,
        shared.net.writer.closed_dirty(files_open),
    );
    if plan.each_file {
        let mut syncs = JoinSet::new();
        for &f in files_open {
            let shared = shared.clone();
            syncs.spawn(async move { shared.net.writer.sync(f).await });
        }
        while let Some(res) = syncs.join_next().await {
            res.map_err(Failure::internal)?
                .map_err(|e| Failure::io("flushing files", &e))?;
        }
    }
    // The syncs themselves reopen files the cache had closed, closing others that may
    // hold writes not yet synced: asked again once they are done.
    let syncfs = plan.syncfs || shared.net.writer.closed_dirty(files_open);
    let syncfs = if syncfs { root_dir.dup()? } else { Vec::new() };
    let t_sync = started.elapsed();
    commit::commit(root_dir, (files, folders), dests, version, syncfs).await?;
    tracing::debug!(
        sync_ms = t_sync.as_millis() as u64,
        commit_ms = (started.elapsed() - t_sync).as_millis() as u64,
        "commit phases"
    );
    Ok(())
}

/// Prepares the root for the chosen files: refuses up front when they cannot fit (bytes
/// already there count as reusable), removes the committed sentinel, preallocates every
/// file (their writer handles go to `files_open`) and opens the journal with the chunks
/// (and first pieces of chunks) an interrupted attempt at this same version and manifest
/// already verified.
async fn prepare(
    (games_dir, writer): (&std::path::Path, &Writer),
    root: &std::path::Path,
    (files, folders): (&[FileManifest], &[RelPath]),
    (engine, stop): (&Engine, &Arc<std::sync::atomic::AtomicBool>),
    version: Version,
    files_open: &mut Vec<u64>,
) -> Result<
    (
        Vec<std::path::PathBuf>,
        journal::Journal,
        lanspread_peer::Verified,
        commit::RootDir,
    ),
    Failure,
> {
    check_space(games_dir, root, files).await?;
    let (dests, mut root_dir) = commit::prepare(root, (files, folders)).await?;
    let game = root_dir.game().clone();
    let mut created = Vec::with_capacity(files.len());
    for (f, dest) in files.iter().zip(&dests) {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Failure::new(
                lanspread_control::ErrorKind::Cancelled,
                "stopped while files were made",
            ));
        }
        let (fid, inode) = writer
            .open((game.clone(), dest.clone()), f.size, f.mode)
            .await
            .map_err(|e| {
                let shown = game.shown(dest);
                Failure::io(format_args!("cannot create {}", shown.display()), &e)
            })?;
        files_open.push(fid);
        created.push(inode);
    }
    commit::one_file_each(&game, &dests, &created)?;
    for inode in created {
        root_dir.created(inode);
    }
    let digest = manifest_digest(files);
    let (journal, verified) =
        journal::open(&game, &dests, engine.chunks(), version, digest, stop).await?;
    Ok((dests, journal, verified, root_dir))
}

/// Fails with the numbers when a filesystem the files land on lacks room for them: each
/// file counts against the filesystem of its nearest existing folder (a disk mounted at
/// the root or at one of its folders has its own room; a folder not made yet is on its
/// parent's), less what is already there.
async fn check_space(
    games: &std::path::Path,
    root: &std::path::Path,
    files: &[FileManifest],
) -> Result<(), Failure> {
    use std::collections::{BTreeMap, HashMap};
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    let (games, root, files) = (games.to_path_buf(), root.to_path_buf(), files.to_vec());
    tokio::task::spawn_blocking(move || {
        // The nearest existing real folder (no symlink followed) of `folder`, up to the
        // games folder, with its filesystem.
        let landing = |folder: &Path| -> (PathBuf, Option<u64>) {
            let mut at = folder;
            loop {
                if let Ok(m) = std::fs::symlink_metadata(at) {
                    if m.is_dir() {
                        return (at.to_path_buf(), Some(m.dev()));
                    }
                }
                match at.parent() {
                    Some(up) if at != games && up.starts_with(&games) => at = up,
                    _ => return (games.clone(), None),
                }
            }
        };
        let mut by_folder: HashMap<PathBuf, (PathBuf, Option<u64>)> = HashMap::new();
        // Per filesystem: a folder on it (for the message and statvfs) and the bytes.
        let mut need: BTreeMap<Option<u64>, (PathBuf, u64)> = BTreeMap::new();
        for f in &files {
            let path = f.path.to_path(&root);
            let have = std::fs::symlink_metadata(&path).map_or(0, |m| m.len());
            let folder = path.parent().unwrap_or(&root).to_path_buf();
            let (at, dev) = by_folder
                .entry(folder.clone())
                .or_insert_with(|| landing(&folder))
                .clone();
            need.entry(dev).or_insert((at, 0)).1 += f.size.saturating_sub(have);
        }
        for (at, bytes) in need.into_values() {
            let free = lanspread_catalog::free_space(&at)
                .map_err(|e| Failure::new(ErrorKind::Io, e.to_string()))?;
            if bytes > free {
                return Err(Failure::new(
                    ErrorKind::DiskFull,
                    format!(
                        "not enough free space in {}: need {bytes} bytes, {free} available",
                        at.display()
                    ),
                ));
            }
        }
        Ok(())
    })
    .await
    .map_err(Failure::internal)?
}

/// Whether a manifest path is the commit sentinel.
fn is_sentinel(f: &FileManifest) -> bool {
    f.path.as_str() == VERSION_FILE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_syncs_each_file_or_the_filesystem_as_what_was_written_needs() {
        let plan = |each_file, syncfs| SyncPlan { each_file, syncfs };
        // (files, fresh, closed dirty) → plan
        let cases = [
            ((2000, true, false), plan(false, true)),
            ((10, true, false), plan(true, false)),
            ((2000, false, false), plan(true, false)),
            // A file closed by the descriptor cache before its sync.
            ((10, true, true), plan(false, true)),
            ((2000, false, true), plan(true, true)),
            ((10, false, true), plan(true, true)),
        ];
        for ((files, fresh, closed), want) in cases {
            assert_eq!(
                sync_plan(files, fresh, closed),
                want,
                "{files} files, fresh {fresh}, closed dirty {closed}"
            );
        }
    }
}
