//! Preparing a root for a download and committing it: files land at their final paths,
//! except `version.ini`, which is received under `.lanspread/incoming/` and renamed into
//! place last, after every data file is synced, followed by a directory fsync.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
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
/// The root folder as opened before anything is written: a `syncfs` through it reports
/// every writeback error of its filesystem since (see [`commit`]).
pub struct RootDir {
    dir: fs::File,
    /// Every destination's folder is on the root's filesystem (no mount inside the root).
    one_filesystem: bool,
}

impl RootDir {
    /// Whether one `syncfs` covers every file of this download.
    pub fn one_filesystem(&self) -> bool {
        self.one_filesystem
    }

    /// The same open folder (a dup shares its writeback error cursor).
    pub fn dup(&self, root: &Path) -> Result<fs::File, Failure> {
        self.dir.try_clone().map_err(|e| err(root, e))
    }
}

/// Also returns the root folder opened before anything is written ([`RootDir`]).
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
    let dir = fs::File::open(root).map_err(|e| err(root, e))?;
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
    let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
    let root_dev = dev(root);
    let folders: BTreeSet<&Path> = dests.iter().filter_map(|d| d.parent()).collect();
    let one_filesystem = root_dev.is_some() && folders.iter().all(|f| dev(f) == root_dev);
    Ok((
        dests,
        RootDir {
            dir,
            one_filesystem,
        },
    ))
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
/// `syncfs`: the files were not synced one by one; one `syncfs` through this folder (the
/// root as [`prepare`] opened it, before the first write) makes them, their modes and
/// every folder entry durable after the modes are set and stale files removed (Linux ≥
/// 5.8 reports every writeback error of the filesystem since that open; the io_uring
/// writer needs a newer kernel anyway). Cheaper than one `fdatasync` per file and one
/// `fsync` per folder for a game of many small files; it also flushes what others wrote
/// there, which a games filesystem busy with other downloads pays for.
pub async fn commit(
    root: &Path,
    files: &[FileManifest],
    dests: &[PathBuf],
    version: Version,
    syncfs: Option<fs::File>,
) -> Result<(), Failure> {
    let (root, files, dests) = (root.to_path_buf(), files.to_vec(), dests.to_vec());
    tokio::task::spawn_blocking(move || {
        commit_blocking(&root, &files, &dests, version, syncfs.as_ref())
    })
    .await
    .map_err(Failure::internal)?
}

/// Sets the mode of the file at `path` itself: a symlink put there since the file was
/// written (the daemon may run as root) makes it fail, never changes its target. Where
/// the C library cannot chmod without following (glibc < 2.32 refuses every
/// `AT_SYMLINK_NOFOLLOW`), a symlink is refused first, then the mode set by path.
fn chmod_no_follow(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a NUL in the path"))?;
    // SAFETY: fchmodat reads the NUL-terminated path it is given.
    let rc = unsafe {
        libc::fchmodat(
            libc::AT_FDCWD,
            c.as_ptr(),
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
    if fs::symlink_metadata(path)?.file_type().is_symlink() {
        return Err(e);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

fn commit_blocking(
    root: &Path,
    files: &[FileManifest],
    dests: &[PathBuf],
    version: Version,
    syncfs: Option<&fs::File>,
) -> Result<(), Failure> {
    for (f, dest) in files.iter().zip(dests) {
        chmod_no_follow(dest, f.mode & 0o7777).map_err(|e| err(dest, e))?;
    }
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
    match syncfs {
        // Everything on the filesystem, folders included, is durable after this.
        Some(dir) => {
            // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
            if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(dir)) } != 0 {
                return Err(err(root, io::Error::last_os_error()));
            }
        }
        // The files' data is durable (fdatasync); their names in sub-folders must be too
        // before the sentinel says the root is complete (the root itself is synced below).
        None => {
            for folder in &folders {
                sync_dir(&root.join(folder))?;
            }
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
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_set_on_files_never_through_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("game.bin");
        fs::write(&file, b"x").unwrap();
        chmod_no_follow(&file, 0o751).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o751);
        let outside = d.path().join("outside");
        fs::write(&outside, b"secret").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o600)).unwrap();
        let link = d.path().join("link.bin");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert!(chmod_no_follow(&link, 0o777).is_err());
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o7777, 0o600);
    }
}
