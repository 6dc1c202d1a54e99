//! The writer thread's files: created and preallocated once, then held open by a bounded
//! descriptor cache. A game may have up to `MAX_FILES_PER_GAME` files and a download keeps
//! every one of them until its commit; holding them all open would tie a download's size
//! to the process's open-files limit (two descriptors per file). So at most
//! `cap` files are open at once: a file created past the cap is closed right away, and a
//! write or sync to a closed file reopens it (the same file, checked, beneath its root
//! and never through a symlink, never blocking on a FIFO), closing the least recently
//! used one.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lanspread_catalog::{Access, GameDir, Inode};

/// Bytes written to a file after which the writer asks the kernel to start writing the
/// file back (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait for the disk):
/// the disk works while the network still delivers, the final fdatasync finds little left,
/// and a server's page cache never holds a whole game dirty.
const WRITEBACK_EVERY: u64 = lanspread_proto::CHUNK_SIZE;

/// The most files the cache holds open, whatever the limit allows.
const CAP_MAX: usize = 4096;
/// The fewest, whatever the limit.
const CAP_MIN: usize = 8;
/// Writeback kicks running at once (each holds one descriptor of a file).
pub const KICKS_MAX: usize = 16;

/// How many files the cache may hold open: the writer keeps to a quarter of the soft
/// open-files limit in files (half its descriptors: two per file; the rest is left to
/// links, served files, the indexer and the control socket), less the files that
/// writes, syncs and kicks in flight may still hold after the cache let go of them
/// (`in_flight`), within [`CAP_MIN`]..=[`CAP_MAX`].
pub fn cap_for_limit(in_flight: usize) -> usize {
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
    (soft / 4).saturating_sub(in_flight).clamp(CAP_MIN, CAP_MAX)
}

/// Open files of the writer right now and at most so far (each holds two descriptors).
/// Beyond the cache's cap: a file being created, and one the cache let go of while a
/// write or sync still uses it (bounded by the pool and `syncs`); a writeback
/// kick holds one descriptor, not counted here ([`KICKS_MAX`]).
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
    /// A second descriptor of the same file, for small writes (`INLINE_WRITE`) and the
    /// writeback kicks, which run on a blocking thread (they may wait for the device's
    /// queue) and must not see the ring's descriptor closed and reused under them.
    pub plain: Arc<std::fs::File>,
    /// The file's writeback state, kept by its cache entry across reopens.
    kick: Rc<Kick>,
    /// Small writes are done inline (`INLINE_WRITE`): the file is on tmpfs.
    pub inline: bool,
    count: Arc<OpenCount>,
}

/// A file's writeback kicks, and what of it is synced.
#[derive(Default)]
struct Kick {
    /// Bytes written since the last kick.
    unkicked: Cell<u64>,
    /// A kick is running (at most one per file).
    kicking: Cell<bool>,
    /// Writes sent to the file so far (counted when sent, so a file the cache closes
    /// while its write still runs counts as written).
    sent: Cell<u64>,
    /// Writes ended (written or failed): a sync covers those ended before it is sent
    /// (the ring orders no fdatasync after a write still running).
    done: Cell<u64>,
    /// Of the writes sent, how many a successful sync covered.
    synced: Cell<u64>,
    /// The file's mode was changed at its creation: a sync must be a full `fsync`.
    fsync: Cell<bool>,
    /// Woken when every write sent has ended ([`WritesEnded`]).
    idle: tokio::sync::Notify,
}

impl Kick {
    /// A write sent to the file ended: wakes those waiting for all to end.
    fn ended(&self) {
        self.done.set(self.done.get() + 1);
        if self.done.get() >= self.sent.get() {
            self.idle.notify_waiters();
        }
    }

    /// Some write sent is not known synced.
    fn dirty(&self) -> bool {
        self.sent.get() > self.synced.get()
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        self.count.now.fetch_sub(1, Ordering::Relaxed);
    }
}

impl OpenFile {
    fn new(std_file: std::fs::File, kick: Rc<Kick>, count: &Arc<OpenCount>) -> io::Result<Self> {
        let ring = tokio_uring::fs::File::from_std(std_file.try_clone()?);
        count.opened();
        Ok(Self {
            ring,
            inline: on_tmpfs(&std_file),
            plain: Arc::new(std_file),
            kick,
            count: count.clone(),
        })
    }

    /// A write is sent to this file (before it runs).
    pub fn will_write(&self) {
        self.kick.sent.set(self.kick.sent.get() + 1);
    }

