//! Installing a game root. The `*.eti` files at the top of the root are grouped into
//! archives and volume sets from their RAR headers ([`crate::volumes`]); every set is
//! listed first (names checked, clashes between sets found, unpacked size summed, encryption
//! refused), then extracted from its first volume into a staging folder next to `local/`,
//! which is renamed to `local/` only when everything succeeded and staging matches every
//! listing — each entry present with its type and size. A failure leaves no `local/`
//! behind (an earlier install stays untouched).
//!
//! UnRAR decompresses and checks; it never creates a file (see [`crate::dll`]): data is
//! written by us into files we create inside staging without following links, hard links
//! and file copies are resolved against the files this install extracted, and symlinks
//! follow the one policy of [`crate::links`]. Nothing outside the root is opened, linked
//! or chmod-ed, whatever the process's working directory.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::dll::{self, Archive, Header, Mode, Redirect};
use crate::tree::{clear_trash, remove_tree_in, sync_fs, LOCAL, STAGING, TRASH};
use crate::{links, InstallError};
use lanspread_catalog::{Access, GameDir};
use plan::{plan, Kind, Listed, PlannedSet};

pub use lanspread_catalog::INSTALLED_MARKER;

/// What an install extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InstallSummary {
    /// Archives extracted (a volume set counts once).
    pub archives: u64,
    /// Files written (hard links and copies included).
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// How far an install is: bytes extracted of the archives' unpacked total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstallProgress {
    /// Bytes extracted so far.
    pub done: u64,
    /// Unpacked size of every archive.
    pub total: u64,
}

/// Checks an archive entry name and returns where it goes under `base`: relative, no `..`,
/// no empty or `.` components, no NUL, no component longer than a file name may be
/// ([`NAME_MAX`]: refused as the archive's fault, not failed on as a disk error).
pub fn safe_entry_path(base: &Path, name: &str) -> Result<PathBuf, InstallError> {
    Ok(base.join(safe_rel(name)?))
}

/// The longest file name (one path component) Linux filesystems take, in bytes.
const NAME_MAX: usize = 255;

fn safe_rel(name: &str) -> Result<PathBuf, InstallError> {
    let unsafe_name = || InstallError::UnsafeName(name.to_owned());
    let cleaned = name.replace('\\', "/");
    if cleaned.is_empty() || cleaned.contains('\0') || cleaned.starts_with('/') {
        return Err(unsafe_name());
    }
    let mut out = PathBuf::new();
    for c in Path::new(&cleaned).components() {
        match c {
            Component::Normal(part) if part.len() <= NAME_MAX => out.push(part),
            Component::CurDir => {}
            _ => return Err(unsafe_name()),
        }
    }
    if out.as_os_str().is_empty() || out == Path::new(INSTALLED_MARKER) {
        return Err(unsafe_name());
    }
    Ok(out)
}

fn io(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |e| InstallError::io(path, e)
}

fn archive_err(archive: &Path, e: dll::DllError) -> InstallError {
    if e.is_encrypted() {
        return InstallError::Encrypted(archive.to_path_buf());
    }
    InstallError::Archive {
        archive: archive.to_path_buf(),
        why: e.0,
    }
}

/// Installs a root (blocking). See the module docs.
pub fn install_root(root: &Path) -> Result<InstallSummary, InstallError> {
    install_root_with(root, &mut |_| {})
}

/// [`install_root`], calling `progress` once the archives are listed (done 0) and after
/// each extracted file.
pub fn install_root_with(
    root: &Path,
    progress: &mut dyn FnMut(InstallProgress),
) -> Result<InstallSummary, InstallError> {
    install_root_until(root, progress, &Arc::new(AtomicBool::new(false)))
}

/// [`install_root_with`] that stops with [`InstallError::Cancelled`] soon after `stop` is
/// set (within one UnRAR output block): staging is removed, an earlier `local/` is kept.
pub fn install_root_until(
    root: &Path,
    progress: &mut dyn FnMut(InstallProgress),
    stop: &Arc<AtomicBool>,
) -> Result<InstallSummary, InstallError> {
    let result = install(root, progress, stop);
    match result {
        Err(_) if stop.load(Ordering::Relaxed) => Err(InstallError::Cancelled),
        other => other,
    }
}

