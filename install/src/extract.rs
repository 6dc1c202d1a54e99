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

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::dll::{self, Archive, Header, Mode, Redirect};
use crate::tree::{create_dirs, remove_tree, sync_dir, sync_fs, LOCAL, STAGING, TRASH};
use crate::volumes::{self, Candidate};
use crate::{links, InstallError};

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
/// no empty or `.` components, no NUL.
pub fn safe_entry_path(base: &Path, name: &str) -> Result<PathBuf, InstallError> {
    Ok(base.join(safe_rel(name)?))
}

fn safe_rel(name: &str) -> Result<PathBuf, InstallError> {
    let unsafe_name = || InstallError::UnsafeName(name.to_owned());
    let cleaned = name.replace('\\', "/");
    if cleaned.is_empty() || cleaned.contains('\0') || cleaned.starts_with('/') {
        return Err(unsafe_name());
    }
    let mut out = PathBuf::new();
    for c in Path::new(&cleaned).components() {
        match c {
            Component::Normal(part) => out.push(part),
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

/// An entry as the listing gave it.
#[derive(Debug, Clone)]
struct Listed {
    name: String,
    rel: PathBuf,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    /// A regular file (plain, hard link or copy) of this size.
    File(u64),
    Symlink,
}

/// One archive or volume set, listed.
struct PlannedSet {
    volumes: Vec<PathBuf>,
    entries: Vec<Listed>,
}

/// The regular-file `.eti` archives at the top of a root (links are not followed), by name.
fn archives(root: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut out: Vec<PathBuf> = fs::read_dir(root)
        .map_err(io(root))?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eti"))
        .collect();
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Groups the archives into sets and lists every one — all before anything is written.
fn plan(root: &Path) -> Result<(Vec<PlannedSet>, u64), InstallError> {
    let files = archives(root)?;
    let mut candidates = Vec::with_capacity(files.len());
    for f in &files {
        let mut file = fs::File::open(f).map_err(io(f))?;
        let info = volumes::probe(&mut file).map_err(io(f))?;
        candidates.push(Candidate {
            name: file_name(f),
            info,
        });
    }
    let sets = volumes::plan_sets(&candidates).map_err(InstallError::VolumeSet)?;
    let mut owners: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut total = 0u64;
    let mut planned = Vec::with_capacity(sets.len());
    for set in sets {
        let volumes: Vec<PathBuf> = set.members.iter().map(|&i| files[i].clone()).collect();
        let first = &volumes[0];
        let label = file_name(first);
        let mut arc = Archive::open(&volumes, Mode::List).map_err(|e| archive_err(first, e))?;
        if arc.flags.encrypted_headers {
            return Err(InstallError::Encrypted(first.clone()));
        }
        let mut entries = Vec::new();
        while let Some(h) = arc.next_header().map_err(|e| archive_err(first, e))? {
            if h.encrypted {
                return Err(InstallError::Encrypted(first.clone()));
            }
            let rel = safe_rel(&h.name)?;
            let kind = kind_of(&h);
            if kind != Kind::Dir {
                if let Some(other) = owners.insert(rel.clone(), label.clone()) {
                    return Err(InstallError::Clash {
                        name: h.name,
                        first: other,
                        second: label,
                    });
                }
            }
            if let (Kind::File(size), false) = (kind, matches!(h.redirect, Redirect::HardLink(_))) {
                total = total.saturating_add(size);
            }
            entries.push(Listed {
                name: h.name,
                rel,
                kind,
            });
            arc.skip().map_err(|e| archive_err(first, e))?;
        }
        // A second reader's count: headers UnRAR skips as damaged would otherwise vanish.
        let infos: Vec<_> = set
            .members
            .iter()
            .filter_map(|&i| candidates[i].info)
            .collect();
        let counted: u32 = infos.iter().map(|v| v.entries).sum();
        let exact = infos.len() == set.members.len() && infos.iter().all(|v| v.walked);
        let listed = entries.len();
        if (counted as usize) > listed || (exact && counted as usize != listed) {
            return Err(InstallError::Archive {
                archive: first.clone(),
                why: format!(
                    "its headers hold {counted} entries but UnRAR reads {listed} (damaged headers)"
                ),
            });
        }
        planned.push(PlannedSet { volumes, entries });
    }
    Ok((planned, total))
}

fn kind_of(h: &Header) -> Kind {
    match h.redirect {
        Redirect::Symlink(_) => Kind::Symlink,
        Redirect::None if h.is_dir => Kind::Dir,
        _ => Kind::File(h.unp_size),
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
    let staging = root.join(STAGING);
    remove_tree(&staging)?;
    let result = (|| {
        let (sets, need) = plan(root)?;
        let free = lanspread_catalog::free_space(root)
            .map_err(|e| InstallError::io(root, io::Error::other(e)))?;
        if need > free {
            return Err(InstallError::NoSpace { need, free });
        }
        fs::create_dir(&staging).map_err(io(&staging))?;
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
        let marker = staging.join(INSTALLED_MARKER);
        create_new(&marker)?;
        sync_dir(&staging)?;
        // Swap in: an older install moves aside first and is removed after the rename.
        let local = root.join(LOCAL);
        let trash = root.join(TRASH);
        if fs::symlink_metadata(&local).is_ok() {
            remove_tree(&trash)?;
            fs::rename(&local, &trash).map_err(io(&local))?;
        }
        fs::rename(&staging, &local).map_err(io(&local))?;
        sync_dir(root)?;
        remove_tree(&trash)?;
        Ok(run.summary)
    })();
    if result.is_err() {
        let _ = remove_tree(&staging);
    }
    result
}

/// A new file inside staging: never through a link, never over an existing entry.
fn create_new(path: &Path) -> Result<fs::File, InstallError> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(path))
}

/// State of one install while it extracts.
struct Run<'a> {
    staging: &'a Path,
    summary: InstallSummary,
    /// Unix modes to apply once everything is written (a 0555 folder would refuse its
    /// own files; a 0444 file its copies).
    modes: Vec<(PathBuf, u32)>,
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
            Archive::open(&set.volumes, Mode::Extract).map_err(|e| archive_err(first, e))?;
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
            self.entry(&mut arc, &h, listed)?;
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

    fn entry(
        &mut self,
        arc: &mut Archive,
        h: &Header,
        listed: &Listed,
    ) -> Result<(), InstallError> {
        let first = arc.path().to_path_buf();
        let dll_err = |e| archive_err(&first, e);
        let dest = self.staging.join(&listed.rel);
        if h.is_dir && h.redirect == Redirect::None {
            create_dirs(self.staging, &dest)?;
            arc.skip().map_err(dll_err)?;
            if let Some(mode) = h.unix_mode {
                self.modes.push((dest, mode));
            }
            return Ok(());
        }
        create_dirs(self.staging, dest.parent().unwrap_or(self.staging))?;
        match &h.redirect {
            Redirect::None => {
                let out = create_new(&dest)?;
                let (out, written) = arc.unpack_into(out).map_err(|e| {
                    archive_err(&first, dll::DllError(format!("{}: {}", h.name, e.0)))
                })?;
                if written != h.unp_size {
                    return Err(InstallError::Incomplete {
                        archive: first,
                        entry: h.name.clone(),
                        why: format!("unpacked {written} bytes, its header says {}", h.unp_size),
                    });
                }
                self.finish_file(out, &dest, h)?;
                self.files.insert(listed.rel.clone());
                self.summary.bytes += written;
            }
            Redirect::HardLink(target) | Redirect::FileCopy(target) => {
                let copy = matches!(h.redirect, Redirect::FileCopy(_));
                let kind = if copy { "file copy" } else { "hard link" };
                arc.test().map_err(dll_err)?;
                let src = self.link_source(kind, &h.name, target)?;
                if copy {
                    let mut from = fs::File::open(&src).map_err(io(&src))?;
                    let mut out = create_new(&dest)?;
                    let n = io::copy(&mut from, &mut out).map_err(io(&dest))?;
                    self.finish_file(out, &dest, h)?;
                    self.files.insert(listed.rel.clone());
                    self.summary.bytes += n;
                } else {
                    fs::hard_link(&src, &dest).map_err(io(&dest))?;
                }
            }
            Redirect::Symlink(Some(target)) => {
                if let Some(why) = links::lexical_escape(&listed.rel, target) {
                    return Err(link_err("symlink", &h.name, target, why));
                }
                arc.test().map_err(dll_err)?;
                std::os::unix::fs::symlink(target, &dest).map_err(io(&dest))?;
                self.symlinks.push((h.name.clone(), listed.rel.clone()));
            }
            Redirect::Symlink(None) => {
                // RAR 4: the target is the entry's data, which UnRAR reads only when it
                // creates the link itself — at exactly `dest`, checked right after.
                // UnRAR refuses (and reports success for) a target that is absolute or
                // climbs out of the archive: no link is then made.
                let made = arc.extract_link(&dest);
                let target = match (made, fs::read_link(&dest)) {
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
                let target = target.to_string_lossy().into_owned();
                if let Some(why) = links::lexical_escape(&listed.rel, &target) {
                    return Err(link_err("symlink", &h.name, &target, why));
                }
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
        Ok(self.staging.join(rel))
    }

    fn finish_file(&mut self, out: fs::File, dest: &Path, h: &Header) -> Result<(), InstallError> {
        if let Some(t) = h.mtime {
            out.set_modified(t).map_err(io(dest))?;
        }
        if let Some(mode) = h.unix_mode {
            self.modes.push((dest.to_path_buf(), mode));
        }
        Ok(())
    }

    /// Checks the finished tree against every listing and applies the modes.
    fn finish(&mut self, sets: &[PlannedSet]) -> Result<(), InstallError> {
        for (name, rel) in &self.symlinks {
            if links::escapes(self.staging, rel) {
                let target = fs::read_link(self.staging.join(rel))
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
                let path = self.staging.join(&e.rel);
                let meta = fs::symlink_metadata(&path);
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
        self.modes
            .sort_by_key(|(p, _)| (p.is_dir(), std::cmp::Reverse(p.components().count())));
        for (path, mode) in &self.modes {
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777))
                .map_err(io(path))?;
        }
        Ok(())
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

#[cfg(test)]
mod tests;
