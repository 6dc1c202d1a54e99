//! Installing a game root: every `*.eti` archive at the top of the root, in name order, is
//! extracted with UnRAR into a staging folder next to `local/`, which is renamed to
//! `local/` only when everything succeeded. Entry names are checked before anything is
//! written; a failure leaves no `local/` behind (an earlier install stays untouched).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::InstallError;

pub use lanspread_catalog::INSTALLED_MARKER;
const STAGING: &str = ".lanspread-staging";
const TRASH: &str = ".lanspread-trash";
/// What an install or uninstall killed midway leaves in a root (the staging folder and a
/// moved-aside old `local/`): safe to remove while no operation runs on it.
pub const LEFTOVERS: [&str; 2] = [STAGING, TRASH];
const LOCAL: &str = "local";

/// What an install extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InstallSummary {
    /// Archives extracted.
    pub archives: u64,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Checks an archive entry name and returns where it goes under `base`: relative, no `..`,
/// no empty or `.` components, no NUL.
pub fn safe_entry_path(base: &Path, name: &str) -> Result<PathBuf, InstallError> {
    let unsafe_name = || InstallError::UnsafeName(name.to_owned());
    let name = name.replace('\\', "/");
    if name.is_empty() || name.contains('\0') || name.starts_with('/') {
        return Err(unsafe_name());
    }
    let mut out = base.to_path_buf();
    for c in Path::new(&name).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => return Err(unsafe_name()),
        }
    }
    if out == base {
        return Err(unsafe_name());
    }
    Ok(out)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |e| InstallError::io(path, e)
}

fn archive_err(archive: &Path, e: impl std::fmt::Display) -> InstallError {
    InstallError::Archive {
        archive: archive.to_path_buf(),
        why: e.to_string(),
    }
}

/// The archives of a root, sorted by name.
fn archives(root: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut out: Vec<PathBuf> = fs::read_dir(root)
        .map_err(io(root))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eti") && p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

/// Lists every entry first: names checked, clashes between archives found, unpacked size
/// summed — all before anything is written.
fn plan(archives: &[PathBuf]) -> Result<u64, InstallError> {
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let mut total = 0u64;
    let probe = Path::new("/probe");
    for a in archives {
        let listing = unrar::Archive::new(a)
            .open_for_listing()
            .map_err(|e| archive_err(a, e))?;
        for entry in listing {
            let entry = entry.map_err(|e| archive_err(a, e))?;
            let name = entry.filename.to_string_lossy().into_owned();
            let rel = safe_entry_path(probe, &name)?;
            if entry.is_directory() {
                continue;
            }
            let key = rel.to_string_lossy().into_owned();
            let here = a
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(first) = owners.insert(key, here.clone()) {
                return Err(InstallError::Clash {
                    name,
                    first,
                    second: here,
                });
            }
            total = total.saturating_add(entry.unpacked_size);
        }
    }
    Ok(total)
}

/// Installs a root (blocking). See the module docs.
pub fn install_root(root: &Path) -> Result<InstallSummary, InstallError> {
    install_root_with(root, &mut |_| {})
}

/// How far an install is: bytes extracted of the archives' unpacked total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstallProgress {
    /// Bytes extracted so far.
    pub done: u64,
    /// Unpacked size of every archive.
    pub total: u64,
}

