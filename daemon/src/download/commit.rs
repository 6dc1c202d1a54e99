//! Preparing a root for a download and committing it: files land at their final paths,
//! except `version.ini`, which is received under `.lanspread/incoming/` and renamed into
//! place last, after every data file is synced, followed by a directory fsync.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_fs_ext::DirExt;
use lanspread_catalog::{
    case_clash, dev_of, folds_to_reserved, is_folder, is_reserved_top_level, lstat_in,
    remove_all_in, Access, FileManifest, GameDir, Inode, RelPath, Version, VERSION_FILE,
};

use crate::writer::{final_mode, working_mode};

use super::is_sentinel;
use lanspread_control::{ErrorKind, Failure};

pub const INCOMING: &str = ".lanspread/incoming";

fn err(path: &Path, e: io::Error) -> Failure {
    Failure::io(path.display(), &e)
}

/// The root opened before anything is written, and one folder per filesystem the
/// download writes to (the root's first): a `syncfs` through each reports every
/// writeback error of its filesystem since (see [`commit`]). Every file, folder, rename
/// and removal of the download goes through [`RootDir::game`] (never through a symlink,
/// never outside the root: see `lanspread_catalog::GameDir`).
pub struct RootDir {
    game: Arc<GameDir>,
    dirs: Vec<fs::File>,
    /// The file the writer created for each file of the manifest, in its order.
    created: Vec<Inode>,
}

impl RootDir {
    /// The writer created the next file of the manifest as `inode`.
    pub fn created(&mut self, inode: Inode) {
        self.created.push(inode);
    }

    /// The open root.
    pub fn game(&self) -> &Arc<GameDir> {
        &self.game
    }

    /// The same open folders (a dup shares its writeback error cursor).
    pub fn dup(&self) -> Result<Vec<fs::File>, Failure> {
        self.dirs
            .iter()
            .map(|d| d.try_clone().map_err(|e| err(self.game.path(), e)))
            .collect()
    }
}

/// Creates the root, the files' folders and the manifest's empty folders (never through
/// a symlink), removes a committed `version.ini` (the root is not Ready from here on)
/// and returns each file's destination relative to the root, with the open root
/// ([`RootDir`]).
pub async fn prepare(
    root: &Path,
    (files, folders): (&[FileManifest], &[RelPath]),
) -> Result<(Vec<PathBuf>, RootDir), Failure> {
    let root = root.to_path_buf();
    let (files, folders) = (files.to_vec(), folders.to_vec());
    tokio::task::spawn_blocking(move || prepare_blocking(&root, (&files, &folders)))
        .await
        .map_err(Failure::internal)?
}

