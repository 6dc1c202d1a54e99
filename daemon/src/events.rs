//! The event bus: every event goes to the events file (if any), in order, from the very
//! first one, and to every `events` subscriber.
//!
//! Writing events never blocks the daemon. A regular file is written at emit time (one
//! write per line; a disk write always completes). Anything else — `-` (stdout), a FIFO, a
//! socket, a terminal — may have a reader that stopped reading, so its lines go through a
//! bounded queue to a thread of their own, which also opens the path (opening a FIFO
//! waits for a reader). When the queue is full, lines are dropped and counted: the
//! count is in `status` (`events_dropped`), logged, and written to the sink as an
//! `events-dropped` line once it moves again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::DaemonError;
use lanspread_control::api::{Event, EventKind};

/// Lines a stuck reader may have queued before lines are dropped.
const QUEUE_LINES: usize = 1024;

enum Sink {
    None,
    /// A regular file, written at emit time.
    File(File),
    /// A pipe, FIFO, socket or terminal, written by its own thread, which says on `done`
    /// when it has written everything queued.
    Queue(SyncSender<String>, Receiver<()>),
}

/// Fan-out of events.
#[derive(Clone)]
pub struct EventBus {
    sink: Arc<Mutex<Sink>>,
    dropped: Arc<AtomicU64>,
    tx: broadcast::Sender<Event>,
    /// Counts what the events say happened (set once, by the daemon's start).
    metrics: Arc<std::sync::OnceLock<Arc<crate::metrics::Metrics>>>,
}

impl EventBus {
    /// A bus writing to `path` (`-` for stdout) when given.
    pub fn new(path: Option<&Path>) -> Result<Self, DaemonError> {
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = match path {
            None => Sink::None,
            // Standard output redirected to a regular file is written like one.
            Some(p) if p == Path::new("-") => match stdout_file() {
                Some(f) => Sink::File(f),
                None => queue(Target::Stdout, dropped.clone())?,
            },
            Some(p) => match std::fs::metadata(p) {
                Ok(m) if m.is_dir() => {
                    return Err(DaemonError::Config(format!(
                        "--events {}: is a directory (a file, a FIFO or - is expected)",
                        p.display()
                    )))
                }
                Ok(m) if !m.is_file() => queue(Target::Path(p.to_path_buf()), dropped.clone())?,
                _ => Sink::File(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| DaemonError::io(p, e))?,
                ),
            },
        };
        let (tx, _) = broadcast::channel(8192);
        Ok(Self {
            sink: Arc::new(Mutex::new(sink)),
            dropped,
            tx,
            metrics: Arc::default(),
        })
    }

    /// Has `metrics` count every event from now on (once; later calls are ignored).
    pub fn observe(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Records an event and returns it.
    pub fn emit(&self, kind: EventKind) -> Event {
        if let Some(m) = self.metrics.get() {
            m.observe(&kind);
        }
        let event = Event {
            ts_ms: now_ms(),
            kind,
        };
        match serde_json::to_string(&event) {
            Ok(mut line) => {
                // One write per line, so a reader tailing the file never sees half of one.
                line.push('\n');
                let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
                match &mut *sink {
                    Sink::None => {}
                    Sink::File(f) => {
                        if let Err(e) = f.write_all(line.as_bytes()) {
                            tracing::warn!("cannot write event: {e}");
                        }
                    }
                    Sink::Queue(q, _) => match q.try_send(line) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                                tracing::warn!("the events reader is not reading: dropping events (counted in `status`)");
                            }
                        }
                        // The writer thread ended (its sink failed and said why).
                        Err(TrySendError::Disconnected(_)) => {
                            self.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    },
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

    /// Closes the sink; a queued sink gets up to `within` to write what it holds (a
    /// stuck reader does not hold up the exit longer).
    pub fn close(&self, within: Duration) {
        let done = {
            let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
            match std::mem::replace(&mut *sink, Sink::None) {
                // Dropping the sender ends the writer's loop once the queue is empty.
                Sink::Queue(_tx, done) => done,
                // A file (or nothing) stays: later events still reach it.
                other => {
                    *sink = other;
                    return;
                }
            }
        };
        let _ = done.recv_timeout(within);
    }

    /// Event lines dropped because the events sink's reader did not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Standard output as a file of its own, when it is a regular file.
fn stdout_file() -> Option<File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    let file = File::from(fd);
    file.metadata().ok()?.is_file().then_some(file)
}

enum Target {
    Stdout,
    Path(PathBuf),
}

/// Starts the writer thread of a queued sink.
fn queue(target: Target, dropped: Arc<AtomicU64>) -> Result<Sink, DaemonError> {
    let (tx, rx) = sync_channel::<String>(QUEUE_LINES);
    let (done_tx, done) = sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("lanspread-events".into())
        .spawn(move || {
            // Dropped on every way out, which tells `close` the thread is done.
            let _done = done_tx;
            let mut out: Box<dyn Write> = match target {
                Target::Stdout => Box::new(std::io::stdout()),
                Target::Path(p) => match OpenOptions::new().append(true).open(&p) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        tracing::warn!(path = %p.display(), "cannot open the events sink: {e}");
                        return;
                    }
                },
            };
            let mut reported = 0;
            for line in rx {
                let now = dropped.load(Ordering::Relaxed);
                let mut text = String::new();
                if now > reported {
                    // Say so in the stream itself, before the next line that got through.
                    text = format!(
                        "{}\n",
                        serde_json::json!({"ts_ms": now_ms(), "event": "events-dropped", "count": now - reported})
                    );
                    tracing::warn!(count = now - reported, "events dropped for a slow reader");
                    reported = now;
                }
                text.push_str(&line);
                if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                    tracing::warn!("cannot write events: {e}; the events sink is closed");
                    return;
                }
            }
        })
        .map_err(|e| DaemonError::io("events writer thread", e))?;
    Ok(Sink::Queue(tx, done))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
