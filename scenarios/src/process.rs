//! Child processes a test waits for, never without a bound: a daemon or CLI that hangs
//! fails its test with what it printed, instead of stalling the whole run until CI's
//! limit (which names no test). The bounds are hang guards, far above any normal run;
//! nothing here measures speed.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long one CLI command of a scenario may run, downloads and installs included.
pub const CLI_LIMIT: Duration = Duration::from_secs(600);

/// Waits for `child` to exit within `limit`; past it, kills it and panics naming `what`.
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    match try_wait_within(child, limit) {
        Some(status) => status,
        None => panic!("{what} did not end within {limit:?}; killed"),
    }
}

/// [`output_within`] as a method of `Command`, where a builder chain ends.
pub trait OutputWithin {
    /// `Command::output` that kills the child and fails the test past `limit`.
    fn output_within(&mut self, limit: Duration) -> Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self, limit: Duration) -> Output {
        output_within(self, limit)
    }
}

/// Runs `cmd` (stdin empty) to its end within `limit`, collecting its stdout and stderr;
/// past the limit it is killed and the test panics with what it had printed.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    collect_within(child, limit, &format!("{cmd:?}"))
}

/// [`output_within`] for a child spawned already with piped stdout and stderr. Both are
/// read on threads of their own, so neither pipe fills while the other is waited on.
pub fn collect_within(mut child: Child, limit: Duration, what: &str) -> Output {
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = try_wait_within(&mut child, limit);
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} did not end within {limit:?}; killed. It printed:\n{}{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// The exit status within `limit`, or `None` once the child was killed past it.
fn try_wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return Some(status);
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}
