//! The io_uring writer: one thread running a tokio-uring runtime that creates and
//! preallocates files, writes buffers at their offsets (through the ring, or with `pwrite`
//! on the thread itself when small and on tmpfs: `INLINE_WRITE`; starting the kernel's
//! writeback every `WRITEBACK_EVERY` bytes of a file) and syncs, fed by a bounded channel.
//! Buffers come from a fixed pool, so a download never holds more than the pool in
//! memory, whatever the chunk or file size.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

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
}

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
        Self {
            pool: Arc::new(Pool {
                sem: Arc::new(Semaphore::new(POOL_BUFFERS)),
                bufs: Mutex::new(Vec::new()),
            }),
            tx: OnceLock::new(),
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
        std::thread::Builder::new()
            .name("lanspread-uring".into())
            .spawn(move || tokio_uring::start(run(rx)))?;
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
        self.call(|reply| Job::Sync { file, reply }).await
    }

    /// Closes a file handle.
    pub async fn close(&self, file: u64) {
        if let Ok(tx) = self.sender() {
            let _ = tx.send(Job::Close { file }).await;
        }
    }
}

/// Bytes written to a file after which the writer asks the kernel to start writing the
/// file back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait for the disk):
/// the disk works while the network still delivers, the final fdatasync finds little left,
/// and a server's page cache never holds a whole game dirty.
const WRITEBACK_EVERY: u64 = lanspread_proto::CHUNK_SIZE;

/// An open file of the writer thread.
struct OpenFile {
    ring: tokio_uring::fs::File,
    /// A second descriptor of the same file for the writeback kicks, which run on a
    /// blocking thread (they may wait for the device's queue) and must not see the
    /// ring's descriptor closed and reused under them; small writes go through it too
    /// ([`INLINE_WRITE`]).
    kick: Arc<std::fs::File>,
    /// Bytes written since the last kick.
    unkicked: Cell<u64>,
    /// A kick is running (at most one per file).
    kicking: Cell<bool>,
    /// Small writes are done inline ([`INLINE_WRITE`]): the file is on tmpfs.
    inline: bool,
}

impl OpenFile {
    /// Counts written bytes and starts writeback once enough have piled up.
    fn written(self: &Rc<Self>, bytes: u64) {
        self.unkicked.set(self.unkicked.get() + bytes);
        if self.unkicked.get() < WRITEBACK_EVERY || self.kicking.get() {
            return;
        }
        self.unkicked.set(0);
        self.kicking.set(true);
        let (me, file) = (self.clone(), self.kick.clone());
        tokio_uring::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || start_writeback(&file)).await;
            me.kicking.set(false);
        });
    }
}

