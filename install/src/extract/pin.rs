//! The archives of a root, opened once and named for UnRAR so that it reads exactly the
//! files the install listed. UnRAR opens volumes by name; a FIFO put at a volume's path
//! after the listing would block that open for good (no `cancel` reaches a blocked
//! `open`), and another file there would be read unlisted. So each `.eti` file is opened
//! once beneath the root's descriptor, without following a link and without blocking (a
//! FIFO or device is refused), checked to be a regular file and kept open; UnRAR gets
//! names in a private folder (`PrivateDir`: 0700, outside the root) that are links to
//! `/proc/self/fd/N`: the kernel resolves each to the open file itself, whatever is at
//! its path in the root by then. The links keep the files' own names, so UnRAR's guess
//! of a next volume's name works as in the root. Without `/proc`, or when no private
//! folder can be made, UnRAR gets the root's paths (the files were still checked).

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::PrivateDir;
use crate::InstallError;

/// The open archives and their names for UnRAR (kept for the whole install).
pub(super) struct Pinned {
    /// The private folder of links (removed when dropped, before the files close).
    _links: Option<PrivateDir>,
    files: Vec<File>,
    names: Vec<PathBuf>,
    /// The archives' names in the root, one per archive (a link to a listed one left
    /// out).
    in_root: Vec<OsString>,
}

impl Pinned {
    /// Opens the files `names` at the top of the root open as `root` (at `path`).
    pub(super) fn open(
        (root, path): (&cap_std::fs::Dir, &Path),
        names: &[OsString],
    ) -> Result<Self, InstallError> {
        // The root as it resolves now, for archives that are symlinks (resolved once).
        let mut confined = None;
        let mut opened = Vec::with_capacity(names.len());
        for n in names {
            let (file, linked) = match open_regular(root, n) {
                Ok(f) => (f, false),
                // A symlink (`O_NOFOLLOW`): followed as the scan follows it, to a
                // regular file inside the root only.
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    let c = match &mut confined {
                        Some(c) => c,
                        None => confined.insert(
                            lanspread_catalog::Confined::new(path)
                                .map_err(|e| InstallError::io(path, e))?,
                        ),
                    };
                    let (f, _) = c.open(&path.join(n)).map_err(|e| {
                        InstallError::io(
                            path.join(n),
                            io::Error::new(e.kind(), format!("a symlink to an archive: {e}")),
                        )
                    })?;
                    (f, true)
                }
                Err(e) => return Err(InstallError::io(path.join(n), e)),
            };
            let meta = file
                .metadata()
                .map_err(|e| InstallError::io(path.join(n), e))?;
            opened.push((n.clone(), file, linked, (meta.dev(), meta.ino())));
        }
        // A link to an archive that is listed already (`Game.eti -> game.eti`) is that
        // archive, not a second one whose entries would clash: the file itself is kept.
        let mut kept: Vec<(OsString, File, bool, (u64, u64))> = Vec::with_capacity(opened.len());
        for o in opened {
            match kept.iter().position(|k| k.3 == o.3) {
                Some(i) if kept[i].2 && !o.2 => kept[i] = o,
                Some(_) => {}
                None => kept.push(o),
            }
        }
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<OsString> = kept.iter().map(|k| k.0.clone()).collect();
        let files: Vec<File> = kept.into_iter().map(|k| k.1).collect();
        let links = Path::new("/proc/self/fd")
            .is_dir()
            .then(|| PrivateDir::new("lanspread-volumes-").ok())
            .flatten();
        let Some(links) = links else {
            return Ok(Self {
                _links: None,
                files,
                names: names.iter().map(|n| path.join(n)).collect(),
                in_root: names,
            });
        };
        let mut linked = Vec::with_capacity(names.len());
        for (name, file) in names.iter().zip(&files) {
            let at = links.0.join(name);
            let fd = format!("/proc/self/fd/{}", file.as_raw_fd());
            std::os::unix::fs::symlink(fd, &at).map_err(|e| InstallError::io(&at, e))?;
            linked.push(at);
        }
        Ok(Self {
            _links: Some(links),
            files,
            names: linked,
            in_root: names,
        })
    }

    /// The archives' names in the root, in order (archive `i` is `in_root()[i]`).
    pub(super) fn in_root(&self) -> &[OsString] {
        &self.in_root
    }

    /// The open file of archive `i`.
    pub(super) fn file(&mut self, i: usize) -> &mut File {
        &mut self.files[i]
    }

    /// The name UnRAR opens archive `i` by.
    pub(super) fn name(&self, i: usize) -> &Path {
        &self.names[i]
    }
}

/// Opens `name` (one component) beneath `root` for reading if it is a regular file:
/// never through a symlink, never blocking on a FIFO.
fn open_regular(root: &cap_std::fs::Dir, name: &OsString) -> io::Result<File> {
    let c = CString::new(name.as_bytes()).map_err(|_| io::Error::other("a NUL in a file name"))?;
    if c.as_bytes().contains(&b'/') {
        return Err(io::Error::other("not a name at the top of the root"));
    }
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: openat reads the NUL-terminated `c` relative to `root`'s descriptor, which
    // `root` keeps open; the descriptor it returns is owned by the File made of it.
    let fd = unsafe { libc::openat(root.as_raw_fd(), c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (replaced since the root was read?)",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_or_a_link_out_is_refused_at_once_and_a_file_is_named_through_proc() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a.eti"), b"rar").unwrap();
        std::os::unix::fs::symlink("a.eti", t.path().join("l.eti")).unwrap();
        let fifo = CString::new(t.path().join("f.eti").as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let root =
            cap_std::fs::Dir::open_ambient_dir(t.path(), cap_std::ambient_authority()).unwrap();
        let at = (&root, t.path());
        // A symlink out of the root, or to a FIFO: refused, naming the link.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.rar"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path().join("x.rar"), t.path().join("o.eti")).unwrap();
        std::os::unix::fs::symlink("f.eti", t.path().join("lf.eti")).unwrap();
        for bad in ["f.eti", "o.eti", "lf.eti"] {
            let err = Pinned::open(at, &[bad.into()]).err().unwrap();
            assert!(err.to_string().contains(bad), "{err}");
        }
        // A symlink to a file inside the root: opened as that file (as the scan serves
        // it), named by the link's own name.
        let mut linked = Pinned::open(at, &["l.eti".into()]).unwrap();
        assert_eq!(linked.name(0).file_name().unwrap(), "l.eti");
        let mut s = String::new();
        io::Read::read_to_string(linked.file(0), &mut s).unwrap();
        assert_eq!(s, "rar");
        drop(linked);
        let mut pinned = Pinned::open(at, &["a.eti".into()]).unwrap();
        let name = pinned.name(0).to_path_buf();
        assert_eq!(name.file_name().unwrap(), "a.eti");
        assert!(!name.starts_with(t.path()), "{}", name.display());
        // The name leads to the open file, whatever is at its path in the root now.
        std::fs::remove_file(t.path().join("a.eti")).unwrap();
        std::fs::write(t.path().join("a.eti"), b"other").unwrap();
        assert_eq!(std::fs::read(&name).unwrap(), b"rar");
        let mut s = String::new();
        io::Read::read_to_string(pinned.file(0), &mut s).unwrap();
        assert_eq!(s, "rar");
        let links = name.parent().unwrap().to_path_buf();
        drop(pinned);
        assert!(!links.exists(), "the private folder outlived the install");
    }
}
