//! Serving peers: manifests and chunks on request streams, behind the serve gates (S12).

use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lanspread_catalog::GameRoot;
use lanspread_peer::{gate_chunk, gate_files, Blocked, PeerError, Stalled, Verdict};
use lanspread_proto::{reset_code, ChunkRange, PeerId, PeerRequest, PeerResponse, Refusal};
use lanspread_transfer::{read_frame, write_frame};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::index;
use crate::partial::Growing;
use crate::seed::Choice;
use crate::state::Shared;

/// Size of one read from disk while serving.
const READ_SIZE: usize = 2 << 20;
/// How long a peer has to send its request after opening a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Chunk requests served at once on one connection; more wait their turn. The client
/// asks for a few chunks per lane, and without send fairness quinn drains them one after
/// another anyway: reading ahead for all of them would only hold memory.
const CHUNK_STREAMS_PER_CONNECTION: usize = 4;
/// Chunk requests served at once by the whole daemon (each holds a reader at most
/// `READ_AHEAD` ahead: at most this × 8 MiB of read buffers, four recycled 2 MiB
/// buffers for pieces of 1–2 MiB).
pub const CHUNK_STREAMS_TOTAL: usize = 256;

/// How long a write to a peer may stay blocked before the source starts judging whether
/// the peer still takes anything (`lanspread_peer::Blocked`: the answer is reset after two
/// such windows of a silent connection, or after twenty while the peer reads only its
/// other streams). `LANSPREAD_SEND_STALL_MS` overrides it (tests, tuning).
pub const SEND_STALL_WINDOW: Duration = Duration::from_secs(30);

fn send_stall_window() -> Duration {
    static T: OnceLock<Duration> = OnceLock::new();
    *T.get_or_init(|| crate::config::env_ms("LANSPREAD_SEND_STALL_MS", SEND_STALL_WINDOW))
}

/// Accepts request streams on a connection until it closes; returns how many came.
pub async fn serve_requests(shared: Arc<Shared>, conn: Connection, remote: PeerId) -> u64 {
    let mut requests = 0;
    let slots = Arc::new(ConnSlots {
        chunks: tokio::sync::Semaphore::new(CHUNK_STREAMS_PER_CONNECTION),
    });
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer = %remote.short(), "request loop ended: {e}");
                return requests;
            }
        };
        requests += 1;
        let (shared, conn, remote) = (shared.clone(), conn.clone(), remote.clone());
        let slots = slots.clone();
        tokio::spawn(
            async move {
                if let Err(e) = handle(&shared, &slots, &conn, &remote, send, recv).await {
                    warn!(peer = %remote.short(), "protocol error on a request stream, disconnecting: {}", e.why);
                    conn.close(VarInt::from_u32(e.code), b"bad request");
                }
            }
            .in_current_span(),
        );
    }
}

