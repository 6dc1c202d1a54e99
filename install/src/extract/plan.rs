//! The listing phase of an install: the `.eti` archives at the top of a root grouped
//! into volume sets from their RAR headers, and every set listed — names checked,
//! clashes between sets found, unpacked size summed, encryption refused — all before
//! anything is written.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use lanspread_catalog::{lstat_in, GameDir};

use super::pin::Pinned;
use super::{archive_err, io, safe_rel};
use crate::dll::{Archive, Header, Mode, Redirect};
use crate::volumes::{self, Candidate};
use crate::InstallError;

/// An entry as the listing gave it.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    pub(super) name: String,
    pub(super) rel: PathBuf,
    pub(super) kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    /// A regular file (plain, hard link or copy) of this size.
    File(u64),
    Symlink,
}

/// One archive or volume set, listed.
pub(super) struct PlannedSet {
    /// Its volumes in the root, in order (for messages).
    pub(super) volumes: Vec<PathBuf>,
    /// The names UnRAR opens them by ([`Pinned`]).
    pub(super) names: Vec<PathBuf>,
    pub(super) entries: Vec<Listed>,
}

/// The names of the `.eti` archives at the top of the root open as `game`, sorted:
/// regular files and symlinks (readdir's type, or an `lstat` where it gives none:
/// cap-std passes an unknown type on as it is); a folder so named is a folder of the
/// game; a FIFO, socket or device fails the install (never opened). A symlink is an
/// archive as the scan serves it: when it resolves to a regular file inside the root;
/// any other link fails the install when it is opened ([`Pinned::open`]). None is passed
/// over: peers get it as a file and an install without it would be incomplete.
fn archives(game: &GameDir) -> Result<Vec<OsString>, InstallError> {
    let root = game.path();
    // A file or a symlink (to be checked where it leads); a folder named `*.eti` is a
    // folder of the game; anything else (a FIFO, a socket, a device) is refused: an
    // install without that archive would be incomplete.
    let kind = |e: &cap_std::fs::DirEntry| match e.file_type() {
        Ok(t) if t.is_file() || t.is_symlink() => Some(true),
        Ok(t) if t.is_dir() => Some(false),
        _ => lstat_in(game.dir(), &e.file_name())
            .ok()
            .map(|st| st.st_mode & libc::S_IFMT)
            .and_then(|t| match t {
                libc::S_IFREG | libc::S_IFLNK => Some(true),
                libc::S_IFDIR => Some(false),
                _ => None,
            }),
    };
    let mut out = Vec::new();
    for e in game.dir().entries().map_err(io(root))?.flatten() {
        let name = e.file_name();
        if Path::new(&name).extension().is_none_or(|x| x != "eti") {
            continue;
        }
        match kind(&e) {
            Some(true) => out.push(name),
            Some(false) => {}
            None => {
                return Err(InstallError::Archive {
                    archive: root.join(&name),
                    why: "not a regular file or a symlink to one (a FIFO, socket or device, \
                          or gone)"
                        .into(),
                })
            }
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Groups the archives into sets and lists every one — all before anything is written —
/// with the archives opened for the rest of the install ([`Pinned`]).
pub(super) fn plan(game: &GameDir) -> Result<(Vec<PlannedSet>, u64, Pinned), InstallError> {
    let root = game.path();
    let names = archives(game)?;
    let mut pinned = Pinned::open((game.dir(), root), &names)?;
    let files: Vec<PathBuf> = pinned.in_root().iter().map(|n| root.join(n)).collect();
    let mut candidates = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let info = volumes::probe(pinned.file(i)).map_err(io(f))?;
        if info.is_some_and(|v| v.bad_name) {
            return Err(InstallError::Archive {
                archive: f.clone(),
                why: "an entry name is not UTF-8 (UnRAR would extract it under a name cut \
                      short at its first bad byte)"
                    .into(),
            });
        }
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
        let names: Vec<PathBuf> = set
            .members
            .iter()
            .map(|&i| pinned.name(i).to_path_buf())
            .collect();
        let first = &volumes[0];
        let label = file_name(first);
        let mut arc = Archive::open(&names, Mode::List).map_err(|e| archive_err(first, e))?;
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
        planned.push(PlannedSet {
            volumes,
            names,
            entries,
        });
    }
    Ok((planned, total, pinned))
}

fn kind_of(h: &Header) -> Kind {
    match h.redirect {
        Redirect::Symlink(_) => Kind::Symlink,
        Redirect::None if h.is_dir => Kind::Dir,
        _ => Kind::File(h.unp_size),
    }
}
