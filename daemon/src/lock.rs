//! Exclusive ownership of the state dir and the games dir. A daemon takes both locks before
//! it touches anything (events file, start-up sweep, identity, socket), so a second daemon
//! on the same dirs refuses at once and leaves the running one's work alone.
//!
//! The lock is `flock(LOCK_EX | LOCK_NB)` on the directory itself (no lock file: a
//! read-only games dir can be locked too). The kernel drops it when the process dies, so a
//! crash never leaves a stale lock. The owner's pid is read back from `/proc/locks`.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Component, Path, PathBuf};

use crate::DaemonError;

/// A held directory lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
}

impl DirLock {
    /// Locks `dir` (what it is for is `what`, e.g. "games dir") exclusively, or says who
    /// holds it.
    pub fn acquire(dir: &Path, what: &str) -> Result<Self, DaemonError> {
        // A directory or nothing: never waiting on a FIFO given as a directory.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| {
                DaemonError::Config(match e.raw_os_error() {
                    Some(libc::ENOTDIR) => format!("{what} {} is not a directory", dir.display()),
                    _ => format!("{what} {}: {e}", dir.display()),
                })
            })?;
        let meta = file.metadata().map_err(|e| DaemonError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(DaemonError::Config(format!(
                "{what} {} is not a directory",
                dir.display()
            )));
        }
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(Self { _dir: file });
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => {
                let owner = owner_pid(meta.dev(), meta.ino())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                Err(DaemonError::DirInUse {
                    what: what.into(),
                    dir: dir.to_path_buf(),
                    owner,
                })
            }
            // A filesystem without flock (some network mounts): run unlocked, say so.
            Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::EINVAL) => {
                tracing::warn!(dir = %dir.display(), "cannot lock the {what} ({err}); a second daemon on it would not be refused");
                Ok(Self { _dir: file })
            }
            _ => Err(DaemonError::io(dir, err)),
        }
    }
}

/// The state dir and games dir locks of one daemon.
#[derive(Debug)]
pub struct DaemonLocks {
    _state: DirLock,
    _games: DirLock,
}

impl DaemonLocks {
    /// Creates the state dir if missing, then locks it and the games dir.
    pub fn acquire(state: &Path, games: &Path) -> Result<Self, DaemonError> {
        let resolved_alike = resolved(state).is_some_and(|s| Some(s) == resolved(games));
        if same_dir(state, games) || resolved_alike {
            return Err(DaemonError::Config(format!(
                "--state and --games are the same directory ({}); keep the state apart",
                games.display()
            )));
        }
        if beneath(state, games) {
            // A state dir in a game root is served to peers (the identity key with it)
            // and deleted by `remove`.
            return Err(DaemonError::Config(format!(
                "--state {} is inside --games {}: peers could download it (the identity \
                 key with it); keep the state apart",
                state.display(),
                games.display()
            )));
        }
        if std::fs::symlink_metadata(state).is_err() {
            std::fs::create_dir_all(state).map_err(|e| DaemonError::io(state, e))?;
        }
        Ok(Self {
            _state: DirLock::acquire(state, "state dir")?,
            _games: DirLock::acquire(games, "games dir")?,
        })
    }
}

/// Refuses a file of the daemon's own (`what`: the flag naming it) in a game root, where
/// peers could download it and `remove` would delete it.
pub(crate) fn not_in_a_game(file: &Path, games: &Path, what: &str) -> Result<(), DaemonError> {
    match file.parent() {
        Some(folder) if beneath(folder, games) => Err(DaemonError::Config(format!(
            "{what} {} is inside a game of --games {}: peers could download it; keep it apart",
            file.display(),
            games.display()
        ))),
        _ => Ok(()),
    }
}

/// Whether `inner` lies inside `outer`, either as far as it exists: its path resolved
/// (`resolved`) is below `outer`'s, or a folder above it is `outer` by device and inode
/// (a bind mount of `outer` counts too). Judged before anything is made.
fn beneath(inner: &Path, outer: &Path) -> bool {
    let (Some(i), Some(o)) = (resolved(inner), resolved(outer)) else {
        return false;
    };
    (i != o && i.starts_with(&o)) || i.ancestors().skip(1).any(|up| same_dir(up, outer))
}

/// A path as the filesystem will resolve it: absolute, its nearest existing folder with
/// symlinks resolved, then the rest of its components (`..` taken back).
fn resolved(p: &Path) -> Option<PathBuf> {
    let p = std::path::absolute(p).ok()?;
    let existing = p.ancestors().find(|a| a.exists())?;
    let mut out = std::fs::canonicalize(existing).ok()?;
    for c in p.strip_prefix(existing).ok()?.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Some(out)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The pid holding a flock on the inode `(dev, ino)`, from `/proc/locks`.
fn owner_pid(dev: u64, ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    parse_proc_locks(&text, Some((libc_major(dev), libc_minor(dev))), ino)
        // Some filesystems (btrfs, overlayfs) report another device in /proc/locks than
        // in stat: then the inode alone.
        .or_else(|| parse_proc_locks(&text, None, ino))
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)
}