/// Answers one request. An `Err` is a protocol violation that ends the connection; a
/// refused or failed request is answered and the connection stays.
async fn handle(
    shared: &Arc<Shared>,
    slots: &ConnSlots,
    conn: &Connection,
    remote: &PeerId,
    send: SendStream,
    mut recv: RecvStream,
) -> Result<(), Refusal> {
    let mut answer = Answer {
        send,
        conn,
        bytes: 0,
    };
    let request = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_frame::<_, PeerRequest>(&mut recv),
    )
    .await
    {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Err(Refusal::protocol("empty request stream")),
        Ok(Err(e)) => return Err(Refusal::protocol(e.to_string())),
        Err(_) => return Err(Refusal::protocol("no request in time")),
    };
    request.check().map_err(Refusal::protocol)?;
    let game_id = match &request {
        PeerRequest::Files { game, .. }
        | PeerRequest::Chunks { game, .. }
        | PeerRequest::PartialChunks { game, .. }
        | PeerRequest::Offer { game, .. } => game.to_string(),
    };
    match request {
        PeerRequest::Files { game, version } => {
            note_asker(shared, remote, (&game, version));
            let sent = match gated(shared, &game, version, |r| Ok(r.clone())) {
                Err(e) => answer.refuse(e.to_string()).await,
                Ok(root) => serve_manifest(shared, &mut answer, root).await,
            };
            answer.ended(sent, remote);
        }
        PeerRequest::Chunks {
            game,
            version,
            ranges,
        } => {
            // Several peers download this game (announced, or asked for it lately): the
            // server of a swarm, whose answers go out in turns (a downloader that does not
            // know the others yet asks for many chunks at once; shared by all, none would
            // finish one soon). While nobody else wants a turn or asked for the game the
            // answer is free (a lone downloader is never held back by peers that only
            // announce a download).
            let alone = !others_asking(shared, remote, (&game, version));
            let sent = if !alone || shared.peers.downloaders(&game, version) > 1 {
                match swarm_turn(slots, shared, remote, Ask::Plain(&ranges, alone)).await {
                    Ok(_turn) => {
                        // An offer's choice leaves these chunks alone while they go out.
                        let seeds = &shared.net.seeds;
                        let _sending = gated(shared, &game, version, |root| {
                            let (total, chunks) =
                                lanspread_peer::offered_chunks(&root.files, &ranges);
                            Ok(seeds.sending((game.clone(), version), total, &chunks))
                        });
                        serve_ranges(shared, &mut answer, &game, version, &ranges).await
                    }
                    Err(away) => answer.away(away).await,
                }
            } else {
                let _turn = turn(&slots.chunks, shared).await;
                serve_ranges(shared, &mut answer, &game, version, &ranges).await
            };
            answer.ended(sent, remote);
        }
        PeerRequest::PartialChunks {
            game,
            version,
            digest,
            ranges,
        } => {
            let game = (&game, version);
            let sent = match swarm_turn(slots, shared, remote, Ask::Partial(&ranges)).await {
                Ok(_turn) => serve_partial(shared, &mut answer, game, &digest, &ranges).await,
                Err(away) => answer.away(away).await,
            };
            answer.ended(sent, remote);
        }
        PeerRequest::Offer {
            game,
            version,
            ranges,
        } => {
            note_asker(shared, remote, (&game, version));
            let sent = match swarm_turn(slots, shared, remote, Ask::Offer).await {
                Ok(_turn) => serve_offer(shared, &mut answer, (&game, version), &ranges).await,
                Err(away) => answer.away(away).await,
            };
            answer.ended(sent, remote);
        }
    }
    shared
        .net
        .metrics
        .sent(remote.as_str(), &game_id, answer.bytes);
    Ok(())
}

/// `remote` asked for `game`'s manifest or made an offer for it now: it counts as one of
/// its downloaders for a while (`lanspread_peer::RecentAskers`). Only games this daemon
/// has ready at that version are noted (a peer naming made-up games or versions cannot
/// grow the record). Chunk requests are not noted: they come after the manifest, and the
/// record matters at a download's start only (announcements tell the rest).
fn note_asker(
    shared: &Shared,
    remote: &PeerId,
    (game, version): (&lanspread_catalog::GameId, lanspread_catalog::Version),
) {
    if gated(shared, game, version, |_| Ok(())).is_err() {
        return;
    }
    let mut askers = shared.net.askers.lock().unwrap_or_else(|p| p.into_inner());
    askers.note(&(game.clone(), version), remote, Instant::now());
}

/// Whether a peer other than `remote` asked for `game` lately and may still be
/// downloading it (linked, not ready with it: a peer whose download just ended, now a
/// second source, must not hold the next downloader to one answer at a time).
fn others_asking(
    shared: &Shared,
    remote: &PeerId,
    (game, version): (&lanspread_catalog::GameId, lanspread_catalog::Version),
) -> bool {
    let others = {
        let askers = shared.net.askers.lock().unwrap_or_else(|p| p.into_inner());
        askers.others(&(game.clone(), version), remote, Instant::now())
    };
    others
        .iter()
        .any(|p| shared.peers.may_want(p, game, version))
}

/// Waits for a chunk answer's turn, held while the answer is sent: fair (FIFO) turns,
/// this connection's, then the daemon's. Neither semaphore is ever closed, so acquiring
/// fails only if that changes; serve anyway. A connection's only stream skips the
/// daemon's turn, so every client keeps receiving something however many wait (a client
/// that hears nothing for long would count us as stalled).
async fn turn<'a>(
    slots: &'a tokio::sync::Semaphore,
    shared: &'a Shared,
) -> (
    Option<tokio::sync::SemaphorePermit<'a>>,
    Option<tokio::sync::SemaphorePermit<'a>>,
) {
    let mine = slots.acquire().await.ok();
    let alone = slots.available_permits() + 1 == CHUNK_STREAMS_PER_CONNECTION;
    let ours = if alone {
        None
    } else {
        shared.net.serve_slots.acquire().await.ok()
    };
    (mine, ours)
}

/// A connection's answer turns.
struct ConnSlots {
    chunks: tokio::sync::Semaphore,
}

