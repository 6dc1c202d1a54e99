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
    dev_of, is_folder, is_reserved_top_level, lstat_in, remove_all_in, Access, FileManifest,
    GameDir, Inode, Version, VERSION_FILE,
};

use crate::writer::working_mode;

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

/// Creates the root and the files' folders (never through a symlink), removes a
/// committed `version.ini` (the root is not Ready from here on) and returns each file's
/// destination relative to the root, with the open root ([`RootDir`]).
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
                let dir = if folder.as_os_str().is_empty() {
                    game.dir().try_clone()
                } else {
                    game.create_folders(folder)
                }
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
        // Never write through a symlink left at the destination.
        if at
            .symlink_metadata(name)
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            at.remove_file(name)
                .map_err(|e| err(&game.shown(&dest), e))?;
        }
        open = Some((folder.to_path_buf(), at));
        dests.push(dest);
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
        let mode = f.mode & 0o777;
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
    files: &[FileManifest],
    dests: &[PathBuf],
    version: Version,
    syncfs: Vec<fs::File>,
) -> Result<(), Failure> {
    let (game, created) = (root.game.clone(), root.created.clone());
    let (files, dests) = (files.to_vec(), dests.to_vec());
    tokio::task::spawn_blocking(move || {
        commit_blocking((&game, &created), &files, &dests, version, &syncfs)
    })
    .await
    .map_err(Failure::internal)?
}