/// Finds the pid of an exclusive FLOCK line for `major:minor:ino` (hex major and minor,
/// decimal inode, as the kernel prints them).
fn parse_proc_locks(text: &str, dev: Option<(u64, u64)>, ino: u64) -> Option<u32> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (blocked waiters have "->").
        let i = f.iter().position(|w| *w == "FLOCK")?;
        if f.get(i + 2) != Some(&"WRITE") {
            return None;
        }
        let pid = f.get(i + 3)?.parse().ok()?;
        let mut id = f.get(i + 4)?.split(':');
        let (ma, mi, inode) = (id.next()?, id.next()?, id.next()?);
        let same_dev = match dev {
            Some((major, minor)) => {
                u64::from_str_radix(ma, 16).ok()? == major
                    && u64::from_str_radix(mi, 16).ok()? == minor
            }
            None => true,
        };
        let matches = same_dev && inode.parse::<u64>().ok()? == ino;
        matches.then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_line_names_the_owner() {
        let text = "1: POSIX  ADVISORY  WRITE 99 08:01:5678 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 4321 fd:01:5678 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 7 fd:01:5678 0 EOF\n";
        assert_eq!(parse_proc_locks(text, Some((0xfd, 1)), 5678), Some(4321));
        assert_eq!(parse_proc_locks(text, Some((8, 1)), 5678), None);
        assert_eq!(parse_proc_locks(text, None, 5678), Some(4321));
        assert_eq!(parse_proc_locks(text, Some((0xfd, 1)), 9), None);
    }

    #[test]
    fn second_lock_on_a_dir_is_refused_with_the_owner() {
        let d = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(d.path(), "games dir").unwrap();
        let err = DirLock::acquire(d.path(), "games dir").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("in use by another lanspreadd"), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        DirLock::acquire(d.path(), "games dir").unwrap();
    }

    #[test]
    fn state_and_games_must_differ() {
        let d = tempfile::tempdir().unwrap();
        let err = DaemonLocks::acquire(d.path(), d.path()).unwrap_err();
        assert!(err.to_string().contains("same directory"), "{err}");
    }

    /// A state dir in a game root (or deeper, or through a symlink of the games dir) would
    /// be served to peers, identity key and all, and deleted by `remove`.
    #[test]
    fn the_state_dir_is_not_inside_the_games_dir() {
        let d = tempfile::tempdir().unwrap();
        let games = d.path().join("games");
        std::fs::create_dir(&games).unwrap();
        std::fs::create_dir(games.join("cod5")).unwrap();
        for state in ["games/bf1942", "games/bf1942/deeper/state", "games/cod5"] {
            let err = DaemonLocks::acquire(&d.path().join(state), &games).unwrap_err();
            assert!(err.to_string().contains("inside --games"), "{state}: {err}");
        }
        assert!(
            !games.join("bf1942").exists(),
            "nothing made in the games dir"
        );
        std::os::unix::fs::symlink(&games, d.path().join("alias")).unwrap();
        let err = DaemonLocks::acquire(&d.path().join("alias/st"), &games).unwrap_err();
        assert!(err.to_string().contains("inside --games"), "{err}");
        // A games dir not made yet (made by `create_dir_all` of the state dir, it was
        // locked with the state inside it), and the same paths spelt otherwise.
        let later = d.path().join("later/games");
        let err = DaemonLocks::acquire(&later.join("bf1942/state"), &later).unwrap_err();
        assert!(err.to_string().contains("inside --games"), "{err}");
        assert!(!later.exists(), "nothing made");
        let err = DaemonLocks::acquire(&d.path().join("later/x/../games/y"), &later).unwrap_err();
        assert!(err.to_string().contains("inside --games"), "{err}");
        let err = DaemonLocks::acquire(&d.path().join("later/games/."), &later).unwrap_err();
        assert!(err.to_string().contains("same directory"), "{err}");
        let events = games.join("cod5/events.jsonl");
        assert!(not_in_a_game(&events, &games, "--events").is_err());
        not_in_a_game(&games.join("events.jsonl"), &games, "--events").unwrap();
        // Beside it, or the games dir inside the state dir, is fine.
        DaemonLocks::acquire(&d.path().join("state"), &games).unwrap();
        let games2 = d.path().join("state2/games");
        std::fs::create_dir_all(&games2).unwrap();
        DaemonLocks::acquire(&d.path().join("state2"), &games2).unwrap();
    }
}