    /// A write sent to this file ended (written or failed).
    pub fn write_ended(&self) {
        self.kick.ended();
    }

    /// A sync of this file must be a full `fsync` (its mode changed), not `fdatasync`.
    pub fn needs_fsync(&self) -> bool {
        self.kick.fsync.get()
    }

    /// The writes ended so far: what a sync sent now covers ([`OpenFile::synced`]).
    pub fn writes_ended(&self) -> u64 {
        self.kick.done.get()
    }

    /// Counts written bytes and starts writeback once enough have piled up (unless
    /// [`KICKS_MAX`] kicks run already: they are advisory).
    pub fn written(&self, bytes: u64, kicks: &Rc<Cell<usize>>) {
        let k = &self.kick;
        k.unkicked.set(k.unkicked.get() + bytes);
        if k.unkicked.get() < WRITEBACK_EVERY || k.kicking.get() || kicks.get() >= KICKS_MAX {
            return;
        }
        k.unkicked.set(0);
        k.kicking.set(true);
        kicks.set(kicks.get() + 1);
        let (k, kicks, file) = (k.clone(), kicks.clone(), self.plain.clone());
        tokio_uring::spawn(async move {
            let _ = tokio::task::spawn_blocking(move || start_writeback(&file)).await;
            k.kicking.set(false);
            kicks.set(kicks.get() - 1);
        });
    }

    /// A sync sent after `writes` writes ended succeeded: those are durable. (A sync
    /// that fails leaves them dirty; nothing syncs a file again after a failure — the
    /// download fails.)
    pub fn synced(&self, writes: u64) {
        self.kick.synced.set(self.kick.synced.get().max(writes));
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

/// The mode a file has while it is downloaded: the manifest's permission bits (a peer's
/// setuid, setgid or sticky bit is dropped) without group or other write (no one else
/// may change the bytes before they are committed: the commit checks which file is at a
/// path, not what others wrote into it) plus owner read and write, so the writer can
/// reopen it and a resume re-read it whatever the manifest says; a mode that differs is
/// set at the commit.
pub fn working_mode(manifest_mode: u32) -> u32 {
    (manifest_mode & 0o755) | 0o600
}

/// The mode a committed file keeps: the manifest's permission bits plus owner read. A
/// daemon that is not root must read what it committed — to serve it, install it, hash
/// it again — and the sentinel to commit it: a source's mode 0 would leave a committed
/// game that can be neither served nor installed (and `download` says it is done), or
/// a `version.ini` no commit can read.
pub fn final_mode(manifest_mode: u32) -> u32 {
    lanspread_proto::file_mode(manifest_mode)
}

/// What identifies a created file: device, inode, size and birth time (where the
/// filesystem keeps one). A file put in its place, or reached through a folder replaced
/// by a symlink, is another inode; one created after ours was deleted may reuse its
/// number and could be given its size, but not its birth time.
#[derive(Debug, Clone, Copy)]
struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    born: Option<std::time::SystemTime>,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            born: meta.created().ok(),
        }
    }

    /// The same file: birth times are compared only where both are known (a network
    /// filesystem may report one only some of the time).
    fn same(&self, other: &Self) -> bool {
        (self.dev, self.ino, self.len) == (other.dev, other.ino, other.len)
            && match (self.born, other.born) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Creates the file `rel` beneath `root` (its folders exist: see `download::commit`;
/// never through a symlink, never over another name of a file elsewhere: see
/// `lanspread_catalog::GameDir`), gives it its [`working_mode`] and its full size up
/// front: `fallocate` reserves the blocks (so a full disk fails here, not half-way),
/// `set_len` trims a longer leftover.
pub async fn create(
    (root, rel): (Arc<GameDir>, PathBuf),
    size: u64,
    mode: u32,
    count: Arc<OpenCount>,
) -> io::Result<Created> {
    let (std_file, meta) = root.open_file(&rel, Access::Create)?;
    let kick = Rc::new(Kick::default());
    let mode = working_mode(mode);
    if meta.mode() & 0o7777 != mode {
        std_file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        // fdatasync would leave the new mode behind.
        kick.fsync.set(true);
    }
    let file = OpenFile::new(std_file, kick.clone(), &count)?;
    if size > 0 {
        match file.ring.fallocate(0, size, 0).await {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{}: preallocating {size} bytes: {e}",
                        root.shown(&rel).display()
                    ),
                ))
            }
        }
    }
    file.plain.set_len(size)?;
    let meta = file.plain.metadata()?;
    Ok(Created {
        inode: Inode::of(&meta),
        place: (root, rel),
        identity: Identity::of(&meta),
        kick,
        file,
    })
}

