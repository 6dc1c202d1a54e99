//! A game root opened once, and everything the daemon writes under it done through that
//! descriptor: files created and opened, folders made, entries renamed and removed. A
//! path under the root is resolved by the kernel beneath the open folder (cap-std's
//! `Dir`: `openat2` with `RESOLVE_BENEATH` where the kernel has it, a checked walk one
//! component at a time where not), so a folder swapped for a symlink to `/etc` between
//! two steps of a download cannot take a write, a chmod or a removal outside the root —
//! the daemon may run as root, and a games folder may be writable by others. The last
//! component is never followed; a FIFO or device put in a file's place is refused
//! without blocking; a file that has other names (a hard link to a file elsewhere) is
//! replaced, never written through.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsMaybeDirExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

use crate::set_blocking;

/// How [`GameDir::open_file`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// For reading.
    Read,
    /// For writing; it must exist.
    Write,
    /// For writing, created when missing (an existing one is kept, as a resumed download
    /// needs, unless it has other names or another owner: then it is replaced by a new,
    /// empty file).
    Create,
    /// For writing, created here: an existing entry fails (`AlreadyExists`).
    CreateNew,
}

/// Which file a name led to: its filesystem and inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Inode {
    /// The filesystem (`st_dev`).
    pub dev: u64,
    /// The inode number (`st_ino`).
    pub ino: u64,
}

impl Inode {
    /// The inode of `meta`.
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The filesystem an open folder is on.
pub fn dev_of(dir: &Dir) -> io::Result<u64> {
    // SAFETY: fstat writes into the zeroed struct it is given and only reads the
    // descriptor, which `dir` keeps open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(dir.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_dev)
}

/// An open game root (see the module docs).
#[derive(Debug)]
pub struct GameDir {
    dir: Dir,
    path: PathBuf,
}

impl GameDir {
    /// Opens the folder `path` itself: not through a symlink at its last component, never
    /// a FIFO or a terminal.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NOCTTY)
            .open(path)?;
        Ok(Self {
            dir: Dir::from_std_file(file),
            path: path.to_path_buf(),
        })
    }

    /// The path the root was opened at (for messages: the folder itself may have moved).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open folder, for operations of its own (remove, rename, list).
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Whether the root's filesystem ignores case (vfat, exFAT, CIFS, ext4 or tmpfs with
    /// casefold): its top-level `.lanspread` folder, which must exist, is found again as
    /// `.LANSPREAD`. There, a name that only folds to a reserved one (see
    /// `lanspread_proto::folds_to_reserved`) is that entry.
    pub fn ignores_case(&self) -> io::Result<bool> {
        let lower = lstat_in(&self.dir, crate::METADATA_PREFIX.as_ref())?;
        let upper = crate::METADATA_PREFIX.to_ascii_uppercase();
        Ok(match lstat_in(&self.dir, upper.as_ref()) {
            Ok(st) => st.st_dev == lower.st_dev && st.st_ino == lower.st_ino,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        })
    }