/// An upload turn held while a swarm answer is sent; freed on drop.
struct UploadTurn<'a> {
    turns: &'a std::sync::Mutex<lanspread_peer::UploadTurns>,
    peer: &'a PeerId,
}

impl Drop for UploadTurn<'_> {
    fn drop(&mut self) {
        self.turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(self.peer);
    }
}

/// Why a swarm request gets no turn.
enum Away {
    /// Every turn taken or owed to who waited longer: answer `Later`.
    Later,
    /// The request asks for more than one chunk's bytes: refuse it.
    TooBig(String),
}

/// What a swarm request asks for.
enum Ask<'r> {
    /// `Chunks` at the server of a swarm: free while nobody else wants a turn or asked
    /// for the game lately (`true`: nobody did).
    Plain(&'r [ChunkRange], bool),
    /// `PartialChunks`.
    Partial(&'r [ChunkRange]),
    /// `Offer`: many chunks offered, one sent.
    Offer,
}

/// A swarm answer's turn: one of the daemon's upload turns for `remote` (one per
/// downloader, freed ones to who waited longest), then the chunk answer's turn. A turn
/// sends at most one chunk's bytes: more would let one peer hold a turn for gigabytes.
async fn swarm_turn<'a>(
    slots: &'a ConnSlots,
    shared: &'a Shared,
    remote: &'a PeerId,
    ask: Ask<'_>,
) -> Result<impl Sized + 'a, Away> {
    let turns = &shared.net.upload_turns;
    let now = Instant::now();
    let (taken, ranges) = {
        let mut t = turns.lock().unwrap_or_else(|p| p.into_inner());
        match ask {
            Ask::Plain(r, alone) => match t.take_plain(remote, now, alone) {
                lanspread_peer::Plain::Free => (true, &[][..]),
                lanspread_peer::Plain::Turn => (true, r),
                lanspread_peer::Plain::Later => (false, r),
            },
            Ask::Partial(r) => (t.take(remote, now), r),
            Ask::Offer => (t.take(remote, now), &[][..]),
        }
    };
    if !taken {
        return Err(Away::Later);
    }
    let upload = UploadTurn {
        turns,
        peer: remote,
    };
    let bytes: u64 = ranges.iter().map(|r| r.len).sum();
    if bytes > lanspread_proto::CHUNK_SIZE {
        return Err(Away::TooBig(format!(
            "a swarm request asks for at most one chunk ({} bytes), not {bytes}",
            lanspread_proto::CHUNK_SIZE
        )));
    }
    Ok((upload, turn(&slots.chunks, shared).await))
}

/// Answers a chunk request: the ranges the gates accept, in order, each as a `Chunk`
/// header and its bytes; the first range refused (by a gate, or because its file cannot
/// be opened or read) is answered `Refused` and ends the answer.
async fn serve_ranges(
    shared: &Shared,
    answer: &mut Answer<'_>,
    game: &lanspread_catalog::GameId,
    version: lanspread_catalog::Version,
    ranges: &[ChunkRange],
) -> Result<(), SendFailed> {
    // Every range is gated under one lock; a refused one cuts the list there.
    let gated = gated(shared, game, version, |root| {
        let mut files = Vec::with_capacity(ranges.len());
        for r in ranges {
            if let Err(e) = gate_chunk(root, &r.path, r.offset, r.len) {
                return Ok((root.dir.clone(), files, Some(e.to_string())));
            }
            files.push((r.path.to_path(&root.dir), r.offset, r.len));
        }
        Ok((root.dir.clone(), files, None))
    });
    let check = Check::Unchanged(shared.net.hashes.clone());
    send_ranges(shared, answer, gated, ranges, check).await
}

/// Answers an offer (swarm): `Chosen` with the offered chunk this daemon sends (see
/// `seed.rs`), then that chunk as a chunk request's answer.
async fn serve_offer(
    shared: &Shared,
    answer: &mut Answer<'_>,
    (game, version): (&lanspread_catalog::GameId, lanspread_catalog::Version),
    ranges: &[ChunkRange],
) -> Result<(), SendFailed> {
    let offered = gated(shared, game, version, |root| {
        Ok(lanspread_peer::offered_chunks(&root.files, ranges))
    });
    let (total, offered) = match offered {
        Ok(o) => o,
        Err(e) => return answer.refuse(e.to_string()).await,
    };
    let key = (game.clone(), version);
    let (at, _sending) = match shared.net.seeds.choose(key, total, &offered) {
        Choice::Send(at, sending) => (at, sending),
        Choice::OnTheirWay => return answer.later().await,
        Choice::NotChunks => {
            let why = "no offered range is a chunk of the game or its rest from a piece";
            return answer.refuse(why.into()).await;
        }
    };
    let index = u32::try_from(at).unwrap_or(u32::MAX);
    answer.frame(&PeerResponse::Chosen { index }).await?;
    serve_ranges(shared, answer, game, version, &ranges[at..=at]).await
}

