//! The transfer phase of a download: performs the engine's fetches on their lanes'
//! threads, journals, reports and announces each verified chunk, and tells the engine
//! which linked peers hold part of the same manifest (the swarm's partial sources).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lanspread_catalog::{manifest_digest, ChunkHash, FileManifest, GameId, Version, PIECE_SIZE};
use lanspread_control::api::{EventKind, SourceBytes};
use lanspread_control::Failure;
use lanspread_peer::{Action, BatchId, ChunkResult, ChunkTally, Engine, FailKind, HoldingBatcher};
use lanspread_proto::chunk_rest;
use lanspread_proto::PeerId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

mod start;

use super::fetch;
use super::in_flight::InFlight;
use super::{journal, lanes};
use crate::failure::peer_failure;
use crate::state::Shared;

/// What `transfer` writes into, and the connections it fetches over (closed when done).
pub(super) struct Work<'a> {
    pub files: &'a [FileManifest],
    pub file_ids: &'a [u64],
    pub journal: &'a mut journal::Journal,
    /// Chunk → its first bytes (whole pieces) already verified and written, by an earlier
    /// attempt or a source that went mid-chunk: only the rest is fetched.
    pub kept: HashMap<usize, u64>,
    /// The chunks the events report, out of the units verified.
    pub tally: ChunkTally,
    pub in_flight: &'a mut InFlight,
    pub lanes: lanes::Lanes,
}

/// Journal a fetch's progress each time it verified this much more of its chunk.
const JOURNAL_STEP: u64 = 2 << 20;
/// How often the transfer loop wakes while fetches run, to journal their progress and
/// show it in `status` (a 32 MiB chunk from a slow source takes many seconds).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the data connections are looked after (`Lanes::keep`): closed ones retired
/// and dialled again when their back-off allows.
const KEEP_LANES_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a download waits for its sources before it says so (`download-waiting`): in a
/// swarm whose server is gone, the holders' announcements end short waits every few
/// hundred milliseconds.
const SAY_WAITING_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A finished fetch: its batch, source, and connection, and each chunk's result with the
/// bytes now kept of it from its start.
type Fetched = (
    BatchId,
    PeerId,
    quinn::Connection,
    Vec<(usize, ChunkResult, u64)>,
);

