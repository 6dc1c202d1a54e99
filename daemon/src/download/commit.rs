//! Preparing a root for a download and committing it: files land at their final paths,
//! except `version.ini`, which is received under `.lanspread/incoming/` and renamed into
//! place last, after every data file is synced, followed by a directory fsync.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lanspread_catalog::{is_reserved_top_level, FileManifest, Version, VERSION_FILE};

use super::is_sentinel;
use lanspread_control::{ErrorKind, Failure};

pub const INCOMING: &str = ".lanspread/incoming";

fn err(path: &Path, e: io::Error) -> Failure {
    Failure::io(path.display(), &e)
}

/// Creates the root and parent folders without following symlinks, removes a committed
/// `version.ini` (the root is not Ready from here on) and returns each file's destination.
/// One folder per filesystem the download writes to (the root's first), as opened before
/// anything is written: a `syncfs` through each reports every writeback error of its
/// filesystem since (see [`commit`]).
pub struct RootDir {
    dirs: Vec<fs::File>,
    /// The root as the kernel resolved it when it was opened.
    real: PathBuf,
}

impl RootDir {
    /// The root as the kernel resolved it when [`prepare`] opened it.
    pub fn real(&self) -> &Path {
        &self.real
    }

    /// The same open folders (a dup shares its writeback error cursor).
    pub fn dup(&self, root: &Path) -> Result<Vec<fs::File>, Failure> {
        self.dirs
            .iter()
            .map(|d| d.try_clone().map_err(|e| err(root, e)))
            .collect()
    }
}

/// Also returns the folders opened before anything is written ([`RootDir`]).
pub async fn prepare(
    root: &Path,
    files: &[FileManifest],
) -> Result<(Vec<PathBuf>, RootDir), Failure> {
    let root = root.to_path_buf();
    let files = files.to_vec();
    tokio::task::spawn_blocking(move || prepare_blocking(&root, &files))
        .await
        .map_err(Failure::internal)?
}

fn prepare_blocking(
    root: &Path,
    files: &[FileManifest],
) -> Result<(Vec<PathBuf>, RootDir), Failure> {
    match fs::symlink_metadata(root) {
        Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
            return Err(Failure::new(
                ErrorKind::Io,
                format!("{} exists and is not a folder", root.display()),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir(root).map_err(|e| err(root, e))?
        }
        Err(e) => return Err(err(root, e)),
    }
    let sentinel = root.join(VERSION_FILE);
    match fs::remove_file(&sentinel) {
        Ok(()) => sync_dir(root)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(&sentinel, e)),
    }
    let incoming = root.join(INCOMING);
    fs::create_dir_all(&incoming).map_err(|e| err(&incoming, e))?;
    let dir = open_dir(root).map_err(|e| err(root, e))?;
    let mut dests = Vec::with_capacity(files.len());
    for f in files {
        let dest = if is_sentinel(f) {
            incoming.join(VERSION_FILE)
        } else {
            create_parents(root, f.path.as_str())?
        };
        // Never write through a symlink left at the destination.
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&dest).map_err(|e| err(&dest, e))?;
        }
        dests.push(dest);
    }
    // Where the root really is, from the folder just opened: the commit's folders must
    // resolve inside it (a root replaced by a symlink since is not followed there).
    let real =
        fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(|e| err(root, e))?;
    // The root first, then one folder of each other filesystem a file lands on (a
    // mount inside the root), found by `lstat` and opened only then.
    let mut devs = vec![dir.metadata().map_err(|e| err(root, e))?.dev()];
    let mut dirs = vec![dir];
    let folders: BTreeSet<&Path> = dests.iter().filter_map(|d| d.parent()).collect();
    for folder in folders {
        let dev = fs::symlink_metadata(folder)
            .map_err(|e| err(folder, e))?
            .dev();
        if devs.contains(&dev) {
            continue;
        }
        let opened = open_dir(folder).map_err(|e| err(folder, e))?;
        let dev = opened.metadata().map_err(|e| err(folder, e))?.dev();
        if !devs.contains(&dev) {
            devs.push(dev);
            dirs.push(opened);
        }
    }
    Ok((dests, RootDir { dirs, real }))
}

/// Opens a folder for `syncfs`/`fsync`: a folder only, never through a last symlink, never
/// a terminal (a FIFO or device swapped in fails instead of blocking or acting).
fn open_dir(dir: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(dir)
}

/// Creates the folders of `rel` under `root` one by one, refusing symlinks and files in
/// the way, and returns the destination path.
fn create_parents(root: &Path, rel: &str) -> Result<PathBuf, Failure> {
    let comps: Vec<&str> = rel.split('/').collect();
    let mut dir = root.to_path_buf();
    for comp in &comps[..comps.len().saturating_sub(1)] {
        dir.push(comp);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Failure::new(
                    ErrorKind::Io,
                    format!("{} is in the way (not a folder)", dir.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&dir).map_err(|e| err(&dir, e))?
            }
            Err(e) => return Err(err(&dir, e)),
        }
    }
    Ok(dir.join(comps.last().copied().unwrap_or_default()))
}