fn prepare_blocking(
    root: &Path,
    (files, folders): (&[FileManifest], &[RelPath]),
) -> Result<(Vec<PathBuf>, RootDir), Failure> {
    match fs::create_dir(root) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(err(root, e)),
        _ => {}
    }
    let game = GameDir::open(root).map_err(|e| match fs::symlink_metadata(root) {
        Ok(m) if !m.is_dir() => Failure::new(
            ErrorKind::Io,
            format!("{} exists and is not a folder", root.display()),
        ),
        _ => err(root, e),
    })?;
    let incoming = Path::new(INCOMING);
    // The journal's folder too, whatever the manifest holds; made first, so a root whose
    // `.lanspread` is in the way keeps its committed version.
    game.create_folders(incoming)
        .map_err(|e| err(&game.shown(incoming), e))?;
    // Where the filesystem ignores case, `LOCAL/x` is the installer's `local/x` and a
    // file `.LANSPREAD` would take the journal's folder away: such names are refused
    // before the committed version goes (elsewhere they are ordinary names).
    if game.ignores_case().map_err(|e| err(root, e))? {
        let top = |p: &RelPath| p.as_str().split('/').next().unwrap_or("").to_owned();
        if let Some(p) = files
            .iter()
            .map(|f| &f.path)
            .chain(folders)
            .find(|p| folds_to_reserved(&top(p)))
        {
            return Err(Failure::new(
                ErrorKind::Io,
                format!(
                    "{}: this filesystem ignores case, so `{}` is a name lanspread keeps \
                     for itself (local/, .lanspread*, version.ini); the game cannot be \
                     stored in this games dir",
                    game.shown(&p.to_path(Path::new(""))).display(),
                    top(p)
                ),
            ));
        }
        // Two files that are one here would fail the download later anyway
        // (`one_file_each`); refused now, the committed version stays.
        if let Some((a, b)) = case_clash(files.iter().map(|f| &f.path).chain(folders)) {
            return Err(Failure::new(
                ErrorKind::Io,
                format!(
                    "{} and {} are one name on this filesystem, which ignores case; the \
                     game cannot be stored in this games dir",
                    game.shown(Path::new(a)).display(),
                    game.shown(Path::new(b)).display()
                ),
            ));
        }
    }
    match game.dir().remove_file(VERSION_FILE) {
        Ok(()) => game.sync().map_err(|e| err(root, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(&root.join(VERSION_FILE), e)),
    }
    // The root first, then one folder of each other filesystem a file lands on (a
    // mount inside the root).
    let root_file = game
        .dir()
        .try_clone()
        .map_err(|e| err(root, e))?
        .into_std_file();
    let mut devs = vec![root_file.metadata().map_err(|e| err(root, e))?.dev()];
    let mut dirs = vec![root_file];
    let mut dests = Vec::with_capacity(files.len());
    // Files come folder by folder (a manifest is sorted by path): each folder is made
    // and opened once per run of its files.
    let mut open: Option<(PathBuf, cap_std::fs::Dir)> = None;
    for f in files {
        let dest = if is_sentinel(f) {
            incoming.join(VERSION_FILE)
        } else {
            f.path.to_path(Path::new(""))
        };
        let (Some(folder), Some(name)) = (dest.parent(), dest.file_name()) else {
            return Err(Failure::new(ErrorKind::Io, "a file without a name"));
        };
        let at = match open.take() {
            Some((at, dir)) if at == folder => dir,
            _ => {
                // An older copy's file or symlink where the manifest has a folder is
                // removed (else an update that turns a file into a folder failed every
                // retry: the commit keeps whatever is at a listed folder's name).
                let dir = game
                    .create_folders_replacing(folder)
                    .map_err(|e| err(&game.shown(folder), e))?;
                let opened = dir.try_clone().map_err(|e| err(root, e))?.into_std_file();
                let dev = opened.metadata().map_err(|e| err(root, e))?.dev();
                if !devs.contains(&dev) {
                    devs.push(dev);
                    dirs.push(opened);
                }
                dir
            }
        };
        // Never write through a symlink left at the destination; an older copy's folder
        // where the manifest has a file goes, with what is in it (else an update that
        // turns a folder into a file failed every retry with "Is a directory", the old
        // version already uncommitted). Nothing under it is listed: a manifest never
        // has a file and something under it.
        match at.symlink_metadata(name) {
            Ok(m) if m.file_type().is_symlink() => at
                .remove_file(name)
                .map_err(|e| err(&game.shown(&dest), e))?,
            Ok(m) if m.is_dir() => remove_all_in(&at, Path::new(name), false)
                .map_err(|e| err(&game.shown(&dest), e))?,
            _ => {}
        }
        open = Some((folder.to_path_buf(), at));
        dests.push(dest);
    }
    // Empty folders now, so one that cannot be made fails the download before a byte
    // moves; each one's entry is on its parent's filesystem (a `syncfs` there makes it
    // durable).
    for d in folders {
        let d = d.to_path(Path::new(""));
        game.create_folders_replacing(&d)
            .map_err(|e| err(&game.shown(&d), e))?;
        let parent = d.parent().unwrap_or(Path::new(""));
        let opened = if parent.as_os_str().is_empty() {
            game.dir().try_clone()
        } else {
            game.open_folder(parent)
        }
        .map_err(|e| err(&game.shown(parent), e))?
        .into_std_file();
        let dev = opened.metadata().map_err(|e| err(root, e))?.dev();
        if !devs.contains(&dev) {
            devs.push(dev);
            dirs.push(opened);
        }
    }
    Ok((
        dests,
        RootDir {
            game: Arc::new(game),
            dirs,
            created: Vec::with_capacity(files.len()),
        },
    ))
}

