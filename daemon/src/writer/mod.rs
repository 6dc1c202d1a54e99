//! The io_uring writer: one thread running a tokio-uring runtime that creates and
//! preallocates files, writes buffers at their offsets (through the ring, or with `pwrite`
//! on the thread itself when small and on tmpfs: `INLINE_WRITE`; starting the kernel's
//! writeback every `WRITEBACK_EVERY` bytes of a file) and syncs, fed by a bounded channel.
//! Buffers come from a fixed pool, so a download never holds more than the pool in
//! memory, whatever the chunk or file size; files are held open by a bounded descriptor
//! cache ([`files`]), so it never holds more than a share of the open-files limit either,
//! whatever the number of files.

mod files;

use std::cell::RefCell;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use files::{Files, OpenCount, OpenFile};

/// Size of one pool buffer.
pub const BUF_SIZE: usize = 1 << 20;
/// Buffers in the pool (the most download data held in memory at once).
pub const POOL_BUFFERS: usize = 48;

/// A pool buffer; returns to the pool when dropped.
pub struct PoolBuf {
    vec: Option<Vec<u8>>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl PoolBuf {
    /// The bytes filled so far.
    pub fn filled(&self) -> usize {
        self.vec.as_ref().map_or(0, Vec::len)
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
        path: PathBuf,
        size: u64,
        reply: oneshot::Sender<io::Result<u64>>,
    },
    Write {
        file: u64,
        offset: u64,
        buf: PoolBuf,
        reply: oneshot::Sender<io::Result<()>>,
    },
    Sync {
        file: u64,
        reply: oneshot::Sender<io::Result<()>>,
    },
    Close {
        file: u64,
    },
}

/// Handle to the writer thread (started on first use).
pub struct Writer {
    pool: Arc<Pool>,
    tx: OnceLock<mpsc::Sender<Job>>,
    /// Files held open at most (`None`: from the open-files limit, see
    /// [`files::cap_for_limit`]).
    cap: Option<usize>,
    open: Arc<OpenCount>,
    /// Syncs in flight: each holds its file open, so this bounds the files open beyond
    /// the cache's cap (with the pool, which bounds the writes).
    syncs: Semaphore,
}

/// Syncs run at once (the io_uring writer runs them concurrently).
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

    /// A writer holding at most `cap` files open (`None`: from the open-files limit).
    fn with_cap(cap: Option<usize>) -> Self {
        Self {
            pool: Arc::new(Pool {
                sem: Arc::new(Semaphore::new(POOL_BUFFERS)),
                bufs: Mutex::new(Vec::new()),
            }),
            tx: OnceLock::new(),
            cap,
            open: Arc::default(),
            syncs: Semaphore::new(SYNCS_IN_FLIGHT),
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
        // The limit as the daemon left it (raised at its start), read when the first
        // file is opened.
        let cap = self.cap.unwrap_or_else(files::cap_for_limit);
        let count = self.open.clone();
        std::thread::Builder::new()
            .name("lanspread-uring".into())
            .spawn(move || tokio_uring::start(run(rx, cap, count)))?;
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

    /// Creates `path` (parents must exist), preallocates it to `size` bytes and returns a
    /// file handle for writes.
    pub async fn open(&self, path: PathBuf, size: u64) -> io::Result<u64> {
        self.call(|reply| Job::Open { path, size, reply }).await
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
        let _turn = self.syncs.acquire().await.map_err(|_| gone())?;
        self.call(|reply| Job::Sync { file, reply }).await
    }

    /// Closes a file handle.
    pub async fn close(&self, file: u64) {
        if let Ok(tx) = self.sender() {
            let _ = tx.send(Job::Close { file }).await;
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, cap: usize, count: Arc<OpenCount>) {
    let files = Rc::new(RefCell::new(Files::new(cap, count.clone())));
    let mut next_id = 0u64;
    while let Some(job) = rx.recv().await {
        match job {
            Job::Open { path, size, reply } => {
                next_id += 1;
                let id = next_id;
                let (files, count) = (files.clone(), count.clone());
                tokio_uring::spawn(async move {
                    let res = files::create(path, size, count).await.map(|f| {
                        files.borrow_mut().insert(id, f);
                        id
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
                if buf.filled() <= INLINE_WRITE && f.inline {
                    let res = write_inline(&f, &buf, offset);
                    drop((f, buf));
                    let _ = reply.send(res);
                    continue;
                }
                tokio_uring::spawn(async move {
                    let res = match buf.vec.take() {
                        Some(v) => {
                            let len = v.len() as u64;
                            let (res, v) = f.ring.write_all_at(v, offset).await;
                            buf.vec = Some(v);
                            if res.is_ok() {
                                f.written(len);
                            }
                            res
                        }
                        None => Err(io::Error::other("a pool buffer without its memory")),
                    };
                    drop((f, buf));
                    let _ = reply.send(res);
                });
            }
            Job::Sync { file, reply } => {
                // A file the cache closed and reopened is synced through its new
                // descriptor: fdatasync flushes the inode's dirty pages whichever
                // descriptor wrote them, and a writeback error no one has seen yet is
                // reported to a descriptor opened after it (Linux ≥ 4.16).
                let f = files.borrow_mut().get(file);
                tokio_uring::spawn(async move {
                    let res = match f {
                        Ok(f) => f.ring.sync_data().await,
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(res);
                });
            }
            Job::Close { file } => {
                // Dropping the last handle closes the descriptors.
                files.borrow_mut().remove(file);
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
fn write_inline(f: &Rc<OpenFile>, buf: &PoolBuf, offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let bytes = buf.vec.as_deref().unwrap_or_default();
    f.kick.write_all_at(bytes, offset)?;
    f.written(bytes.len() as u64);
    Ok(())
}

#[cfg(test)]
mod tests;