/// Answers a chunk request to a partial copy: chunks (whole, or their rest from a piece)
/// verified against the same manifest only (`Partials::gate`), read from the files the download writes.
async fn serve_partial(
    shared: &Shared,
    answer: &mut Answer<'_>,
    game: (&lanspread_catalog::GameId, lanspread_catalog::Version),
    digest: &lanspread_proto::ChunkHash,
    ranges: &[ChunkRange],
) -> Result<(), SendFailed> {
    let (gated, live, growing) = match shared.partials.gate(game, digest, ranges) {
        Ok(Some((gated, live, growing))) => (Ok(gated), Some(live), growing),
        Ok(None) => return answer.later().await,
        Err(e) => (Err(e), None, Vec::new()),
    };
    for _ in growing.iter().flatten() {
        shared.net.metrics.chunk_relayed();
    }
    // A verified chunk's bytes were written before it was verified, a growing chunk's
    // are read as its fetch writes them; the file's identity changes while the download
    // writes, so the hash cache's check does not apply; the reader stops if the download
    // ends meanwhile.
    send_ranges(shared, answer, gated, ranges, Check::Live(live, growing)).await
}

/// Sends the gated ranges, in order; a refusal (of the gates or of the file reader)
/// ends the answer. `hashes`: the files must be unchanged since they were hashed.
async fn send_ranges(
    shared: &Shared,
    answer: &mut Answer<'_>,
    gated: Result<crate::partial::Gated, PeerError>,
    ranges: &[ChunkRange],
    check: Check,
) -> Result<(), SendFailed> {
    let (dir, files, mut refusal) = match gated {
        Ok(g) if !g.1.is_empty() => g,
        Ok((_, _, refusal)) => return answer.refuse(refusal.unwrap_or_default()).await,
        Err(e) => return answer.refuse(e.to_string()).await,
    };
    let served = &ranges[..files.len()];
    let limit = &shared.net.upload_limit;
    // One blocking task opens each file (before its header is sent, so a file that now
    // leaves the root, or changed since it was hashed, is refused) and reads the ranges
    // piece by piece, up to 4 MiB ahead.
    let mut pieces = read_ranges(dir, files, check);
    for (i, &ChunkRange { len, .. }) in served.iter().enumerate() {
        // The reader always sends at least one message per range; none means it died,
        // a local failure the peer is not to blame for.
        let first = pieces.rx.recv().await;
        let stopped = || Err(Stop::Refused("the file reader stopped".into()));
        let first = match first.unwrap_or_else(stopped) {
            Ok(first) => first,
            Err(Stop::Cut(why)) => {
                // A relayed chunk that stopped arriving here (or a copy that ended)
                // before any of this range was sent: the asker rests and asks again,
                // it does not drop us — `Later` as the answer's first word, else the
                // stream reset with `RELAY_CUT` (the ranges before are whole).
                debug!("a relayed chunk stopped: {why}");
                pieces.rx.close();
                if i == 0 {
                    return answer.later().await;
                }
                return Err(SendFailed::Cut(why));
            }
            Err(e) => {
                warn!("refused a chunk: {e}");
                refusal = Some(e.to_string());
                break;
            }
        };
        let streamed = match answer.frame(&PeerResponse::Chunk { len }).await {
            Ok(()) => stream_range(answer, first, len, &mut pieces, limit).await,
            Err(e) => Err(e),
        };
        if let Err(e) = streamed {
            pieces.rx.close();
            return Err(e);
        }
    }
    pieces.rx.close();
    let _ = (&mut pieces.reader).await;
    match refusal {
        Some(reason) => answer.refuse(reason).await,
        None => answer.finish().await,
    }
}

/// Why an answer ended before the peer had all of it.
enum SendFailed {
    /// The peer stopped taking it (see [`Blocked`]); the stream was reset.
    Stalled(Stalled),
    /// The stream or connection failed (the peer stopped or reset it, or went away).
    Stream(String),
    /// A relayed chunk stopped arriving here: reset with `RELAY_CUT`.
    Cut(String),
}