fn install(
    root: &Path,
    progress: &mut dyn FnMut(InstallProgress),
    stop: &Arc<AtomicBool>,
) -> Result<InstallSummary, InstallError> {
    let root = std::path::absolute(root).map_err(io(root))?;
    let root = root.as_path();
    // Everything below goes through the root's descriptor: a folder of staging, or
    // staging itself, swapped for a symlink meanwhile takes no file, link or mode
    // outside the root (the daemon may run as root; a games folder may be writable by
    // others).
    let game = GameDir::open(root).map_err(io(root))?;
    remove_tree_in(&game, STAGING)?;
    let result = (|| {
        // The archives stay open until the install ends (`Pinned`).
        let (sets, need, _pinned) = plan(&game)?;
        let free = lanspread_catalog::free_space(root)
            .map_err(|e| InstallError::io(root, io::Error::other(e)))?;
        if need > free {
            return Err(InstallError::NoSpace { need, free });
        }
        // Staging is ours alone (0700) until it becomes `local/`: no one else can swap
        // an entry in it between its creation and its mode or its check.
        let staging_path = root.join(STAGING);
        let staging = game
            .private_folder(Path::new(STAGING))
            .map_err(io(&staging_path))?;
        let mut run = Run {
            staging: &staging,
            summary: InstallSummary::default(),
            modes: Vec::new(),
            symlinks: Vec::new(),
            files: HashSet::new(),
            stop: stop.clone(),
        };
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
        for set in &sets {
            run.extract_set(set, &mut on_file)?;
            run.summary.archives += 1;
        }
        run.finish(&sets)?;
        if stop.load(Ordering::Relaxed) {
            return Err(InstallError::Cancelled);
        }
        // Our writes went through the page cache: make the files and folders durable before
        // the marker says they are complete. One syncfs of the staging folder's filesystem
        // instead of an fsync per file (thousands for some games).
        sync_fs(&staging)?;
        let marker = Path::new(INSTALLED_MARKER);
        staging
            .create_new(marker)
            .map_err(io(&staging.shown(marker)))?;
        // local/ is 0755 (with the root's setgid bit, so its files keep a shared group),
        // where the filesystem keeps modes at all.
        let setgid = game
            .dir()
            .dir_metadata()
            .map(|m| cap_std::fs::PermissionsExt::mode(&m.permissions()) & 0o2000)
            .unwrap_or(0);
        match staging.chmod(Path::new("."), 0o755 | setgid) {
            Err(e) if e.raw_os_error() != Some(libc::EPERM) => {
                return Err(io(&staging_path)(e));
            }
            _ => {}
        }
        staging.sync().map_err(io(&staging_path))?;
        // Swap in: an older install moves aside first and is removed after the rename.
        let local = root.join(LOCAL);
        if game.dir().symlink_metadata(LOCAL).is_ok() {
            clear_trash(&game)?;
            game.dir()
                .rename(LOCAL, game.dir(), TRASH)
                .map_err(io(&local))?;
        }
        game.dir()
            .rename(STAGING, game.dir(), LOCAL)
            .map_err(io(&local))?;
        // Installed from here on (the new `local/` is in place, its marker durable):
        // what follows cannot undo it, so it only warns. An install reported failed
        // while it is complete would be a lie, and a trash that could not be removed
        // would fail every later install and uninstall.
        if let Err(e) = game.sync() {
            tracing::warn!(path = %root.display(), "installed, but the swap was not synced: {e}");
        }
        if let Err(e) = clear_trash(&game) {
            tracing::warn!("installed, but the old install stays: {e}");
        }
        Ok(run.summary)
    })();
    if result.is_err() {
        let _ = remove_tree_in(&game, STAGING);
    }
    result
}