/// Performs the engine's transfer phase: starts each batch it asks for on its lane's
/// thread, journals and reports each verified chunk, and feeds every result back, until
/// it asks to commit or fails. A local failure (disk full) fails the download at once.
/// Whenever a linked peer's partial holdings change, the engine learns the partial
/// sources of this manifest.
pub(super) async fn transfer(
    shared: &Arc<Shared>,
    game: (&GameId, Version),
    work: Work<'_>,
    engine: &mut Engine,
) -> Result<(), Failure> {
    let digest = manifest_digest(work.files);
    let mut t = Transfer {
        shared,
        game,
        digest,
        resumed: work.kept.clone(),
        kept_by: HashMap::new(),
        work,
        running: JoinSet::new(),
        activity: HashMap::new(),
        addrs: HashMap::new(),
        announce: HoldingBatcher::default(),
        began: Instant::now(),
        choices: mpsc::unbounded_channel(),
        races: HashSet::new(),
        aborts: HashMap::new(),
        finished: Vec::new(),
        said_waiting: false,
    };
    let mut holdings = shared.peers.watch_holdings();
    t.partial_sources(engine, &mut holdings);
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut keep_lanes = tokio::time::interval(KEEP_LANES_EVERY);
    keep_lanes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let keeping = t.work.lanes.keeping();
    loop {
        // (A fetch refused at its start fails at once: the engine's clock must be now.)
        engine.tick(Instant::now());
        while let Some(action) = engine.poll() {
            match action {
                Action::Fetch(f) => t.start(engine, f),
                Action::Verified { chunk, peer } => t.verified(engine, chunk, peer),
                Action::Cancel(batch) => {
                    if let Some((abort, cancelled)) = t.aborts.get(&batch) {
                        cancelled.store(true, Ordering::SeqCst);
                        abort.abort();
                    }
                }
                Action::Commit => {
                    // Every verified chunk announced: peers may fetch them during the
                    // commit's syncs; and journalled, should the commit not end.
                    if let Some(chunks) = t.announce.flush() {
                        t.shared.partials.verified(t.game.0, &chunks);
                    }
                    t.journalled();
                    shared.lock().operations.set_partial(game.0, 0);
                    return Ok(());
                }
                Action::Fail(e) => return Err(peer_failure(e)),
                Action::AskManifest(_) | Action::Prepare => {
                    return Err(Failure::internal(
                        "download engine went back to its manifest phase",
                    ))
                }
            }
        }
        t.work
            .in_flight
            .journal(t.work.journal, engine.chunks(), JOURNAL_STEP);
        t.journalled();
        let fetched = t.work.in_flight.shown(&t.work.kept, &t.resumed);
        {
            let mut state = shared.lock();
            state.operations.set_partial(game.0, fetched);
            state.operations.set_waiting(game.0, engine.waiting());
        }
        let say_waiting = t.waiting(engine);
        // Verified chunks are announced in batches, at the latest HOLDING_DELAY after.
        let due = t.announce.deadline().map(|d| t.began + d);
        let wake = engine.poll_timeout();
        if t.running.is_empty() && wake.is_none() {
            return Err(Failure::internal(
                "download stalled: nothing in flight and nothing assignable",
            ));
        }
        let joined = tokio::select! {
            Some(j) = t.running.join_next() => j,
            () = sleep_until(due) => {
                t.announce_due();
                continue;
            }
            () = sleep_until(wake) => {
                engine.handle_timeout(Instant::now());
                continue;
            }
            () = sleep_until(say_waiting) => continue,
            // Long chunks from slow sources: their progress is journalled (a crash keeps
            // it) and shown in `status` while they arrive, not only when one ends.
            _ = progress.tick(), if !t.running.is_empty() => continue,
            Ok(()) = holdings.changed() => {
                t.partial_sources(engine, &mut holdings);
                continue;
            }
            Some((batch, index)) = t.choices.1.recv() => {
                t.chosen(engine, batch, index);
                continue;
            }
            _ = keep_lanes.tick(), if keeping => {
                t.work.lanes.keep(engine);
                continue;
            }
            Some(dialled) = t.work.lanes.next_dialled() => {
                t.work.lanes.dialled(dialled, engine);
                continue;
            }
        };
        let (batch, peer, conn, outcomes) =
            joined.map_err(|e| Failure::internal(format_args!("chunk task failed: {e}")))??;
        let mut results = Vec::with_capacity(outcomes.len());
        // An offer whose choice was told: the others were settled then (and may be on
        // their way from another source now).
        let picked = engine.picked(batch);
        let raced = t.races.remove(&batch);
        t.aborts.remove(&batch);
        for (i, (chunk, result, kept)) in outcomes.into_iter().enumerate() {
            // Another request's chunk: an offer's chunk not chosen, or one verified
            // meanwhile (a race's loser failed or was cancelled).
            let others =
                picked.is_some_and(|p| p != i) || (result.is_err() && engine.is_verified(chunk));
            if others {
                results.push(result);
                continue;
            }
            tracing::debug!(peer = %peer.short(), chunk, ok = result.is_ok(),
                fail = ?result.as_ref().err().map(|e| e.0), kept, "fetch ended");
            // A race's second request that failed has no progress entry nor relay of its
            // own (the first request's go on); the pieces it verified are kept all the
            // same (the first request may have failed before it).
            if !(raced && result.is_err()) {
                t.work.in_flight.end(chunk, result.is_ok());
                t.grown(chunk, result.is_ok());
            }
            if let Err((kind, _)) = &result {
                if let Some(reason) = fail_reason(*kind) {
                    t.shared.net.metrics.chunk_failed(reason);
                }
            }
            t.keep(engine, (chunk, &peer), &result, kept);
            results.push(result);
        }
        let lane_lost = results.iter().any(Result::is_err) && t.work.lanes.lost(&peer, &conn);
        // A source lost with its link may be back already (a restart that fast is
        // announced before the last of its old connections fails): look again.
        let disconnected = results
            .iter()
            .any(|r| matches!(r, Err((FailKind::Disconnected, _))));
        engine.tick(Instant::now());
        engine.on_fetched(batch, results, lane_lost);
        // Lost with its link, or dropped: its data connections too (dialled again once
        // it is back); a lane retired by a late failure of a replaced connection is live.
        t.work.lanes.agree(&peer, engine);
        if disconnected {
            t.partial_sources(engine, &mut holdings);
        }
    }
}

