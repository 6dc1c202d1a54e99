//! Hashing the library: a background indexer that hashes every ready root after the
//! start-up scan and after every library change, so manifest requests are answered from
//! the hash cache, and the hashing a manifest request still has to do ([`Hashing`]: the
//! build of the root, shared by the requests that come while it runs), whose progress the
//! source reports to the downloader.
//!
//! The indexer is one thread at low CPU and I/O priority (nice 10, best-effort I/O class
//! at its lowest level), one root at a time, one file at a time; it never hashes a file
//! a request hashes at the same moment (nor the reverse: `HashCache` claims files), and it
//! stops within a MiB when the daemon shuts down.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanspread_catalog::{Availability, CatalogError, GameId, GameRoot, HashProgress};
use lanspread_control::api::EventKind;
use tracing::{debug, info, warn};

use crate::builds::{Build, Built, Outcome};
use crate::state::{until_shutdown, Shared};

/// How often a source that hashes a game for a manifest request tells the asker how far
/// it is. `LANSPREAD_HASH_REPORT_MS` overrides it (tests).
pub const HASH_REPORT: Duration = Duration::from_secs(1);

/// See [`HASH_REPORT`].
pub fn hash_report() -> Duration {
    static T: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        crate::config::env_ms("LANSPREAD_HASH_REPORT_MS", HASH_REPORT)
            .max(Duration::from_millis(10))
    })
}

/// A root's manifest being built on a blocking thread (hashing what is not cached), or
/// the build of it already running (`crate::builds::Builds`). Once every request waiting for it is
/// gone before it ends, it stops within a MiB; so does a daemon that shuts down.
pub struct Hashing {
    /// Held: the last request gone stops the build.
    _build: Arc<Build>,
    outcome: tokio::sync::watch::Receiver<Outcome>,
    dir: PathBuf,
    shared: Arc<Shared>,
}

impl Hashing {
    /// Starts building the manifest of `root` and its `Files` frame, or joins the build
    /// running.
    pub fn start(shared: &Arc<Shared>, root: GameRoot) -> Self {
        let dir = root.dir.clone();
        let build = shared
            .net
            .manifest_builds
            .join_or_start(root, |root, tx, stop| {
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || {
                    let go_on = || !stop.load(Ordering::Relaxed) && !*shared.shutdown.borrow();
                    let built = build_manifest(&shared, &root, &go_on);
                    let _ = tx.send(Some(built));
                });
            });
        Self {
            outcome: build.outcome(),
            _build: build,
            dir,
            shared: shared.clone(),
        }
    }

    /// The manifest's frame, or `None` after `wait` passed without it.
    pub async fn within(&mut self, wait: Duration) -> Option<Result<Built, String>> {
        let ended = tokio::time::timeout(wait, self.outcome.wait_for(Option::is_some))
            .await
            .ok()?;
        Some(match ended {
            Ok(outcome) => outcome
                .clone()
                .unwrap_or_else(|| Err("hashing ended with nothing".into())),
            // The build's thread went without an outcome (it panicked).
            Err(_) => Err("hashing task failed".into()),
        })
    }

    /// How far the hashing of the root is (`None`: nobody hashes it now).
    pub fn progress(&self) -> Option<HashProgress> {
        self.shared.net.hashes.progress(&self.dir)
    }
}

/// Builds the manifest of `root` and its shared frame (on a blocking thread).
fn build_manifest(
    shared: &Shared,
    root: &GameRoot,
    go_on: &dyn Fn() -> bool,
) -> Result<Built, String> {
    let indexed = shared
        .net
        .hashes
        .manifest_with(root, go_on)
        .map_err(|e| e.to_string())?;
    // (Digest and encoding of megabytes: here, off the runtime's threads.)
    let frame = shared
        .net
        .manifest_frames
        .frame(indexed.manifest)
        .map_err(|e| format!("manifest not sent: {e}"))?;
    Ok(Built {
        frame,
        hashed: indexed.hashed,
    })
}

