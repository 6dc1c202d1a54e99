//! Read-only scan of a games directory into typed game roots.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::{
    is_reserved_top_level, Availability, Catalog, CatalogError, GameId, RelPath, Version,
    VERSION_FILE,
};

/// One regular file of a game root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDescriptor {
    /// Path relative to the game root.
    pub path: RelPath,
    /// Size in bytes.
    pub size: u64,
    /// Unix permission bits (`0o777`: setuid, setgid and sticky bits never travel, so
    /// every copy describes its files as the source does).
    pub mode: u32,
}

/// A scanned game root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GameRoot {
    /// The game id (the folder name).
    pub id: GameId,
    /// The root folder.
    pub dir: PathBuf,
    /// The committed version, if `version.ini` is valid.
    pub version: Option<Version>,
    /// Every regular file, sorted by path, `version.ini` included, `local/` and `.lanspread*` not.
    pub files: Vec<FileDescriptor>,
    /// The folders with nothing in them that travels (no file, no such folder), sorted:
    /// a copy makes them too (a game may need a folder it ships empty).
    pub folders: Vec<RelPath>,
    /// True when `local/` holds a completed install.
    pub installed: bool,
    /// Why a root is not offered though it has a sentinel: a `version.ini` that is not a
    /// version, or a file a peer could not get (a name that cannot travel, an unreadable
    /// file or folder). A copy must never silently differ from its source, so such a root
    /// is not Ready until it is fixed.
    pub problem: Option<String>,
}

impl GameRoot {
    /// The file at `path` (relative, `/`-separated), found by binary search: `files` is
    /// sorted by path (a chunk request names a file per range; a linear search made a
    /// download of n small files cost the source O(n²)).
    pub fn file(&self, path: &str) -> Option<&FileDescriptor> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }

    /// Total payload size in bytes.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Availability from the sentinel alone; the daemon overlays active operations.
    pub fn availability(&self) -> Availability {
        if self.version.is_some() && self.problem.is_none() {
            Availability::Ready
        } else {
            Availability::NotReady
        }
    }
}

/// All catalog game roots found in a games directory, keyed by id.
pub type Library = BTreeMap<GameId, GameRoot>;

/// Marker written by an install once `local/` is complete.
pub const INSTALLED_MARKER: &str = ".lanspread-installed";

/// Scans `games` for folders named after catalog ids. Folders that are not in the catalog,
/// and plain files, are ignored. Only an unreadable games directory is an error; a bad root
/// is returned as not ready with a warning.
pub fn scan_games_dir(games: &Path, catalog: &Catalog) -> Result<Library, CatalogError> {
    let mut lib = Library::new();
    let entries = fs::read_dir(games).map_err(|e| CatalogError::io(games, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CatalogError::io(games, e))?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| catalog.get(n)) else {
            continue;
        };
        let dir = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => {}
            // A root that is a symlink (a game kept on another disk) is not followed: the
            // daemon writes into roots (downloads, installs, the start-up sweep) and must
            // never do so outside the games dir. A bind mount serves the same purpose.
            Ok(t) if t.is_symlink() => {
                warn_once(&dir, "game root is a symlink, not followed (bind-mount the other disk's folder instead)");
                continue;
            }
            _ => continue,
        }
        lib.insert(id.clone(), scan_root(&dir, id));
    }
    Ok(lib)
}

/// Largest `version.ini` read (8 digits and whitespace fit many times over).
const MAX_SENTINEL: u64 = 64;