/// The transfer phase's IO side.
struct Transfer<'a, 'w> {
    shared: &'a Arc<Shared>,
    game: (&'a GameId, Version),
    /// The validated manifest's digest: what partial holders must hold.
    digest: ChunkHash,
    work: Work<'w>,
    running: JoinSet<Result<Fetched, Failure>>,
    activity: HashMap<PeerId, Arc<fetch::Activity>>,
    /// Each source's address when its last batch started, for the events.
    addrs: HashMap<PeerId, String>,
    /// What an earlier attempt kept of each chunk: counted as resumed, not as progress
    /// when the chunk is verified.
    resumed: HashMap<usize, u64>,
    /// First pieces of a unit kept in this attempt after a source went mid-unit: who
    /// sent how many bytes of them (the unit's `sources` when it verifies).
    kept_by: HashMap<usize, Vec<(PeerId, u64)>>,
    /// Verified chunks not yet announced to the links.
    announce: HoldingBatcher,
    /// The batcher's clock starts here.
    began: Instant,
    /// Offers' choices as their fetches learn them: (batch, index among its chunks).
    choices: (
        mpsc::UnboundedSender<Choice>,
        mpsc::UnboundedReceiver<Choice>,
    ),
    /// The end game's second requests in flight (`Fetch::race`).
    races: HashSet<BatchId>,
    /// Every fetch in flight, to stop a race's loser (`Action::Cancel`), and whether it
    /// was stopped so (only that abort is a `NotChosen`, not any other cancellation).
    aborts: HashMap<BatchId, (tokio::task::AbortHandle, Arc<AtomicBool>)>,
    /// `download-chunk-finished` events of chunks whose journal lines are not written
    /// yet: emitted once they are ([`Transfer::journalled`]), so a chunk an event calls
    /// finished is one a crash right after it does not forget.
    finished: Vec<EventKind>,
    /// Whether `download-waiting` said so.
    said_waiting: bool,
}

/// An offer's choice: its batch, and the chosen chunk's index among its chunks.
type Choice = (BatchId, usize);

impl Transfer<'_, '_> {
    /// Tells the engine the linked peers that hold part of this manifest now, and those
    /// that became ready at its version.
    fn partial_sources(&self, engine: &mut Engine, holdings: &mut watch::Receiver<u64>) {
        holdings.borrow_and_update();
        let chunks = engine.chunks().len();
        // (Only peers whose link is open: one whose link closed and is not yet out of the
        // table would be asked at once, and fail again. It is back once linked anew.)
        let live = |p: &PeerId| {
            let link = self.shared.peers.link(p);
            link.is_some_and(|l| l.close_reason().is_none())
        };
        let holders = self
            .shared
            .peers
            .partial_holders(self.game, &self.digest, chunks)
            .into_iter()
            .filter(|(p, _)| live(p))
            .collect();
        engine.set_partials(holders, Instant::now());
        let growing = self
            .shared
            .peers
            .partial_growing(self.game, &self.digest, chunks);
        engine.set_growing(&growing);
        // Peers that became ready at this version meanwhile (a partial source whose
        // download committed) stay sources.
        if let Some(ready) = self.shared.peers.sources(self.game.0) {
            if ready.version == self.game.1 {
                let ready: Vec<PeerId> = ready.peers.into_iter().filter(live).collect();
                engine.add_ready(&ready);
            }
        }
    }

    /// Says when the download begins waiting for its sources, once it has waited
    /// `SAY_WAITING_AFTER`, and when it ends (`download-waiting`); returns when to look
    /// again if it waits and has not said so yet.
    fn waiting(&mut self, engine: &Engine) -> Option<Instant> {
        let said = |waiting: bool| EventKind::DownloadWaiting {
            game_id: self.game.0.clone(),
            waiting,
            wait_ms: u64::try_from(engine.wait().as_millis()).unwrap_or(u64::MAX),
        };
        let Some(since) = engine.waiting_since() else {
            if std::mem::take(&mut self.said_waiting) {
                self.shared.events.emit(said(false));
            }
            return None;
        };
        if self.said_waiting {
            return None;
        }
        if Instant::now() < since + SAY_WAITING_AFTER {
            return Some(since + SAY_WAITING_AFTER);
        }
        self.said_waiting = true;
        self.shared.events.emit(said(true));
        None
    }

    /// What is kept of a chunk after a fetch: nothing once it is verified (its own
    /// journal line says so); after a failure, the bytes from the chunk's start verified
    /// before it (whole pieces, never the last one), journalled so a resume keeps them too.
    fn keep(
        &mut self,
        engine: &Engine,
        (chunk, peer): (usize, &PeerId),
        result: &ChunkResult,
        kept: u64,
    ) {
        if result.is_ok() {
            self.work.kept.remove(&chunk);
            return;
        }
        let Some(spec) = engine.chunks().get(chunk) else {
            return;
        };
        let (_, _, pieces) = chunk_rest(0, spec.len, kept);
        let kept = pieces as u64 * PIECE_SIZE;
        let before = self.work.kept.get(&chunk).copied().unwrap_or(0);
        if kept > before {
            self.work.kept.insert(chunk, kept);
            self.work.journal.record_kept(chunk, kept);
            let by = self.kept_by.entry(chunk).or_default();
            by.push((peer.clone(), kept - before));
        }
    }

