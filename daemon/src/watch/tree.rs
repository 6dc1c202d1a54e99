//! A recursive inotify watch of one folder with the mask this daemon needs.
//!
//! The notify crate watches `IN_OPEN` and `IN_MODIFY` with no way to narrow its mask, so
//! every file a peer is served and every write of a download woke its thread (≈ 5 % of two
//! cores while 2 000 small files moved). A library changes when a file is created,
//! written and closed, deleted, moved or has its attributes changed; that is all this
//! watch asks for. It also leaves out what [`TreeWatch::start`]'s `skip` names (installed
//! games under `local/`, the daemon's own metadata), which notify watched too.
//!
//! Folders created or moved in are watched as they appear, with their subfolders; a
//! folder moved out is forgotten. An event queue overflow, or the watched folder itself
//! deleted or moved, is reported as [`Seen::Lost`] (the caller rescans everything; after
//! an overflow the tree is walked again for folders made meanwhile, at once, then at most
//! once every `REWALK_EVERY` while overflows go on, reported as lost again; a
//! folder deleted while a process keeps it open, as the daemon's dir lock does, is
//! reported by inotify only once it is closed: the periodic rescan sees it first); a
//! folder that cannot be watched (the watch limit) is warned about once and left to the
//! periodic rescan, as are changes inotify reports only as `IN_MODIFY` (`truncate`,
//! `fallocate`, a writer that keeps its file open). Symlinked folders are never followed,
//! as the catalog's scan never follows a symlinked game root (a bind mount brings
//! another disk's folder in): `games/x -> /usr` would cost a watch per folder of the
//! target, out of the user's inotify limit shared with every other service, and a walk
//! of it after every overflow. The watched folder itself may be a symlink.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tracing::{debug, warn};

use super::rewalks::{readable_within, Rewalks, REWALK_EVERY};

/// What the watch saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Something changed at this path (a file, or a folder itself).
    Path(PathBuf),
    /// Events were lost (queue overflow, a folder that could not be watched, the watch
    /// failed): anything may have changed.
    Lost,
}

/// Decides which folders are not watched, from their path relative to the watched one.
pub type Skip = fn(&Path) -> bool;

const MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR);

/// A running watch; dropping it ends its thread.
pub struct TreeWatch {
    watches: Watches,
    top: WatchDescriptor,
    stop: Arc<AtomicBool>,
}

impl Drop for TreeWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Removing a watch queues `IN_IGNORED`, which ends the thread's blocking read;
        // closing the descriptor (the thread's last reference) removes the others. The
        // top watch is gone when its folder was deleted or unmounted: then a throwaway
        // watch on `/` is added and removed for the same wake-up.
        if let Err(e) = self.watches.remove(self.top.clone()) {
            debug!("watch: removing the top watch: {e}");
            match self.watches.add("/", WatchMask::DELETE_SELF) {
                Ok(wd) => {
                    let _ = self.watches.remove(wd);
                }
                Err(e) => warn!("watch: cannot wake its thread to end it: {e}"),
            }
        }
    }
}

/// The watched folders by descriptor (a folder moved keeps its descriptor).
struct Tree {
    top: PathBuf,
    skip: Skip,
    watches: Watches,
    paths: HashMap<WatchDescriptor, PathBuf>,
    /// A folder could not be watched (said once).
    warned: bool,
    rewalks: Rewalks,
}

