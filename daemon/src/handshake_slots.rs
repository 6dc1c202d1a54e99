//! The daemon's side of `lanspread_peer::Handshakes`: a slot per inbound connection, held
//! from its arrival until its hello passed or failed; refusals are logged at most once
//! per [`REPORT_EVERY`], with how many there were.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanspread_peer::Handshakes;
use tracing::warn;

/// How often refused connections are reported in the log, at most.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The inbound handshakes in progress.
#[derive(Clone)]
pub struct HandshakeSlots {
    state: Arc<Mutex<State>>,
}

struct State {
    counts: Handshakes,
    /// Refused since the last report.
    refused: u64,
    last_report: Option<Instant>,
}

/// One inbound handshake, counted until dropped.
pub struct HandshakeSlot {
    slots: HandshakeSlots,
    ip: IpAddr,
}

impl HandshakeSlots {
    /// Slots within `counts`' caps.
    pub fn new(counts: Handshakes) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                counts,
                refused: 0,
                last_report: None,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a connection from `ip`, or none when its address or everyone has as
    /// many handshakes in progress as they may (the connection is then refused).
    pub fn admit(&self, ip: IpAddr) -> Option<HandshakeSlot> {
        let mut s = self.state();
        match s.counts.begin(ip) {
            Ok(()) => Some(HandshakeSlot {
                slots: self.clone(),
                ip,
            }),
            Err(crowded) => {
                s.refused += 1;
                let now = Instant::now();
                if s.last_report
                    .is_none_or(|t| now.duration_since(t) >= REPORT_EVERY)
                {
                    warn!(
                        %ip,
                        refused = s.refused,
                        "refusing inbound connections: {crowded}"
                    );
                    s.refused = 0;
                    s.last_report = Some(now);
                }
                None
            }
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.slots.state().counts.end(self.ip);
    }
}
