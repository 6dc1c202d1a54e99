//! Download orchestration: pick the sources with the newest version, validate their
//! manifests by plurality, drive the chunk planner over QUIC streams, write through the
//! io_uring writer into preallocated files, and commit `version.ini` last.

mod commit;
mod fetch;
mod journal;
mod lanes;
mod metadata;
mod stop;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lanspread_catalog::{manifest_digest, FileManifest, GameId, VERSION_FILE};
use lanspread_peer::{latest_sources, FailKind, OpKind, Planner, PlannerStatus, Sources};
use lanspread_transfer::PeerId;
use quinn::Connection;
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use stop::stop_requested;
pub use stop::{cancel, cancellable};
pub use writer::Writer;

/// What a download killed midway leaves in a root besides its data files and journal
/// (the received sentinel, a half-rewritten journal): safe to remove while no operation
/// runs on it.
pub const LEFTOVERS: [&str; 2] = [commit::INCOMING, journal::JOURNAL_TMP];

use crate::api::{EventKind, FileSize};
use crate::failure::{ErrorKind, Failure};
use crate::state::Shared;
use fetch::{ChunkJob, FetchError};

/// Chunks in flight per source: many small files go out at once (their cost is round
/// trips) ...
const MAX_IN_FLIGHT: usize = 64;
/// ... while big chunks are capped by bytes: 4 × 32 MiB per source, or more when there
/// are more transfer threads (`lanes`) than 4 chunks per source would keep busy: the
/// lanes are shared out among the sources, one 32 MiB chunk each. What a source sends is
/// what was asked, so this also bounds what the client holds unread per source; with
/// many sources it stays at 4 chunks each, as with one thread.
/// Measured with the compare tool's S34 case (bench/README.md).
fn max_in_flight_bytes(lanes: usize, sources: usize) -> u64 {
    lanes.div_ceil(sources.max(1)).max(4) as u64 * lanspread_catalog::CHUNK_SIZE
}
/// A run of consecutive chunks of at most `BATCH_CHUNK_LEN` bytes each (small files)
/// goes in one request of up to `BATCH_CHUNKS` ranges and `BATCH_BYTES` bytes: one
/// stream, one request frame and one reader task on the source per batch, not per file.
const BATCH_CHUNKS: usize = 32;
const BATCH_CHUNK_LEN: u64 = 1 << 20;
const BATCH_BYTES: u64 = 8 << 20;
const _: () = assert!(BATCH_CHUNKS <= lanspread_transfer::MAX_RANGES);

/// Checks a download request and registers the operation. Refusals leave nothing behind.
pub fn begin(shared: &Arc<Shared>, game: &str) -> Result<(GameId, Sources), Failure> {
    let Some(id) = shared.catalog.get(game) else {
        return Err(Failure::new(
            ErrorKind::NotInCatalog,
            format!("game {game} is not in the local catalog"),
        ));
    };
    let mut inner = shared.lock();
    if inner.operations.get(&id).is_some() {
        return Err(lanspread_peer::PeerError::Busy(id).into());
    }
    let Some(sources) = latest_sources(&inner.peers, &id) else {
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
    inner.operations.begin(&id, OpKind::Download)?;
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
pub async fn run_with_install(shared: Arc<Shared>, id: GameId, sources: Sources, install: bool) {
    let span = info_span!("download", game = %id, version = %sources.version);
    async move {
        if run(shared.clone(), id.clone(), sources).await && install {
            let _ = crate::install::install(&shared, &id, true).await;
        }
    }
    .instrument(span)
    .await
}

/// Runs a registered download to its end and emits the terminal event. The operation is
/// cleared before that event, so a retry right after a failure is accepted.
pub async fn run(shared: Arc<Shared>, id: GameId, sources: Sources) -> bool {
    let mut files = Vec::new();
    // Registered by `begin`, so a `cancel` right after a detached start finds it.
    let cancel = shared
        .cancels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned()
        .unwrap_or_default();
    let mut why = std::collections::BTreeMap::new();
    let result = download(&shared, &id, &sources, &mut files, &cancel, &mut why).await;
    for f in files {
        shared.writer.close(f).await;
    }
    if result.is_err() {
        commit::discard_incoming(&shared.games_dir.join(id.as_str())).await;
    }
    shared.lock().operations.end(&id);
    shared.rescan_root(&id).await;
    let ok = match result {
        Ok(done) => {
            let secs = done.duration.as_secs_f64().max(1e-6);
            // The rate counts what crossed the network in this attempt.
            let moved = done.bytes - done.resumed_bytes;
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
            });
            true
        }
        Err(failure) => {
            warn!(game = %id, "download failed: {failure}");
            shared.events.emit(EventKind::DownloadFailed {
                game_id: id.clone(),
                reason: failure.message,
                kind: failure.kind,
                sources: why
                    .into_iter()
                    .map(|(peer_id, reason)| crate::api::SourceFailure { peer_id, reason })
                    .collect(),
            });
            false
        }
    };
    // Last: `cancel` answers once this entry is gone, after the terminal event.
    shared
        .cancels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    ok
}