    /// `rel` under the root's path, for messages.
    pub fn shown(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Opens the regular file `rel` (see [`Access`]) without following a symlink at its
    /// last component or blocking on a FIFO; anything but a regular file is refused. The
    /// file is returned in blocking mode (an io_uring write to a non-blocking file fails
    /// rather than wait), with its metadata.
    pub fn open_file(&self, rel: &Path, access: Access) -> io::Result<(File, Metadata)> {
        let (file, meta) = self.open_once(rel, access)?;
        // SAFETY: geteuid has no preconditions.
        let ours = meta.uid() == unsafe { libc::geteuid() };
        if access == Access::Create && (meta.nlink() > 1 || !ours) {
            // Another name shares this file (a hard link, perhaps to a file outside the
            // root), or someone else put it there and could write it behind our back: a
            // new file takes the name instead (one made here, or the open fails); the
            // other keeps its bytes.
            drop(file);
            self.dir.remove_file(rel)?;
            return self.open_once(rel, Access::CreateNew);
        }
        Ok((file, meta))
    }

    fn open_once(&self, rel: &Path, access: Access) -> io::Result<(File, Metadata)> {
        let mut opts = OpenOptions::new();
        match access {
            Access::Read => opts.read(true),
            Access::Write => opts.write(true),
            Access::Create => opts.write(true).create(true),
            Access::CreateNew => opts.write(true).create_new(true),
        };
        opts.follow(FollowSymlinks::No)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        let file = self.dir.open_with(rel, &opts)?.into_std();
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file",
                self.shown(rel).display()
            )));
        }
        set_blocking(&file)?;
        Ok((file, meta))
    }

    /// Creates the folders of the relative folder path `rel` one by one (those present
    /// are kept) and opens the last; a symlink or anything but a folder in the way fails
    /// with what it is.
    pub fn create_folders(&self, rel: &Path) -> io::Result<Dir> {
        self.folders(rel, false)
    }

    /// [`GameDir::create_folders`], removing a file or symlink (unlinked, never followed)
    /// where one of the folders must be: for a writer whose folder list says what the
    /// tree is (a download replacing an older copy that had a file there).
    pub fn create_folders_replacing(&self, rel: &Path) -> io::Result<Dir> {
        self.folders(rel, true)
    }

    fn folders(&self, rel: &Path, replace: bool) -> io::Result<Dir> {
        let mut at = self.dir.try_clone()?;
        let mut walked = PathBuf::new();
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a plain relative path", rel.display()),
                ));
            };
            walked.push(name);
            if replace && at.symlink_metadata(name).is_ok_and(|m| !m.is_dir()) {
                at.remove_file(name)?;
            }
            match at.create_dir(name) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
            at = open_folder_in(&at, Path::new(name)).map_err(|e| {
                match at.symlink_metadata(name) {
                    Ok(m) if !m.is_dir() => io::Error::other(format!(
                        "{} is in the way (not a folder)",
                        self.shown(&walked).display()
                    )),
                    _ => e,
                }
            })?;
        }
        Ok(at)
    }

    /// The folder `rel` beneath the root, opened as a root of its own (an install's
    /// staging folder), not through a symlink at its last component.
    pub fn sub(&self, rel: &Path) -> io::Result<GameDir> {
        Ok(Self {
            dir: open_folder_in(&self.dir, rel)?,
            path: self.path.join(rel),
        })
    }

    /// Creates the folder `name` (one component) in the root, mode 0o700, and opens it as
    /// a root of its own; it must not exist, and must be ours once open (someone who made
    /// it first fails the call; one swapped in, owned by another user, too).
    pub fn private_folder(&self, name: &Path) -> io::Result<GameDir> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(name.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a name"))?;
        // SAFETY: mkdirat reads the NUL-terminated name, relative to the root's descriptor.
        if unsafe { libc::mkdirat(self.dir.as_raw_fd(), c.as_ptr(), 0o700) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let sub = self.sub(name)?;
        let meta = sub.dir.dir_metadata()?;
        let root = self.dir.dir_metadata()?;
        // Ours, or owned as the root is (a filesystem that fixes owners: NFS with
        // root_squash, vfat, exFAT, CIFS); a folder someone else put in its place is theirs.
        // SAFETY: geteuid has no preconditions.
        let uid = cap_std::fs::MetadataExt::uid(&meta);
        if uid != unsafe { libc::geteuid() } && uid != cap_std::fs::MetadataExt::uid(&root) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is not ours", sub.path.display()),
            ));
        }
        // Where modes are fixed by the mount (vfat, exFAT), 0700 cannot hold: no one's
        // alone there anyway.
        if cap_std::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
            // SAFETY: fchmod acts on the descriptor `sub` keeps open.
            let _ = unsafe { libc::fchmod(sub.dir.as_raw_fd(), 0o700) };
        }
        Ok(sub)
    }

    /// Creates the regular file `rel` (mode 0o644 before the umask), which must not
    /// exist: never over an existing entry, never through a symlink.
    pub fn create_new(&self, rel: &Path) -> io::Result<File> {
        let mut opts = OpenOptions::new();
        opts.write(true)
            .create_new(true)
            .follow(FollowSymlinks::No)
            .mode(0o644)
            .custom_flags(libc::O_NOCTTY);
        Ok(self.dir.open_with(rel, &opts)?.into_std())
    }

    /// Sets the permission bits of the file or folder `rel` itself, never through a
    /// symlink at its last component: it is opened as a path handle beneath the root, and
    /// the mode set through the kernel's link to that handle.
    pub fn chmod(&self, rel: &Path, mode: u32) -> io::Result<()> {
        let (handle, meta) = path_handle(&self.dir, rel)?;
        if meta.file_type().is_symlink() {
            return Err(io::Error::other(format!("{}: a symlink", rel.display())));
        }
        chmod_handle(&handle, mode)
    }

    /// Opens the folder `rel` beneath the root, not through a symlink at its last
    /// component, readable (to list, `fsync` or `syncfs` through it).
    pub fn open_folder(&self, rel: &Path) -> io::Result<Dir> {
        open_folder_in(&self.dir, rel)
    }

    /// Replaces `rel` with `bytes` whole: written to `tmp` (a sibling name; one left there
    /// is removed, a symlink is never written through), then renamed over `rel`; returns
    /// the file, open for writing at its end (appends go to the file written, whatever is
    /// at its name by then).
    pub fn replace(&self, rel: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<File> {
        use std::io::Write;
        match self.dir.remove_file(tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut opts = OpenOptions::new();
        opts.write(true)
            .create_new(true)
            .follow(FollowSymlinks::No)
            .custom_flags(libc::O_NOCTTY);
        let mut file = self.dir.open_with(tmp, &opts)?.into_std();
        if let Err(e) = file
            .write_all(bytes)
            .and_then(|()| self.dir.rename(tmp, &self.dir, rel))
        {
            // A full disk leaves no empty temporary file behind.
            let _ = self.dir.remove_file(tmp);
            return Err(e);
        }
        Ok(file)
    }

    /// Makes the root folder's entries durable (`fsync`).
    pub fn sync(&self) -> io::Result<()> {
        sync_dir(&self.dir)
    }
}

/// Opens the folder `rel` beneath `at` for reading (cap-std's own `open_dir*` give a path
/// handle, `O_PATH`, which `fsync` and `syncfs` refuse).
fn open_folder_in(at: &Dir, rel: &Path) -> io::Result<Dir> {
    let mut opts = OpenOptions::new();
    opts.read(true)
        .follow(FollowSymlinks::No)
        .maybe_dir(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOCTTY);
    Ok(Dir::from_std_file(at.open_with(rel, &opts)?.into_std()))
}

/// `lstat` of the entry `name` of the open folder `at` (readdir may not give a type:
/// `DT_UNKNOWN` on some NFS, XFS and FUSE filesystems; or its inode may not be what
/// `stat` says: overlayfs, FUSE).
pub fn lstat_in(at: &Dir, name: &std::ffi::OsStr) -> io::Result<libc::stat> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a name"))?;
    // SAFETY: fstatat writes into the zeroed struct it is given, reads the
    // NUL-terminated name, relative to a folder `at` keeps open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            at.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Whether the entry of `at` is a folder (not a symlink to one): readdir's type, or an
/// `lstat` where readdir gives none.
pub fn is_folder(at: &Dir, entry: &cap_std::fs::DirEntry) -> io::Result<bool> {
    let t = entry.file_type()?;
    if t.is_dir() || t.is_file() || t.is_symlink() {
        return Ok(t.is_dir());
    }
    let st = lstat_in(at, &entry.file_name())?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// Raises the soft open-files limit to the hard one (no higher than the kernel's
/// `nr_open`, which may have been lowered since the hard limit was set); returns the
/// soft limit before and after. The walks that hold one open folder per level
/// ([`remove_all_in`]), a daemon's links and served files, and its writer's descriptor
/// cache all scale with it, and the soft limit of a login shell, or of a unit without
/// `LimitNOFILE`, is 1,024.
pub fn raise_open_files_limit() -> io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let was = lim.rlim_cur;
    if was >= lim.rlim_max {
        return Ok((was, was));
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    lim.rlim_max = lim.rlim_max.min(nr_open).max(was);
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((was, lim.rlim_cur))
}

/// Removes `rel` beneath `at` and, if it is a folder, everything under it, never through
/// a symlink (a symlink is removed, not followed); missing is not an error. With
/// `writable`, each folder that lacks owner rwx gets it first (an archive may make them
/// 0555; a daemon that is not root must still remove what it extracted). Iterative, one
/// open folder per level, so a tree made thousands of folders deep by someone costs
/// descriptors (an error when they run out), never the stack. (cap-std's
/// `remove_dir_all` takes readdir's type as it is, and treats an unknown one as a file.)
pub fn remove_all_in(at: &Dir, rel: &Path, writable: bool) -> io::Result<()> {
    let gone = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    };
    let meta = match at.symlink_metadata(rel) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return gone(at.remove_file(rel));
    }
    /// An open folder, its name in its parent, and its sub-folders still to remove.
    struct Level {
        dir: Dir,
        name: std::ffi::OsString,
        subs: Vec<std::ffi::OsString>,
    }
    // SAFETY: geteuid has no preconditions.
    let writable = writable && unsafe { libc::geteuid() } != 0;
    let open = |parent: &Dir, name: &Path| -> io::Result<Level> {
        let dir = match open_folder_in(parent, name) {
            Err(e) if writable && e.kind() == io::ErrorKind::PermissionDenied => {
                open_made_writable(parent, name)?
            }
            other => other?,
        };
        if writable {
            owner_rwx(&dir)?;
        }
        let mut subs = Vec::new();
        for entry in dir.entries()? {
            let entry = entry?;
            let n = entry.file_name();
            if is_folder(&dir, &entry)? {
                subs.push(n);
            } else {
                gone(dir.remove_file(&n))?;
            }
        }
        Ok(Level {
            dir,
            name: name.as_os_str().to_owned(),
            subs,
        })
    };
    let mut levels = vec![open(at, rel)?];
    while let Some(top) = levels.last_mut() {
        if let Some(sub) = top.subs.pop() {
            match open(&top.dir, Path::new(&sub)) {
                Ok(next) => levels.push(next),
                // Gone meanwhile: nothing left to remove there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let done = levels.pop().map(|l| l.name).unwrap_or_default();
        let parent = levels.last().map_or(at, |l| &l.dir);
        gone(parent.remove_dir(&done))?;
    }
    Ok(())
}

/// Gives an open folder owner rwx (its other bits kept, never a set-id bit), through its
/// own descriptor: the inode opened, whatever is at its name by now.
fn owner_rwx(dir: &Dir) -> io::Result<()> {
    // SAFETY: fstat writes into the zeroed struct; fchmod acts on the descriptor `dir`
    // keeps open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(dir.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & 0o700 != 0o700
        && unsafe { libc::fchmod(dir.as_raw_fd(), (st.st_mode & 0o777) | 0o700) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A path handle (`O_PATH`) of `rel` beneath `at`, not through a symlink at its last
/// component (a symlink there gives a handle of the link itself), with its metadata.
fn path_handle(at: &Dir, rel: &Path) -> io::Result<(File, Metadata)> {
    let mut opts = OpenOptions::new();
    opts.read(true)
        .follow(FollowSymlinks::No)
        .maybe_dir(true)
        .custom_flags(libc::O_PATH);
    let handle = at.open_with(rel, &opts)?.into_std();
    let meta = handle.metadata()?;
    Ok((handle, meta))
}

/// chmod of the kernel's link to a path handle: it reaches the inode the handle holds
/// (as glibc's fchmodat(AT_SYMLINK_NOFOLLOW) does), whatever is at its name by now.
fn chmod_handle(handle: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        format!("/proc/self/fd/{}", handle.as_raw_fd()),
        std::fs::Permissions::from_mode(mode & 0o7777),
    )
}

/// Opens a folder its owner may not read (0o000, 0o300): a path handle of it, not
/// through a symlink, must be a folder; owner rwx is given through that handle, and the
/// folder opened through it — every step on the same inode.
fn open_made_writable(parent: &Dir, name: &Path) -> io::Result<Dir> {
    use std::os::fd::FromRawFd;
    let (handle, meta) = path_handle(parent, name)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{}: not a folder",
            name.display()
        )));
    }
    chmod_handle(&handle, (meta.mode() & 0o777) | 0o700)?;
    // SAFETY: openat reads the NUL-terminated ".", relative to the handle `handle` keeps
    // open; the descriptor it returns is owned by the File made of it.
    let fd = unsafe {
        libc::openat(
            handle.as_raw_fd(),
            c".".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Dir::from_std_file(unsafe { File::from_raw_fd(fd) }))
}

/// `fsync` of an open folder.
pub fn sync_dir(dir: &Dir) -> io::Result<()> {
    // SAFETY: fsync only reads the descriptor, which `dir` keeps open.
    if unsafe { libc::fsync(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