/// Applies modes, removes files the manifest does not list, fsyncs the folders that hold
/// files, checks the received `version.ini` and renames it into place, then fsyncs the
/// root.
/// `syncfs`: one `syncfs` through each of these folders (one per filesystem, as
/// [`prepare`] opened them before the first write) makes the files, their modes and
/// every folder entry durable after the modes are set and stale files removed (Linux ≥
/// 5.8 reports every writeback error of the filesystem since that open; the io_uring
/// writer needs a newer kernel anyway); none: the folders are fsynced one by one. Cheaper than one `fdatasync` per file and one
/// `fsync` per folder for a game of many small files; it also flushes what others wrote
/// there, which a games filesystem busy with other downloads pays for.
pub async fn commit(
    (root, real_root): (&Path, &Path),
    files: &[FileManifest],
    dests: &[PathBuf],
    version: Version,
    syncfs: Vec<fs::File>,
) -> Result<(), Failure> {
    let (root, files, dests) = (root.to_path_buf(), files.to_vec(), dests.to_vec());
    let real_root = real_root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        commit_blocking((&root, &real_root), &files, &dests, version, &syncfs)
    })
    .await
    .map_err(Failure::internal)?
}

/// Sets the mode of each file itself, never through a symlink: each file's folder is
/// opened (`O_PATH|O_NOFOLLOW`, one at a time, files taken folder by folder) and must
/// still resolve inside `real_root` (the root as it was opened before the first write),
/// and the mode is set relative to it without following the name (a folder or file
/// replaced by a symlink since it was written — the daemon may run as root — fails the
/// commit instead of changing a target elsewhere). Only permission bits travel: a
/// peer's setuid or setgid bit is dropped.
fn set_modes(real_root: &Path, files: &[FileManifest], dests: &[PathBuf]) -> Result<(), Failure> {
    use std::os::fd::OwnedFd;
    use std::os::unix::ffi::OsStrExt;
    let mut order: Vec<usize> = (0..files.len().min(dests.len())).collect();
    order.sort_by_key(|&i| dests[i].parent());
    let mut open: Option<(&Path, OwnedFd)> = None;
    for i in order {
        let (f, dest) = (&files[i], &dests[i]);
        let (Some(folder), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Err(Failure::new(
                ErrorKind::Io,
                format!("{}: no folder", dest.display()),
            ));
        };
        let fd = match open.take() {
            Some((at, fd)) if at == folder => fd,
            _ => open_folder_inside(folder, real_root).map_err(|e| err(folder, e))?,
        };
        let dir = fd.as_raw_fd();
        open = Some((folder, fd));
        let name = std::ffi::CString::new(name.as_bytes())
            .map_err(|_| Failure::new(ErrorKind::Io, format!("{}: a NUL", dest.display())))?;
        chmod_at(dir, &name, f.mode & 0o777).map_err(|e| err(dest, e))?;
    }
    Ok(())
}

/// Opens `folder` as a path handle, not following a last symlink, and only if it still
/// resolves inside `real_root`.
fn open_folder_inside(folder: &Path, real_root: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(folder)?;
    let real = fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ))?;
    if !real.starts_with(real_root) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the folder leaves the game root",
        ));
    }
    Ok(dir.into())
}