/// Scans one game root. Never fails: problems are logged and make the root not ready.
pub fn scan_root(dir: &Path, id: GameId) -> GameRoot {
    // A bad sentinel is the reason the root is not ready, shown with it (`list-games`,
    // `status`), not only logged. A missing one is no problem: a download not begun.
    let mut bad_sentinel = None;
    let version = match read_sentinel(&dir.join(VERSION_FILE)) {
        // A byte-order mark (an editor on Windows) is no part of the version.
        Ok(Some(text)) => match Version::parse(text.strip_prefix('\u{feff}').unwrap_or(&text)) {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(game = %id, "not ready: {e}");
                bad_sentinel = Some(format!("{VERSION_FILE}: {e}"));
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            warn!(game = %id, "not ready: {VERSION_FILE}: {e}");
            bad_sentinel = Some(format!("{VERSION_FILE}: {e}"));
            None
        }
    };
    let mut walk = Walk::default();
    let canonical_root = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    walk.dir(dir, &canonical_root, "");
    let (mut files, mut folders) = (walk.files, walk.folders);
    files.sort_by(|a, b| a.path.cmp(&b.path));
    folders.sort();
    let mut problem = bad_sentinel.or(walk.problem);
    let sizes = files
        .iter()
        .map(|f| (f.path.as_str().len(), f.size))
        .chain(folders.iter().map(|d| (d.as_str().len(), 0)));
    let entries = files.len() + folders.len();
    if problem.is_none() && entries > lanspread_proto::MAX_MANIFEST_ENTRIES {
        problem = Some(format!(
            "too many entries to describe to peers: {} files and {} empty folders (at \
             most {} in all)",
            files.len(),
            folders.len(),
            lanspread_proto::MAX_MANIFEST_ENTRIES
        ));
    }
    if problem.is_none() && !lanspread_proto::manifest_fits_a_frame(sizes) {
        let bytes: u64 = files.iter().map(|f| f.size).sum();
        problem = Some(format!(
            "too large to describe to peers: {} GiB in {} files (a manifest holds about \
             490 GiB)",
            bytes >> 30,
            files.len()
        ));
    }
    if let (Some(_), Some(p)) = (version, &problem) {
        warn_once(dir, &format!("game {id} not offered: {p}"));
    }
    let installed = dir.join(crate::LOCAL_DIR).join(INSTALLED_MARKER).is_file();
    GameRoot {
        id,
        dir: dir.to_path_buf(),
        version,
        files,
        folders,
        installed,
        problem,
    }
}

/// Reads `version.ini` if it is a regular file (not a symlink, FIFO or device) of at most
/// [`MAX_SENTINEL`] bytes. Opened non-blocking, so a FIFO never hangs the scan.
fn read_sentinel(path: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err("is a symlink (the sentinel must be a regular file)".into())
        }
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_SENTINEL {
        return Err(format!(
            "is {} bytes, more than a version holds",
            meta.len()
        ));
    }
    let mut text = String::new();
    file.take(MAX_SENTINEL)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(Some(text))
}

/// Why a FIFO, socket or device in a game keeps it from being offered.
fn not_a_file(path: &Path) -> String {
    format!(
        "{} is not a regular file or folder (a FIFO, socket or device)",
        path.display()
    )
}

/// Logs `why` for `path` once per process (the rescan repeats every few seconds); a new
/// `why` for the same path is logged again.
fn warn_once(path: &Path, why: &str) {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<(PathBuf, String)>>> =
        std::sync::Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen
        .get_or_insert_with(Default::default)
        .insert((path.to_path_buf(), why.to_owned()))
    {
        warn!(path = %path.display(), "{why}");
    }
}

/// What a walk of a root found: its regular files, its empty folders, and the first
/// reason a peer could not get all of them.
#[derive(Default)]
struct Walk {
    files: Vec<FileDescriptor>,
    folders: Vec<RelPath>,
    problem: Option<String>,
}

impl Walk {
    fn problem(&mut self, why: String) {
        debug!("{why}");
        self.problem.get_or_insert(why);
    }

