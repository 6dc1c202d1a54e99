//! The io_uring writer: one thread running a tokio-uring runtime that creates and
//! preallocates files, writes buffers at their offsets (through the ring, or with `pwrite`
//! on the thread itself when small and on tmpfs: `INLINE_WRITE`; starting the kernel's
//! writeback every `WRITEBACK_EVERY` bytes of a file) and syncs, fed by a bounded channel.
//! Buffers come from a fixed pool, so a download never holds more than the pool in
//! memory, whatever the chunk or file size; files are held open by a bounded descriptor
//! cache ([`files`]), so it never holds more than a share of the open-files limit either,
//! whatever the number of files.

mod files;

pub use files::{final_mode, working_mode};

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

use lanspread_catalog::{GameDir, Inode};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use files::{Files, OpenCount, OpenFile};

/// Size of one pool buffer.
pub const BUF_SIZE: usize = 1 << 20;
/// Buffers in the pool (the most download data held in memory at once).
pub const POOL_BUFFERS: usize = 48;
/// The longest [`Writer::close_all`] waits for the writes still running.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A pool buffer; returns to the pool when dropped.
pub struct PoolBuf {
    vec: Option<Vec<u8>>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl PoolBuf {
    /// How many bytes are filled so far.
    pub fn filled(&self) -> usize {
        self.vec.as_ref().map_or(0, Vec::len)
    }

    /// The bytes filled so far.
    pub fn bytes(&self) -> &[u8] {
        self.vec.as_deref().unwrap_or_default()
    }

    /// Room left.
    pub fn room(&self) -> usize {
        BUF_SIZE - self.filled()
    }

    /// Appends bytes (at most `room()`).
    pub fn extend(&mut self, bytes: &[u8]) {
        if let Some(v) = &mut self.vec {
            v.extend_from_slice(bytes);
        }
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(mut v) = self.vec.take() {
            v.clear();
            self.pool
                .bufs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(v);
        }
    }
}

struct Pool {
    sem: Arc<Semaphore>,
    bufs: Mutex<Vec<Vec<u8>>>,
}

enum Job {
    Open {
        place: (Arc<GameDir>, PathBuf),
        size: u64,
        mode: u32,
        reply: oneshot::Sender<io::Result<(u64, Inode)>>,
    },
    Write {
        file: u64,
        offset: u64,
        buf: PoolBuf,
        reply: oneshot::Sender<io::Result<()>>,
    },
    Sync {
        file: u64,
        /// Held until the fdatasync ends, even when its caller gave up.
        turn: OwnedSemaphorePermit,
        reply: oneshot::Sender<io::Result<()>>,
    },
    Close {
        file: u64,
        /// Answered once the file's writes still running have ended.
        ended: oneshot::Sender<()>,
    },
}

/// Handle to the writer thread (started on first use).
pub struct Writer {
    pool: Arc<Pool>,
    tx: OnceLock<mpsc::Sender<Job>>,
    /// Files held open at most.
    cap: usize,
    open: Arc<OpenCount>,
    /// Syncs in flight: each holds its file open, so this bounds the files open beyond
    /// the cache's cap (with the pool, which bounds the writes).
    syncs: Arc<Semaphore>,
    /// Files the cache closed with writes not known synced ([`Writer::closed_dirty`]).
    closed_dirty: Arc<Mutex<HashSet<u64>>>,
    /// Submission queue entries of the ring (tokio-uring's default).
    ring_entries: u32,
}

/// Syncs run at once at most (the io_uring writer runs them concurrently).
const SYNCS_IN_FLIGHT: usize = 64;

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

fn gone() -> io::Error {
    io::Error::other("the io_uring writer thread is gone")
}

impl Writer {
    /// A writer with a full pool; the thread starts on the first job.
    pub fn new() -> Self {
        Self::with_cap(None)
    }

    /// A writer holding at most `cap` files open (`None`: from the open-files limit,
    /// see [`files::cap_for_limit`], read now: the daemon raised it at its start).
    fn with_cap(cap: Option<usize>) -> Self {
        let cap = cap.unwrap_or_else(|| {
            files::cap_for_limit(POOL_BUFFERS + SYNCS_IN_FLIGHT + files::KICKS_MAX / 2)
        });
        Self {
            pool: Arc::new(Pool {
                sem: Arc::new(Semaphore::new(POOL_BUFFERS)),
                bufs: Mutex::new(Vec::new()),
            }),
            tx: OnceLock::new(),
            cap,
            open: Arc::default(),
            syncs: Arc::new(Semaphore::new(SYNCS_IN_FLIGHT.min(cap))),
            closed_dirty: Arc::default(),
            ring_entries: 256,
        }
    }