/// [`install_root`], calling `progress` once the archives are listed (done 0) and after
/// each extracted file.
pub fn install_root_with(
    root: &Path,
    progress: &mut dyn FnMut(InstallProgress),
) -> Result<InstallSummary, InstallError> {
    let staging = root.join(STAGING);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    let result = (|| {
        let archives = archives(root)?;
        let need = plan(&archives)?;
        let free = lanspread_catalog::free_space(root)
            .map_err(|e| InstallError::io(root, std::io::Error::other(e)))?;
        if need > free {
            return Err(InstallError::NoSpace { need, free });
        }
        fs::create_dir(&staging).map_err(io(&staging))?;
        let mut summary = InstallSummary::default();
        progress(InstallProgress {
            done: 0,
            total: need,
        });
        let mut on_file = |s: &InstallSummary| {
            progress(InstallProgress {
                done: s.bytes,
                total: need,
            })
        };
        for a in &archives {
            extract(a, &staging, &mut summary, &mut on_file)?;
            summary.archives += 1;
        }
        // UnRAR wrote the files through the page cache: make them and their folders
        // durable before the marker says they are complete. One syncfs of the staging
        // folder's filesystem instead of an fsync per file (thousands for some games).
        sync_fs(&staging)?;
        let marker = staging.join(INSTALLED_MARKER);
        fs::write(&marker, b"").map_err(io(&marker))?;
        sync_dir(&staging)?;
        // Swap in: an older install moves aside first and is removed after the rename.
        let local = root.join(LOCAL);
        let trash = root.join(TRASH);
        if local.exists() {
            let _ = fs::remove_dir_all(&trash);
            fs::rename(&local, &trash).map_err(io(&local))?;
        }
        fs::rename(&staging, &local).map_err(io(&local))?;
        sync_dir(root)?;
        let _ = fs::remove_dir_all(&trash);
        Ok(summary)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

fn extract(
    archive: &Path,
    staging: &Path,
    summary: &mut InstallSummary,
    on_file: &mut dyn FnMut(&InstallSummary),
) -> Result<(), InstallError> {
    let mut open = unrar::Archive::new(archive)
        .open_for_processing()
        .map_err(|e| archive_err(archive, e))?;
    while let Some(header) = open.read_header().map_err(|e| archive_err(archive, e))? {
        let entry = header.entry();
        let name = entry.filename.to_string_lossy().into_owned();
        let dest = safe_entry_path(staging, &name)?;
        let attr = entry.file_attr;
        let is_dir = entry.is_directory();
        let size = entry.unpacked_size;
        // Folders are created by us, never through whatever already sits on the path.
        let parent = if is_dir {
            dest.as_path()
        } else {
            dest.parent().unwrap_or(staging)
        };
        create_dirs(staging, parent)?;
        open = if is_dir {
            header.skip().map_err(|e| archive_err(archive, e))?
        } else {
            let next = header
                .extract_to(&dest)
                .map_err(|e| archive_err(archive, format!("{name}: {e}")))?;
            check_extracted(staging, &dest, &name)?;
            summary.files += 1;
            summary.bytes += size;
            on_file(summary);
            next
        };
        // Unix archives carry st_mode; others DOS attributes, which say nothing of modes.
        if attr & 0o170000 != 0
            && !fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink())
        {
            fs::set_permissions(&dest, fs::Permissions::from_mode(attr & 0o7777))
                .map_err(io(&dest))?;
        }
    }
    Ok(())
}

/// Creates `dir` (inside `staging`) component by component, refusing symlinks.
fn create_dirs(staging: &Path, dir: &Path) -> Result<(), InstallError> {
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

/// A symlink that UnRAR created must stay inside the install folder.
fn check_extracted(staging: &Path, dest: &Path, name: &str) -> Result<(), InstallError> {
    let Ok(meta) = fs::symlink_metadata(dest) else {
        return Ok(());
    };
    if !meta.file_type().is_symlink() {
        return Ok(());
    }
    let target = fs::read_link(dest).map_err(io(dest))?;
    let base = dest.parent().unwrap_or(staging);
    let mut resolved = base.to_path_buf();
    for c in target.components() {
        match c {
            Component::Normal(p) => resolved.push(p),
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir => {}
            _ => return Err(InstallError::SymlinkEscape(name.to_owned())),
        }
    }
    if !resolved.starts_with(staging) {
        return Err(InstallError::SymlinkEscape(name.to_owned()));
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
    let _ = fs::remove_dir_all(&trash);
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
fn sync_fs(dir: &Path) -> Result<(), InstallError> {
    use std::os::fd::AsRawFd;
    let d = fs::File::open(dir).map_err(io(dir))?;
    // SAFETY: syncfs only reads the descriptor, which `d` keeps open for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(InstallError::io(dir, std::io::Error::last_os_error()))
    }
}

fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests;