/// Why the file reader stopped a range.
enum Stop {
    /// The range is not served (its file is gone, changed or unreadable).
    Refused(String),
    /// Nothing wrong with the source nor the asker: a relayed chunk stopped arriving here
    /// (its fetch failed, or no progress), or the partial copy ended (committed, stopped).
    Cut(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Refused(why) | Stop::Cut(why) => f.write_str(why),
        }
    }
}

/// The send half of a request stream, with every write watched: an answer the peer does
/// not take is reset, freeing its serve slot and the data quinn holds for it.
struct Answer<'a> {
    send: SendStream,
    conn: &'a Connection,
    /// Game bytes handed to the stream (for the metrics).
    bytes: u64,
}

impl Answer<'_> {
    async fn frame(&mut self, msg: &PeerResponse) -> Result<(), SendFailed> {
        let conn = self.conn;
        watched(conn, write_frame(&mut self.send, msg)).await?;
        Ok(())
    }

    async fn chunk(&mut self, piece: Bytes) -> Result<(), SendFailed> {
        let n = piece.len() as u64;
        let conn = self.conn;
        watched(conn, self.send.write_chunk(piece)).await?;
        self.bytes += n;
        Ok(())
    }

    /// Ends the answer and waits until the peer has acknowledged all of it (or stopped
    /// the stream): the serve slot is held until then, and an answer the peer never
    /// takes is reset rather than kept in quinn's send buffer.
    async fn finish(&mut self) -> Result<(), SendFailed> {
        self.send
            .finish()
            .map_err(|e| SendFailed::Stream(e.to_string()))?;
        watched(self.conn, self.send.stopped()).await?;
        Ok(())
    }

    /// Answers `Later` (busy, or nothing free now) and ends the answer.
    async fn later(&mut self) -> Result<(), SendFailed> {
        self.frame(&PeerResponse::Later).await?;
        self.finish().await
    }

    /// Answers a swarm request that got no turn: `Later`, or `Refused` with why.
    async fn away(&mut self, away: Away) -> Result<(), SendFailed> {
        match away {
            Away::Later => self.later().await,
            Away::TooBig(why) => self.refuse(why).await,
        }
    }

    /// Answers `Refused` and ends the answer.
    async fn refuse(&mut self, reason: String) -> Result<(), SendFailed> {
        self.frame(&PeerResponse::Refused { reason }).await?;
        self.finish().await
    }

    /// Resets the stream of an answer that failed and says why.
    fn ended(&mut self, sent: Result<(), SendFailed>, remote: &PeerId) {
        if self.bytes > 0 && tracing::enabled!(tracing::Level::DEBUG) {
            // For studies of a swarm's links (`LANSPREAD_LOG=lanspread_daemon=debug`).
            let path = self.conn.stats().path;
            debug!(
                peer = %remote.short(),
                bytes = self.bytes,
                cwnd = path.cwnd,
                rtt_us = path.rtt.as_micros() as u64,
                lost = path.lost_packets,
                congestion_events = path.congestion_events,
                "answer ended"
            );
        }
        match sent {
            Ok(()) => {}
            Err(SendFailed::Stalled(why)) => {
                let _ = self.send.reset(VarInt::from_u32(reset_code::FAILED));
                warn!(peer = %remote.short(), "stopped answering a request: {why}");
            }
            Err(SendFailed::Stream(e)) => {
                let _ = self.send.reset(VarInt::from_u32(reset_code::FAILED));
                debug!(peer = %remote.short(), "answer ended early: {e}");
            }
            Err(SendFailed::Cut(e)) => {
                let _ = self.send.reset(VarInt::from_u32(reset_code::RELAY_CUT));
                debug!(peer = %remote.short(), "a relayed chunk stopped: {e}");
            }
        }
    }
}

/// Runs one write of an answer, giving up when [`Blocked`] says the peer does not take
/// it. A write that finishes at its first poll costs no timer.
async fn watched<T, E: std::fmt::Display>(
    conn: &Connection,
    write: impl Future<Output = Result<T, E>>,
) -> Result<T, SendFailed> {
    let window = send_stall_window();
    let began = Instant::now();
    tokio::pin!(write);
    let done = |r: Result<T, E>| r.map_err(|e| SendFailed::Stream(e.to_string()));
    if let Ok(r) = tokio::time::timeout(window, &mut write).await {
        return done(r);
    }
    let sent = || conn.stats().udp_tx.bytes;
    let mut blocked = Blocked::new(window, Duration::ZERO, sent());
    loop {
        if let Ok(r) = tokio::time::timeout(window, &mut write).await {
            return done(r);
        }
        if let Verdict::Abandon(why) = blocked.check(began.elapsed(), sent()) {
            return Err(SendFailed::Stalled(why));
        }
    }
}