/// Starts the background indexer: it looks at the library at once (after
/// `LANSPREAD_INDEX_DELAY_MS`, 0 by default: tests that want a source to hash on request
/// delay it) and again after every library change, until shutdown.
pub fn spawn(shared: &Arc<Shared>) -> tokio::task::JoinHandle<()> {
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut shutdown = shared.shutdown.subscribe();
        let mut changed = shared.library_changed.subscribe();
        let delay = crate::config::env_ms("LANSPREAD_INDEX_DELAY_MS", Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = until_shutdown(&mut shutdown) => return,
        }
        let (wake, woken) = mpsc::channel::<()>();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("lanspread-index".into())
                .spawn(move || index_thread(&shared, &woken))
        };
        if let Err(e) = thread {
            return warn!("no background indexing: cannot start its thread: {e}");
        }
        loop {
            if wake.send(()).is_err() {
                return;
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                () = until_shutdown(&mut shutdown) => return,
            }
        }
    })
}

fn index_thread(shared: &Shared, woken: &mpsc::Receiver<()>) {
    lower_priority();
    let stopping = || *shared.shutdown.borrow();
    while woken.recv().is_ok() {
        // Several changes while it worked: one more look is enough.
        while woken.try_recv().is_ok() {}
        for id in ready_roots(shared) {
            if stopping() {
                return;
            }
            let Some(root) = still_ready(shared, &id) else {
                continue;
            };
            let began = Instant::now();
            // An operation that starts on the root meanwhile (a download replacing it)
            // stops it: its files are no longer the ones to hash.
            let go_on = || !stopping() && shared.lock().operations.get(&root.id).is_none();
            match shared.net.hashes.manifest_with(&root, &go_on) {
                Ok(indexed) if indexed.hashed > 0 => {
                    let duration_ms = began.elapsed().as_millis() as u64;
                    info!(game = %root.id, hashed = indexed.hashed, duration_ms, "indexed");
                    if let Some(version) = root.version {
                        shared.events.emit(EventKind::LocalGameIndexed {
                            game_id: root.id.clone(),
                            version,
                            bytes: root.size(),
                            hashed_bytes: indexed.hashed,
                            duration_ms,
                        });
                    }
                }
                Ok(_) => {}
                Err(CatalogError::Stopped) if stopping() => return,
                Err(CatalogError::Stopped) => {
                    debug!(game = %root.id, "indexing stopped: an operation began")
                }
                // A file changed under it: the rescan that follows wakes the indexer again.
                Err(e) => debug!(game = %root.id, "not indexed: {e}"),
            }
        }
    }
}

/// The games peers may ask for now: ready, no operation on them (ids only: the state
/// lock is not held for copying every file list).
fn ready_roots(shared: &Shared) -> Vec<GameId> {
    let inner = shared.lock();
    inner
        .library
        .values()
        .filter(|r| r.availability() == Availability::Ready)
        .filter(|r| inner.operations.get(&r.id).is_none())
        .map(|r| r.id.clone())
        .collect()
}

/// The root of `id` when it is still ready with no operation on it.
fn still_ready(shared: &Shared, id: &GameId) -> Option<GameRoot> {
    let inner = shared.lock();
    let root = inner.library.get(id)?;
    (root.availability() == Availability::Ready && inner.operations.get(id).is_none())
        .then(|| root.clone())
}

/// Nice 10 and the lowest best-effort I/O priority for the calling thread: indexing
/// yields to serving and downloading.
fn lower_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_int = 1;
    const IOPRIO_CLASS_BE: libc::c_int = 2;
    const IOPRIO_CLASS_SHIFT: libc::c_int = 13;
    // SAFETY: plain syscalls about the calling thread, with no pointers.
    let (nice, io) = unsafe {
        let tid = libc::gettid();
        (
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10),
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                tid,
                (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | 7,
            ),
        )
    };
    if nice != 0 || io != 0 {
        debug!("indexer priority not lowered (nice {nice}, ioprio {io})");
    }
}