/// Fails when two listed files are one file (`created[i]`, made at `dests[i]`): a
/// filesystem that ignores case (`a.bin`, `A.bin`) or normalises names, or one folder
/// mounted at two paths, would mix both files' bytes in one and commit it as each.
pub fn one_file_each(game: &GameDir, dests: &[PathBuf], created: &[Inode]) -> Result<(), Failure> {
    let mut seen = HashMap::with_capacity(created.len());
    for (inode, dest) in created.iter().zip(dests) {
        if let Some(first) = seen.insert(*inode, dest) {
            return Err(Failure::new(
                ErrorKind::Io,
                format!(
                    "{} and {} are one file on this filesystem (it ignores case, or a \
                     folder is mounted twice); the game cannot be stored here",
                    game.shown(first).display(),
                    game.shown(dest).display()
                ),
            ));
        }
    }
    Ok(())
}

/// Sets the final mode of the files whose manifest mode a download cannot keep while it
/// writes (the writer gives every file at least owner read and write: see
/// `writer::working_mode`), through a descriptor of the file itself opened beneath the
/// root, never through a symlink, and only on a file of one name (a hard link put in its
/// place since would change a file elsewhere). Without a `syncfs` to follow, each such
/// file is fsynced: the mode must be durable before the sentinel.
fn final_modes(
    (game, created): (&GameDir, &[Inode]),
    files: &[FileManifest],
    dests: &[PathBuf],
    fsync: bool,
) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    for ((f, dest), &inode) in files.iter().zip(dests).zip(created) {
        let mode = final_mode(f.mode);
        if working_mode(f.mode) == mode {
            continue;
        }
        let shown = game.shown(dest);
        let (file, meta) = game
            .open_file(dest, Access::Read)
            .map_err(|e| err(&shown, e))?;
        if meta.nlink() != 1 || Inode::of(&meta) != inode {
            return Err(Failure::new(
                ErrorKind::Io,
                format!(
                    "{} was replaced during the download, or has other names now",
                    shown.display()
                ),
            ));
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| if fsync { file.sync_all() } else { Ok(()) })
            .map_err(|e| err(&shown, e))?;
    }
    Ok(())
}

/// Sets final modes, removes files the manifest does not list, fsyncs the folders that
/// hold files, checks the received `version.ini` and renames it into place, then fsyncs
/// the root — all through the open root.
/// `syncfs`: one `syncfs` through each of these folders (one per filesystem, as
/// [`prepare`] opened them before the first write) makes the files, their modes and
/// every folder entry durable after the modes are set and stale files removed (Linux ≥
/// 5.8 reports every writeback error of the filesystem since that open; the io_uring
/// writer needs a newer kernel anyway); none: the folders are fsynced one by one. Cheaper
/// than one `fdatasync` per file and one `fsync` per folder for a game of many small
/// files; it also flushes what others wrote there, which a games filesystem busy with
/// other downloads pays for.
pub async fn commit(
    root: &RootDir,
    (files, folders): (&[FileManifest], &[RelPath]),
    dests: &[PathBuf],
    version: Version,
    syncfs: Vec<fs::File>,
) -> Result<(), Failure> {
    let (game, created) = (root.game.clone(), root.created.clone());
    let (files, folders, dests) = (files.to_vec(), folders.to_vec(), dests.to_vec());
    tokio::task::spawn_blocking(move || {
        commit_blocking(
            (&game, &created),
            (&files, &folders),
            &dests,
            version,
            &syncfs,
        )
    })
    .await
    .map_err(Failure::internal)?
}

