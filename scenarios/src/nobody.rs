//! Running something as uid/gid 65534 (nobody/nogroup): a copy of an executable that
//! user can reach, and "this test again, as nobody" for tests that need a part played by
//! an unprivileged process.
//!
//! Never `fork()` a test binary to drop privileges in the child: libtest runs tests on
//! several threads, and a child forked while another thread holds a lock (glibc's locale
//! lock, taken by every archive open, was the one seen) waits for it forever — a test that
//! hung CI for an hour. A fresh process (`exec`) inherits no lock.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// The unprivileged user and group these helpers run as.
pub const NOBODY: u32 = 65534;

/// What the rerun test finds in its environment: the argument of its unprivileged part.
const PART_VAR: &str = "LANSPREAD_NOBODY_PART";

/// A copy of an executable that uid 65534 can run (the checkout may sit in a folder only
/// root can enter), removed with this value.
pub struct NobodyCopy {
    dir: tempfile::TempDir,
    exe: PathBuf,
}

impl NobodyCopy {
    /// Copies `exe` into a fresh folder everyone may enter.
    pub fn of(exe: &Path) -> NobodyCopy {
        let dir = tempfile::Builder::new()
            .prefix("ls-nobody-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let name = exe.file_name().expect("an executable's name");
        let copy = dir.path().join(name);
        std::fs::copy(exe, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", exe.display()));
        NobodyCopy { dir, exe: copy }
    }

    /// A copy of the running test binary.
    pub fn of_this_test() -> NobodyCopy {
        NobodyCopy::of(&std::env::current_exe().expect("the test binary's path"))
    }

    /// A command running the copy as uid/gid 65534, without supplementary groups (std
    /// drops them when root sets a uid), from the copy's folder.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.uid(NOBODY).gid(NOBODY).current_dir(self.dir.path());
        cmd
    }

    /// The command that runs this test binary's test `test` (its full name, module path
    /// included) again, alone, as nobody, with `part` for [`nobody_part`]. The test must
    /// call `nobody_part` before anything else and, when it returns the argument, play
    /// its unprivileged part and leave with `std::process::exit`.
    pub fn rerun(&self, test: &str, part: &OsStr) -> Command {
        let mut cmd = self.command();
        cmd.args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(PART_VAR, part);
        cmd
    }
}

/// The argument of the unprivileged part, in a test rerun by [`NobodyCopy::rerun`]
/// (which runs from a copy of the binary: `bin()` and `current_exe` there point to the
/// copy's folder). Panics (the part fails) unless it really runs as uid 65534.
pub fn nobody_part() -> Option<OsString> {
    let part = std::env::var_os(PART_VAR)?;
    // SAFETY: geteuid and getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    assert_eq!(
        (uid, gid),
        (NOBODY, NOBODY),
        "the unprivileged part runs as root"
    );
    Some(part)
}

/// Spawns `cmd`, retrying while the copy is busy: another test thread that forks to start
/// a process while our copy's descriptor is open holds it for writing until its `exec`
/// (ETXTBSY).
pub fn spawn_copy(cmd: &mut Command) -> Child {
    for _ in 0..50 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.expect("spawn"),
        }
    }
    panic!("{cmd:?} stayed busy");
}
