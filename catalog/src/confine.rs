//! Opening a served file so that it provably lies inside its root: the file is opened,
//! then the kernel's view of the open descriptor (`/proc/self/fd/N`) must resolve under
//! the root's canonical path. A file swapped for a symlink to `/etc/shadow` after the
//! scan is refused at open time, not trusted from the scan.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Opens `path` for reading if it resolves inside `root`.
pub fn open_inside(root: &Path, path: &Path) -> io::Result<File> {
    let file = File::open(path)?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let root = root.canonicalize()?;
    if !real.starts_with(&root) || !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} leaves the game root", path.display()),
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_out_of_the_root_are_refused_at_open() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(t.path().join("outside"), b"secret").unwrap();
        std::fs::write(root.join("inside"), b"data").unwrap();
        symlink(t.path().join("outside"), root.join("out")).unwrap();
        symlink(root.join("inside"), root.join("alias")).unwrap();
        assert!(open_inside(&root, &root.join("inside")).is_ok());
        assert!(open_inside(&root, &root.join("alias")).is_ok());
        let err = open_inside(&root, &root.join("out")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        // A root reached through a symlinked games dir still works.
        symlink(&root, t.path().join("via")).unwrap();
        assert!(open_inside(&t.path().join("via"), &t.path().join("via/inside")).is_ok());
    }
}