/// Runs `f` on the root behind the serve gates, under the lock (never a copy of the
/// root's file list per request: that made S34 quadratic).
fn gated<T>(
    shared: &Shared,
    game: &lanspread_catalog::GameId,
    version: lanspread_catalog::Version,
    f: impl FnOnce(&GameRoot) -> Result<T, PeerError>,
) -> Result<T, PeerError> {
    let inner = shared.lock();
    let active = inner.operations.get(game).is_some();
    let root = gate_files(
        &shared.catalog(),
        game,
        inner.library.get(game),
        active,
        version,
    )?;
    f(root)
}

/// Answers a manifest request: from the hash cache when the background indexer got there
/// first, else hashed now, with a `Hashing` frame about every [`index::hash_report`] while
/// that lasts (the asker counts us alive and shows it). The hashing stops when the asker
/// goes away.
async fn serve_manifest(
    shared: &Arc<Shared>,
    answer: &mut Answer<'_>,
    root: GameRoot,
) -> Result<(), SendFailed> {
    let total = root.size();
    let mut hashing = index::Hashing::start(shared, root);
    let files = loop {
        match hashing.within(index::hash_report()).await {
            Some(files) => break files,
            None => {
                // Before the hashing starts (the files are still being looked at) the
                // report says 0: alive, nothing hashed yet.
                let done = hashing.progress().map_or(0, |p| p.done);
                answer.frame(&PeerResponse::Hashing { done, total }).await?;
            }
        }
    };
    match files {
        Ok(indexed) => {
            shared.net.metrics.manifest(indexed.hashed == 0);
            answer.frame(&PeerResponse::Files(indexed.files)).await?;
            answer.finish().await
        }
        Err(reason) => answer.refuse(reason).await,
    }
}

/// Most idle read buffers kept for reuse.
const POOL_KEEP: usize = 32;

/// Read buffers are recycled: quinn holds each piece until the peer acknowledged it, then
/// drops it, and the buffer comes back here instead of being freed and faulted in again.
static READ_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

struct Pooled {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut pool = READ_POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_KEEP {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Reads below this size get a buffer of their own size, never a recycled 2 MiB one: a
/// reader ahead by many small files (`read_ahead`) must not hold a 2 MiB buffer for each.
const POOLED_FROM: usize = READ_SIZE / 2;

fn read_piece(file: &std::fs::File, pos: u64, n: usize) -> std::io::Result<Bytes> {
    if n < POOLED_FROM {
        let mut buf = vec![0; n];
        file.read_exact_at(&mut buf, pos)?;
        return Ok(Bytes::from(buf));
    }
    let popped = READ_POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
    // A recycled buffer is full size; a fresh one grows to it once and is kept.
    let mut buf = popped.unwrap_or_default();
    if buf.len() < n {
        buf.resize(n, 0);
    }
    file.read_exact_at(&mut buf[..n], pos)?;
    Ok(Bytes::from_owner(Pooled { buf, len: n }))
}

/// The pieces of the ranges of one request, read ahead by a blocking task.
struct Pieces {
    rx: mpsc::Receiver<Result<Bytes, Stop>>,
    reader: tokio::task::JoinHandle<()>,
}

/// Opens each file inside `root` and reads its `(offset, len)` range on one blocking
/// thread in large pieces, up to `READ_AHEAD` ahead of the sender (`read_ahead`). Per range the first message is
/// its first piece or why the file could not be opened or read, or why it is no longer
/// the file whose hashes the peer holds; an error ends the reader.
/// What a range's file must still be when it is read.
enum Check {
    /// A ready copy: unchanged since it was hashed (the manifest's hashes hold).
    Unchanged(Arc<lanspread_catalog::HashCache>),
    /// A partial copy: its download still running (`None`: refused already), and per
    /// range the progress of a chunk still being fetched.
    Live(
        Option<Arc<std::sync::atomic::AtomicBool>>,
        Vec<Option<Arc<Growing>>>,
    ),
}

impl Check {
    fn holds(&self, path: &std::path::Path, meta: &std::fs::Metadata) -> bool {
        match self {
            Check::Unchanged(hashes) => hashes.still_holds(path, meta),
            Check::Live(live, _) => live
                .as_ref()
                .is_some_and(|l| l.load(std::sync::atomic::Ordering::SeqCst)),
        }
    }