    /// Walks `dir` (whose path relative to the root is `prefix`), appending regular
    /// files. Symlinks are followed only when they resolve to a regular file inside the
    /// root; symlinked directories are never followed (no loops, no escapes).
    fn dir(&mut self, dir: &Path, root: &Path, prefix: &str) {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => return self.problem(format!("cannot read folder {}: {e}", dir.display())),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    return self.problem(format!("cannot read folder {}: {e}", dir.display()))
                }
            };
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                self.problem(format!(
                    "file name is not UTF-8 and cannot be sent to peers: {}",
                    path.display()
                ));
                continue;
            };
            if prefix.is_empty() && is_reserved_top_level(&name) {
                continue;
            }
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                // Removed while we looked: the next scan sees the new state.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.problem(format!("cannot stat {}: {e}", path.display()));
                    continue;
                }
            };
            let meta = if meta.file_type().is_symlink() {
                // Followed only to a regular file inside the root. Any other link would
                // leave the game incomplete on every downloader without a word, so it
                // keeps the root from being offered, with the reason.
                match fs::canonicalize(&path) {
                    Ok(target) if target.starts_with(root) && target.is_file() => {
                        match fs::metadata(&target) {
                            Ok(m) => m,
                            Err(_) => continue,
                        }
                    }
                    Ok(target) if target.is_dir() => {
                        self.problem(format!(
                            "{} is a symlink to a folder, not followed (move the folder in \
                             or bind-mount it)",
                            path.display()
                        ));
                        continue;
                    }
                    Ok(target) if !target.starts_with(root) => {
                        self.problem(format!(
                            "{} is a symlink that leaves the game folder, not followed \
                             (copy the file in)",
                            path.display()
                        ));
                        continue;
                    }
                    Ok(_) => {
                        self.problem(not_a_file(&path));
                        continue;
                    }
                    Err(e) => {
                        self.problem(format!(
                            "{} is a symlink that cannot be resolved: {e}",
                            path.display()
                        ));
                        continue;
                    }
                }
            } else {
                meta
            };
            if meta.is_dir() {
                let found = (self.files.len(), self.folders.len());
                self.dir(&path, root, &rel);
                // Nothing in it travels: the folder itself must (anything in it that
                // cannot travel is the root's problem already).
                if found == (self.files.len(), self.folders.len()) {
                    match RelPath::new(&rel) {
                        Ok(rel) => self.folders.push(rel),
                        Err(e) => self.problem(format!("cannot be sent to peers: {e}")),
                    }
                }
            } else if !meta.is_file() {
                self.problem(not_a_file(&path));
            } else {
                match RelPath::new(&rel) {
                    Ok(rel) => {
                        if let Err(e) = readable(&path) {
                            self.problem(format!("cannot read {}: {e}", path.display()));
                        }
                        self.files.push(FileDescriptor {
                            path: rel,
                            size: meta.size(),
                            mode: meta.permissions().mode() & 0o777,
                        })
                    }
                    Err(e) => self.problem(format!("cannot be sent to peers: {e}")),
                }
            }
        }
    }
}