    /// An offer's source told which chunk it sends: the others are not in flight any
    /// more, and the engine may ask other sources for them at once.
    fn chosen(&mut self, engine: &mut Engine, batch: BatchId, index: usize) {
        for c in engine.on_chosen(batch, index) {
            self.work.in_flight.end(c, false);
        }
    }

    /// A chunk's fetch ended: verified, it stays served as growing until it is
    /// announced; failed, the answers relaying it end.
    fn grown(&mut self, chunk: usize, ok: bool) {
        if !ok {
            if let Ok(k) = u32::try_from(chunk) {
                self.shared.partials.grow_failed(self.game.0, k);
            }
        }
    }

    /// Announces the verified chunks whose batch is due.
    fn announce_due(&mut self) {
        if let Some(chunks) = self.announce.poll(self.began.elapsed()) {
            self.shared.partials.verified(self.game.0, &chunks);
        }
    }

    /// Journals a verified chunk, reports it and queues it for the links.
    fn verified(&mut self, engine: &Engine, chunk: usize, peer: PeerId) {
        self.work.journal.record(chunk);
        let spec = &engine.chunks()[chunk];
        if let Ok(c) = u32::try_from(chunk) {
            // Whichever request verified it, every byte is written: answers relaying
            // it (a race's loser was passing it on) read on to its end.
            let end = spec.offset + spec.len;
            self.shared.partials.grown_whole(self.game.0, c, end);
            self.announce.push(c, self.began.elapsed());
            self.announce_due();
        }
        let resumed = self.resumed.remove(&chunk).unwrap_or(0).min(spec.len);
        let id = self.game.0;
        // Its bytes move from on their way to done in one step (a `status` between two
        // would count them twice).
        let on_their_way = self.work.in_flight.shown(&self.work.kept, &self.resumed);
        {
            let mut state = self.shared.lock();
            state.operations.advance(id, spec.len - resumed);
            state.operations.set_partial(id, on_their_way);
        }
        // Who sent it: sources that went mid-unit (their pieces kept), then `peer`.
        let mut sent = self.kept_by.remove(&chunk).unwrap_or_default();
        let before: u64 = sent.iter().map(|(_, b)| b).sum();
        sent.push((peer.clone(), spec.len.saturating_sub(resumed + before)));
        for (p, bytes) in &sent {
            self.shared
                .net
                .metrics
                .received(p.as_str(), id.as_str(), *bytes);
        }
        let Some(done) = self.work.tally.verified(chunk, &sent, resumed) else {
            return;
        };
        let main = done.main_source().cloned().unwrap_or(peer);
        self.finished.push(EventKind::DownloadChunkFinished {
            game_id: id.clone(),
            path: self.work.files[done.file].path.to_string(),
            offset: done.offset,
            len: done.len,
            addr: self.addrs.get(&main).cloned().unwrap_or_default(),
            peer_id: main,
            resumed_bytes: done.resumed.min(done.len),
            sources: done
                .sources
                .into_iter()
                .map(|(peer_id, bytes)| SourceBytes { peer_id, bytes })
                .collect(),
        });
    }

    /// Writes the journal's buffered lines, then emits the events of the chunks they
    /// record.
    fn journalled(&mut self) {
        self.work.journal.flush();
        for e in self.finished.drain(..) {
            self.shared.events.emit(e);
        }
    }
}

impl Drop for Transfer<'_, '_> {
    /// A transfer that ends in a failure still reports the chunks it verified last.
    fn drop(&mut self) {
        self.journalled();
    }
}

/// A failed chunk fetch's reason as the metrics name it; none for an offer not taken.
fn fail_reason(kind: lanspread_peer::FailKind) -> Option<&'static str> {
    use lanspread_peer::FailKind;
    match kind {
        FailKind::SourceGone | FailKind::Disconnected => Some("source-gone"),
        FailKind::BadData => Some("bad-data"),
        FailKind::Transient => Some("local"),
        FailKind::Stalled => Some("stalled"),
        FailKind::NotChosen => None,
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
