//! Filesystem steps of installs and uninstalls, all beneath an open folder's descriptor
//! (cap-std's `Dir`, as `lanspread_catalog::GameDir` holds it): trees removed whatever
//! modes an archive gave them, never through a symlink and never outside the folder, and
//! the syncs that make a swap durable.

use std::io;
use std::path::Path;

use cap_std::fs::Dir;
use lanspread_catalog::{remove_all_in, GameDir};

use crate::InstallError;

pub(crate) const STAGING: &str = ".lanspread-staging";
pub(crate) const TRASH: &str = ".lanspread-trash";
pub(crate) const LOCAL: &str = "local";
/// What an install or uninstall killed midway leaves in a root (the staging folder and a
/// moved-aside old `local/`): safe to remove while no operation runs on it.
pub const LEFTOVERS: [&str; 2] = [STAGING, TRASH];
/// The start of the names of old trees this process could not remove (a file someone
/// else owns, an immutable one), moved aside so that they block no later install or
/// uninstall: safe to remove while no operation runs (the start-up sweep tries again).
pub const TRASH_ASIDE: &str = ".lanspread-trash-";

/// Removes the trash folder; one that cannot be removed is moved aside
/// ([`TRASH_ASIDE`]) instead, with a warning. Fails only when it can be neither.
pub(crate) fn clear_trash(game: &GameDir) -> Result<(), InstallError> {
    let Err(e) = remove_tree_in(game, TRASH) else {
        return Ok(());
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for i in 0..100 {
        let aside = format!("{TRASH_ASIDE}{nanos}-{i}");
        if game.dir().symlink_metadata(&aside).is_ok() {
            continue;
        }
        return match game.dir().rename(TRASH, game.dir(), &aside) {
            Ok(()) => {
                tracing::warn!(
                    path = %game.shown(Path::new(&aside)).display(),
                    "an old install could not be removed ({e}); moved aside, removed at the \
                     next start if it can be"
                );
                Ok(())
            }
            Err(_) => Err(e),
        };
    }
    Err(e)
}

fn io_at(game: &GameDir, rel: &str) -> impl FnOnce(io::Error) -> InstallError {
    let path = game.shown(Path::new(rel));
    move |e| InstallError::io(path, e)
}

/// Removes `local/` (moved aside first, so a crash never leaves half of it looking
/// installed); the downloaded root stays.
pub fn uninstall_root(root: &Path) -> Result<(), InstallError> {
    let game = GameDir::open(root).map_err(|e| InstallError::io(root, e))?;
    match game.dir().symlink_metadata(LOCAL) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_at(&game, LOCAL)(e)),
        Ok(_) => {}
    }
    clear_trash(&game)?;
    game.dir()
        .rename(LOCAL, game.dir(), TRASH)
        .map_err(io_at(&game, LOCAL))?;
    // Uninstalled from here on: what follows cannot undo it, so it only warns.
    if let Err(e) = game.sync() {
        tracing::warn!(path = %root.display(), "uninstalled, but the rename was not synced: {e}");
    }
    if let Err(e) = clear_trash(&game) {
        tracing::warn!("uninstalled, but the old files stay: {e}");
    }
    Ok(())
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

/// Folders without owner rwx get it first (see `remove_all_in`).
fn remove_in(at: &Dir, rel: &Path) -> io::Result<()> {
    remove_all_in(at, rel, true)
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
