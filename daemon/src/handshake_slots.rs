//! The daemon's side of `lanspread_peer::Handshakes`: a slot per inbound connection, held
//! from its arrival until its hello was judged, within [`HANDSHAKE_LIMIT`]; connections
//! turned away are counted and reported at most once per [`REPORT_EVERY`] (the count of
//! a last batch shows in the next report).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanspread_peer::{Admit, Crowded, Handshakes};
use tracing::warn;

use crate::handshake::HELLO_TIMEOUT;

/// How long an inbound connection may hold its slot: QUIC's handshake, then the hello
/// exchange. Past it the connection is closed, so no slot is held longer, whatever the
/// peer does (a QUIC handshake kept alive, streams never granted).
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(HELLO_TIMEOUT.as_secs() + 5);

/// How often turned-away connections are reported in the log, at most.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The inbound handshakes in progress.
#[derive(Clone)]
pub struct HandshakeSlots {
    state: Arc<Mutex<State>>,
}

struct State {
    counts: Handshakes,
    /// Turned away since the last report.
    turned: u64,
    last_report: Option<Instant>,
}

/// One inbound handshake, counted until dropped.
struct HandshakeSlot {
    slots: HandshakeSlots,
    ip: IpAddr,
}

/// An admitted inbound connection: its slot and when its handshake must be done.
pub struct Admitted {
    _slot: HandshakeSlot,
    /// The deadline of the QUIC handshake and hello exchange together.
    pub until: tokio::time::Instant,
}

impl Admitted {
    /// `slot`'s handshake, due within [`HANDSHAKE_LIMIT`] from now.
    fn new(slot: HandshakeSlot) -> Self {
        Self {
            _slot: slot,
            until: tokio::time::Instant::now() + HANDSHAKE_LIMIT,
        }
    }

    /// Runs `phase` (a hello exchange on `conn`) by the deadline of `admitted`, or within
    /// `HELLO_TIMEOUT` for a connection we dialled (`None`: its QUIC handshake is done):
    /// a peer that grants no stream or no window cannot hold either side. `None` once the
    /// deadline passed: `conn` is closed then, as a peer that sent no hello in time.
    pub async fn within<R>(
        admitted: Option<&Admitted>,
        conn: &quinn::Connection,
        phase: impl std::future::Future<Output = R>,
    ) -> Option<R> {
        let until =
            admitted.map_or_else(|| tokio::time::Instant::now() + HELLO_TIMEOUT, |a| a.until);
        match tokio::time::timeout_at(until, phase).await {
            Ok(r) => Some(r),
            Err(_) => {
                crate::handshake::close(
                    conn,
                    &lanspread_proto::Refusal::protocol("no hello in time"),
                );
                None
            }
        }
    }
}

/// What to do with a connection that gets no slot (quinn's `Incoming`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// Ask it to prove its address (`Incoming::retry`).
    Retry,
    /// Its address has all it may: refuse it (`Incoming::refuse`).
    Refuse,
    /// Everyone has all they may: drop its packet, its client sends it again
    /// (`Incoming::ignore`).
    Ignore,
}

impl HandshakeSlots {
    /// Slots within `counts`' caps.
    pub fn new(counts: Handshakes) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                counts,
                turned: 0,
                last_report: None,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection from `ip` (`proven`: its address is validated), or what
    /// to do with it instead.
    pub fn admit(&self, ip: IpAddr, proven: bool) -> Result<Admitted, Turned> {
        let (crowded, report) = {
            let mut s = self.state();
            let crowded = match s.counts.begin(ip, proven) {
                Admit::Counted => {
                    return Ok(Admitted::new(HandshakeSlot {
                        slots: self.clone(),
                        ip,
                    }))
                }
                Admit::Retry => return Err(Turned::Retry),
                Admit::Crowded(c) => c,
            };
            s.turned += 1;
            let now = Instant::now();
            let due = s
                .last_report
                .is_none_or(|t| now.duration_since(t) >= REPORT_EVERY);
            let report = due.then(|| {
                s.last_report = Some(now);
                std::mem::take(&mut s.turned)
            });
            (crowded, report)
        };
        // Logged without the lock: a slow log sink holds up no handshake.
        if let Some(turned) = report {
            warn!(%ip, turned, "turning inbound connections away: {crowded}");
        }
        Err(match crowded {
            Crowded::Address(_) => Turned::Refuse,
            Crowded::All(_) => Turned::Ignore,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.slots.state().counts.end(self.ip);
    }
}