    /// Waits for a free pool buffer.
    pub async fn buffer(&self) -> io::Result<PoolBuf> {
        let permit = self
            .pool
            .sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| gone())?;
        let vec = self
            .pool
            .bufs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE));
        Ok(PoolBuf {
            vec: Some(vec),
            pool: self.pool.clone(),
            _permit: permit,
        })
    }

    fn sender(&self) -> io::Result<&mpsc::Sender<Job>> {
        if let Some(tx) = self.tx.get() {
            return Ok(tx);
        }
        let (tx, rx) = mpsc::channel(POOL_BUFFERS * 2);
        let (cap, count, closed) = (self.cap, self.open.clone(), self.closed_dirty.clone());
        let entries = self.ring_entries;
        // The ring is made on the thread, which says whether it could be: where io_uring
        // is off (`kernel.io_uring_disabled`, a container's seccomp profile) a download
        // fails naming that, not with a writer "gone" after a panic.
        let (started, start) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("lanspread-uring".into())
            .spawn(move || {
                let rt = match tokio_uring::Runtime::new(tokio_uring::builder().entries(entries)) {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let _ = started.send(Ok(()));
                let files = Files::new(cap, count.clone(), closed);
                rt.block_on(run(rx, files, count));
            })?;
        // A moment, once per daemon: the ring's set-up.
        match start.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "io_uring is not available ({e}); lanspreadd writes downloads with \
                         it (is kernel.io_uring_disabled set, or does a seccomp profile \
                         block io_uring_setup?)"
                    ),
                ))
            }
            Err(_) => return Err(gone()),
        }
        // Another caller may have won the race; its thread serves everyone and ours ends
        // when its channel closes.
        let _ = self.tx.set(tx);
        self.tx.get().ok_or_else(gone)
    }

    async fn call<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<io::Result<T>>) -> Job,
    ) -> io::Result<T> {
        let (reply, rx) = oneshot::channel();
        self.sender()?.send(job(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Creates `rel` beneath `root` (its folders must exist) with the [`working_mode`] of
    /// `mode`, preallocates it to `size` bytes and returns a file handle for writes, with
    /// the file created (a commit checks that its path still leads there).
    pub async fn open(
        &self,
        (root, rel): (Arc<GameDir>, PathBuf),
        size: u64,
        mode: u32,
    ) -> io::Result<(u64, Inode)> {
        self.call(|reply| Job::Open {
            place: (root, rel),
            size,
            mode,
            reply,
        })
        .await
    }

    /// Whether the cache closed any of `files` with a write not known synced. An `fdatasync` through a descriptor opened later reports a writeback error
    /// no one has seen only while the kernel keeps the inode; once closed, a file whose
    /// writeback failed can be dropped from memory with its error. A `syncfs` through a
    /// folder opened before the writes reports it whatever became of the inode, so a
    /// commit adds one when this is true.
    pub fn closed_dirty(&self, files: &[u64]) -> bool {
        let closed = self.closed_dirty.lock().unwrap_or_else(|p| p.into_inner());
        !closed.is_empty() && files.iter().any(|f| closed.contains(f))
    }

    /// Queues a buffer for writing at `offset`; the receiver resolves when it is written.
    pub async fn write(
        &self,
        file: u64,
        offset: u64,
        buf: PoolBuf,
    ) -> io::Result<oneshot::Receiver<io::Result<()>>> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Job::Write {
                file,
                offset,
                buf,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        Ok(rx)
    }

    /// Flushes a file's data to disk (fdatasync).
    pub async fn sync(&self, file: u64) -> io::Result<()> {
        let turn = self
            .syncs
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| gone())?;
        self.call(|reply| Job::Sync { file, turn, reply }).await
    }

    /// Closes a file handle; returns once the writes sent to it before have ended (a
    /// write still on the ring would otherwise land whenever it does: after a next
    /// attempt's write of the same bytes, say).
    #[cfg(test)]
    pub async fn close(&self, file: u64) {
        self.close_all(&[file]).await;
    }

    /// Closes file handles, then waits for the writes sent to them before to end: all
    /// the closes go out first (one wait for a download's files, not one per file), and
    /// the wait gives up after [`CLOSE_WAIT`] (a filesystem that takes no write — a hard
    /// NFS mount gone, `fsfreeze` — must not hold the operation for good; said in the
    /// log).
    pub async fn close_all(&self, files: &[u64]) {
        let Ok(tx) = self.sender() else { return };
        let mut ends = Vec::with_capacity(files.len());
        for &file in files {
            let (ended, rx) = oneshot::channel();
            if tx.send(Job::Close { file, ended }).await.is_err() {
                break;
            }
            ends.push(rx);
        }
        let all = async {
            for rx in ends {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(CLOSE_WAIT, all).await.is_err() {
            tracing::warn!(
                "writes of closed files still running after {} s; going on without them",
                CLOSE_WAIT.as_secs()
            );
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, files: Files, count: Arc<OpenCount>) {
    let files = Rc::new(RefCell::new(files));
    // Writeback kicks running (at most `files::KICKS_MAX`).
    let kicks = Rc::new(Cell::new(0usize));
    let mut next_id = 0u64;
    while let Some(job) = rx.recv().await {
        match job {
            Job::Open {
                place,
                size,
                mode,
                reply,
            } => {
                next_id += 1;
                let id = next_id;
                let (files, count) = (files.clone(), count.clone());
                tokio_uring::spawn(async move {
                    let res = files::create(place, size, mode, count).await.map(|f| {
                        let inode = f.inode;
                        files.borrow_mut().insert(id, f);
                        (id, inode)
                    });
                    let _ = reply.send(res);
                });
            }
            Job::Write {
                file,
                offset,
                mut buf,
                reply,
            } => {
                let f = match files.borrow_mut().get(file) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        continue;
                    }
                };
                f.will_write();
                if buf.filled() <= INLINE_WRITE && f.inline {
                    let res = write_inline(&f, &buf, offset, &kicks);
                    drop((f, buf));
                    let _ = reply.send(res);
                    continue;
                }
                let kicks = kicks.clone();
                tokio_uring::spawn(async move {
                    let res = match buf.vec.take() {
                        Some(v) => {
                            let len = v.len() as u64;
                            let (res, v) = f.ring.write_all_at(v, offset).await;
                            f.write_ended();
                            buf.vec = Some(v);
                            if res.is_ok() {
                                f.written(len, &kicks);
                            }
                            res
                        }
                        None => {
                            f.write_ended();
                            Err(io::Error::other("a pool buffer without its memory"))
                        }
                    };
                    drop((f, buf));
                    let _ = reply.send(res);
                });
            }
            Job::Sync { file, turn, reply } => {
                // A file the cache closed and reopened is synced through its new
                // descriptor: fdatasync flushes the inode's dirty pages whichever
                // descriptor wrote them (its errors: see `Writer::closed_dirty`).
                let f = files.borrow_mut().get(file);
                // What it covers is taken now, in job order: writes queued after it, or
                // still running, are not.
                let covered = f.as_ref().map_or(0, |f| f.writes_ended());
                tokio_uring::spawn(async move {
                    let res = match f {
                        Ok(f) => {
                            let res = if f.needs_fsync() {
                                f.ring.sync_all().await
                            } else {
                                f.ring.sync_data().await
                            };
                            if res.is_ok() {
                                f.synced(covered);
                            }
                            res
                        }
                        Err(e) => Err(e),
                    };
                    drop(turn);
                    let _ = reply.send(res);
                });
            }
            Job::Close { file, ended } => {
                // Dropping the last handle closes the descriptors (the writes still
                // running hold theirs until they end).
                let running = files.borrow_mut().remove(file);
                tokio_uring::spawn(async move {
                    if let Some(running) = running {
                        running.wait().await;
                    }
                    let _ = ended.send(());
                });
            }
        }
    }
}

/// Writes of at most this many bytes (a small file, the last piece of a file) to a file
/// on tmpfs are done by the writer thread itself with `pwrite`: tmpfs cannot take an
/// io_uring write without blocking, so each goes to an io-wq worker — a thread hand-off
/// and two context switches per write, which cost more than copying a small buffer into
/// memory (S34: 2,000 files of 32 KiB). A tmpfs write waits for no device (only for swap,
/// under memory pressure). Other filesystems (ext4, xfs, btrfs) do buffered io_uring
/// writes inline when they can and hand off only those that would block (dirty-page
/// throttling, a journal, NFS or FUSE): those stay on the ring, where one blocked write
/// does not hold up the others.
const INLINE_WRITE: usize = 64 << 10;

/// A small write done on the writer thread ([`INLINE_WRITE`]).
fn write_inline(
    f: &Rc<OpenFile>,
    buf: &PoolBuf,
    offset: u64,
    kicks: &Rc<Cell<usize>>,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let bytes = buf.vec.as_deref().unwrap_or_default();
    let res = f.plain.write_all_at(bytes, offset);
    f.write_ended();
    res?;
    f.written(bytes.len() as u64, kicks);
    Ok(())
}

#[cfg(test)]
mod tests;
