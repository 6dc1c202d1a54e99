//! The event bus: every event goes to the events file (if any) synchronously, in order,
//! from the very first one, and to every `events` subscriber.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::api::{Event, EventKind};
use crate::DaemonError;

enum Sink {
    None,
    Stdout,
    File(File),
}

/// Fan-out of events.
#[derive(Clone)]
pub struct EventBus {
    sink: Arc<Mutex<Sink>>,
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    /// A bus writing to `path` (`-` for stdout) when given.
    pub fn new(path: Option<&Path>) -> Result<Self, DaemonError> {
        let sink = match path {
            None => Sink::None,
            Some(p) if p == Path::new("-") => Sink::Stdout,
            Some(p) => Sink::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| DaemonError::io(p, e))?,
            ),
        };
        let (tx, _) = broadcast::channel(8192);
        Ok(Self {
            sink: Arc::new(Mutex::new(sink)),
            tx,
        })
    }

    /// Records an event and returns it.
    pub fn emit(&self, kind: EventKind) -> Event {
        let event = Event {
            ts_ms: now_ms(),
            kind,
        };
        match serde_json::to_string(&event) {
            Ok(mut line) => {
                // One write per line, so a reader tailing the file never sees half of one.
                line.push('\n');
                let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
                let res = match &mut *sink {
                    Sink::None => Ok(()),
                    Sink::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
                    Sink::File(f) => f.write_all(line.as_bytes()),
                };
                if let Err(e) = res {
                    tracing::warn!("cannot write event: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot encode event: {e}"),
        }
        // No subscriber is not an error.
        let _ = self.tx.send(event.clone());
        event
    }

    /// A new subscriber; sees events emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