fn commit_blocking(
    (game, created): (&GameDir, &[Inode]),
    (files, empty): (&[FileManifest], &[RelPath]),
    dests: &[PathBuf],
    version: Version,
    syncfs: &[fs::File],
) -> Result<(), Failure> {
    let root = game.path();
    // Listed files and empty folders and every folder that holds one, looked up once
    // per entry.
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    let mut folders: BTreeSet<&str> = BTreeSet::new();
    for p in files
        .iter()
        .map(|f| f.path.as_str())
        .chain(empty.iter().map(RelPath::as_str))
    {
        keep.insert(p);
        folders.extend(p.match_indices('/').map(|(i, _)| &p[..i]));
    }
    keep.extend(&folders);
    // Each file must still be the one the writer created: a file put in its place, or a
    // folder swapped for another, since (someone else's bytes, or none) is never
    // committed as the game.
    let mut expect: HashMap<&str, Inode> = files
        .iter()
        .zip(created)
        .filter(|(f, _)| !is_sentinel(f))
        .map(|(f, &inode)| (f.path.as_str(), inode))
        .collect();
    if created.len() != files.len() {
        return Err(Failure::internal("the writer did not create every file"));
    }
    remove_extra(game, (game.dir(), ""), &keep, &mut expect)?;
    if let Some(path) = expect.keys().next() {
        return Err(Failure::new(
            ErrorKind::Io,
            format!(
                "{} is gone (moved or removed during the download)",
                game.shown(Path::new(path)).display()
            ),
        ));
    }
    // An empty folder removed during the download is made again (one in the way fails).
    for d in empty {
        let d = d.to_path(Path::new(""));
        game.create_folders_replacing(&d)
            .map_err(|e| err(&game.shown(&d), e))?;
    }
    final_modes((game, created), files, dests, syncfs.is_empty())?;
    if syncfs.is_empty() {
        // The files' data is durable (fdatasync); their names in sub-folders must be too
        // before the sentinel says the root is complete (the root itself is synced below).
        for folder in &folders {
            game.open_folder(Path::new(folder))
                .and_then(|d| lanspread_catalog::sync_dir(&d))
                .map_err(|e| err(&game.shown(Path::new(folder)), e))?;
        }
    }
    // Everything on each filesystem, folders included, is durable after this.
    for dir in syncfs {
        // SAFETY: syncfs only reads the descriptor, which `dir` keeps open.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(dir)) } != 0 {
            return Err(err(root, io::Error::last_os_error()));
        }
    }
    let incoming = Path::new(INCOMING).join(VERSION_FILE);
    let shown = game.shown(&incoming);
    let sentinel = files
        .iter()
        .zip(created)
        .find(|(f, _)| is_sentinel(f))
        .map(|(_, &inode)| inode);
    let (mut file, meta) = game
        .open_file(&incoming, Access::Read)
        .map_err(|e| err(&shown, e))?;
    let replaced = || {
        Failure::new(
            ErrorKind::Io,
            format!("{} was replaced during the download", shown.display()),
        )
    };
    if sentinel.is_some_and(|s| s != Inode::of(&meta)) {
        return Err(replaced());
    }
    let mut text = String::new();
    io::Read::read_to_string(&mut file, &mut text).map_err(|e| err(&shown, e))?;
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
    file.sync_all().map_err(|e| err(&shown, e))?;
    // The root is still where the games dir has it: one moved away during the download
    // (out of the games dir perhaps) or replaced is not committed wherever it went.
    let open = lstat_in(game.dir(), ".".as_ref()).map_err(|e| err(root, e))?;
    match fs::symlink_metadata(root) {
        Ok(m) if m.dev() == open.st_dev && m.ino() == open.st_ino => {}
        _ => {
            return Err(Failure::new(
                ErrorKind::Io,
                format!(
                    "{} was moved or replaced during the download; nothing committed",
                    root.display()
                ),
            ))
        }
    }
    game.dir()
        .rename(&incoming, game.dir(), VERSION_FILE)
        .map_err(|e| err(root, e))?;
    // The name renamed is the file read (nothing swapped in between) and durable, or the
    // sentinel goes again: a failed commit leaves none.
    let committed = match lstat_in(game.dir(), VERSION_FILE.as_ref()) {
        Ok(st) if st.st_dev == meta.dev() && st.st_ino == meta.ino() => Ok(()),
        Ok(_) => Err(replaced()),
        Err(e) => Err(err(root, e)),
    }
    .and_then(|()| game.sync().map_err(|e| err(root, e)));
    if let Err(why) = committed {
        let _ = game.dir().remove_file(VERSION_FILE);
        let _ = game.sync();
        return Err(why);
    }
    let _ = game.dir().remove_dir(INCOMING);
    Ok(())
}

