//! Things that need root: a tmpfs mount for disk-full tests, a bind mount that makes two
//! names one folder. Without root a test fails
//! with a message saying so, unless `LANSPREAD_SKIP_PRIVILEGED=1` was set on purpose.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// True when privileged tests should be skipped (announced on stderr).
pub fn skip_privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return false;
    }
    if std::env::var("LANSPREAD_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("{test}: SKIPPED (needs root; LANSPREAD_SKIP_PRIVILEGED=1)");
        return true;
    }
    panic!("{test} needs root (tmpfs mounts, network namespaces); run as root or set LANSPREAD_SKIP_PRIVILEGED=1 to skip it on purpose");
}

/// A tmpfs mounted for the life of this value.
pub struct Tmpfs {
    path: PathBuf,
    /// The temp dir it is mounted on, unless it was given a folder.
    _dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mib` MiB on a fresh temp dir.
    pub fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("ls-tmpfs-")
            .tempdir()
            .expect("tempdir");
        let mut fs = Self::mount_on(dir.path(), size_mib);
        fs._dir = Some(dir);
        fs
    }

    /// Mounts a tmpfs of `size_mib` MiB on the existing folder `path`.
    pub fn mount_on(path: &Path, size_mib: u64) -> Tmpfs {
        let path = path.to_path_buf();
        let target = CString::new(path.as_os_str().as_bytes()).expect("path");
        let opts = CString::new(format!("size={size_mib}m,mode=0755")).expect("opts");
        // SAFETY: valid NUL-terminated strings; the mount point exists.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount tmpfs on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Tmpfs { path, _dir: None }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.path.as_os_str().as_bytes()) {
            // SAFETY: valid path; MNT_DETACH so a busy mount never blocks the test.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// A folder bind-mounted on another for the life of this value: both names are one
/// folder (as names that differ only in case are on a filesystem that ignores case).
pub struct BindMount {
    target: PathBuf,
}

impl BindMount {
    /// Mounts the folder `source` on the existing folder `target`.
    pub fn new(source: &Path, target: &Path) -> BindMount {
        let src = CString::new(source.as_os_str().as_bytes()).expect("path");
        let dst = CString::new(target.as_os_str().as_bytes()).expect("path");
        // SAFETY: valid NUL-terminated strings; both folders exist.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "bind {} on {}: {}",
            source.display(),
            target.display(),
            std::io::Error::last_os_error()
        );
        BindMount {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.target.as_os_str().as_bytes()) {
            // SAFETY: valid path; MNT_DETACH so a busy mount never blocks the test.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
