//! Read-only scan of a games directory into typed game roots.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{is_reserved_top_level, Catalog, CatalogError, GameId, RelPath, Version, VERSION_FILE};

/// One regular file of a game root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDescriptor {
    /// Path relative to the game root.
    pub path: RelPath,
    /// Size in bytes.
    pub size: u64,
    /// Unix permission bits (`0o7777` mask).
    pub mode: u32,
}

/// Whether a root may be served and listed as downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Availability {
    /// Valid sentinel, no operation active.
    Ready,
    /// A download is writing into the root.
    Downloading,
    /// An install is extracting the root's archives.
    Installing,
    /// No valid `version.ini`: incomplete or foreign data.
    NotReady,
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
    /// True when `local/` holds a completed install.
    pub installed: bool,
}

impl GameRoot {
    /// Total payload size in bytes.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Availability from the sentinel alone; the daemon overlays active operations.
    pub fn availability(&self) -> Availability {
        if self.version.is_some() {
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
        // A catalog folder that is a symlink would let a root live outside the games dir.
        match entry.file_type() {
            Ok(t) if t.is_dir() => {}
            _ => continue,
        }
        lib.insert(id.clone(), scan_root(&dir, id));
    }
    Ok(lib)
}

/// Scans one game root. Never fails: problems are logged and make the root not ready.
pub fn scan_root(dir: &Path, id: GameId) -> GameRoot {
    let version = match fs::read_to_string(dir.join(VERSION_FILE)) {
        Ok(text) => match Version::parse(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(game = %id, "not ready: {e}");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            warn!(game = %id, "not ready: cannot read {VERSION_FILE}: {e}");
            None
        }
    };
    let mut files = Vec::new();
    let canonical_root = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if let Err(e) = walk(dir, &canonical_root, "", &mut files) {
        warn!(game = %id, "scan incomplete: {e}");
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let installed = dir.join(crate::LOCAL_DIR).join(INSTALLED_MARKER).is_file();
    GameRoot {
        id,
        dir: dir.to_path_buf(),
        version,
        files,
        installed,
    }
}

/// Walks `dir` (whose path relative to the root is `prefix`), appending regular files.
/// Symlinks are followed only when they resolve to a regular file inside the root;
/// symlinked directories are never followed (no loops, no escapes).
fn walk(
    dir: &Path,
    root: &Path,
    prefix: &str,
    out: &mut Vec<FileDescriptor>,
) -> Result<(), CatalogError> {
    let entries = fs::read_dir(dir).map_err(|e| CatalogError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CatalogError::io(dir, e))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            warn!(path = %path.display(), "skipped: name is not UTF-8");
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
        let meta = fs::symlink_metadata(&path).map_err(|e| CatalogError::io(&path, e))?;
        let meta = if meta.file_type().is_symlink() {
            match fs::canonicalize(&path) {
                Ok(target) if target.starts_with(root) && target.is_file() => {
                    fs::metadata(&target).map_err(|e| CatalogError::io(&target, e))?
                }
                _ => {
                    warn!(path = %path.display(), "skipped: symlink leaves the root or is not a file");
                    continue;
                }
            }
        } else {
            meta
        };
        if meta.is_dir() {
            walk(&path, root, &rel, out)?;
        } else if meta.is_file() {
            match RelPath::new(&rel) {
                Ok(path) => out.push(FileDescriptor {
                    path,
                    size: meta.size(),
                    mode: meta.permissions().mode() & 0o7777,
                }),
                Err(e) => warn!("skipped: {e}"),
            }
        }
    }
    Ok(())
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
    fn keeps_unix_modes() {
        let t = tempfile::tempdir().unwrap();
        let exe = t.path().join("cod5/run.sh");
        write(&exe, b"#!/bin/sh\n");
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let root = scan_root(&t.path().join("cod5"), GameId::new("cod5").unwrap());
        assert_eq!(root.files[0].mode, 0o755);
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
        symlink(&outside, root.join("escape.txt")).unwrap();
        symlink(root.join("data.bin"), root.join("alias.bin")).unwrap();
        symlink(t.path(), root.join("dirlink")).unwrap();
        let r = scan_root(&root, GameId::new("cnc4").unwrap());
        let paths: Vec<_> = r.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["alias.bin", "data.bin", "version.ini"]);
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