fn commit_blocking(
    (game, created): (&GameDir, &[Inode]),
    files: &[FileManifest],
    dests: &[PathBuf],
    version: Version,
    syncfs: &[fs::File],
) -> Result<(), Failure> {
    let root = game.path();
    // Listed files and every folder that holds one, looked up once per entry.
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    let mut folders: BTreeSet<&str> = BTreeSet::new();
    for f in files {
        let p = f.path.as_str();
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
/// that the manifest does not list (files of an older version), leaving `local/` and
/// `.lanspread*` alone; sub-folders are opened beneath `dir`, never through a symlink.
/// Every listed file met is checked against the file the writer created (`expect`, from
/// which it is taken): the inode readdir gives, on the folder's filesystem.
fn remove_extra(
    game: &GameDir,
    (dir, prefix): (&cap_std::fs::Dir, &str),
    keep: &BTreeSet<&str>,
    expect: &mut HashMap<&str, Inode>,
) -> Result<(), Failure> {
    use std::os::unix::fs::DirEntryExt;
    let shown = |rel: &str| game.shown(Path::new(rel));
    let entries = dir.entries().map_err(|e| err(&shown(prefix), e))?;
    let mut dev = None;
    for entry in entries {
        let entry = entry.map_err(|e| err(&shown(prefix), e))?;
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            // Not UTF-8: no manifest path names it.
            dir.remove_file(&name)
                .or_else(|_| dir.remove_dir_all(&name))
                .map_err(|e| err(&shown(prefix), e))?;
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
            let sub = dir
                .open_dir_nofollow(&name)
                .map_err(|e| err(&shown(&rel), e))?;
            remove_extra(game, (&sub, &rel), keep, expect)?;
            if !keep.contains(rel.as_str()) {
                let _ = dir.remove_dir(&name);
            }
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
    Ok(())
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
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn manifest(p: &str, mode: u32) -> FileManifest {
        let path = lanspread_catalog::RelPath::new(p).unwrap();
        FileManifest::from_pieces(path, 1, mode, vec![[0; 32]])
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    /// A games folder with an `outside` folder beside the root holding a private file.
    fn lab() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("game");
        let outside = d.path().join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        for f in ["x.bin", "sub/x.bin"] {
            fs::write(outside.join(f), b"secret").unwrap();
            fs::set_permissions(outside.join(f), fs::Permissions::from_mode(0o600)).unwrap();
        }
        (d, root, outside)
    }

    fn inode(p: &Path) -> Inode {
        Inode::of(&fs::symlink_metadata(p).unwrap())
    }

    #[test]
    fn final_modes_are_set_on_the_file_created_never_through_a_link() {
        let (_d, root, outside) = lab();
        // Read-only with a peer's setuid bit: written as 0o644, committed as 0o444.
        let files = [manifest("sub/x.bin", 0o4444)];
        let (dests, dir) = prepare_blocking(&root, &files).unwrap();
        let game = dir.game();
        assert_eq!(dests, [PathBuf::from("sub/x.bin")]);
        fs::write(root.join("sub/x.bin"), b"x").unwrap();
        let created = [inode(&root.join("sub/x.bin"))];
        final_modes((game, &created), &files, &dests, true).unwrap();
        assert_eq!(mode_of(&root.join("sub/x.bin")), 0o444);
        // A mode the writer keeps while writing needs nothing at the commit; one with
        // group or other write is set only then.
        let plain = [manifest("sub/x.bin", 0o755)];
        fs::set_permissions(root.join("sub/x.bin"), fs::Permissions::from_mode(0o600)).unwrap();
        final_modes((game, &created), &plain, &dests, true).unwrap();
        assert_eq!(mode_of(&root.join("sub/x.bin")), 0o600);
        let open = [manifest("sub/x.bin", 0o777)];
        final_modes((game, &created), &open, &dests, true).unwrap();
        assert_eq!(mode_of(&root.join("sub/x.bin")), 0o777);
        // Another file of one name put in its place: not the file created. (The created
        // one is moved aside, not removed: a removed inode's number may be given to the
        // next file made, which then looks like it.)
        fs::rename(root.join("sub/x.bin"), root.join("sub/x.old")).unwrap();
        fs::write(root.join("sub/x.bin"), b"other").unwrap();
        let e = final_modes((game, &created), &files, &dests, true).unwrap_err();
        assert!(e.to_string().contains("was replaced"), "{e}");
        fs::remove_file(root.join("sub/x.old")).unwrap();
        // The file replaced by a symlink to a file outside, then by a hard link to it.
        fs::remove_file(root.join("sub/x.bin")).unwrap();
        symlink(outside.join("x.bin"), root.join("sub/x.bin")).unwrap();
        assert!(final_modes((game, &created), &files, &dests, true).is_err());
        fs::remove_file(root.join("sub/x.bin")).unwrap();
        fs::hard_link(outside.join("x.bin"), root.join("sub/x.bin")).unwrap();
        let outside_inode = [inode(&outside.join("x.bin"))];
        let e = final_modes((game, &outside_inode), &files, &dests, true).unwrap_err();
        assert!(e.to_string().contains("other names"), "{e}");
        // Its folder replaced by a symlink to a folder outside holding a file of that name.
        fs::remove_file(root.join("sub/x.bin")).unwrap();
        fs::remove_dir(root.join("sub")).unwrap();
        symlink(&outside, root.join("sub")).unwrap();
        let deep = [inode(&outside.join("sub/x.bin"))];
        assert!(final_modes((game, &deep), &files, &dests, true).is_err());
        // A folder higher up replaced: `a -> outside`, the file at `a/sub/x.bin`.
        symlink(&outside, root.join("a")).unwrap();
        let files = [manifest("a/sub/x.bin", 0o444)];
        let dests = [PathBuf::from("a/sub/x.bin")];
        assert!(final_modes((game, &deep), &files, &dests, true).is_err());
        assert_eq!(mode_of(&outside.join("x.bin")), 0o600);
        assert_eq!(mode_of(&outside.join("sub/x.bin")), 0o600);
    }

    #[test]
    fn a_file_replaced_at_its_path_fails_the_check_and_a_gone_one_stays_expected() {
        let (_d, root, _outside) = lab();
        let files = [manifest("d/a.bin", 0o644), manifest("d/b.bin", 0o644)];
        let (_, dir) = prepare_blocking(&root, &files).unwrap();
        fs::write(root.join("d/a.bin"), b"a").unwrap();
        fs::write(root.join("d/b.bin"), b"b").unwrap();
        let keep = BTreeSet::from(["d", "d/a.bin", "d/b.bin"]);
        let check = |expect: &mut HashMap<&str, Inode>| {
            remove_extra(dir.game(), (dir.game().dir(), ""), &keep, expect)
        };
        let (a, b) = (inode(&root.join("d/a.bin")), inode(&root.join("d/b.bin")));
        let mut expect = HashMap::from([("d/a.bin", a), ("d/b.bin", b)]);
        check(&mut expect).unwrap();
        assert!(expect.is_empty());
        // b.bin replaced by another file (the old one moved aside).
        fs::rename(root.join("d/b.bin"), root.join("d/b.old")).unwrap();
        fs::write(root.join("d/b.bin"), b"b").unwrap();
        let mut expect = HashMap::from([("d/a.bin", a), ("d/b.bin", b)]);
        let e = check(&mut expect).unwrap_err();
        assert!(e.to_string().contains("d/b.bin was replaced"), "{e}");
        // a.bin gone: left in `expect`, which the commit reports.
        fs::remove_file(root.join("d/a.bin")).unwrap();
        let mut expect = HashMap::from([("d/a.bin", a)]);
        check(&mut expect).unwrap();
        assert_eq!(expect.len(), 1);
    }

    #[test]
    fn prepare_makes_folders_beneath_the_root_and_refuses_links_in_the_way() {
        let (_d, root, outside) = lab();
        fs::create_dir(&root).unwrap();
        // A folder of the manifest that is a symlink to a folder outside.
        symlink(&outside, root.join("sub")).unwrap();
        let files = [manifest("sub/deeper/x.bin", 0o644)];
        let e = prepare_blocking(&root, &files).err().unwrap();
        assert!(e.to_string().contains("in the way"), "{e}");
        assert!(!outside.join("deeper").exists());
        // `.lanspread` a symlink: the sentinel's folder is not made outside.
        fs::remove_file(root.join("sub")).unwrap();
        fs::remove_dir_all(root.join(".lanspread")).unwrap();
        symlink(&outside, root.join(".lanspread")).unwrap();
        assert!(prepare_blocking(&root, &[manifest(VERSION_FILE, 0o644)]).is_err());
        assert!(!outside.join("incoming").exists());
        // A symlink at a file's own place is removed, its target left alone.
        fs::remove_file(root.join(".lanspread")).unwrap();
        symlink(outside.join("x.bin"), root.join("x.bin")).unwrap();
        let files = [manifest("x.bin", 0o644), manifest(VERSION_FILE, 0o644)];
        let (dests, _) = prepare_blocking(&root, &files).unwrap();
        assert_eq!(
            dests,
            [
                PathBuf::from("x.bin"),
                Path::new(INCOMING).join(VERSION_FILE)
            ]
        );
        assert!(fs::symlink_metadata(root.join("x.bin")).is_err());
        assert_eq!(fs::read(outside.join("x.bin")).unwrap(), b"secret");
        // The root itself a symlink.
        let other = root.with_file_name("other");
        symlink(&outside, &other).unwrap();
        let e = prepare_blocking(&other, &files).err().unwrap();
        assert!(e.to_string().contains("not a folder"), "{e}");
    }

    #[test]
    fn stale_entries_go_and_links_to_elsewhere_are_removed_not_followed() {
        let (_d, root, outside) = lab();
        let files = [manifest("keep/a.bin", 0o644)];
        let (_, dir) = prepare_blocking(&root, &files).unwrap();
        fs::write(root.join("keep/a.bin"), b"a").unwrap();
        fs::write(root.join("keep/old.bin"), b"o").unwrap();
        fs::create_dir_all(root.join("gone/deep")).unwrap();
        fs::write(root.join("gone/deep/f"), b"f").unwrap();
        symlink(&outside, root.join("link")).unwrap();
        fs::create_dir_all(root.join("local/x")).unwrap();
        let keep = BTreeSet::from(["keep", "keep/a.bin"]);
        let mut expect = HashMap::new();
        remove_extra(dir.game(), (dir.game().dir(), ""), &keep, &mut expect).unwrap();
        let mut left: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".lanspread", "keep", "local"]);
        assert!(!root.join("keep/old.bin").exists());
        assert_eq!(fs::read(outside.join("x.bin")).unwrap(), b"secret");
        assert!(outside.join("sub/x.bin").exists());
    }
}
