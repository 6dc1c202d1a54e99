//! Filesystem steps of installs and uninstalls, all beneath an open folder's descriptor
//! (cap-std's `Dir`, as `lanspread_catalog::GameDir` holds it): trees removed whatever
//! modes an archive gave them, never through a symlink and never outside the folder, and
//! the syncs that make a swap durable.

use std::io;
use std::path::Path;

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;
use lanspread_catalog::{chmod_in, is_folder, remove_all_in, GameDir};

use crate::InstallError;

pub(crate) const STAGING: &str = ".lanspread-staging";
pub(crate) const TRASH: &str = ".lanspread-trash";
pub(crate) const LOCAL: &str = "local";
/// What an install or uninstall killed midway leaves in a root (the staging folder and a
/// moved-aside old `local/`): safe to remove while no operation runs on it.
pub const LEFTOVERS: [&str; 2] = [STAGING, TRASH];

fn io_at(game: &GameDir, rel: &str) -> impl FnOnce(io::Error) -> InstallError {
    let path = game.shown(Path::new(rel));
    move |e| InstallError::io(path, e)
}

/// Removes `local/` (moved aside first, so a crash never leaves half of it looking
/// installed); the downloaded root stays.
pub fn uninstall_root(root: &Path) -> Result<(), InstallError> {
    let game = GameDir::open(root).map_err(|e| InstallError::io(root, e))?;
    if game.dir().symlink_metadata(LOCAL).is_err() {
        return Ok(());
    }
    remove_tree_in(&game, TRASH)?;
    game.dir()
        .rename(LOCAL, game.dir(), TRASH)
        .map_err(io_at(&game, LOCAL))?;
    game.sync().map_err(|e| InstallError::io(root, e))?;
    remove_tree_in(&game, TRASH)
}

/// Deletes `dir` and everything under it, never following symlinks (`dir` itself is not
/// followed either; its parent folder is opened as it is). Folders their owner cannot
/// write (an archive may create them 0555) are made writable first, so a daemon that is
/// not root can delete what it extracted. A missing `dir` is not an error.
pub fn remove_tree(dir: &Path) -> Result<(), InstallError> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(InstallError::io(
            dir,
            io::Error::other("not a folder to remove"),
        ));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let parent = std::fs::File::open(parent).map_err(|e| InstallError::io(parent, e))?;
    remove_in(&Dir::from_std_file(parent), Path::new(name)).map_err(|e| InstallError::io(dir, e))
}

/// [`remove_tree`] of `rel` beneath `game`.
pub(crate) fn remove_tree_in(game: &GameDir, rel: &str) -> Result<(), InstallError> {
    remove_in(game.dir(), Path::new(rel)).map_err(io_at(game, rel))
}

fn remove_in(at: &Dir, rel: &Path) -> io::Result<()> {
    match remove_all_in(at, rel) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(at, rel);
            remove_all_in(at, rel)
        }
        other => other,
    }
}

/// Gives the owner rwx on the folder `rel` beneath `at` and every folder under it, never
/// through a symlink.
fn make_writable(at: &Dir, rel: &Path) {
    let Ok(meta) = at.symlink_metadata(rel) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = cap_std::fs::PermissionsExt::mode(&meta.permissions());
    if mode & 0o700 != 0o700 && chmod_in(at, rel, mode | 0o700).is_err() {
        return;
    }
    let Ok(sub) = at.open_dir_nofollow(rel) else {
        return;
    };
    for entry in sub.entries().into_iter().flatten().flatten() {
        if is_folder(&sub, &entry).unwrap_or(false) {
            make_writable(&sub, Path::new(&entry.file_name()));
        }
    }
}

/// Flushes every dirty file and folder of the filesystem that holds `dir`.
pub(crate) fn sync_fs(dir: &GameDir) -> Result<(), InstallError> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.dir().as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(InstallError::io(dir.path(), io::Error::last_os_error()))
    }
}