impl Tree {
    /// Watches `dir` and the folders under it (again: a re-walk finds folders made while
    /// events were lost).
    fn add(&mut self, dir: &Path) {
        let mut seen = HashSet::new();
        let mut stack = vec![(dir.to_path_buf(), None)];
        while let Some((dir, was)) = stack.pop() {
            let rel = dir.strip_prefix(&self.top).unwrap_or(Path::new(""));
            if !rel.as_os_str().is_empty() && (self.skip)(rel) {
                continue;
            }
            // The watched folder may be a symlink (`--games` naming another disk); nothing
            // under it is followed, nor a folder swapped for a symlink while it is walked:
            // each is opened as the scan opens it, then watched and listed through that
            // descriptor (the folder opened, whatever its name is now).
            let opened = match lanspread_catalog::open_folder(&dir, dir == self.top, was) {
                Ok(o) => o,
                // Gone already, a file, a symlink or moved: its creation was reported.
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) =>
                {
                    debug!(dir = %dir.display(), "watch: not walked: {e}");
                    continue;
                }
                Err(e) => {
                    if !self.warned {
                        warn!(dir = %dir.display(), "cannot watch ({e}); changes there wait for the periodic rescan");
                        self.warned = true;
                    }
                    continue;
                }
            };
            let wd = match self.watches.add(opened.via(), MASK) {
                Ok(wd) => wd,
                // Gone already, a file or a symlink: its creation was reported.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    continue
                }
                Err(e) => {
                    if !self.warned {
                        warn!(dir = %dir.display(), "cannot watch ({e}); changes there wait for the periodic rescan");
                        self.warned = true;
                    }
                    continue;
                }
            };
            // The same folder reached twice in one walk, or known under another path (a
            // bind mount, two symlinks to one disk): watched once, under its first path.
            if !seen.insert(wd.clone()) {
                continue;
            }
            match self.paths.get(&wd) {
                Some(known) if *known != dir => continue,
                Some(_) => {}
                None => {
                    self.paths.insert(wd, dir.clone());
                }
            }
            let Ok(entries) = std::fs::read_dir(opened.via()) else {
                continue;
            };
            for entry in entries.flatten() {
                // (Stat relative to the folder listed: what it holds, not what a path
                // reaches now.)
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                if meta.is_dir() {
                    let was = Some(lanspread_catalog::folder_id(&meta));
                    stack.push((dir.join(entry.file_name()), was));
                }
            }
        }
    }

    /// A folder moved away: its watches go (moved back in, it is watched again).
    fn forget(&mut self, dir: &Path) {
        let gone: Vec<WatchDescriptor> = self
            .paths
            .iter()
            .filter(|(_, p)| p.starts_with(dir))
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in gone {
            self.paths.remove(&wd);
            let _ = self.watches.remove(wd);
        }
    }
}

impl TreeWatch {
    /// Watches `dir` and every folder under it that `skip` does not name; `handler`
    /// runs on the watch's own thread for every change.
    pub fn start(
        dir: &Path,
        skip: Skip,
        handler: impl FnMut(Seen) + Send + 'static,
    ) -> io::Result<Self> {
        Self::start_rewalking(dir, skip, REWALK_EVERY, handler)
    }

    /// [`TreeWatch::start`] with another least time between walks after overflows.
    fn start_rewalking(
        dir: &Path,
        skip: Skip,
        rewalk_every: Duration,
        mut handler: impl FnMut(Seen) + Send + 'static,
    ) -> io::Result<Self> {
        let mut inotify = Inotify::init()?;
        let watches = inotify.watches();
        let mut tree = Tree {
            top: dir.to_path_buf(),
            skip,
            watches: inotify.watches(),
            paths: HashMap::new(),
            warned: false,
            rewalks: Rewalks::new(rewalk_every),
        };
        let top = tree.watches.add(dir, MASK)?;
        tree.add(dir);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("lanspread-watch".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    // A due walk first, whether or not events wait (a steady stream of
                    // them would otherwise put it off for as long as it lasts).
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    if tree.rewalks.take_due(Instant::now()) {
                        // Folders made since the last walk may be unwatched, and their
                        // events lost.
                        let top = tree.top.clone();
                        tree.add(&top);
                        tree.rewalks.walked(Instant::now());
                        handler(Seen::Lost);
                    }
                    if let Some(wait) = tree.rewalks.wait(Instant::now()) {
                        use std::os::fd::AsRawFd;
                        if !readable_within(inotify.as_raw_fd(), wait) {
                            if stopped.load(Ordering::SeqCst) {
                                return;
                            }
                            continue;
                        }
                    }
                    let events = match inotify.read_events_blocking(&mut buf) {
                        Ok(events) => events,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            warn!("watch ended ({e}); relying on rescans");
                            handler(Seen::Lost);
                            return;
                        }
                    };
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let mut lost = false;
                    let mut seen = Vec::new();
                    for ev in events {
                        lost |= handle(&mut tree, ev.mask, &ev.wd, ev.name, &mut seen);
                    }
                    // A file written is created, then closed: one report.
                    seen.dedup();
                    if lost {
                        handler(Seen::Lost);
                    }
                    for path in seen {
                        handler(Seen::Path(path));
                    }
                }
            })?;
        Ok(Self { watches, top, stop })
    }
}

