//! Fetching chunks from one source: request them on a fresh bidirectional stream (one
//! chunk or the rest of one, or a run of small files together), gather each 1 MiB piece
//! in a pool buffer, hash it whole once it is there (BLAKE3 on one long slice, while it
//! is still in the cache) and check it before the buffer goes to the io_uring writer: a
//! source that lies is caught after one piece, no unverified byte is written, and the
//! pieces verified before a failure are kept (the rest is fetched alone).

use lanspread_catalog::{piece_hash, ChunkHash, GameId, RelPath, Version, PIECE_SIZE};
use lanspread_peer::FailKind;
use lanspread_proto::reset_code::RELAY_CUT;
use lanspread_proto::{chunk_head, AnswerFault, ChunkRange, PeerRequest, PeerResponse};
use lanspread_transfer::{read_frame, write_frame, CONTROL_PRIORITY};
use quinn::{Connection, RecvStream};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::stall_timeout;
use crate::limit::RateLimit;
use crate::partial::Growing;
use crate::writer::{Writer, BUF_SIZE};

// A pool buffer holds exactly one piece: it is checked whole before it is written.
const _: () = assert!(BUF_SIZE as u64 == PIECE_SIZE);
use lanspread_control::Failure;

/// How a chunk fetch failed.
#[derive(Debug, Clone)]
pub enum FetchError {
    /// The source failed (gone, refused, bad bytes): the planner decides.
    Source(FailKind, String),
    /// Writing locally failed (e.g. disk full): the download fails.
    Local(Failure),
    /// The transport failed (the stream or its connection): [`fetch`] reports it as
    /// [`FailKind::Disconnected`] when the connection closed (the source left or
    /// restarted), else as [`FailKind::SourceGone`].
    Lost(String),
}

/// One range to fetch (the game and version are the request's): a chunk, or its rest
/// from a piece on.
pub struct ChunkJob {
    /// File path in the source root.
    pub path: RelPath,
    /// Writer handle of the local file.
    pub file: u64,
    /// First byte (on a piece boundary).
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Expected hash of each piece of the range.
    pub pieces: Vec<ChunkHash>,
    /// Bytes of the range verified and handed to the writer so far (whole pieces), for
    /// the journal of a transfer that stops half-way.
    pub progress: std::sync::Arc<AtomicU64>,
    /// The chunk as this daemon's partial copy serves it while it arrives (`None`: not
    /// passed on).
    pub relay: Option<Relay>,
}

/// Cut-through for one chunk: announced as growing once its first piece is verified (a
/// fetch answered `Later`, or an offered chunk not chosen, never is), then told how far
/// its bytes are verified and written.
pub struct Relay {
    grow: Box<dyn Fn() -> Option<Arc<Growing>> + Send + Sync>,
    growing: OnceLock<Option<Arc<Growing>>>,
}

impl Relay {
    /// `grow` registers the chunk as growing (`None`: it is not passed on).
    pub fn new(grow: impl Fn() -> Option<Arc<Growing>> + Send + Sync + 'static) -> Self {
        Self {
            grow: Box::new(grow),
            growing: OnceLock::new(),
        }
    }

    /// Registers the chunk at the first call; its progress, if it is passed on.
    fn started(&self) -> Option<&Arc<Growing>> {
        self.growing.get_or_init(|| (self.grow)()).as_ref()
    }

    fn growing(&self) -> Option<&Arc<Growing>> {
        self.growing.get().and_then(Option::as_ref)
    }
}

/// What became of one range.
pub struct Outcome {
    /// Received, verified and written; or why not.
    pub result: Result<(), FetchError>,
    /// On failure: the range's first bytes (whole pieces) that were verified and written
    /// before it, kept so the chunk's rest is all that is fetched again.
    pub kept: u64,
}

impl Outcome {
    pub(crate) fn failed(e: FetchError) -> Self {
        Self {
            result: Err(e),
            kept: 0,
        }
    }
}

/// When a source last delivered bytes to this download, on any stream or lane (shared by
/// the fetches of every transfer thread; a relaxed load per read, a store per millisecond).
#[derive(Debug, Default)]
pub struct Activity(AtomicU64);