/// Removes regular files and symlinks under the folder `dir` (at `prefix` in the root)
/// that the manifest does not list (files of an older version), and the folders it does
/// not list once they are empty, leaving `local/` and `.lanspread*` alone; sub-folders
/// are opened beneath their parent, never through a symlink. Every listed file met is
/// checked against the file the writer created (`expect`, from which it is taken): the
/// inode readdir gives, on the folder's filesystem. Iterative, one open folder per level
/// (as `remove_all_in`): a tree thousands of folders deep costs descriptors, never the
/// stack of the blocking thread the commit runs on.
fn remove_extra(
    game: &GameDir,
    (dir, prefix): (&cap_std::fs::Dir, &str),
    keep: &BTreeSet<&str>,
    expect: &mut HashMap<&str, Inode>,
) -> Result<(), Failure> {
    /// A folder being swept: its descriptor (`None`: `dir`), its name in its parent,
    /// its path in the root, and its sub-folders not swept yet.
    struct Level {
        dir: Option<cap_std::fs::Dir>,
        name: std::ffi::OsString,
        rel: String,
        subs: Vec<(std::ffi::OsString, String)>,
    }
    let mut levels = vec![Level {
        dir: None,
        name: std::ffi::OsString::new(),
        rel: prefix.to_owned(),
        subs: sweep(game, (dir, prefix), keep, expect)?,
    }];
    while let Some(Level {
        dir: here, subs, ..
    }) = levels.last_mut()
    {
        let here = here.as_ref().unwrap_or(dir);
        if let Some((name, rel)) = subs.pop() {
            let sub = here
                .open_dir_nofollow(&name)
                .map_err(|e| err(&game.shown(Path::new(&rel)), e))?;
            let subs = sweep(game, (&sub, &rel), keep, expect)?;
            levels.push(Level {
                dir: Some(sub),
                name,
                rel,
                subs,
            });
            continue;
        }
        let Some(done) = levels.pop() else { break };
        if let Some(parent) = levels.last() {
            if !keep.contains(done.rel.as_str()) {
                let _ = parent.dir.as_ref().unwrap_or(dir).remove_dir(&done.name);
            }
        }
    }
    Ok(())
}

/// The entries of one folder for [`remove_extra`]: its extra files removed, its listed
/// files checked, and its sub-folders returned (name, path in the root).
fn sweep(
    game: &GameDir,
    (dir, prefix): (&cap_std::fs::Dir, &str),
    keep: &BTreeSet<&str>,
    expect: &mut HashMap<&str, Inode>,
) -> Result<Vec<(std::ffi::OsString, String)>, Failure> {
    use std::os::unix::fs::DirEntryExt;
    let shown = |rel: &str| game.shown(Path::new(rel));
    let entries = dir.entries().map_err(|e| err(&shown(prefix), e))?;
    let mut dev = None;
    let mut subs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err(&shown(prefix), e))?;
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            // Not UTF-8: no manifest path names it (a folder removed iteratively too).
            remove_all_in(dir, Path::new(&name), false).map_err(|e| err(&shown(prefix), e))?;
            continue;
        };
        if prefix.is_empty() && (is_reserved_top_level(name_str) || name_str == VERSION_FILE) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name_str.to_owned()
        } else {
            format!("{prefix}/{name_str}")
        };
        // The type readdir gave (no stat per entry, unless it gave none); a symlink is
        // not followed.
        let folder = is_folder(dir, &entry).map_err(|e| err(&shown(&rel), e))?;
        if folder {
            subs.push((name, rel));
        } else if !keep.contains(rel.as_str()) {
            dir.remove_file(&name).map_err(|e| err(&shown(&rel), e))?;
        } else if let Some(want) = expect.remove(rel.as_str()) {
            let dev = match dev {
                Some(d) => d,
                None => *dev.insert(dev_of(dir).map_err(|e| err(&shown(prefix), e))?),
            };
            // readdir's inode, or `lstat`'s where they differ (overlayfs, FUSE).
            let same = (Inode {
                dev,
                ino: entry.ino(),
            }) == want
                || lstat_in(dir, &name).is_ok_and(|st| {
                    (Inode {
                        dev: st.st_dev,
                        ino: st.st_ino,
                    }) == want
                });
            if !same {
                return Err(Failure::new(
                    ErrorKind::Io,
                    format!(
                        "{} was replaced during the download (another file or link is \
                         at its path now)",
                        shown(&rel).display()
                    ),
                ));
            }
        }
    }
    Ok(subs)
}

/// After a failed download: no received sentinel may survive.
pub async fn discard_incoming(root: &Path) {
    let root = root.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        GameDir::open(&root).and_then(|g| remove_all_in(g.dir(), Path::new(INCOMING), false))
    })
    .await;
}

#[cfg(test)]
mod tests;