/// One event: the path it names goes to `seen`, new folders are watched; true when
/// events may have been lost.
fn handle(
    tree: &mut Tree,
    mask: EventMask,
    wd: &WatchDescriptor,
    name: Option<&OsStr>,
    seen: &mut Vec<PathBuf>,
) -> bool {
    if mask.contains(EventMask::Q_OVERFLOW) {
        // Folders created meanwhile may be unwatched: walk the whole tree again, now or
        // when the rate allows (`Rewalks`).
        if tree.rewalks.overflow(Instant::now()) {
            let top = tree.top.clone();
            tree.add(&top);
            tree.rewalks.walked(Instant::now());
        }
        return true;
    }
    if mask.contains(EventMask::IGNORED) {
        tree.paths.remove(wd);
        return false;
    }
    let Some(dir) = tree.paths.get(wd) else {
        return false;
    };
    if *dir == tree.top
        && name.is_none()
        && mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
    {
        warn!(dir = %dir.display(), "the watched folder was deleted or moved; changes wait for the periodic rescan");
        return true;
    }
    let path = name.map_or_else(|| dir.clone(), |n| dir.join(n));
    let arrived = mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
    let left = mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM);
    if arrived && mask.contains(EventMask::ISDIR) {
        tree.add(&path);
    } else if left && mask.contains(EventMask::ISDIR) {
        tree.forget(&path);
    }
    seen.push(path);
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn skip_local(rel: &Path) -> bool {
        rel.components()
            .nth(1)
            .is_some_and(|c| c.as_os_str() == "local")
    }

    fn watch(dir: &Path) -> (TreeWatch, mpsc::Receiver<Seen>) {
        let (tx, rx) = mpsc::channel();
        let w = TreeWatch::start(dir, skip_local, move |s| {
            let _ = tx.send(s);
        })
        .unwrap();
        (w, rx)
    }

    /// The next event, or a failure after a generous wait (not a timing assertion:
    /// only a missing event takes this long).
    fn next(rx: &mpsc::Receiver<Seen>) -> Seen {
        rx.recv_timeout(Duration::from_secs(10)).expect("an event")
    }

    #[test]
    fn new_folders_are_watched_with_what_is_in_them() {
        let top = tempfile::tempdir().unwrap();
        let (_w, rx) = watch(top.path());
        let deep = top.path().join("g/a/b");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f.eti"), b"x").unwrap();
        // The creation of g is seen; a and b may have been made before g was watched,
        // so they may or may not be seen; f's write is seen once b is watched (or made
        // before, and then covered by the rescan g's creation causes).
        assert_eq!(next(&rx), Seen::Path(top.path().join("g")));
        // b is watched once the walk that g's creation started has reached it (the
        // thread may have read g's event before a and b existed: then b's own creation
        // event starts the walk): write until a write in b is reported.
        for i in 0.. {
            let late = deep.join(format!("late{i}.eti"));
            std::fs::write(&late, b"y").unwrap();
            let want = Seen::Path(late);
            let mut got = next(&rx);
            while let Ok(more) = rx.recv_timeout(Duration::from_millis(50)) {
                if got == want {
                    break;
                }
                got = more;
            }
            if got == want {
                break;
            }
            assert!(i < 100, "no write in a new folder was ever reported");
        }
    }

    #[test]
    fn reads_and_skipped_folders_are_not_events() {
        let top = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(top.path().join("g/local/sub")).unwrap();
        std::fs::write(top.path().join("g/served.eti"), b"bytes").unwrap();
        let (_w, rx) = watch(top.path());
        // Served (opened, read, closed), and written under local/: nothing to report.
        assert_eq!(
            std::fs::read(top.path().join("g/served.eti")).unwrap(),
            b"bytes"
        );
        std::fs::write(top.path().join("g/local/sub/game.exe"), b"installed").unwrap();
        // Events of one inotify descriptor come in order: the marker is the first.
        std::fs::write(top.path().join("g/marker"), b"").unwrap();
        assert_eq!(next(&rx), Seen::Path(top.path().join("g/marker")));
    }

    /// Every event up to and including `want` (a missing one fails after a long wait).
    fn until(rx: &mpsc::Receiver<Seen>, want: &Path) -> Vec<Seen> {
        let mut got = Vec::new();
        loop {
            let s = next(rx);
            got.push(s.clone());
            if s == Seen::Path(want.to_path_buf()) {
                return got;
            }
        }
    }

    #[test]
    fn a_folder_moved_in_is_watched_and_one_moved_out_is_forgotten() {
        let top = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("new/sub")).unwrap();
        std::fs::create_dir(top.path().join("g")).unwrap();
        let (_w, rx) = watch(top.path());
        let moved = top.path().join("g/new");
        std::fs::rename(outside.path().join("new"), &moved).unwrap();
        assert_eq!(next(&rx), Seen::Path(moved.clone()));
        std::fs::write(moved.join("sub/f"), b"x").unwrap();
        assert_eq!(next(&rx), Seen::Path(moved.join("sub/f")));
        // Moved out: the move is seen, what happens to it later is not.
        let away = outside.path().join("away");
        std::fs::rename(&moved, &away).unwrap();
        std::fs::write(away.join("sub/g"), b"x").unwrap();
        let marker = top.path().join("g/marker");
        std::fs::write(&marker, b"").unwrap();
        let got = until(&rx, &marker);
        assert!(got.contains(&Seen::Path(moved.clone())), "{got:?}");
        assert!(!got.contains(&Seen::Path(moved.join("sub/g"))), "{got:?}");
        assert!(!got.contains(&Seen::Lost), "{got:?}");
    }

    #[test]
    fn a_game_root_linked_in_from_another_disk_is_not_walked() {
        let top = tempfile::tempdir().unwrap();
        let disk = tempfile::tempdir().unwrap();
        let (_w, rx) = watch(top.path());
        let root = top.path().join("g");
        std::os::unix::fs::symlink(disk.path(), &root).unwrap();
        // The link itself is seen (the scan says it is not followed) ...
        assert_eq!(next(&rx), Seen::Path(root.clone()));
        // ... not what happens in its target, as the scan does not read it.
        std::fs::write(disk.path().join("f.eti"), b"x").unwrap();
        std::fs::write(top.path().join("marker"), b"").unwrap();
        let got = until(&rx, &top.path().join("marker"));
        assert_eq!(got, [Seen::Path(top.path().join("marker"))]);
    }

    #[test]
    fn a_root_linked_to_a_folder_around_the_games_dir_is_not_walked() {
        let outer = tempfile::tempdir().unwrap();
        let top = outer.path().join("games");
        std::fs::create_dir_all(top.join("real")).unwrap();
        std::fs::create_dir_all(outer.path().join("elsewhere/sub")).unwrap();
        // A root linked to the games dir's parent and one to the games dir itself.
        std::os::unix::fs::symlink(outer.path(), top.join("up")).unwrap();
        std::os::unix::fs::symlink(&top, top.join("self")).unwrap();
        let (_w, rx) = watch(&top);
        std::fs::write(outer.path().join("elsewhere/sub/f"), b"x").unwrap();
        std::fs::write(top.join("real/marker"), b"").unwrap();
        let got = until(&rx, &top.join("real/marker"));
        assert_eq!(got, [Seen::Path(top.join("real/marker"))]);
    }

    #[test]
    fn the_watched_folder_deleted_is_reported_and_the_watch_still_ends() {
        let outer = tempfile::tempdir().unwrap();
        let top = outer.path().join("games");
        std::fs::create_dir(&top).unwrap();
        let (w, rx) = watch(&top);
        std::fs::remove_dir(&top).unwrap();
        assert_eq!(next(&rx), Seen::Lost);
        drop(w);
        assert_thread_ended(&rx);
    }

    /// The handler (and its sender) goes with the thread: after any events left, the
    /// channel is disconnected (a thread still running fails after a long wait).
    fn assert_thread_ended(rx: &mpsc::Receiver<Seen>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(_) => continue,
                Err(e) => {
                    assert_eq!(e, mpsc::RecvTimeoutError::Disconnected);
                    return;
                }
            }
        }
    }

    #[test]
    fn dropping_the_watch_ends_its_thread() {
        let top = tempfile::tempdir().unwrap();
        let (w, rx) = watch(top.path());
        drop(w);
        assert_thread_ended(&rx);
    }

    /// Holds the watch thread inside its handler while `hold` is set.
    type Hold = Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;

    fn set_hold(hold: &Hold, on: bool) {
        *hold.0.lock().unwrap() = on;
        hold.1.notify_all();
    }

    /// Overflows the event queue of a watch whose thread is held in its handler: a file
    /// renamed back and forth (two events per rename) past `max_queued_events`; then
    /// makes `late/`, whose creation is lost with the rest, and lets the thread go.
    fn overflow_and_make(top: &Path, hold: &Hold, late: &str) {
        set_hold(hold, true);
        std::fs::write(top.join("poke"), b"x").unwrap();
        let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(16384);
        let (a, b) = (top.join("flood-a"), top.join("flood-b"));
        std::fs::write(&a, b"").unwrap();
        for _ in 0..max / 2 + 1000 {
            std::fs::rename(&a, &b).unwrap();
            std::fs::rename(&b, &a).unwrap();
        }
        std::fs::create_dir(top.join(late)).unwrap();
        set_hold(hold, false);
    }

    /// Waits for the next `Seen::Lost`, skipping path events.
    fn next_lost(rx: &mpsc::Receiver<Seen>) {
        while next(rx) != Seen::Lost {}
    }

    #[test]
    fn after_queue_overflows_the_tree_is_walked_again_at_once_then_at_most_once_per_interval() {
        // Two overflows in a row, within the interval between walks: the first walks at
        // once, so a folder whose creation was lost is watched; the second waits for the
        // interval's end, then walks (and says so again), so its lost folder is watched
        // too. A watch that walked on every overflow would report the second only once;
        // one that never walked again would never see a file written in `late2/`.
        let top = tempfile::tempdir().unwrap();
        let hold: Hold = Arc::default();
        let (tx, rx) = mpsc::channel();
        // Long enough for the second flood to come within it even on a loaded machine (a
        // flood takes ≈ 0.1 s here); the due walk is waited for longer.
        let every = Duration::from_secs(8);
        let held = hold.clone();
        let _w = TreeWatch::start_rewalking(top.path(), skip_local, every, move |s| {
            let mut on = held.0.lock().unwrap();
            while *on {
                on = held.1.wait(on).unwrap();
            }
            drop(on);
            let _ = tx.send(s);
        })
        .unwrap();

        overflow_and_make(top.path(), &hold, "late1");
        next_lost(&rx);
        std::fs::write(top.path().join("late1/x"), b"x").unwrap();
        let want = top.path().join("late1/x");
        while next(&rx) != Seen::Path(want.clone()) {}

        overflow_and_make(top.path(), &hold, "late2");
        next_lost(&rx);
        // The walk due at the interval's end.
        loop {
            let seen = rx.recv_timeout(every * 3).expect("the due walk");
            if seen == Seen::Lost {
                break;
            }
        }
        std::fs::write(top.path().join("late2/x"), b"x").unwrap();
        let want = top.path().join("late2/x");
        while next(&rx) != Seen::Path(want.clone()) {}
    }
}