/// `fchmodat` of `name` in the folder `dir` without following a symlink. Where the C
/// library cannot (glibc < 2.32, or no `/proc`: `EOPNOTSUPP` for every file), the name is
/// checked first, then the mode set through the folder (a race left only there).
fn chmod_at(dir: std::os::fd::RawFd, name: &std::ffi::CStr, mode: u32) -> io::Result<()> {
    // SAFETY: fchmodat reads the NUL-terminated name it is given, relative to a folder
    // descriptor the caller keeps open.
    let rc = unsafe {
        libc::fchmodat(
            dir,
            name.as_ptr(),
            mode as libc::mode_t,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    // SAFETY: fstatat writes into the zeroed struct it is given and reads the name.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(e);
    }
    // SAFETY: as above, following the name (checked a moment ago).
    if unsafe { libc::fchmodat(dir, name.as_ptr(), mode as libc::mode_t, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn commit_blocking(
    (root, real_root): (&Path, &Path),
    files: &[FileManifest],
    dests: &[PathBuf],
    version: Version,
    syncfs: &[fs::File],
) -> Result<(), Failure> {
    set_modes(real_root, files, dests)?;
    // Listed files and every folder that holds one, looked up once per entry.
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    let mut folders: BTreeSet<&str> = BTreeSet::new();
    for f in files {
        let p = f.path.as_str();
        keep.insert(p);
        folders.extend(p.match_indices('/').map(|(i, _)| &p[..i]));
    }
    keep.extend(&folders);
    remove_extra(root, "", &keep)?;
    if syncfs.is_empty() {
        // The files' data is durable (fdatasync); their names in sub-folders must be too
        // before the sentinel says the root is complete (the root itself is synced below).
        for folder in &folders {
            sync_dir(&root.join(folder))?;
        }
    }
    // Everything on each filesystem, folders included, is durable after this.
    for dir in syncfs {
        // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(dir)) } != 0 {
            return Err(err(root, io::Error::last_os_error()));
        }
    }
    let incoming = root.join(INCOMING).join(VERSION_FILE);
    let text = fs::read_to_string(&incoming).map_err(|e| err(&incoming, e))?;
    match Version::parse(&text) {
        Ok(v) if v == version => {}
        // Its bytes were checked against the manifest: the sources sent a wrong one.
        Ok(v) => {
            return Err(Failure::new(
                ErrorKind::SourceFailed,
                format!("received version.ini says {v}, expected {version}"),
            ))
        }
        Err(e) => {
            return Err(Failure::new(
                ErrorKind::SourceFailed,
                format!("received version.ini: {e}"),
            ))
        }
    }
    fs::File::open(&incoming)
        .and_then(|f| f.sync_all())
        .map_err(|e| err(&incoming, e))?;
    fs::rename(&incoming, root.join(VERSION_FILE)).map_err(|e| err(root, e))?;
    sync_dir(root)?;
    let _ = fs::remove_dir(root.join(INCOMING));
    Ok(())
}

/// Removes regular files and symlinks under `root` that the manifest does not list (files
/// of an older version), leaving `local/` and `.lanspread*` alone.
fn remove_extra(dir: &Path, prefix: &str, keep: &BTreeSet<&str>) -> Result<(), Failure> {
    for entry in fs::read_dir(dir).map_err(|e| err(dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefix.is_empty() && (is_reserved_top_level(&name) || name == VERSION_FILE) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        // The type readdir gave (no stat per entry); a symlink is not followed.
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            remove_extra(&path, &rel, keep)?;
            if !keep.contains(rel.as_str()) {
                let _ = fs::remove_dir(&path);
            }
        } else if !keep.contains(rel.as_str()) {
            fs::remove_file(&path).map_err(|e| err(&path, e))?;
        }
    }
    Ok(())
}

/// After a failed download: no received sentinel may survive.
pub async fn discard_incoming(root: &Path) {
    let incoming = root.join(INCOMING);
    let _ = tokio::task::spawn_blocking(move || fs::remove_dir_all(incoming)).await;
}

fn sync_dir(dir: &Path) -> Result<(), Failure> {
    open_dir(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn modes_are_set_on_files_never_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("game");
        fs::create_dir_all(root.join("sub")).unwrap();
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let secret = outside.join("x.bin");
        fs::write(&secret, b"secret").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        let manifest = |p: &str, mode| {
            let path = lanspread_catalog::RelPath::new(p).unwrap();
            FileManifest::from_pieces(path, 1, mode, vec![[0; 32]])
        };
        let real = fs::canonicalize(&root).unwrap();
        // A file: its mode, without a peer's setuid bit.
        fs::write(root.join("sub/x.bin"), b"x").unwrap();
        let files = [manifest("sub/x.bin", 0o4755)];
        let dests = [root.join("sub/x.bin")];
        set_modes(&real, &files, &dests).unwrap();
        assert_eq!(fs::metadata(&dests[0]).unwrap().mode() & 0o7777, 0o755);
        // The file replaced by a symlink to a file outside.
        fs::remove_file(&dests[0]).unwrap();
        std::os::unix::fs::symlink(&secret, &dests[0]).unwrap();
        assert!(set_modes(&real, &files, &dests).is_err());
        // Its folder replaced by a symlink to a folder outside holding a file of that name.
        fs::remove_file(&dests[0]).unwrap();
        fs::remove_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sub")).unwrap();
        assert!(set_modes(&real, &files, &dests).is_err());
        // A folder higher up replaced: `a -> outside`, the file at `a/sub/x.bin`.
        fs::create_dir_all(outside.join("sub")).unwrap();
        let deep = outside.join("sub/x.bin");
        fs::write(&deep, b"secret").unwrap();
        fs::set_permissions(&deep, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a")).unwrap();
        let files = [manifest("a/sub/x.bin", 0o777)];
        let dests = [root.join("a/sub/x.bin")];
        assert!(set_modes(&real, &files, &dests).is_err());
        assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o7777, 0o600);
        assert_eq!(fs::metadata(&deep).unwrap().mode() & 0o7777, 0o600);
    }
}