impl Activity {
    fn base() -> Instant {
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(Self::base()).as_millis() as u64;
        // Lanes of one source run on different threads: write the shared line at most
        // once a millisecond per lane, not once per read.
        if ms > self.0.load(Ordering::Relaxed) {
            self.0.fetch_max(ms, Ordering::Relaxed);
        }
    }

    fn last(&self) -> Instant {
        Self::base() + Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// The stall watchdog of one request stream: a single timer, re-armed only when it fires
/// (never per read), so the hot path pays an `Instant::now()` and a relaxed atomic load
/// per read and no timer updates. It fires only when neither this stream nor any other
/// of the same source moved for the stall timeout.
struct Stall<'a> {
    limit: Duration,
    last: Instant,
    source: &'a Activity,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<'a> Stall<'a> {
    fn new(source: &'a Activity) -> Self {
        let limit = stall_timeout();
        Self {
            limit,
            last: Instant::now(),
            source,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// Time spent waiting on this side (for a write buffer of the pool, which other
    /// streams and downloads share) is not the source's: its stall clock starts again.
    fn waited_here(&mut self) {
        self.last = Instant::now();
        self.timer.as_mut().reset((self.last + self.limit).into());
    }

    /// Runs `f` to its end, failing with "stalled" (and dropping `f`, whose stream is then
    /// abandoned) when the source sent nothing for the stall timeout.
    async fn guard<T>(&mut self, f: impl Future<Output = T>) -> Result<T, FetchError> {
        tokio::pin!(f);
        loop {
            tokio::select! {
                out = &mut f => {
                    self.last = Instant::now();
                    self.source.touch(self.last);
                    return Ok(out);
                }
                () = &mut self.timer => {
                    let last = self.last.max(self.source.last());
                    if last.elapsed() >= self.limit {
                        return Err(FetchError::Source(FailKind::Stalled, format!(
                            "source stalled: nothing from it for {} ms",
                            self.limit.as_millis()
                        )));
                    }
                    self.timer.as_mut().reset((last + self.limit).into());
                }
            }
        }
    }
}

fn gone(e: impl std::fmt::Display) -> FetchError {
    FetchError::Source(FailKind::SourceGone, e.to_string())
}

/// A transport error with its cause ("connection lost: timed out", not "connection lost"),
/// as [`lanspread_proto::peer_text`].
fn lost(e: impl std::error::Error) -> FetchError {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    // A peer's close reason is part of it (quinn prints its bytes as sent).
    FetchError::Lost(lanspread_proto::peer_text(&text))
}

/// What a request asks for: the game, its version, and how.
pub type Ask<'a> = (&'a GameId, Version, How<'a>);

/// How chunks are asked for.
#[derive(Clone, Copy)]
pub enum How<'a> {
    /// `Chunks` from a ready peer.
    Ready,
    /// `PartialChunks` from a partial holder of the manifest with this digest.
    Partial(&'a ChunkHash),
    /// `Offer` to a ready peer, which sends the one it chooses; told which (its index
    /// among the jobs) as soon as the answer's head says so.
    Offer(&'a (dyn Fn(usize) + Sync)),
}

/// What one request got: each range received, and the range an offer's source chose.
#[derive(Default)]
struct Got {
    /// The writes of each range received whole (every piece verified).
    ranges: Vec<Writes>,
    /// The writes of the verified pieces of the range a failure cut short (how many
    /// bytes: its job's `progress`).
    cut: Option<Writes>,
    chosen: Option<usize>,
    /// The source sends none of them now (`Later`).
    none_chosen: bool,
}

/// Fetches chunks of `game` at `version` from one source in one request into their
/// files: one stream, the ranges answered in order. Returns one outcome per job, in order;
/// when the stream fails at a job, that job and every later one fail the same way (the
/// failed job keeps the pieces it verified).
pub async fn fetch(
    conn: &Connection,
    source: &Activity,
    writer: &Writer,
    limit: &RateLimit,
    ask: Ask<'_>,
    jobs: &[ChunkJob],
) -> Vec<Outcome> {
    let mut got = Got::default();
    let failure = receive_all(conn, source, writer, limit, ask, jobs, &mut got)
        .await
        .err()
        .map(|f| match f {
            // Only a transport failure with the connection closed is the source's
            // leaving: a refusal, or a stream cut on a live connection, is not.
            FetchError::Lost(why) if conn.close_reason().is_some() => {
                FetchError::Source(FailKind::Disconnected, why)
            }
            FetchError::Lost(why) => FetchError::Source(FailKind::SourceGone, why),
            other => other,
        });
    let not_chosen = || Outcome::failed(FetchError::Source(FailKind::NotChosen, String::new()));
    if got.none_chosen {
        return (0..jobs.len()).map(|_| not_chosen()).collect();
    }
    // An offer's answer is the one range its source chose.
    let asked = match got.chosen {
        Some(i) => &jobs[i..=i],
        None => jobs,
    };
    let mut received = got.ranges;
    let mut cut = got.cut;
    if failure.is_some() && received.len() == asked.len() {
        // Failed after the last range (bytes past the end): that range fails with it,
        // so the source is still dropped; its verified pieces are kept.
        if let Some(writes) = received.pop() {
            cut = Some(writes);
        }
    }
    let mut results = Vec::with_capacity(jobs.len());
    for (job, writes) in asked.iter().zip(received) {
        results.push(Outcome {
            result: finish(job, writes).await,
            kept: 0,
        });
    }
    if let Some(failure) = failure {
        let at = results.len();
        results.resize_with(asked.len(), || Outcome::failed(failure.clone()));
        if let (Some(writes), Some(first), Some(job)) = (cut, results.get_mut(at), asked.get(at)) {
            // Kept only when every write of those pieces succeeded.
            match settle(job, writes).await {
                Ok(()) => first.kept = job.progress.load(Ordering::Relaxed),
                Err(local) => first.result = Err(local),
            }
        }
    }
    if let Some(i) = got.chosen {
        let mut all: Vec<_> = (0..jobs.len()).map(|_| not_chosen()).collect();
        if let Some(r) = results.pop() {
            all[i] = r;
        }
        return all;
    }
    results
}

/// Writes handed to the io_uring writer, not yet awaited.
type Writes = Vec<tokio::sync::oneshot::Receiver<std::io::Result<()>>>;

/// Waits for the writes of a range cut short (its refetch must not race them); the first
/// that failed, as the local failure it is (a full disk fails the download whichever
/// source was sending).
async fn settle(job: &ChunkJob, writes: Writes) -> Result<(), FetchError> {
    let mut failed = None;
    for rx in writes {
        let e = match rx.await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => Failure::io(format!("writing {}", job.path), &e),
            Err(_) => Failure::internal("the io_uring writer stopped"),
        };
        failed.get_or_insert(FetchError::Local(e));
    }
    failed.map_or(Ok(()), Err)
}

/// Sends the request and receives every range, checking each piece once it is whole and
/// handing it to the writer; stops at the first failure (a range cut short has its
/// writes settled first).
async fn receive_all(
    conn: &Connection,
    source: &Activity,
    writer: &Writer,
    limit: &RateLimit,
    (game, version, how): Ask<'_>,
    jobs: &[ChunkJob],
    got: &mut Got,
) -> Result<(), FetchError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(lost)?;
    // Ahead of any answer we are sending the source on this connection (a swarm's link).
    let _ = send.set_priority(CONTROL_PRIORITY);
    let ranges = jobs
        .iter()
        .map(|j| ChunkRange {
            path: j.path.clone(),
            offset: j.offset,
            len: j.len,
        })
        .collect();
    let game = game.clone();
    // Only a partial holder passes chunks on as they arrive (`RELAY_CUT`).
    let relayed = matches!(how, How::Partial(_));
    let request = match how {
        How::Ready => PeerRequest::chunks(game, version, ranges),
        How::Partial(digest) => PeerRequest::PartialChunks {
            game,
            version,
            digest: *digest,
            ranges,
        },
        How::Offer(_) => PeerRequest::Offer {
            game,
            version,
            ranges,
        },
    };
    write_frame(&mut send, &request).await.map_err(lost)?;
    let _ = send.finish();
    let mut stall = Stall::new(source);
    // Any request may be answered `Later` (its source is busy, a swarm's server serves in
    // turns); an offer names the range chosen first.
    let mut read = None;
    let jobs = match how {
        How::Ready | How::Partial(_) => {
            let head = stall
                .guard(read_frame::<_, PeerResponse>(&mut recv))
                .await?;
            match head.map_err(lost)? {
                Some(PeerResponse::Later) => {
                    got.none_chosen = true;
                    return Ok(());
                }
                head => read = Some(head),
            }
            jobs
        }
        How::Offer(told) => match chosen(&mut recv, &mut stall, jobs.len()).await? {
            Some(i) => {
                got.chosen = Some(i);
                told(i);
                &jobs[i..=i]
            }
            None => {
                got.none_chosen = true;
                return Ok(());
            }
        },
    };
    for job in jobs {
        let mut writes = Vec::new();
        let one = receive_one(
            &mut recv,
            &mut stall,
            writer,
            limit,
            (job, relayed),
            &mut writes,
            &mut read,
        );
        match one.await {
            Ok(()) => got.ranges.push(writes),
            Err(e) => {
                got.cut = Some(writes);
                return Err(e);
            }
        }
    }
    // A source that sends more than it announced is lying.
    match stall.guard(recv.read_chunk(1, true)).await? {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(FetchError::Source(
            FailKind::BadData,
            "more bytes than announced".into(),
        )),
        Err(e) => Err(lost(e)),
    }
}

/// Reads which of `offered` ranges an offer's source chose.
/// `None`: every one is on its way to another downloader.
async fn chosen(
    recv: &mut RecvStream,
    stall: &mut Stall<'_>,
    offered: usize,
) -> Result<Option<usize>, FetchError> {
    let head = stall.guard(read_frame::<_, PeerResponse>(recv)).await?;
    match head.map_err(lost)? {
        Some(PeerResponse::Chosen { index }) if (index as usize) < offered => {
            Ok(Some(index as usize))
        }
        Some(PeerResponse::Later) => Ok(None),
        Some(PeerResponse::Refused { reason }) => Err(gone(format!(
            "refused: {}",
            lanspread_proto::peer_text(&reason)
        ))),
        None => Err(gone("the stream ended before the choice")),
        Some(other) => Err(FetchError::Source(
            FailKind::BadData,
            format!("unexpected answer to an offer: {}", other.kind()),
        )),
    }
}

/// Receives one range: its `Chunk` header, then its bytes, one piece per pool buffer,
/// each checked against its hash before it is written; the job's `progress` says how many
/// of the range's first bytes were verified and handed to the writer (whole pieces).
async fn receive_one(
    recv: &mut RecvStream,
    stall: &mut Stall<'_>,
    writer: &Writer,
    limit: &RateLimit,
    (job, relayed): (&ChunkJob, bool),
    writes: &mut Writes,
    read: &mut Option<Option<PeerResponse>>,
) -> Result<(), FetchError> {
    let head = match read.take() {
        Some(head) => head,
        None => stall
            .guard(read_frame::<_, PeerResponse>(recv))
            .await?
            .map_err(lost)?,
    };
    match chunk_head(head, job.len) {
        Ok(()) => {}
        Err(e @ AnswerFault::Unexpected(_)) => {
            return Err(FetchError::Source(FailKind::BadData, e.to_string()))
        }
        Err(e) => return Err(gone(e.to_string())),
    }
    let mut got = 0u64;
    let mut buf = None;
    // Where each write not yet known complete ends (for a growing chunk).
    let mut ends: Vec<u64> = Vec::new();
    // Where the piece being received starts; everything before it is verified.
    let mut piece_start = job.offset;
    while got < job.len {
        let b = match &mut buf {
            Some(b) => b,
            None => {
                let b = writer
                    .buffer()
                    .await
                    .map_err(|e| FetchError::Local(Failure::io("the write buffer pool", &e)))?;
                // (A pool held by slow streams elsewhere made an honest source "stall"
                // here, and lose its window, after the wait.)
                stall.waited_here();
                buf.insert(b)
            }
        };
        let want = (job.len - got).min(b.room() as u64) as usize;
        let bytes = match stall.guard(recv.read_chunk(want, true)).await? {
            Ok(Some(c)) => c.bytes,
            Ok(None) => {
                return Err(gone(format!(
                    "stream ended after {got} of {} bytes",
                    job.len
                )))
            }
            Err(quinn::ReadError::Reset(code))
                if code.into_inner() == u64::from(RELAY_CUT)
                    && relayed
                    && piece_start > job.offset =>
            {
                // A partial holder passing the chunk on could not go on (its own fetch
                // stopped, or its copy ended) after at least one good piece: those are
                // kept, and the holder rests (as after `Later`), not dropped. Without a
                // good piece, or from a ready peer, it is a lost stream like any other.
                return Err(FetchError::Source(
                    FailKind::NotChosen,
                    "the chunk stopped arriving at the peer passing it on".into(),
                ));
            }
            Err(e) => return Err(lost(e)),
        };
        limit.take(bytes.len() as u64).await;
        b.extend(&bytes);
        got += bytes.len() as u64;
        if let Some(full) = buf.take_if(|b| b.room() == 0 || got == job.len) {
            let index = ((piece_start - job.offset) / PIECE_SIZE) as usize;
            if job.pieces.get(index) != Some(&piece_hash(full.bytes())) {
                return Err(FetchError::Source(
                    FailKind::BadData,
                    format!("{} at {piece_start}: hash mismatch", job.path),
                ));
            }
            let len = full.filled() as u64;
            let rx = writer
                .write(job.file, piece_start, full)
                .await
                .map_err(|e| FetchError::Local(Failure::io(format!("writing {}", job.path), &e)))?;
            writes.push(rx);
            piece_start += len;
            job.progress
                .store(piece_start - job.offset, Ordering::Relaxed);
            if let Some(relay) = &job.relay {
                ends.push(piece_start);
                if let Some(g) = relay.started() {
                    written(job, writes, &mut ends, g)?;
                }
            }
        }
    }
    Ok(())
}

/// Takes the writes that completed, in order from the first, and tells the growing chunk
/// how far its bytes are written (answers relaying it read up to there).
fn written(
    job: &ChunkJob,
    writes: &mut Writes,
    ends: &mut Vec<u64>,
    growing: &crate::partial::Growing,
) -> Result<(), FetchError> {
    use tokio::sync::oneshot::error::TryRecvError;
    while let Some(first) = writes.first_mut() {
        let e = match first.try_recv() {
            Ok(Ok(())) => {
                writes.remove(0);
                if !ends.is_empty() {
                    growing.wrote(ends.remove(0));
                }
                continue;
            }
            Err(TryRecvError::Empty) => return Ok(()),
            Ok(Err(e)) => Failure::io(format!("writing {}", job.path), &e),
            Err(TryRecvError::Closed) => Failure::internal("the io_uring writer stopped"),
        };
        // Its result is taken: a later `settle` must not wait on it again.
        writes.remove(0);
        return Err(FetchError::Local(e));
    }
    Ok(())
}

/// A received range (every piece verified) is done when its writes succeeded.
async fn finish(job: &ChunkJob, writes: Writes) -> Result<(), FetchError> {
    for rx in writes {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(FetchError::Local(Failure::io(
                    format!("writing {}", job.path),
                    &e,
                )))
            }
            Err(_) => {
                return Err(FetchError::Local(Failure::internal(
                    "the io_uring writer stopped",
                )))
            }
        }
    }
    if let Some(g) = job.relay.as_ref().and_then(Relay::growing) {
        g.wrote(job.offset + job.len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stall guard started now, with a `limit` of its own.
    fn stalled_for(source: &Activity, limit: Duration) -> Stall<'_> {
        Stall {
            limit,
            last: Instant::now(),
            source,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// Waiting here (for a pool buffer) is not the source's silence: after such a wait
    /// its next read is judged from the wait's end; without one it is a stall.
    #[test]
    fn a_wait_on_this_side_does_not_count_as_the_sources_silence() {
        let _ = Activity::base();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let limit = Duration::from_millis(100);
        let source = Activity(AtomicU64::new(0));
        rt.block_on(async {
            let mut stall = stalled_for(&source, limit);
            tokio::time::sleep(limit * 2).await; // the pool wait
            let quick = tokio::time::sleep(Duration::from_millis(10));
            let err = stall.guard(quick).await.unwrap_err();
            assert!(matches!(err, FetchError::Source(FailKind::Stalled, _)));

            let mut stall = stalled_for(&source, limit);
            tokio::time::sleep(limit * 2).await;
            stall.waited_here();
            let quick = tokio::time::sleep(Duration::from_millis(10));
            assert!(stall.guard(quick).await.is_ok());
        });
    }
}