struct Done {
    bytes: u64,
    resumed_bytes: u64,
    chunks: u64,
    duration: Duration,
}

fn link(shared: &Shared, peer: &PeerId) -> Option<(Connection, String)> {
    let inner = shared.lock();
    let conn = inner.links.get(peer)?.conn.clone();
    let addr = inner
        .peers
        .get(peer)
        .map(|e| e.addr.to_string())
        .unwrap_or_default();
    Some((conn, addr))
}

async fn download(
    shared: &Arc<Shared>,
    id: &GameId,
    sources: &Sources,
    files_open: &mut Vec<u64>,
    cancel: &tokio::sync::Notify,
    why: &mut std::collections::BTreeMap<PeerId, String>,
) -> Result<Done, Failure> {
    let mut shutdown = shared.shutdown.subscribe();
    let chosen = metadata::validated(shared, id, sources, &mut shutdown, cancel, why).await?;
    for (peer, reason) in &chosen.rejected {
        warn!(peer = %peer.short(), "not a source for {id}: {reason}");
        why.insert(peer.clone(), reason.clone());
    }
    shared.events.emit(EventKind::GotGameFiles {
        game_id: id.clone(),
        version: sources.version,
        files: chosen
            .files
            .iter()
            .map(|f| FileSize {
                path: f.path.to_string(),
                size: f.size,
            })
            .collect(),
        sources: chosen.sources.clone(),
    });

    // Refuse up front when the files cannot fit (bytes already there count as reusable).
    let root = shared.games_dir.join(id.as_str());
    check_space(&shared.games_dir, &root, &chosen.files).await?;

    // Prepare the root: no committed sentinel from here on, every file preallocated.
    let dests = commit::prepare(&root, &chosen.files).await?;
    for (f, dest) in chosen.files.iter().zip(&dests) {
        let fid = shared
            .writer
            .open(dest.clone(), f.size)
            .await
            .map_err(|e| Failure::io(format_args!("cannot create {}", dest.display()), &e))?;
        files_open.push(fid);
    }
    let bytes: u64 = chosen.files.iter().map(|f| f.size).sum();
    let mut planner = Planner::new(&chosen.files, &chosen.sources, MAX_IN_FLIGHT)
        .limit_in_flight_bytes(max_in_flight_bytes(
            shared.threads.len(),
            chosen.sources.len(),
        ))
        .batch_small_chunks(BATCH_CHUNKS, BATCH_CHUNK_LEN, BATCH_BYTES);
    let chunks = planner.chunks().len() as u64;
    // Chunks an interrupted attempt at this same version and manifest already verified.
    let digest = manifest_digest(&chosen.files);
    let (mut journal, present) =
        journal::open(&root, &dests, planner.chunks(), sources.version, digest).await?;
    let mut resumed_bytes = 0;
    for &c in &present {
        if planner.mark_present(c) {
            resumed_bytes += planner.chunks()[c].len;
        }
    }
    if !present.is_empty() {
        info!(game = %id, chunks = present.len(), bytes = resumed_bytes, "resuming");
    }
    shared.lock().operations.sized(id, bytes, resumed_bytes);
    shared.events.emit(EventKind::DownloadBegin {
        game_id: id.clone(),
        version: sources.version,
        bytes,
        files: chosen.files.len() as u64,
        chunks,
        resumed_chunks: present.len() as u64,
        resumed_bytes,
    });
    let started = Instant::now();
    let work = Work {
        files: &chosen.files,
        file_ids: files_open,
        journal: &mut journal,
        lanes: lanes::Lanes::open(shared, &chosen.sources).await,
        why,
    };
    tokio::select! {
        r = transfer(shared, id, sources, work, &mut planner) => r?,
        why = stop_requested(&mut shutdown, cancel) => return Err(why),
    }
    let t_transfer = started.elapsed();
    // Every file's fdatasync at once: the io_uring writer runs them concurrently, so many
    // small files cost one round of syncs, not one round trip each.
    let mut syncs = JoinSet::new();
    for &f in files_open.iter() {
        let shared = shared.clone();
        syncs.spawn(async move { shared.writer.sync(f).await });
    }
    while let Some(res) = syncs.join_next().await {
        res.map_err(Failure::internal)?
            .map_err(|e| Failure::io("flushing files", &e))?;
    }
    let t_sync = started.elapsed();
    commit::commit(&root, &chosen.files, &dests, sources.version).await?;
    tracing::debug!(
        transfer_ms = t_transfer.as_millis() as u64,
        sync_ms = (t_sync - t_transfer).as_millis() as u64,
        commit_ms = (started.elapsed() - t_sync).as_millis() as u64,
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

/// What `transfer` writes into, and the connections it fetches over (closed when done).
struct Work<'a> {
    files: &'a [FileManifest],
    file_ids: &'a [u64],
    journal: &'a mut journal::Journal,
    lanes: lanes::Lanes,
    /// Each source's last failure (for `download-failed`).
    why: &'a mut std::collections::BTreeMap<PeerId, String>,
}

async fn transfer(
    shared: &Arc<Shared>,
    id: &GameId,
    sources: &Sources,
    work: Work<'_>,
    planner: &mut Planner,
) -> Result<(), Failure> {
    let Work {
        files,
        file_ids,
        journal,
        mut lanes,
        why: last_failure,
    } = work;
    let mut running = JoinSet::new();
    // The last failure of each source, for the message when none is left.
    // When each source last sent bytes, on any lane: its streams are judged together.
    let activity: std::collections::HashMap<PeerId, Arc<fetch::Activity>> = sources
        .peers
        .iter()
        .map(|p| (p.clone(), Arc::default()))
        .collect();
    loop {
        while let Some(batch) = planner.poll_batch() {
            let jobs: Vec<ChunkJob> = batch
                .chunks
                .iter()
                .map(|&c| {
                    let spec = &planner.chunks()[c];
                    let file = &files[spec.file];
                    ChunkJob {
                        path: file.path.clone(),
                        file: file_ids[spec.file],
                        offset: spec.offset,
                        len: spec.len,
                        hash: spec.hash,
                    }
                })
                .collect();
            // A source whose link is gone is gone, whatever lanes it had.
            let addr = link(shared, &batch.peer).map(|l| l.1);
            let lane = addr.as_ref().and(lanes.take(&batch.peer));
            let Some((lane, lanes::Lane { conn, runtime })) = lane else {
                let gone = FetchError::Source(
                    lanspread_peer::FailKind::SourceGone,
                    "peer disconnected".into(),
                );
                let results = vec![Err(gone); jobs.len()];
                let done = (batch, jobs, String::new(), results, None);
                running.spawn(async move { Ok(done) });
                continue;
            };
            let (shared, conn) = (shared.clone(), conn.clone());
            let source = activity.get(&batch.peer).cloned().unwrap_or_default();
            let (game, version) = (id.clone(), sources.version);
            // The fetch runs on the thread that drives its connection; dropping `running`
            // (a failed download) aborts it there too.
            let fetch = runtime.spawn(
                async move {
                    let limit = shared.download_limit.as_ref();
                    let what = (&game, version);
                    let results =
                        fetch::fetch(&conn, &source, &shared.writer, limit, what, &jobs).await;
                    (batch, jobs, addr.unwrap_or_default(), results, Some(lane))
                }
                .in_current_span(),
            );
            let abort = AbortOnDrop(fetch.abort_handle());
            running.spawn(async move {
                let _abort = abort;
                fetch.await
            });
        }
        match planner.status() {
            PlannerStatus::Finished => return Ok(()),
            PlannerStatus::Failed(reason) if last_failure.is_empty() => {
                return Err(Failure::new(ErrorKind::SourceFailed, reason))
            }
            PlannerStatus::Failed(reason) => {
                // Say why each source was given up, not only that none is left.
                let each: Vec<String> = last_failure
                    .iter()
                    .map(|(p, why)| format!("{}: {why}", p.short()))
                    .collect();
                return Err(Failure::new(
                    ErrorKind::SourceFailed,
                    format!("{reason} ({})", each.join("; ")),
                ));
            }
            PlannerStatus::Running => {}
        }
        let Some(joined) = running.join_next().await else {
            return Err(Failure::internal(
                "download stalled: nothing in flight and nothing assignable",
            ));
        };
        let (batch, jobs, addr, results, lane) = joined
            .and_then(|j| j)
            .map_err(|e| Failure::internal(format_args!("chunk task failed: {e}")))?;
        if let Some(lane) = lane {
            lanes.done(&batch.peer, lane);
        }
        let any_failed = results.iter().any(Result::is_err);
        let lane_lost = any_failed && lane.is_some_and(|i| lanes.retire_if_lost(&batch.peer, i));
        let mut failed = Vec::new();
        for ((&chunk, job), res) in batch.chunks.iter().zip(jobs).zip(results) {
            match res {
                Ok(()) => {
                    planner.on_done(chunk, &batch.peer);
                    journal.record(chunk);
                    shared.lock().operations.advance(id, job.len);
                    shared.events.emit(EventKind::DownloadChunkFinished {
                        game_id: id.clone(),
                        path: job.path.to_string(),
                        offset: job.offset,
                        len: job.len,
                        peer_id: batch.peer.clone(),
                        addr: addr.clone(),
                    });
                }
                // A lost data connection of a source still linked: busy, not gone.
                Err(FetchError::Source(FailKind::SourceGone, why)) if lane_lost => failed.push((
                    chunk,
                    FailKind::Stalled,
                    format!("data connection lost: {why}"),
                )),
                Err(FetchError::Source(kind, why)) => failed.push((chunk, kind, why)),
                Err(FetchError::Local(why)) => return Err(why),
            }
        }
        if let Some((chunk, kind, why)) = failed.first() {
            warn!(peer = %batch.peer.short(), chunk, chunks = failed.len(), "chunk failed ({kind:?}): {why}");
            last_failure.insert(batch.peer.clone(), why.clone());
        }
        // In reverse: each failed chunk goes to the front of the queue, so they keep
        // their order.
        for (chunk, kind, _) in failed.into_iter().rev() {
            planner.on_failed(chunk, &batch.peer, kind);
        }
    }
}

/// Aborts a task (on whichever runtime it runs) when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fails with the numbers when the games filesystem lacks room for the files.
async fn check_space(
    games: &std::path::Path,
    root: &std::path::Path,
    files: &[FileManifest],
) -> Result<(), Failure> {
    let (games, root, files) = (games.to_path_buf(), root.to_path_buf(), files.to_vec());
    tokio::task::spawn_blocking(move || {
        let need: u64 = files
            .iter()
            .map(|f| {
                let have = std::fs::symlink_metadata(f.path.to_path(&root))
                    .map(|m| m.len())
                    .unwrap_or(0);
                f.size.saturating_sub(have)
            })
            .sum();
        let free = lanspread_catalog::free_space(&games)
            .map_err(|e| Failure::new(ErrorKind::Io, e.to_string()))?;
        if need > free {
            return Err(Failure::new(
                ErrorKind::DiskFull,
                format!(
                    "not enough free space in {}: need {need} bytes, {free} available",
                    games.display()
                ),
            ));
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
    use super::max_in_flight_bytes;
    use lanspread_catalog::CHUNK_SIZE;

    #[test]
    fn in_flight_bytes_share_the_lanes_among_sources() {
        // Never below 4 chunks per source (one thread: as before transfer threads).
        assert_eq!(max_in_flight_bytes(1, 1), 4 * CHUNK_SIZE);
        assert_eq!(max_in_flight_bytes(2, 1), 4 * CHUNK_SIZE);
        // One source gets a chunk per lane...
        assert_eq!(max_in_flight_bytes(8, 1), 8 * CHUNK_SIZE);
        // ... several share them out, so many sources do not multiply the memory bound.
        assert_eq!(max_in_flight_bytes(8, 2), 4 * CHUNK_SIZE);
        assert_eq!(max_in_flight_bytes(16, 3), 6 * CHUNK_SIZE);
        assert_eq!(max_in_flight_bytes(8, 10), 4 * CHUNK_SIZE);
        assert_eq!(max_in_flight_bytes(8, 0), 8 * CHUNK_SIZE);
    }
}
