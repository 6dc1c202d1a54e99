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
}

impl Answer<'_> {
    pub(super) async fn frame(&mut self, msg: &PeerResponse) -> Result<(), SendFailed> {
        let conn = self.conn;
        watched(conn, write_frame(&mut self.send, msg)).await?;
        Ok(())
    }

    pub(super) async fn chunk(&mut self, piece: Bytes) -> Result<(), SendFailed> {
        let n = piece.len() as u64;
        let conn = self.conn;
        watched(conn, self.send.write_chunk(piece)).await?;
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
