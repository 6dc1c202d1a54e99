//! The send half of an answer: every write watched (an answer the peer does not take is
//! reset, freeing its serve slot and what quinn holds for it), and a range's pieces
//! streamed from the file reader.

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lanspread_peer::{Blocked, Stalled, Verdict};
use lanspread_proto::{reset_code, PeerId, PeerResponse};
use lanspread_transfer::write_frame;
use quinn::{Connection, SendStream, VarInt};
use tracing::{debug, warn};

use super::read::{Pieces, Stop};
use super::Away;

/// How long a write to a peer may stay blocked before the source starts judging whether
/// the peer still takes anything (`lanspread_peer::Blocked`: the answer is reset after two
/// such windows of a silent connection, or after twenty while the peer reads only its
/// other streams). `LANSPREAD_SEND_STALL_MS` overrides it (tests, tuning).
const SEND_STALL_WINDOW: Duration = Duration::from_secs(30);

fn send_stall_window() -> Duration {
    static T: OnceLock<Duration> = OnceLock::new();
    *T.get_or_init(|| crate::config::env_ms("LANSPREAD_SEND_STALL_MS", SEND_STALL_WINDOW))
}

/// The send priority of the `n`th chunk answer on a connection (counted when its first
/// chunk byte is handed to quinn): each a step below the one before, all below the small
/// streams (requests, announcements, `Later` and refusals: 0 and up). The connection
/// schedules streams fairly, but a lower priority waits: so a connection's chunks go out
/// one after the other (each completes, is hashed and written as soon as it can), while
/// anything small overtakes them.
/// Saturates after 2³¹ answers on one connection (ties then take turns).
pub(super) fn bulk_priority(n: u32) -> i32 {
    -1 - i32::try_from(n).unwrap_or(i32::MAX).min(i32::MAX - 1)
}

/// Why an answer ended before the peer had all of it.
pub(super) enum SendFailed {
    /// The peer stopped taking it (see [`Blocked`]); the stream was reset.
    Stalled(Stalled),
    /// The stream or connection failed (the peer stopped or reset it, or went away).
    Stream(String),
    /// A relayed chunk stopped arriving here: reset with `RELAY_CUT`.
    Cut(String),
}

/// The send half of a request stream, with every write watched: an answer the peer does
/// not take is reset, freeing its serve slot and the data quinn holds for it.
pub(super) struct Answer<'a> {
    pub(super) send: SendStream,
    pub(super) conn: &'a Connection,
    /// Game bytes handed to the stream (for the metrics).
    pub(super) bytes: u64,
    /// Chunk answers on this connection so far: this one takes the next place.
    pub(super) bulk: &'a std::sync::atomic::AtomicU32,
    /// Where the time of an answer went, for the `answer ended` debug line.
    pub(super) times: Times,
}

/// Where an answer's time went (studies of a swarm's links: `answer ended`). The total
/// also holds what is not counted apart: upload pacing, the first piece of each range
/// after the first, and the wait for the peer's acknowledgements at the end.
pub(super) struct Times {
    /// When the request arrived.
    pub(super) began: Instant,
    /// When its first game byte was handed to the stream.
    pub(super) first_byte: Option<Instant>,
    /// Waiting for the file reader (for a relay: for the chunk to arrive here).
    pub(super) reader: Duration,
    /// Waiting for the stream to take bytes (congestion and flow control).
    pub(super) send: Duration,
    /// The first range's file offset.
    pub(super) offset: u64,
}

impl Times {
    pub(super) fn new() -> Self {
        Self {
            began: Instant::now(),
            first_byte: None,
            reader: Duration::ZERO,
            send: Duration::ZERO,
            offset: 0,
        }
    }
}

impl Answer<'_> {
    pub(super) async fn frame(&mut self, msg: &PeerResponse) -> Result<(), SendFailed> {
        let conn = self.conn;
        watched(conn, write_frame(&mut self.send, msg)).await?;
        Ok(())
    }

    /// Sends a frame encoded already (length prefix included), without copying it.
    pub(super) async fn encoded(&mut self, frame: Bytes) -> Result<(), SendFailed> {
        let conn = self.conn;
        watched(conn, self.send.write_chunk(frame)).await?;
        Ok(())
    }

    pub(super) async fn chunk(&mut self, piece: Bytes) -> Result<(), SendFailed> {
        let n = piece.len() as u64;
        let conn = self.conn;
        let at = Instant::now();
        if self.times.first_byte.is_none() {
            let place = self.bulk.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = self.send.set_priority(bulk_priority(place));
        }
        self.times.first_byte.get_or_insert(at);
        watched(conn, self.send.write_chunk(piece)).await?;
        self.times.send += at.elapsed();
        self.bytes += n;
        Ok(())
    }

    /// Ends the answer and waits until the peer has acknowledged all of it (or stopped
    /// the stream): the serve slot is held until then, and an answer the peer never
    /// takes is reset rather than kept in quinn's send buffer.
    pub(super) async fn finish(&mut self) -> Result<(), SendFailed> {
        self.send
            .finish()
            .map_err(|e| SendFailed::Stream(e.to_string()))?;
        watched(self.conn, self.send.stopped()).await?;
        Ok(())
    }

    /// Answers `Later` (busy, or nothing free now) and ends the answer.
    pub(super) async fn later(&mut self) -> Result<(), SendFailed> {
        self.frame(&PeerResponse::Later).await?;
        self.finish().await
    }

    /// Answers a swarm request that got no turn: `Later`, or `Refused` with why.
    pub(super) async fn away(&mut self, away: Away) -> Result<(), SendFailed> {
        match away {
            Away::Later => self.later().await,
            Away::TooBig(why) => self.refuse(why).await,
        }
    }

    /// Answers `Refused` and ends the answer.
    pub(super) async fn refuse(&mut self, reason: String) -> Result<(), SendFailed> {
        self.frame(&PeerResponse::Refused { reason }).await?;
        self.finish().await
    }

    /// Resets the stream of an answer that failed and says why.
    pub(super) fn ended(&mut self, sent: Result<(), SendFailed>, remote: &PeerId) {
        if self.bytes > 0 && tracing::enabled!(tracing::Level::DEBUG) {
            // For studies of a swarm's links (`LANSPREAD_LOG=lanspread_daemon=debug`).
            let path = self.conn.stats().path;
            let t = &self.times;
            let ms = |d: Duration| d.as_millis() as u64;
            debug!(
                peer = %remote.short(),
                bytes = self.bytes,
                offset = t.offset,
                total_ms = ms(t.began.elapsed()),
                first_byte_ms = t.first_byte.map_or(0, |f| ms(f - t.began)),
                reader_ms = ms(t.reader),
                send_ms = ms(t.send),
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
pub(super) async fn watched<T, E: std::fmt::Display>(
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

/// Writes `first` and the following pieces of one `len`-byte range to the answer.
pub(super) async fn stream_range(
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
        let at = Instant::now();
        let next = pieces.rx.recv().await;
        answer.times.reader += at.elapsed();
        piece = match next {
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
    use super::bulk_priority;

    #[test]
    fn chunk_answers_go_in_order_below_small_streams() {
        assert_eq!(bulk_priority(0), -1);
        assert!(bulk_priority(0) < 0 && 0 < lanspread_transfer::CONTROL_PRIORITY);
        assert!((0..1000).all(|n| bulk_priority(n + 1) < bulk_priority(n)));
        assert_eq!(bulk_priority(u32::MAX), i32::MIN + 1);
        assert_eq!(bulk_priority(i32::MAX as u32), i32::MIN + 1);
    }
}
