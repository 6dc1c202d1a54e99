//! Fetching one chunk from one source: request it on a fresh bidirectional stream, hash
//! the bytes as they arrive (no second pass) while handing them to the io_uring writer in
//! pool buffers, and check the hash at the end.

use lanspread_catalog::{ChunkHash, GameId, RelPath, Version};
use lanspread_peer::FailKind;
use lanspread_transfer::{read_frame, write_frame, PeerRequest, PeerResponse};
use quinn::Connection;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::writer::Writer;
use crate::limit::RateLimit;

/// How a chunk fetch failed.
#[derive(Debug)]
pub enum FetchError {
    /// The source failed (gone, refused, bad bytes): the planner decides.
    Source(FailKind, String),
    /// Writing locally failed (e.g. disk full): the download fails.
    Local(String),
}

/// What to fetch.
pub struct ChunkJob {
    /// Game.
    pub game: GameId,
    /// Version.
    pub version: Version,
    /// File path in the source root.
    pub path: RelPath,
    /// Writer handle of the local file.
    pub file: u64,
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Expected SHA-256.
    pub hash: ChunkHash,
}

/// Longest wait for the next bytes of a chunk (or its answer) before the source is
/// treated as gone. Generous: with several chunks in flight on a slow link one stream may
/// wait while others drain. `LANSPREAD_STALL_TIMEOUT_MS` overrides it (tests, tuning).
pub const CHUNK_STALL_TIMEOUT: Duration = Duration::from_secs(30);

fn stall_timeout() -> Duration {
    static T: OnceLock<Duration> = OnceLock::new();
    *T.get_or_init(|| {
        std::env::var("LANSPREAD_STALL_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(CHUNK_STALL_TIMEOUT, Duration::from_millis)
    })
}

/// The stall watchdog of one chunk: a single timer, re-armed only when it fires (never
/// per read), so the hot path pays an `Instant::now()` per read and no timer updates.
struct Stall {
    limit: Duration,
    last: Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Stall {
    fn new() -> Self {
        let limit = stall_timeout();
        Self {
            limit,
            last: Instant::now(),
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }

    /// Runs `f` to its end, failing with "stalled" (and dropping `f`, whose stream is then
    /// abandoned) when the source sent nothing for the stall timeout.
    async fn guard<T>(&mut self, f: impl Future<Output = T>) -> Result<T, FetchError> {
        tokio::pin!(f);
        loop {
            tokio::select! {
                out = &mut f => {
                    self.last = Instant::now();
                    return Ok(out);
                }
                () = &mut self.timer => {
                    if self.last.elapsed() >= self.limit {
                        return Err(gone(format!(
                            "source stalled: nothing for {} ms",
                            self.limit.as_millis()
                        )));
                    }
                    let due = self.last + self.limit;
                    self.timer.as_mut().reset(due.into());
                }
            }
        }
    }
}

fn gone(e: impl std::fmt::Display) -> FetchError {
    FetchError::Source(FailKind::SourceGone, e.to_string())
}

/// Fetches a chunk into its file.
pub async fn fetch(
    conn: &Connection,
    writer: &Writer,
    limit: Option<&RateLimit>,
    job: &ChunkJob,
) -> Result<(), FetchError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(gone)?;
    let request = PeerRequest::Chunk {
        game: job.game.clone(),
        version: job.version,
        path: job.path.clone(),
        offset: job.offset,
        len: job.len,
    };
    write_frame(&mut send, &request).await.map_err(gone)?;
    let _ = send.finish();
    let mut stall = Stall::new();
    match stall
        .guard(read_frame::<_, PeerResponse>(&mut recv))
        .await?
    {
        Ok(Some(PeerResponse::Chunk { len })) if len == job.len => {}
        Ok(Some(PeerResponse::Refused { reason })) => {
            return Err(gone(format!("refused: {reason}")))
        }
        Ok(Some(other)) => {
            return Err(FetchError::Source(
                FailKind::BadData,
                format!("unexpected answer {other:?}"),
            ));
        }
        Ok(None) => return Err(gone("stream ended before the answer")),
        Err(e) => return Err(gone(e)),
    }
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let mut writes = Vec::new();
    let mut buf = None;
    let mut buf_start = job.offset;
    while got < job.len {
        let b = match &mut buf {
            Some(b) => b,
            None => buf.insert(
                writer
                    .buffer()
                    .await
                    .map_err(|e| FetchError::Local(e.to_string()))?,
            ),
        };
        let want = (job.len - got).min(b.room() as u64) as usize;
        let piece = match stall.guard(recv.read_chunk(want, true)).await? {
            Ok(Some(c)) => c.bytes,
            Ok(None) => {
                return Err(gone(format!(
                    "stream ended after {got} of {} bytes",
                    job.len
                )))
            }
            Err(e) => return Err(gone(e)),
        };
        crate::limit::take(limit, piece.len() as u64).await;
        hasher.update(&piece);
        b.extend(&piece);
        got += piece.len() as u64;
        if let Some(full) = buf.take_if(|b| b.room() == 0 || got == job.len) {
            let len = full.filled() as u64;
            let rx = writer
                .write(job.file, buf_start, full)
                .await
                .map_err(|e| FetchError::Local(e.to_string()))?;
            writes.push(rx);
            buf_start += len;
        }
    }
    // A source that sends more than it announced is lying.
    match stall.guard(recv.read_chunk(1, true)).await? {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(FetchError::Source(
                FailKind::BadData,
                "more bytes than announced".into(),
            ))
        }
        Err(e) => return Err(gone(e)),
    }
    let digest: ChunkHash = hasher.finalize().into();
    for rx in writes {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(FetchError::Local(format!("writing {}: {e}", job.path))),
            Err(_) => return Err(FetchError::Local("the io_uring writer stopped".into())),
        }
    }
    if digest != job.hash {
        return Err(FetchError::Source(
            FailKind::BadData,
            format!("{} at {}: SHA-256 mismatch", job.path, job.offset),
        ));
    }
    Ok(())
}