/// Starts writing back every dirty page of `file` (advisory: errors only cost speed,
/// the final fdatasync reports any that matter).
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc != 0 {
        tracing::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

type Files = Rc<RefCell<HashMap<u64, Rc<OpenFile>>>>;

async fn run(mut rx: mpsc::Receiver<Job>) {
    let files: Files = Rc::default();
    let mut next_id = 0u64;
    while let Some(job) = rx.recv().await {
        match job {
            Job::Open { path, size, reply } => {
                next_id += 1;
                let id = next_id;
                let files = files.clone();
                tokio_uring::spawn(async move {
                    let res = open(path, size).await.map(|f| {
                        files.borrow_mut().insert(id, Rc::new(f));
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
                let f = files.borrow().get(&file).cloned();
                if buf.filled() <= INLINE_WRITE && f.as_ref().is_some_and(|f| f.inline) {
                    let res = match &f {
                        Some(f) => write_inline(f, &buf, offset),
                        None => Err(io::Error::other("write to a closed file")),
                    };
                    drop(buf);
                    let _ = reply.send(res);
                    continue;
                }
                tokio_uring::spawn(async move {
                    let res = match (f, buf.vec.take()) {
                        (Some(f), Some(v)) => {
                            let len = v.len() as u64;
                            let (res, v) = f.ring.write_all_at(v, offset).await;
                            buf.vec = Some(v);
                            if res.is_ok() {
                                f.written(len);
                            }
                            res
                        }
                        _ => Err(io::Error::other("write to a closed file")),
                    };
                    drop(buf);
                    let _ = reply.send(res);
                });
            }
            Job::Sync { file, reply } => {
                let f = files.borrow().get(&file).cloned();
                tokio_uring::spawn(async move {
                    let res = match f {
                        Some(f) => f.ring.sync_data().await,
                        None => Err(io::Error::other("sync of a closed file")),
                    };
                    let _ = reply.send(res);
                });
            }
            Job::Close { file } => {
                // Dropping the last handle closes the descriptor.
                files.borrow_mut().remove(&file);
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

/// Whether `file` is on tmpfs.
fn on_tmpfs(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fstatfs writes into the zeroed struct it is given and only reads the
    // descriptor, which `file` keeps open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type == libc::TMPFS_MAGIC
}

/// A small write done on the writer thread ([`INLINE_WRITE`]).
fn write_inline(f: &Rc<OpenFile>, buf: &PoolBuf, offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let bytes = buf.vec.as_deref().unwrap_or_default();
    f.kick.write_all_at(bytes, offset)?;
    f.written(bytes.len() as u64);
    Ok(())
}

/// Creates the file and gives it its full size up front: `fallocate` reserves the blocks
/// (so a full disk fails here, not half-way), `set_len` trims a longer leftover.
async fn open(path: PathBuf, size: u64) -> io::Result<OpenFile> {
    let std_file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)?;
    let f = tokio_uring::fs::File::from_std(std_file.try_clone()?);
    if size > 0 {
        match f.fallocate(0, size, 0).await {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: preallocating {size} bytes: {e}", path.display()),
                ))
            }
        }
    }
    std_file.set_len(size)?;
    Ok(OpenFile {
        ring: f,
        inline: on_tmpfs(&std_file),
        kick: Arc::new(std_file),
        unkicked: Cell::new(0),
        kicking: Cell::new(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes small (inline on tmpfs) and large (through the ring) buffers at their
    /// offsets, out of order, and reads the file back with plain std reads.
    fn write_and_read_back(dir: &std::path::Path) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = dir.join("f.bin");
        let size = 3 * BUF_SIZE as u64 + 100;
        let expected: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        rt.block_on(async {
            let w = Writer::new();
            let file = w.open(path.clone(), size).await.unwrap();
            // (offset, len): a 1 MiB piece, small pieces, the short last piece.
            let parts = [
                (BUF_SIZE as u64, 32 << 10),
                (0, BUF_SIZE),
                (3 * BUF_SIZE as u64, 100),
                (BUF_SIZE as u64 + (32 << 10), BUF_SIZE - (32 << 10)),
                (2 * BUF_SIZE as u64, BUF_SIZE),
            ];
            let mut replies = Vec::new();
            for (offset, len) in parts {
                let mut buf = w.buffer().await.unwrap();
                buf.extend(&expected[offset as usize..offset as usize + len]);
                replies.push(w.write(file, offset, buf).await.unwrap());
            }
            for r in replies {
                r.await.unwrap().unwrap();
            }
            w.sync(file).await.unwrap();
            w.close(file).await;
        });
        assert_eq!(std::fs::read(&path).unwrap(), expected, "{}", dir.display());
    }

    #[test]
    fn small_and_large_writes_land_where_they_belong_on_tmpfs_and_elsewhere() {
        // Where the file lies decides the path of small writes: inline on tmpfs (/dev/shm
        // on Linux), through the ring elsewhere (the target dir, on the repository's
        // filesystem). Each is checked where this machine has it; /proc/mounts is the
        // independent word on which is which.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let fs_type = |dir: &std::path::Path| {
            let real = std::fs::canonicalize(dir).unwrap();
            mounts
                .lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
                    real.starts_with(at).then(|| (at.len(), kind.to_owned()))
                })
                .max()
                .map(|(_, kind)| kind)
        };
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        let dirs = [
            tempfile::tempdir_in("/dev/shm").ok(),
            tempfile::tempdir_in(&target).ok(),
        ];
        let mut kinds = Vec::new();
        for dir in dirs.iter().flatten() {
            let probe = std::fs::File::create(dir.path().join("probe")).unwrap();
            let tmpfs = fs_type(dir.path()).as_deref() == Some("tmpfs");
            assert_eq!(on_tmpfs(&probe), tmpfs, "{}", dir.path().display());
            write_and_read_back(dir.path());
            kinds.push(tmpfs);
        }
        assert!(
            !kinds.is_empty(),
            "neither /dev/shm nor the target dir is writable"
        );
    }
}