/// Whether this process may read `path`: a `faccessat(2)` check with the effective ids
/// (no open, no atime change).
fn readable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated path; no memory is written.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::R_OK, libc::AT_EACCESS) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bytes an unprivileged writer may still allocate on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Result<u64, CatalogError> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| CatalogError::io(path, std::io::Error::other(e)))?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value to overwrite.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(CatalogError::io(path, std::io::Error::last_os_error()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(p: &Path, data: &[u8]) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    #[test]
    fn scans_catalog_roots_and_skips_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let g = t.path();
        write(&g.join("bf1942/version.ini"), b"20250101\n");
        write(&g.join("bf1942/bf1942.eti"), &[1u8; 100]);
        write(&g.join("bf1942/sub/readme.txt"), b"hi");
        write(&g.join("bf1942/local/game.exe"), b"installed");
        write(&g.join("bf1942/.lanspread-meta/x"), b"meta");
        write(&g.join("bf1942/.lanspread"), b"meta");
        write(&g.join("not-a-game/version.ini"), b"20250101");
        write(&g.join("ggoo/version.ini"), b"garbage");
        write(&g.join("stray.txt"), b"x");
        let lib = scan_games_dir(g, &Catalog::builtin()).unwrap();
        assert_eq!(lib.len(), 2);
        let bf = &lib[&GameId::new("bf1942").unwrap()];
        assert_eq!(bf.version.unwrap().as_str(), "20250101");
        assert_eq!(bf.availability(), Availability::Ready);
        let paths: Vec<_> = bf.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["bf1942.eti", "sub/readme.txt", "version.ini"]);
        assert_eq!(bf.size(), 100 + 2 + 9);
        assert!(!bf.installed, "local/ without the marker is not an install");
        let ggoo = &lib[&GameId::new("ggoo").unwrap()];
        assert_eq!(ggoo.version, None);
        assert_eq!(ggoo.availability(), Availability::NotReady);
    }

    #[test]
    fn empty_folders_are_part_of_the_root_and_only_the_deepest_is_named() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("bf1942");
        write(&root.join("version.ini"), b"20250101");
        write(&root.join("data/a.bin"), b"a");
        for d in [
            "saves",
            "a/b/c",
            "data/logs",
            "local",
            ".lanspread",
            "mods/x y",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let r = scan_root(&root, GameId::new("bf1942").unwrap());
        let folders: Vec<_> = r.folders.iter().map(RelPath::as_str).collect();
        // `a` and `a/b` hold `a/b/c`; `data` holds a file; local/ and metadata never travel.
        assert_eq!(folders, ["a/b/c", "data/logs", "mods/x y", "saves"]);
        assert_eq!(r.problem, None);
        assert_eq!(r.availability(), Availability::Ready);
        // A folder that gets a file is no longer listed; one emptied is.
        write(&root.join("saves/slot1"), b"s");
        fs::remove_file(root.join("data/a.bin")).unwrap();
        let r = scan_root(&root, GameId::new("bf1942").unwrap());
        let folders: Vec<_> = r.folders.iter().map(RelPath::as_str).collect();
        assert_eq!(folders, ["a/b/c", "data/logs", "mods/x y"]);
    }

    #[test]
    fn every_scanned_file_is_found_by_its_path_and_nothing_else_is() {
        // Names whose byte order differs from a folder-by-folder walk ('-' and '.' sort
        // before '/'), so the lookup relies on the scan's sort, not on the walk's order.
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("bf1942");
        let names = [
            "a/b.bin",
            "a-b.bin",
            "a.b/c",
            "a/b/c.bin",
            "Z.eti",
            "z.eti",
            "é.txt",
            "version.ini",
        ];
        for (i, n) in names.iter().enumerate() {
            write(&root.join(n), &vec![7u8; i]);
        }
        for i in 0..300 {
            write(&root.join(format!("many/f{i:03}.bin")), b"x");
        }
        let r = scan_root(&root, GameId::new("bf1942").unwrap());
        assert_eq!(r.files.len(), names.len() + 300);
        for f in &r.files {
            assert_eq!(r.file(f.path.as_str()).map(|g| &g.path), Some(&f.path));
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(r.file(n).map(|f| f.size), Some(i as u64), "{n}");
        }
        for missing in ["a", "a/b", "many", "many/f300.bin", "", "zz", "local/x"] {
            assert!(r.file(missing).is_none(), "{missing}");
        }
    }

    #[test]
    fn keeps_unix_modes() {
        let t = tempfile::tempdir().unwrap();
        let exe = t.path().join("cod5/run.sh");
        write(&exe, b"#!/bin/sh\n");
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let suid = t.path().join("cod5/suid");
        write(&suid, b"x");
        fs::set_permissions(&suid, fs::Permissions::from_mode(0o4750)).unwrap();
        let root = scan_root(&t.path().join("cod5"), GameId::new("cod5").unwrap());
        assert_eq!(root.files[0].mode, 0o755);
        assert_eq!(root.files[1].mode, 0o750, "the setuid bit never travels");
        assert_eq!(root.version, None);
    }

    #[test]
    fn symlinks_never_leave_the_root() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("secret.txt");
        write(&outside, b"secret");
        let root = t.path().join("games/cnc4");
        write(&root.join("version.ini"), b"20250101");
        write(&root.join("data.bin"), b"inside");
        symlink(root.join("data.bin"), root.join("alias.bin")).unwrap();
        let id = GameId::new("cnc4").unwrap();
        // A link to a file inside the root is followed.
        let r = scan_root(&root, id.clone());
        let paths: Vec<_> = r.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["alias.bin", "data.bin", "version.ini"]);
        assert_eq!(r.availability(), Availability::Ready, "{:?}", r.problem);
        // Any other is never followed, and the root is not offered without it: every
        // downloader would get the game without that file.
        let not_offered = |why: &str| {
            let r = scan_root(&root, id.clone());
            assert!(r.files.iter().all(|f| f.path.as_str() != "link"), "{r:?}");
            assert_eq!(r.availability(), Availability::NotReady, "{r:?}");
            let problem = r.problem.unwrap_or_default();
            assert!(
                problem.contains("link") && problem.contains(why),
                "{problem}"
            );
        };
        let link = root.join("link");
        symlink(&outside, &link).unwrap();
        not_offered("leaves the game folder");
        fs::remove_file(&link).unwrap();
        symlink(t.path(), &link).unwrap();
        not_offered("symlink to a folder");
        fs::remove_file(&link).unwrap();
        symlink(root.join("gone"), &link).unwrap();
        not_offered("cannot be resolved");
        fs::remove_file(&link).unwrap();
        let fifo = std::ffi::CString::new(link.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `fifo` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        not_offered("not a regular file");
        fs::remove_file(&link).unwrap();
        assert_eq!(scan_root(&root, id).availability(), Availability::Ready);
    }

    #[test]
    fn names_that_cannot_travel_keep_the_root_from_being_offered() {
        use std::os::unix::ffi::OsStrExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cnc4");
        write(&root.join("version.ini"), b"20250101");
        write(&root.join("data.bin"), b"x");
        let ok = scan_root(&root, GameId::new("cnc4").unwrap());
        assert_eq!(ok.availability(), Availability::Ready);
        write(&root.join("sub/a\\b.txt"), b"backslash");
        let r = scan_root(&root, GameId::new("cnc4").unwrap());
        assert_eq!(r.availability(), Availability::NotReady);
        assert!(r.version.is_some(), "the sentinel is still valid");
        assert!(
            r.problem.as_deref().unwrap().contains("backslash"),
            "{:?}",
            r.problem
        );
        fs::remove_file(root.join("sub/a\\b.txt")).unwrap();
        let bad = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        write(&root.join("sub").join(bad), b"latin-1");
        let r = scan_root(&root, GameId::new("cnc4").unwrap());
        assert_eq!(r.availability(), Availability::NotReady);
        assert!(
            r.problem.as_deref().unwrap().contains("not UTF-8"),
            "{:?}",
            r.problem
        );
    }

    #[test]
    fn a_game_too_large_for_one_manifest_is_not_offered() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cnc4");
        write(&root.join("version.ini"), b"20250101");
        // Sparse: 2 × 260 GiB is more than a manifest frame can describe.
        for name in ["a.eti", "b.eti"] {
            let f = fs::File::create(root.join(name)).unwrap();
            f.set_len(260 << 30).unwrap();
        }
        let r = scan_root(&root, GameId::new("cnc4").unwrap());
        assert_eq!(r.availability(), Availability::NotReady);
        assert!(
            r.problem.as_deref().unwrap().contains("too large"),
            "{:?}",
            r.problem
        );
        fs::remove_file(root.join("b.eti")).unwrap();
        let r = scan_root(&root, GameId::new("cnc4").unwrap());
        assert_eq!(r.availability(), Availability::Ready, "{:?}", r.problem);
    }

    #[test]
    fn a_game_of_more_entries_than_a_manifest_lists_is_not_offered() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cnc4");
        write(&root.join("version.ini"), b"20250101");
        // With version.ini, one entry more than a manifest may list.
        for i in 0..lanspread_proto::MAX_MANIFEST_ENTRIES {
            fs::create_dir_all(root.join(format!("d/{i}"))).unwrap();
        }
        let r = scan_root(&root, GameId::new("cnc4").unwrap());
        assert_eq!(r.availability(), Availability::NotReady);
        let why = r.problem.as_deref().unwrap();
        assert!(why.contains("1 files and 100000 empty folders"), "{why}");
        fs::remove_dir(root.join("d/0")).unwrap();
        let r = scan_root(&root, GameId::new("cnc4").unwrap());
        assert_eq!(r.availability(), Availability::Ready, "{:?}", r.problem);
    }

    #[test]
    fn sentinel_must_be_a_small_regular_file() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cnc4");
        fs::create_dir_all(&root).unwrap();
        let sentinel = root.join("version.ini");
        // A FIFO: opened non-blocking, refused, never read (this would hang otherwise).
        let c = std::ffi::CString::new(sentinel.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert_eq!(scan_root(&root, GameId::new("cnc4").unwrap()).version, None);
        fs::remove_file(&sentinel).unwrap();
        // A symlink, even to a valid version file or to /dev/zero.
        let outside = t.path().join("v.ini");
        fs::write(&outside, "20250101").unwrap();
        symlink(&outside, &sentinel).unwrap();
        assert_eq!(scan_root(&root, GameId::new("cnc4").unwrap()).version, None);
        fs::remove_file(&sentinel).unwrap();
        symlink("/dev/zero", &sentinel).unwrap();
        assert_eq!(scan_root(&root, GameId::new("cnc4").unwrap()).version, None);
        fs::remove_file(&sentinel).unwrap();
        fs::write(&sentinel, format!("20250101{}", " ".repeat(100))).unwrap();
        assert_eq!(scan_root(&root, GameId::new("cnc4").unwrap()).version, None);
        fs::write(&sentinel, " 20250101\n").unwrap();
        let r = scan_root(&root, GameId::new("cnc4").unwrap());
        assert!(
            r.version.is_some() && r.problem.is_none(),
            "{:?}",
            r.problem
        );
        // Saved by an editor that starts with a byte-order mark.
        fs::write(&sentinel, "\u{feff}20250101\r\n").unwrap();
        let r = scan_root(&root, GameId::new("cnc4").unwrap());
        assert_eq!(r.availability(), Availability::Ready, "{:?}", r.problem);
        // Not a version: not ready, and the root says why (not only the log).
        fs::write(&sentinel, "2025-01-01").unwrap();
        let r = scan_root(&root, GameId::new("cnc4").unwrap());
        assert_eq!(r.availability(), Availability::NotReady);
        let why = r.problem.unwrap_or_default();
        assert!(why.starts_with("version.ini: invalid version"), "{why}");
        // No sentinel at all is a download not begun, no problem.
        fs::remove_file(&sentinel).unwrap();
        assert_eq!(scan_root(&root, GameId::new("cnc4").unwrap()).problem, None);
    }

    #[test]
    fn symlinked_roots_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("disk2/cnc4");
        write(&elsewhere.join("version.ini"), b"20250101");
        fs::create_dir_all(t.path().join("games")).unwrap();
        symlink(&elsewhere, t.path().join("games/cnc4")).unwrap();
        let lib = scan_games_dir(&t.path().join("games"), &Catalog::builtin()).unwrap();
        assert!(lib.is_empty());
    }

    #[test]
    fn installed_needs_the_marker() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("cnctw");
        write(&root.join("version.ini"), b"20250101");
        write(&root.join("local").join(INSTALLED_MARKER), b"");
        assert!(scan_root(&root, GameId::new("cnctw").unwrap()).installed);
    }

    #[test]
    fn free_space_of_a_real_filesystem() {
        let t = tempfile::tempdir().unwrap();
        assert!(free_space(t.path()).unwrap() > 0);
        assert!(free_space(Path::new("/nonexistent/x")).is_err());
    }

    #[test]
    fn unreadable_games_dir_is_an_error() {
        let err = scan_games_dir(Path::new("/nonexistent/games"), &Catalog::builtin()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/games"));
    }
}
