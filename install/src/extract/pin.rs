//! The archives of a root, opened once and named for UnRAR so that it reads exactly the
//! files the install listed. UnRAR opens volumes by name; a FIFO put at a volume's path
//! after the listing would block that open for good (no `cancel` reaches a blocked
//! `open`), and another file there would be read unlisted. So each `.eti` file is opened
//! once, without following a link and without blocking (a FIFO or device is refused),
//! checked to be a regular file and kept open; UnRAR gets names in a private folder
//! (0700, outside the root) that are links to `/proc/self/fd/N`: the kernel resolves
//! each to the open file itself, whatever is at its path in the root by then. The names
//! keep the files' own names, so UnRAR's guess of a next volume's name works as in the
//! root. Without `/proc` the root's paths are given, as before.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::InstallError;

/// The open archives and their names for UnRAR (kept for the whole install).
pub(super) struct Pinned {
    files: Vec<File>,
    /// The private folder of links (removed when dropped), if `/proc` is there.
    _links: Option<tempfile::TempDir>,
    names: Vec<PathBuf>,
}

impl Pinned {
    /// Opens `paths` (files at the top of one root, so their names differ).
    pub(super) fn open(paths: &[PathBuf]) -> Result<Self, InstallError> {
        let files = paths
            .iter()
            .map(|p| open_regular(p).map_err(|e| InstallError::io(p, e)))
            .collect::<Result<Vec<File>, _>>()?;
        if !Path::new("/proc/self/fd").is_dir() {
            return Ok(Self {
                files,
                _links: None,
                names: paths.to_vec(),
            });
        }
        let temp = std::env::temp_dir();
        let links = tempfile::Builder::new()
            .prefix("lanspread-volumes-")
            .tempdir()
            .map_err(|e| InstallError::io(&temp, e))?;
        let mut names = Vec::with_capacity(paths.len());
        for (path, file) in paths.iter().zip(&files) {
            let name = links
                .path()
                .join(path.file_name().unwrap_or(path.as_os_str()));
            let fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
            std::os::unix::fs::symlink(fd, &name).map_err(|e| InstallError::io(&name, e))?;
            names.push(name);
        }
        Ok(Self {
            files,
            _links: Some(links),
            names,
        })
    }

    /// The open file of archive `i`.
    pub(super) fn file(&mut self, i: usize) -> &mut File {
        &mut self.files[i]
    }

    /// The name UnRAR opens for archive `i`.
    pub(super) fn name(&self, i: usize) -> &Path {
        &self.names[i]
    }
}

/// Opens `path` for reading if it is a regular file: never through a symlink, never
/// blocking on a FIFO.
fn open_regular(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (replaced since the root was read?)",
        ));
    }
    Ok(file)
}