    /// Whether a partial copy ended since its range was gated (ready copies: never).
    fn ended(&self) -> bool {
        matches!(self, Check::Live(l, _) if !l.as_ref().is_some_and(|l| l.load(std::sync::atomic::Ordering::SeqCst)))
    }

    /// The progress of range `i`'s chunk, if it is still being fetched here.
    fn growing(&self, i: usize) -> Option<&Arc<Growing>> {
        match self {
            Check::Live(_, growing) => growing.get(i)?.as_ref(),
            Check::Unchanged(_) => None,
        }
    }

    /// How many bytes from `pos` (at most `want`) may be read now: for a chunk still being
    /// fetched, waits until some are verified and written there; an error ends the
    /// answer (the fetch failed, the copy ended, the asker left, or no progress for
    /// [`RELAY_STALL`]).
    fn readable(
        &self,
        i: usize,
        pos: u64,
        want: u64,
        tx: &mpsc::Sender<Result<Bytes, Stop>>,
    ) -> Result<u64, String> {
        let Some(g) = self.growing(i) else {
            return Ok(want);
        };
        let mut seen = (0, Instant::now());
        loop {
            let Some(to) = g.written_to() else {
                return Err("the chunk's fetch here failed".into());
            };
            if to > pos {
                return Ok(want.min(to - pos));
            }
            if self.ended() {
                return Err("the partial copy ended".into());
            }
            if tx.is_closed() {
                return Err("the asker left".into());
            }
            if to != seen.0 {
                seen = (to, Instant::now());
            } else if seen.1.elapsed() > RELAY_STALL {
                return Err("the chunk stopped arriving here".into());
            }
            std::thread::sleep(RELAY_POLL);
        }
    }
}

/// Bytes an answer's reader may read ahead of its sender.
const READ_AHEAD: u64 = 4 << 20;

/// How many pieces the reader of `files` may read ahead: [`READ_AHEAD`] bytes of its
/// largest piece, at least two (small files are read many at a time instead of waking
/// the reader per file).
fn read_ahead(files: &[(PathBuf, u64, u64)]) -> usize {
    let largest = files.iter().map(|f| f.2).max().unwrap_or(0);
    let piece = largest.clamp(1, READ_SIZE as u64);
    usize::try_from(READ_AHEAD / piece)
        .unwrap_or(usize::MAX)
        .clamp(2, 128)
}

/// How often an answer relaying a chunk still arriving looks for more of it.
const RELAY_POLL: Duration = Duration::from_millis(5);
/// How long such an answer waits for its next piece before it ends.
const RELAY_STALL: Duration = Duration::from_secs(20);

fn read_ranges(root: PathBuf, files: Vec<(PathBuf, u64, u64)>, check: Check) -> Pieces {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Stop>>(read_ahead(&files));
    let refused = Stop::Refused;
    let reader = tokio::task::spawn_blocking(move || {
        // The root is resolved once per request, not per file.
        let confined = lanspread_catalog::Confined::new(&root);
        for (i, (path, offset, len)) in files.into_iter().enumerate() {
            // Named in a refusal only: no string per file served.
            let name = || path.strip_prefix(&root).unwrap_or(&path).display();
            if check.ended() {
                let _ = tx.blocking_send(Err(Stop::Cut("the partial copy ended".into())));
                return;
            }
            let opened = match &confined {
                Ok(c) => c.open(&path),
                Err(e) => Err(std::io::Error::new(e.kind(), format!("the game root: {e}"))),
            };
            let file = match opened {
                Ok((f, meta)) if check.holds(&path, &meta) => f,
                Ok(_) => {
                    let _ = tx.blocking_send(Err(refused(format!(
                        "{} changed since its hashes were given out; ask for the manifest again",
                        name()
                    ))));
                    return;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(refused(format!("{}: {e}", name()))));
                    return;
                }
            };
            let mut pos = offset;
            let end = offset + len;
            while pos < end {
                if check.ended() {
                    // Committed (soon a ready copy) or stopped: the asker keeps what
                    // it got and asks again later.
                    let _ = tx.blocking_send(Err(Stop::Cut("the partial copy ended".into())));
                    return;
                }
                let n =
                    match check.readable(i, pos, READ_SIZE.min((end - pos) as usize) as u64, &tx) {
                        Ok(n) => n as usize,
                        Err(why) => {
                            let _ = tx.blocking_send(Err(Stop::Cut(why)));
                            return;
                        }
                    };
                let res = read_piece(&file, pos, n).map_err(|e| refused(e.to_string()));
                let failed = res.is_err();
                if tx.blocking_send(res).is_err() || failed {
                    return;
                }
                pos += n as u64;
            }
        }
    });
    Pieces { rx, reader }
}

/// Writes `first` and the following pieces of one `len`-byte range to the answer.
async fn stream_range(
    answer: &mut Answer<'_>,
    first: Bytes,
    len: u64,
    pieces: &mut Pieces,
    limit: &crate::limit::RateLimit,
) -> Result<(), SendFailed> {
    let mut piece = first;
    let mut sent = 0u64;
    loop {
        sent += piece.len() as u64;
        limit.take(piece.len() as u64).await;
        answer.chunk(piece).await?;
        if sent >= len {
            return Ok(());
        }
        piece = match pieces.rx.recv().await {
            Some(Ok(p)) => p,
            // A relayed chunk's fetch here failed: the peer keeps what it got.
            Some(Err(Stop::Cut(why))) => return Err(SendFailed::Cut(why)),
            // A local failure mid-range: the peer sees the stream reset.
            Some(Err(e)) => return Err(SendFailed::Stream(format!("reading: {e}"))),
            None => return Err(SendFailed::Stream("the file reader stopped".into())),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_files_are_read_further_ahead_within_the_same_bytes() {
        let files = |lens: &[u64]| -> Vec<(PathBuf, u64, u64)> {
            lens.iter().map(|&l| (PathBuf::from("f"), 0, l)).collect()
        };
        let bytes = |f: &[(PathBuf, u64, u64)]| {
            let piece = f
                .iter()
                .map(|f| f.2)
                .max()
                .unwrap_or(0)
                .min(READ_SIZE as u64);
            read_ahead(f) as u64 * piece
        };
        // 32 KiB files: 128 of them ahead (4 MiB), not two.
        let small = files(&[32 << 10; 64]);
        assert_eq!(read_ahead(&small), 128);
        // A batch's largest file decides: 1 MiB pieces, four ahead.
        let mixed = files(&[32 << 10, MIB, 4 << 10]);
        assert_eq!(read_ahead(&mixed), 4);
        // Big files: two 2 MiB pieces, as before.
        assert_eq!(read_ahead(&files(&[32 * MIB])), 2);
        for f in [small, mixed, files(&[32 * MIB]), files(&[1]), files(&[])] {
            assert!(read_ahead(&f) >= 2);
            assert!(bytes(&f) <= READ_AHEAD.max(2 * READ_SIZE as u64), "{f:?}");
        }
    }

    #[test]
    fn a_relayed_range_is_read_as_its_pieces_are_written_and_ends_with_its_fetch() {
        let live = Arc::new(AtomicBool::new(true));
        let g = Arc::new(Growing::new(10 * MIB));
        let check = Check::Live(Some(live.clone()), vec![None, Some(g.clone())]);
        let (tx, _rx) = mpsc::channel(1);
        // A verified chunk's range: all of it at once.
        assert_eq!(check.readable(0, 0, 2 * MIB, &tx), Ok(2 * MIB));
        // Written up to 10 MiB: what is there, at most what was asked.
        assert_eq!(check.readable(1, 9 * MIB, 2 * MIB, &tx), Ok(MIB));
        assert_eq!(check.readable(1, 4 * MIB, 2 * MIB, &tx), Ok(2 * MIB));
        // Past it: waits for the next piece.
        let writer = {
            let g = g.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                g.wrote(11 * MIB);
            })
        };
        assert_eq!(check.readable(1, 10 * MIB, 2 * MIB, &tx), Ok(MIB));
        writer.join().unwrap();
        // The fetch fails, the copy ends, the asker leaves: the wait ends in an error.
        let failing = {
            let g = g.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                g.fail();
            })
        };
        assert!(check.readable(1, 11 * MIB, MIB, &tx).is_err());
        failing.join().unwrap();
        let g = Arc::new(Growing::new(0));
        let check = Check::Live(Some(live.clone()), vec![Some(g)]);
        live.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(check.readable(0, 0, MIB, &tx).is_err(), "the copy ended");
        live.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(_rx);
        assert!(check.readable(0, 0, MIB, &tx).is_err(), "nobody reads it");
    }
}
