//! Read-only scan of a games directory into typed game roots.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::{
    in_served_part, is_reserved_top_level, Availability, Catalog, CatalogError, GameId, RelPath,
    Version, VERSION_FILE,
};

/// One regular file of a game root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDescriptor {
    /// Path relative to the game root.
    pub path: RelPath,
    /// Size in bytes.
    pub size: u64,
    /// Unix permission bits as they travel (`lanspread_proto::file_mode`: no setuid,
    /// setgid or sticky bit, owner read always, so every copy describes its files as the
    /// source does).
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
    walk.tree(dir, &canonical_root);
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
    if problem.is_none() {
        // The bounds a downloader holds a manifest to (`check_tree`): a tree past them is
        // not offered, rather than offered and refused by everyone.
        let mut entries: Vec<(&str, bool)> = files
            .iter()
            .map(|f| (f.path.as_str(), false))
            .chain(folders.iter().map(|d| (d.as_str(), true)))
            .collect();
        entries.sort_unstable();
        if let Err(why) = lanspread_proto::check_tree(entries) {
            problem = Some(format!("a tree peers would refuse: {why}"));
        }
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
    // Neither a `local` nor a marker that is a symlink counts (either may point at an
    // install that is not this game's).
    let local = dir.join(crate::LOCAL_DIR);
    let installed = std::fs::symlink_metadata(&local).is_ok_and(|m| m.is_dir())
        && std::fs::symlink_metadata(local.join(INSTALLED_MARKER)).is_ok_and(|m| m.is_file());
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

/// A sub-folder still to walk: its path, its path in the root, and what it was when
/// listed.
type Sub = (PathBuf, String, FolderId);

impl Walk {
    fn problem(&mut self, why: String) {
        debug!("{why}");
        self.problem.get_or_insert(why);
    }

    /// Walks the root folder `top` (canonically `root`) and every folder under it.
    /// Iterative, with the folders still to walk on a list of its own: a tree thousands
    /// of folders deep (made by someone, or by a peer's manifest) costs memory, never the
    /// stack of the thread that scans.
    fn tree(&mut self, top: &Path, root: &Path) {
        /// A folder being walked: its path relative to the root, what had been found
        /// before it, and its sub-folders not walked yet.
        struct Open {
            rel: String,
            found: (usize, usize),
            subs: Vec<Sub>,
        }
        let mut open = vec![Open {
            rel: String::new(),
            found: (0, 0),
            subs: self.dir(top, root, "", None),
        }];
        while let Some(here) = open.last_mut() {
            if let Some((path, rel, id)) = here.subs.pop() {
                let found = (self.files.len(), self.folders.len());
                let subs = self.dir(&path, root, &rel, Some(id));
                open.push(Open { rel, found, subs });
                continue;
            }
            let Some(done) = open.pop() else { break };
            // Nothing in it travels: the folder itself must (anything in it that cannot
            // travel is the root's problem already). The root itself is not listed.
            if !open.is_empty() && done.found == (self.files.len(), self.folders.len()) {
                match RelPath::new(&done.rel) {
                    Ok(rel) => self.folders.push(rel),
                    Err(e) => self.problem(format!("cannot be sent to peers: {e}")),
                }
            }
        }
    }

    /// Walks the entries of `dir` (whose path relative to the root is `prefix`; `was`:
    /// the folder as its parent's listing saw it, none for the root), appending regular
    /// files, and returns its sub-folders. Symlinks are followed only when they resolve
    /// to a regular file inside the root; symlinked directories are never followed (no
    /// loops, no escapes), the root itself neither (a root swapped for one since the
    /// games dir was listed).
    fn dir(&mut self, dir: &Path, root: &Path, prefix: &str, was: Option<FolderId>) -> Vec<Sub> {
        let mut subs = Vec::new();
        let opened = match open_folder(dir, false, was) {
            Ok(o) => o,
            Err(e) => {
                self.problem(format!("cannot read folder {}: {e}", dir.display()));
                return subs;
            }
        };
        let entries = match fs::read_dir(opened.via()) {
            Ok(e) => e,
            Err(e) => {
                self.problem(format!("cannot read folder {}: {e}", dir.display()));
                return subs;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.problem(format!("cannot read folder {}: {e}", dir.display()));
                    return subs;
                }
            };
            // Shown as `path`, reached through the folder opened (`at`).
            let path = dir.join(entry.file_name());
            let at = opened.via().join(entry.file_name());
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
            let meta = match fs::symlink_metadata(&at) {
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
                // (By its path: resolved the way the root was, whatever spelling a
                // case-insensitive filesystem gives the descriptor's path.)
                match fs::canonicalize(&path) {
                    Ok(target) if target.starts_with(root) && !in_served_part(root, &target) => {
                        self.problem(format!(
                            "{} is a symlink into local/ or .lanspread*, not followed (the \
                             installed copy and the daemon's files are never sent)",
                            path.display()
                        ));
                        continue;
                    }
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
                subs.push((path, rel, folder_id(&meta)));
            } else if !meta.is_file() {
                self.problem(not_a_file(&path));
            } else {
                match RelPath::new(&rel) {
                    Ok(rel) => {
                        if let Err(e) = readable(&at) {
                            self.problem(format!("cannot read {}: {e}", path.display()));
                        }
                        self.files.push(FileDescriptor {
                            path: rel,
                            size: meta.size(),
                            mode: lanspread_proto::file_mode(meta.permissions().mode()),
                        })
                    }
                    Err(e) => self.problem(format!("cannot be sent to peers: {e}")),
                }
            }
        }
        subs
    }
}

/// A folder opened for listing (or watching), and the path that reaches exactly what was
/// opened (`/proc/self/fd/N`), whatever is done to its name meanwhile.
#[derive(Debug)]
pub struct OpenFolder {
    _file: fs::File,
    via: PathBuf,
}

impl OpenFolder {
    /// The path to the folder opened: list it, watch it, reach its entries through it.
    pub fn via(&self) -> &Path {
        &self.via
    }
}

/// A folder's device and inode, as its parent's listing saw it.
pub type FolderId = (u64, u64);

/// The [`FolderId`] of an entry's metadata.
pub fn folder_id(meta: &fs::Metadata) -> FolderId {
    (meta.dev(), meta.ino())
}

/// Opens the folder `dir` for listing: never blocking (a FIFO swapped in), not through a
/// symlink at its last component unless `follow_last` (the top of a walk may be reached
/// through one: a games dir on another disk), and, given `was` (the folder as its
/// parent's listing saw it), only if it is that folder still: one swapped for a symlink,
/// or reached through a folder above it swapped for one, since its parent was listed is
/// not walked (a link to `/` would have the names out there listed as a game's). An
/// identity, not a name, is compared: a case-insensitive filesystem may spell a path
/// otherwise than it was listed. The folder moved is `NotFound`.
pub fn open_folder(
    dir: &Path,
    follow_last: bool,
    was: Option<FolderId>,
) -> std::io::Result<OpenFolder> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let nofollow = if follow_last { 0 } else { libc::O_NOFOLLOW };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_CLOEXEC | nofollow)
        .open(dir)?;
    if was.is_some_and(|was| file.metadata().map(|m| folder_id(&m)).ok() != Some(was)) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "it moved while it was walked",
        ));
    }
    let via = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    Ok(OpenFolder { _file: file, via })
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
mod tests;