/// A file just created by [`create`].
pub struct Created {
    /// The file created, for a commit to find again at its path.
    pub inode: Inode,
    place: (Arc<GameDir>, PathBuf),
    identity: Identity,
    kick: Rc<Kick>,
    file: OpenFile,
}

/// A file of the cache.
struct Entry {
    /// The root and the file's path beneath it.
    place: (Arc<GameDir>, PathBuf),
    /// At creation: a reopen must find the same file.
    identity: Identity,
    kick: Rc<Kick>,
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
    /// Files closed by the cache with writes not known synced: shared with the writer's
    /// handle, so a commit knows its fdatasyncs may not be enough (see
    /// `Writer::closed_dirty`).
    closed_dirty: Arc<std::sync::Mutex<HashSet<u64>>>,
}

impl Files {
    pub fn new(
        cap: usize,
        count: Arc<OpenCount>,
        closed_dirty: Arc<std::sync::Mutex<HashSet<u64>>>,
    ) -> Self {
        Self {
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            cap: cap.max(1),
            count,
            closed_dirty,
        }
    }

    /// Adds a created file as `id`; it stays open while the cache has room (those
    /// created first, which a download of a game of few big files writes all at once).
    /// One closed here holds no written bytes (its preallocation is metadata, which the
    /// filesystem's journal and the commit's syncs cover).
    pub fn insert(&mut self, id: u64, created: Created) {
        let mut entry = Entry {
            place: created.place,
            identity: created.identity,
            kick: created.kick,
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
                // A write or sync still running keeps its own handle until it ends (a
                // write counts as sent before it runs: see `Kick::sent`).
                e.open = None;
                if e.kick.dirty() {
                    self.closed_dirty
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(old);
                }
            }
        }
        Ok(file)
    }

    /// Forgets `id` (its descriptors close once no write or sync uses them).
    pub fn remove(&mut self, id: u64) -> Option<WritesEnded> {
        self.closed_dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let entry = self.entries.remove(&id)?;
        if let Some((_, used)) = entry.open {
            self.lru.remove(&used);
        }
        Some(WritesEnded(entry.kick))
    }
}

/// The end of a closed file's writes still running: they hold its descriptor, and a
/// download that ended (failed, cancelled) must not let one land after the next attempt
/// wrote and verified the same bytes of the same file.
pub struct WritesEnded(Rc<Kick>);

impl WritesEnded {
    /// Resolves once every write sent to the file has ended.
    pub async fn wait(self) {
        loop {
            // (Created before the check: `notify_waiters` wakes it from then on.)
            let woken = self.0.idle.notified();
            if self.0.done.get() >= self.0.sent.get() {
                return;
            }
            woken.await;
        }
    }
}

/// Opens a file the cache had closed: for writing, without following a symlink or
/// blocking, and only if it is still the file created (someone may have replaced, moved
/// or resized it since).
fn reopen(entry: &Entry, count: &Arc<OpenCount>) -> io::Result<OpenFile> {
    let (root, rel) = &entry.place;
    let shown = || root.shown(rel);
    let (std_file, meta) = root
        .open_file(rel, Access::Write)
        .map_err(|e| io::Error::new(e.kind(), format!("reopening {}: {e}", shown().display())))?;
    if !Identity::of(&meta).same(&entry.identity) {
        return Err(io::Error::other(format!(
            "{} changed while being downloaded (replaced, moved or resized)",
            shown().display()
        )));
    }
    OpenFile::new(std_file, entry.kick.clone(), count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    /// A closed file's writes still running (a failed or cancelled download's): waiting
    /// for them ends only when the last one ends, not at the close.
    #[test]
    fn writes_ended_waits_for_the_last_write_sent() {
        let kick = Rc::new(Kick::default());
        kick.sent.set(2);
        let mut wait = Box::pin(WritesEnded(kick.clone()).wait());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        kick.ended();
        assert!(
            wait.as_mut().poll(&mut cx).is_pending(),
            "one write still runs"
        );
        kick.ended();
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(()));
        // None running: at once.
        let idle = Rc::new(Kick::default());
        let mut wait = Box::pin(WritesEnded(idle).wait());
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(()));
    }
}
