//! Filesystem steps of installs and uninstalls: folders created without following links,
//! trees removed whatever modes an archive gave them, and the syncs that make a swap durable.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::InstallError;

pub(crate) const STAGING: &str = ".lanspread-staging";
pub(crate) const TRASH: &str = ".lanspread-trash";
pub(crate) const LOCAL: &str = "local";
/// What an install or uninstall killed midway leaves in a root (the staging folder and a
/// moved-aside old `local/`): safe to remove while no operation runs on it.
pub const LEFTOVERS: [&str; 2] = [STAGING, TRASH];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |e| InstallError::io(path, e)
}

/// Creates `dir` (inside `staging`) component by component, refusing symlinks.
pub(crate) fn create_dirs(staging: &Path, dir: &Path) -> Result<(), InstallError> {
    let rel = dir
        .strip_prefix(staging)
        .map_err(|_| InstallError::UnsafeName(dir.display().to_string()))?;
    let mut cur = staging.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(InstallError::UnsafeName(format!(
                    "{} is in the way",
                    cur.display()
                )))
            }
            Err(_) => fs::create_dir(&cur).map_err(io(&cur))?,
        }
    }
    Ok(())
}

/// Removes `local/` (moved aside first, so a crash never leaves half of it looking
/// installed); the downloaded root stays.
pub fn uninstall_root(root: &Path) -> Result<(), InstallError> {
    let local = root.join(LOCAL);
    if !local.exists() {
        return Ok(());
    }
    let trash = root.join(TRASH);
    remove_tree(&trash)?;
    fs::rename(&local, &trash).map_err(io(&local))?;
    sync_dir(root)?;
    remove_tree(&trash)
}

/// Deletes `dir` and everything under it, never following symlinks. Folders their owner
/// cannot write (an archive may create them 0555) are made writable first, so a daemon
/// that is not root can delete what it extracted. A missing `dir` is not an error.
pub fn remove_tree(dir: &Path) -> Result<(), InstallError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            make_writable(dir);
            fs::remove_dir_all(dir).map_err(io(dir))
        }
        Err(e) => Err(io(dir)(e)),
    }
}

/// Gives the owner rwx on `dir` and every folder under it (not through symlinks).
fn make_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&entry.path());
        }
    }
}

/// Flushes every dirty file and folder of the filesystem that holds `dir`.
pub(crate) fn sync_fs(dir: &Path) -> Result<(), InstallError> {
    use std::os::fd::AsRawFd;
    let d = fs::File::open(dir).map_err(io(dir))?;
    // SAFETY: syncfs only reads the descriptor, which `d` keeps open for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(InstallError::io(dir, std::io::Error::last_os_error()))
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}
