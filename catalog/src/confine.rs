//! Opening a served file so that it provably lies inside its root: the file is opened,
//! then the kernel's view of the open descriptor (`/proc/self/fd/N`) must resolve under
//! the root's canonical path. A file swapped for a symlink to `/etc/shadow` after the
//! scan is refused at open time, not trusted from the scan.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Clears `O_NONBLOCK` on a file opened with it (to open a FIFO or device swapped in
/// without blocking, then refuse it): regular files are read and written blocking (an
/// io_uring write to a non-blocking file fails rather than wait).
pub fn set_blocking(file: &File) -> io::Result<()> {
    // SAFETY: fcntl reads and sets the flags of a descriptor `file` keeps open.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `real` (a resolved path) lies inside `root` (resolved too) and outside what a
/// root keeps to itself: `local/` (the installed copy, never transferred) and
/// `.lanspread*` (the daemon's own files). A game file that is a symlink is followed
/// only to a file this says yes to.
pub fn in_served_part(root: &Path, real: &Path) -> bool {
    let Ok(rel) = real.strip_prefix(root) else {
        return false;
    };
    let top = rel.components().next().map(|c| c.as_os_str());
    !top.and_then(|t| t.to_str())
        .is_some_and(lanspread_proto::is_reserved_top_level)
}

/// Opens `path` for reading if it resolves inside `root`.
pub fn open_inside(root: &Path, path: &Path) -> io::Result<File> {
    Ok(Confined::new(root)?.open(path)?.0)
}

/// A root resolved once (its canonical path: a `realpath`, one `readlink` per component)
/// for opening many of its files: a request for a run of small files pays it once.
#[derive(Debug, Clone)]
pub struct Confined {
    root: PathBuf,
}

impl Confined {
    /// Resolves `root` now.
    pub fn new(root: &Path) -> io::Result<Self> {
        Ok(Self {
            root: root.canonicalize()?,
        })
    }

    /// Opens `path` for reading if it is a regular file that resolves inside the root as
    /// it was resolved (a root moved or swapped since fails closed); also its metadata.
    pub fn open(&self, path: &Path) -> io::Result<(File, Metadata)> {
        use std::os::unix::fs::OpenOptionsExt;
        // Never blocking, never a terminal: a FIFO swapped in after the scan opens at once
        // (and is refused below) instead of holding the reading thread until a writer
        // comes.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        let meta = file.metadata()?;
        // No absolute path in the error: a source sends it to the peer that asked.
        let why = if !real.starts_with(&self.root) {
            "it leaves the game root"
        } else if !in_served_part(&self.root, &real) {
            "it lies under local/ or .lanspread*"
        } else if !meta.is_file() {
            "not a regular file"
        } else {
            // Blocking reads again (a network or FUSE filesystem may honour the flag).
            set_blocking(&file)?;
            return Ok((file, meta));
        };
        Err(io::Error::new(io::ErrorKind::PermissionDenied, why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_out_of_the_root_are_refused_at_open() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(t.path().join("outside"), b"secret").unwrap();
        std::fs::write(root.join("inside"), b"data").unwrap();
        symlink(t.path().join("outside"), root.join("out")).unwrap();
        symlink(root.join("inside"), root.join("alias")).unwrap();
        assert!(open_inside(&root, &root.join("inside")).is_ok());
        assert!(open_inside(&root, &root.join("alias")).is_ok());
        let err = open_inside(&root, &root.join("out")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        // Inside, but under what a root keeps to itself: the installed copy, the
        // daemon's own files.
        for (dir, link) in [("local", "settings.cfg"), (".lanspread", "cache.eti")] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("f"), b"private").unwrap();
            symlink(root.join(dir).join("f"), root.join(link)).unwrap();
            let err = open_inside(&root, &root.join(link)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{link}");
            assert!(err.to_string().contains("local/ or .lanspread"), "{err}");
        }
        // A folder merely named like them deeper down is an ordinary folder.
        std::fs::create_dir_all(root.join("sub/local")).unwrap();
        std::fs::write(root.join("sub/local/f"), b"game").unwrap();
        symlink(root.join("sub/local/f"), root.join("deep")).unwrap();
        assert!(open_inside(&root, &root.join("deep")).is_ok());
        // A root reached through a symlinked games dir still works.
        symlink(&root, t.path().join("via")).unwrap();
        assert!(open_inside(&t.path().join("via"), &t.path().join("via/inside")).is_ok());
        // Resolved once: a root swapped for a symlink elsewhere afterwards fails closed.
        let confined = Confined::new(&t.path().join("via")).unwrap();
        let (_, meta) = confined.open(&root.join("inside")).unwrap();
        assert!(meta.is_file());
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("inside"), b"other").unwrap();
        std::fs::remove_file(t.path().join("via")).unwrap();
        symlink(&elsewhere, t.path().join("via")).unwrap();
        let err = confined.open(&t.path().join("via/inside")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn a_fifo_in_the_root_is_refused_without_waiting_for_a_writer() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("game.eti");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the path it is given.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // On a thread, so a regression fails after a bounded wait instead of hanging.
        let (tx, rx) = std::sync::mpsc::channel();
        let root = t.path().to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(open_inside(&root, &fifo).map(|_| ()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the open blocked on the FIFO");
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }
}
