//! The writer thread's files: created and preallocated once, then held open by a bounded
//! descriptor cache. A game may have up to `MAX_FILES_PER_GAME` files and a download keeps
//! every one of them until its commit; holding them all open would tie a download's size
//! to the process's open-files limit (two descriptors per file). So at most
//! [`Files::cap`] files are open at once: a file created past the cap is closed right
//! away, and a write or sync to a closed file reopens it (the same inode, checked, never
//! through a symlink), closing the least recently used one.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes written to a file after which the writer asks the kernel to start writing the
/// file back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait for the disk):
/// the disk works while the network still delivers, the final fdatasync finds little left,
/// and a server's page cache never holds a whole game dirty.
const WRITEBACK_EVERY: u64 = lanspread_proto::CHUNK_SIZE;

/// The most files the cache holds open, whatever the limit allows.
const CAP_MAX: usize = 4096;
/// The fewest, whatever the limit.
const CAP_MIN: usize = 16;

/// How many files the cache may hold open: an eighth of the soft open-files limit (each
/// takes two descriptors; the rest is left to links, served files, the indexer and the
/// control socket), within [`CAP_MIN`]..=[`CAP_MAX`].
pub fn cap_for_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    (soft / 8).clamp(CAP_MIN, CAP_MAX)
}

/// Open files of the writer right now and at most so far (each holds two descriptors).
/// Beyond the cache's cap: a file being created, and one the cache let go of while a
/// write, sync or writeback kick still uses it (bounded by the pool, `SYNCS_IN_FLIGHT`
/// and one kick per file).
#[derive(Default)]
pub struct OpenCount {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl OpenCount {
    fn opened(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// The most files open at once so far.
    #[cfg(test)]
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }
}

/// An open file of the writer thread.
pub struct OpenFile {
    pub ring: tokio_uring::fs::File,
    /// A second descriptor of the same file for the writeback kicks, which run on a
    /// blocking thread (they may wait for the device's queue) and must not see the
    /// ring's descriptor closed and reused under them; small writes go through it too
    /// (`INLINE_WRITE`).
    pub kick: Arc<std::fs::File>,
    /// Bytes written since the last kick.
    unkicked: Cell<u64>,
    /// A kick is running (at most one per file).
    kicking: Cell<bool>,
    /// Small writes are done inline (`INLINE_WRITE`): the file is on tmpfs.
    pub inline: bool,
    count: Arc<OpenCount>,
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        self.count.now.fetch_sub(1, Ordering::Relaxed);
    }
}

impl OpenFile {
    fn new(std_file: std::fs::File, count: &Arc<OpenCount>) -> io::Result<Self> {
        let ring = tokio_uring::fs::File::from_std(std_file.try_clone()?);
        count.opened();
        Ok(Self {
            ring,
            inline: on_tmpfs(&std_file),
            kick: Arc::new(std_file),
            unkicked: Cell::new(0),
            kicking: Cell::new(false),
            count: count.clone(),
        })
    }

    /// Counts written bytes and starts writeback once enough have piled up.
    pub fn written(self: &Rc<Self>, bytes: u64) {
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

/// Whether `file` is on tmpfs.
pub fn on_tmpfs(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: fstatfs writes into the zeroed struct it is given and only reads the
    // descriptor, which `file` keeps open.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type == libc::TMPFS_MAGIC
}

/// Creates the file and gives it its full size up front: `fallocate` reserves the blocks
/// (so a full disk fails here, not half-way), `set_len` trims a longer leftover.
pub async fn create(path: PathBuf, size: u64, count: Arc<OpenCount>) -> io::Result<Created> {
    let std_file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)?;
    let meta = std_file.metadata()?;
    let file = OpenFile::new(std_file, &count)?;
    if size > 0 {
        match file.ring.fallocate(0, size, 0).await {
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
    file.kick.set_len(size)?;
    Ok(Created {
        path,
        identity: (meta.dev(), meta.ino(), size),
        file,
    })
}

/// A file just created by [`create`].
pub struct Created {
    path: PathBuf,
    identity: (u64, u64, u64),
    file: OpenFile,
}

/// A file of the cache.
struct Entry {
    path: PathBuf,
    /// Device, inode and size at creation: a reopen must find the same file (a file put
    /// in its place, or reached through a folder replaced by a symlink, is another inode;
    /// one created after ours was deleted could reuse its number, but not also have its
    /// exact size by chance).
    identity: (u64, u64, u64),
    /// Open, with its last use (its key in [`Files::lru`]).
    open: Option<(Rc<OpenFile>, u64)>,
}

/// The writer's files by handle, at most `cap` of them open.
pub struct Files {
    entries: HashMap<u64, Entry>,
    /// Open files by last use, oldest first.
    lru: BTreeMap<u64, u64>,
    tick: u64,
    cap: usize,
    count: Arc<OpenCount>,
}

impl Files {
    pub fn new(cap: usize, count: Arc<OpenCount>) -> Self {
        Self {
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            cap: cap.max(1),
            count,
        }
    }

    /// Adds a created file as `id`; it stays open only while the cache has room (files
    /// are created in order before any is written, and the first ones are written first).
    pub fn insert(&mut self, id: u64, created: Created) {
        let mut entry = Entry {
            path: created.path,
            identity: created.identity,
            open: None,
        };
        if self.lru.len() < self.cap {
            self.tick += 1;
            self.lru.insert(self.tick, id);
            entry.open = Some((Rc::new(created.file), self.tick));
        }
        self.entries.insert(id, entry);
    }

    /// The open file of `id`, reopened (closing the least recently used) when the cache
    /// had closed it.
    pub fn get(&mut self, id: u64) -> io::Result<Rc<OpenFile>> {
        let entry = self
            .entries
            .get_mut(&id)
            .ok_or_else(|| io::Error::other("use of a closed file"))?;
        self.tick += 1;
        if let Some((file, used)) = &mut entry.open {
            self.lru.remove(used);
            *used = self.tick;
            self.lru.insert(self.tick, id);
            return Ok(file.clone());
        }
        let file = Rc::new(reopen(entry, &self.count)?);
        entry.open = Some((file.clone(), self.tick));
        self.lru.insert(self.tick, id);
        while self.lru.len() > self.cap {
            let Some((_, old)) = self.lru.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.get_mut(&old) {
                // A write or sync still running keeps its own handle until it ends.
                e.open = None;
            }
        }
        Ok(file)
    }

    /// Forgets `id` (its descriptors close once no write or sync uses them).
    pub fn remove(&mut self, id: u64) {
        if let Some(Entry {
            open: Some((_, used)),
            ..
        }) = self.entries.remove(&id)
        {
            self.lru.remove(&used);
        }
    }
}

/// Opens a file the cache had closed: for writing, without following a symlink, and only
/// if it is still the file created (someone may have replaced the path since).
fn reopen(entry: &Entry, count: &Arc<OpenCount>) -> io::Result<OpenFile> {
    let std_file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&entry.path)
        .map_err(|e| {
            io::Error::new(e.kind(), format!("reopening {}: {e}", entry.path.display()))
        })?;
    let meta = std_file.metadata()?;
    if (meta.dev(), meta.ino(), meta.len()) != entry.identity {
        return Err(io::Error::other(format!(
            "{} was replaced while being downloaded",
            entry.path.display()
        )));
    }
    OpenFile::new(std_file, count)
}