/// State of one install while it extracts.
struct Run<'a> {
    /// The staging folder, open: every entry is made beneath it.
    staging: &'a GameDir,
    summary: InstallSummary,
    /// Unix modes to apply once everything is written (a 0555 folder would refuse its
    /// own files; a 0444 file its copies), with whether the entry is a folder.
    modes: Vec<(PathBuf, u32, bool)>,
    /// Symlinks made, checked again once the whole tree exists.
    symlinks: Vec<(String, PathBuf)>,
    /// Regular files this install wrote: the only valid hard-link and copy targets.
    files: HashSet<PathBuf>,
    /// Set from outside to stop.
    stop: Arc<AtomicBool>,
}

impl Run<'_> {
    fn extract_set(
        &mut self,
        set: &PlannedSet,
        on_file: &mut dyn FnMut(&InstallSummary),
    ) -> Result<(), InstallError> {
        let first = &set.volumes[0];
        let mut arc =
            Archive::open(&set.names, Mode::Extract).map_err(|e| archive_err(first, e))?;
        arc.stop_when(self.stop.clone());
        let mut seen = 0usize;
        while let Some(h) = arc.next_header().map_err(|e| archive_err(first, e))? {
            if self.stop.load(Ordering::Relaxed) {
                return Err(InstallError::Cancelled);
            }
            let listed = set.entries.get(seen).filter(|l| l.name == h.name);
            let Some(listed) = listed else {
                return Err(InstallError::Incomplete {
                    archive: first.clone(),
                    entry: h.name,
                    why: "not where the archive's listing has it (damaged headers)".into(),
                });
            };
            seen += 1;
            self.entry((&mut arc, first), &h, listed)?;
            if matches!(listed.kind, Kind::File(_)) {
                on_file(&self.summary);
            }
        }
        if let Some(missing) = set.entries.get(seen) {
            return Err(InstallError::Incomplete {
                archive: first.clone(),
                entry: missing.name.clone(),
                why: "listed, but extraction ended before it (damaged archive)".into(),
            });
        }
        Ok(())
    }

    /// Unpacks one entry; `first`: the set's first volume in the root (for messages:
    /// UnRAR reads it by another name, see `pin.rs`).
    fn entry(
        &mut self,
        (arc, first): (&mut Archive, &Path),
        h: &Header,
        listed: &Listed,
    ) -> Result<(), InstallError> {
        let first = first.to_path_buf();
        let dll_err = |e| archive_err(&first, e);
        let rel = listed.rel.as_path();
        let dest = self.staging.shown(rel);
        if h.is_dir && h.redirect == Redirect::None {
            self.create_dirs(rel)?;
            arc.skip().map_err(dll_err)?;
            if let Some(mode) = h.unix_mode {
                self.modes.push((rel.to_path_buf(), mode, true));
            }
            return Ok(());
        }
        let parent = rel.parent().unwrap_or(Path::new(""));
        self.create_dirs(parent)?;
        match &h.redirect {
            Redirect::None => {
                let out = self.staging.create_new(rel).map_err(io(&dest))?;
                let (out, written) =
                    arc.unpack_into(out, h.unp_size)
                        .map_err(|e| match arc.take_write_error() {
                            // The disk, not the archive (ENOSPC is `disk-full` to the user).
                            Some(w) => InstallError::io(&dest, w),
                            None => {
                                archive_err(&first, dll::DllError(format!("{}: {}", h.name, e.0)))
                            }
                        })?;
                if written != h.unp_size {
                    return Err(InstallError::Incomplete {
                        archive: first,
                        entry: h.name.clone(),
                        why: format!("unpacked {written} bytes, its header says {}", h.unp_size),
                    });
                }
                self.finish_file(out, rel, h)?;
                self.files.insert(listed.rel.clone());
                self.summary.bytes += written;
            }
            Redirect::HardLink(target) | Redirect::FileCopy(target) => {
                let copy = matches!(h.redirect, Redirect::FileCopy(_));
                let kind = if copy { "file copy" } else { "hard link" };
                arc.test().map_err(dll_err)?;
                let src = self.link_source(kind, &h.name, target)?;
                if copy {
                    let shown = self.staging.shown(&src);
                    let (from, _) = self
                        .staging
                        .open_file(&src, Access::Read)
                        .map_err(io(&shown))?;
                    // The copy is the size its header says (what the free-space check
                    // counted), or refused before a byte is written.
                    let size = from.metadata().map_err(io(&shown))?.len();
                    if size != h.unp_size {
                        let why = format!(
                            "its source holds {size} bytes, its header says {}",
                            h.unp_size
                        );
                        return Err(link_err(kind, &h.name, target, &why));
                    }
                    let mut out = self.staging.create_new(rel).map_err(io(&dest))?;
                    let n =
                        io::copy(&mut io::Read::take(from, size), &mut out).map_err(io(&dest))?;
                    self.finish_file(out, rel, h)?;
                    self.files.insert(listed.rel.clone());
                    self.summary.bytes += n;
                } else {
                    let dir = self.staging.dir();
                    dir.hard_link(&src, dir, rel).map_err(io(&dest))?;
                }
            }
            Redirect::Symlink(Some(target)) => {
                if let Some(why) = links::lexical_escape(&listed.rel, target) {
                    return Err(link_err("symlink", &h.name, target, why));
                }
                arc.test().map_err(dll_err)?;
                self.staging.dir().symlink(target, rel).map_err(io(&dest))?;
                self.symlinks.push((h.name.clone(), listed.rel.clone()));
            }
            Redirect::Symlink(None) => {
                // RAR 4: the target is the entry's data, which UnRAR reads only when it
                // creates the link itself, by path. UnRAR refuses (and reports success
                // for) a target that is absolute or climbs out of the archive, and one
                // with `..` when any folder on the path it is given is a link. So it
                // makes the link in a private folder of ours (0700, at its real path,
                // with the entry's own sub-folders), where no one else can swap a
                // folder; we read the target back, judge it, and make our own link
                // beneath staging.
                let private = PrivateDir::new("lanspread-link-").map_err(io(&dest))?;
                let at = private.0.join(rel);
                if let Some(folder) = at.parent() {
                    std::os::unix::fs::DirBuilderExt::mode(
                        fs::DirBuilder::new().recursive(true),
                        0o700,
                    )
                    .create(folder)
                    .map_err(io(&dest))?;
                }
                let made = arc.extract_link(&at);
                let target = match (made, fs::read_link(&at)) {
                    (Ok(()), Ok(target)) => target,
                    (made, _) => {
                        let detail = made
                            .err()
                            .map(|e| format!(" ({})", e.0))
                            .unwrap_or_default();
                        return Err(link_err(
                            "symlink",
                            &h.name,
                            "(stored in the entry)",
                            &format!("UnRAR did not create it{detail}: its target is absolute or leaves the archive"),
                        ));
                    }
                };
                drop(private);
                let target = target.to_string_lossy().into_owned();
                if let Some(why) = links::lexical_escape(&listed.rel, &target) {
                    return Err(link_err("symlink", &h.name, &target, why));
                }
                self.staging
                    .dir()
                    .symlink(&target, rel)
                    .map_err(io(&dest))?;
                self.symlinks.push((h.name.clone(), listed.rel.clone()));
            }
            Redirect::Unknown(t) => {
                return Err(InstallError::Archive {
                    archive: first,
                    why: format!(
                        "{}: a link of type {t}, which lanspread does not support",
                        h.name
                    ),
                })
            }
        }
        self.summary.files += u64::from(!matches!(h.redirect, Redirect::Symlink(_)));
        Ok(())
    }

    /// The file a hard link or copy refers to: one this install already extracted.
    fn link_source(
        &self,
        kind: &'static str,
        name: &str,
        target: &str,
    ) -> Result<PathBuf, InstallError> {
        let rel = safe_rel(target).map_err(|_| {
            link_err(
                kind,
                name,
                target,
                "target is not a name inside the archive",
            )
        })?;
        if !self.files.contains(&rel) {
            return Err(link_err(
                kind,
                name,
                target,
                "target is not a file extracted before it",
            ));
        }
        Ok(rel)
    }

    fn finish_file(&mut self, out: fs::File, rel: &Path, h: &Header) -> Result<(), InstallError> {
        if let Some(t) = h.mtime {
            out.set_modified(t).map_err(io(&self.staging.shown(rel)))?;
        }
        if let Some(mode) = h.unix_mode {
            self.modes.push((rel.to_path_buf(), mode, false));
        }
        Ok(())
    }

    /// Creates the folder `rel` of staging, component by component, refusing symlinks
    /// and anything else in the way.
    fn create_dirs(&self, rel: &Path) -> Result<(), InstallError> {
        if rel.as_os_str().is_empty() {
            return Ok(());
        }
        self.staging.create_folders(rel).map(drop).map_err(|e| {
            if e.to_string().contains("in the way") {
                InstallError::UnsafeName(e.to_string())
            } else {
                InstallError::io(self.staging.shown(rel), e)
            }
        })
    }

    /// Checks the finished tree against every listing and applies the modes.
    fn finish(&mut self, sets: &[PlannedSet]) -> Result<(), InstallError> {
        for (name, rel) in &self.symlinks {
            if links::escapes(self.staging.path(), rel) {
                let target = fs::read_link(self.staging.shown(rel))
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(link_err(
                    "symlink",
                    name,
                    &target,
                    "points outside the install folder through another link",
                ));
            }
        }
        for set in sets {
            for e in &set.entries {
                let meta = self.staging.dir().symlink_metadata(&e.rel);
                let why = match (e.kind, meta) {
                    (_, Err(_)) => Some("missing after extraction".to_owned()),
                    (Kind::Dir, Ok(m)) if !m.is_dir() => {
                        Some("is not a folder after extraction".into())
                    }
                    (Kind::Symlink, Ok(m)) if !m.file_type().is_symlink() => {
                        Some("is not a symlink after extraction".into())
                    }
                    (Kind::File(size), Ok(m)) if !m.is_file() || m.len() != size => Some(format!(
                        "{} bytes after extraction, its header says {size}",
                        m.len()
                    )),
                    _ => None,
                };
                if let Some(why) = why {
                    return Err(InstallError::Incomplete {
                        archive: set.volumes[0].clone(),
                        entry: e.name.clone(),
                        why,
                    });
                }
            }
        }
        // Files first, then folders deepest first, so no mode locks out a later step.
        // Set-id and sticky bits are dropped: a game install never needs them.
        // Each through a handle of the entry itself beneath staging, never a symlink.
        self.modes
            .sort_by_key(|(p, _, dir)| (*dir, std::cmp::Reverse(p.components().count())));
        for (rel, mode, _) in &self.modes {
            self.staging
                .chmod(rel, mode & 0o777)
                .map_err(io(&self.staging.shown(rel)))?;
        }
        Ok(())
    }
}

/// A folder of ours alone under the temporary folder (`mkdtemp`: 0700, a fresh name,
/// `prefix` then six characters), at its real path (no link in it: UnRAR refuses a `..`
/// link where a folder on its path is one); removed with everything in it when dropped.
/// (No `tempfile` in the daemon.)
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new(prefix: &str) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let template = std::env::temp_dir().join(format!("{prefix}XXXXXX"));
        let mut bytes = std::ffi::CString::new(template.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("a NUL in the temporary folder's path"))?
            .into_bytes_with_nul();
        // SAFETY: mkdtemp rewrites the XXXXXX of the NUL-terminated template in place.
        if unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) }.is_null() {
            return Err(io::Error::last_os_error());
        }
        bytes.pop();
        let made = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
        match fs::canonicalize(&made) {
            Ok(real) => Ok(Self(real)),
            Err(e) => {
                let _ = fs::remove_dir(&made);
                Err(e)
            }
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn link_err(kind: &'static str, entry: &str, target: &str, why: &str) -> InstallError {
    InstallError::Link {
        kind,
        entry: entry.to_owned(),
        target: target.to_owned(),
        why: why.to_owned(),
    }
}

mod pin;
mod plan;
#[cfg(test)]
mod tests;
