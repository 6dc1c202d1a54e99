//! Serving peers: manifests and chunks on request streams, behind the serve gates (S12).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lanspread_catalog::GameRoot;
use lanspread_peer::{gate_chunk, gate_files, PeerError};
use lanspread_proto::{ChunkRange, PeerId, PeerRequest, PeerResponse, Refusal};
use lanspread_transfer::read_frame_within;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tracing::{debug, warn, Instrument};

mod answer;
mod read;

use answer::{stream_range, Answer, SendFailed};
use read::{read_ranges, Check, Stop};

use crate::index;
use crate::seed::Choice;
use crate::state::Shared;

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

/// Accepts request streams on a connection until it closes; returns how many came.
pub async fn serve_requests(shared: Arc<Shared>, conn: Connection, remote: PeerId) -> u64 {
    let mut requests = 0;
    let slots = Arc::new(ConnSlots {
        chunks: tokio::sync::Semaphore::new(CHUNK_STREAMS_PER_CONNECTION),
        bulk: std::sync::atomic::AtomicU32::new(0),
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
        times: answer::Times::new(),
        bulk: &slots.bulk,
    };
    let request = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_frame_within::<_, PeerRequest>(&mut recv, lanspread_proto::MAX_REQUEST_LEN),
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
    /// Chunk answers begun on this connection (their send order: `answer::bulk_priority`).
    bulk: std::sync::atomic::AtomicU32,
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
    /// The request asks for more than one unit's bytes (8 MiB): refuse it.
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
/// sends at most one unit's bytes (8 MiB): more would let one peer hold a turn for gigabytes.
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
    // The peer's lengths, summed without wrapping: a sum that wrapped passed the cap,
    // and the gates then served every range before the huge one (one turn carrying
    // up to 255 units).
    if ChunkRange::total(ranges).is_none_or(|b| b > lanspread_proto::UNIT_SIZE) {
        return Err(Away::TooBig(format!(
            "a swarm request asks for at most one unit ({} bytes), more than that",
            lanspread_proto::UNIT_SIZE
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
    answer.times.offset = served.first().map_or(0, |r| r.offset);
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
/// that lasts (the asker counts us alive and shows it). Requests for a root being built
/// share the build (`crate::builds`); it stops when every asker waiting for it is gone.
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
        Ok(built) => {
            shared.net.metrics.manifest(built.hashed == 0);
            answer.encoded(built.frame).await?;
            answer.finish().await
        }
        Err(reason) => answer.refuse(reason).await,
    }
}
