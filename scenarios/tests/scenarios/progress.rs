//! Progress while an operation runs: `status` shows the percent of a running download, and
//! `lanspread download` draws a progress bar on a terminal (a pseudo-terminal here) but
//! not when piped. The client's download limit (16 MiB/s over 32 MiB) keeps the download
//! running for about two seconds so there is something to watch.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use lanspread_fixtures::{Content, GameSpec};
use lanspread_scenarios::{bin, wait_for, Node, NodeOptions, CLI_LIMIT};

use crate::downloads::source;

const MIB: u64 = 1 << 20;

fn slow_client_and_source(src: &std::path::Path, games: &std::path::Path) -> (Node, Node) {
    GameSpec::new("cod5", "20250101")
        .file("cod5.eti", 0o644, Content::Sparse { size: 32 * MIB })
        .write(src)
        .unwrap();
    let s = source("src", src);
    let c = Node::start_with(
        "client",
        games,
        NodeOptions {
            args: vec!["--max-download-mib-s".into(), "16".into()],
            ..NodeOptions::default()
        },
    );
    c.connect(&s);
    (c, s)
}

#[test]
fn status_shows_the_percent_of_a_running_download() {
    let (src, games) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (c, _s) = slow_client_and_source(src.path(), games.path());
    let out = c.cli(&["download", "cod5", "--no-install", "--detach"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let op = wait_for("a download part-way", || {
        let st = c.json(&["status"]);
        let op = st["operations"].as_array()?.first()?.clone();
        let done = op["done_bytes"].as_u64()?;
        (done > 0 && done < 32 * MIB).then_some(op)
    });
    assert_eq!(op["game_id"], "cod5");
    assert_eq!(op["kind"], "download");
    // The archive and the 9-byte version.ini.
    let total = op["total_bytes"].as_u64().unwrap();
    assert_eq!(total, 32 * MIB + 9);
    let done = op["done_bytes"].as_u64().unwrap();
    let percent = op["percent"].as_f64().unwrap();
    let exact = done as f64 * 100.0 / total as f64;
    assert!(
        percent <= exact && exact - percent < 0.1,
        "{percent}% for {done} bytes"
    );
    let human = c.cli(&["status"]).stdout;
    assert!(
        human.contains("download cod5 ") && human.contains("% ("),
        "{human}"
    );
    c.wait_event("download-finished", |e| e["game_id"] == "cod5");
    let st = c.json(&["status"]);
    assert_eq!(st["operations"], serde_json::json!([]), "{st}");
}

#[test]
fn download_draws_a_progress_bar_on_a_terminal_only() {
    let (src, games) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (c, _s) = slow_client_and_source(src.path(), games.path());
    let (master, slave) = pty();
    let io = |f: &OwnedFd| Stdio::from(f.try_clone().unwrap());
    let mut child = Command::new(bin("lanspread"))
        .arg("--socket")
        .arg(c.socket_path())
        .args(["download", "cod5", "--no-install"])
        .env("TERM", "xterm-256color")
        .stdin(io(&slave))
        .stdout(io(&slave))
        .stderr(io(&slave))
        .spawn()
        .unwrap();
    drop(slave);
    // Read until the child's side closes (EIO on a pty master).
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut f = File::from(master);
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = lanspread_scenarios::wait_within(&mut child, CLI_LIMIT, "download on a terminal");
    let screen = reader.join().unwrap();
    assert!(status.success(), "{screen}");
    // The bar: its template's brackets with '=' fill, byte counts and an ETA, redrawn in
    // place; then the summary line.
    assert!(screen.contains("cod5 ["), "{screen:?}");
    assert!(screen.contains("=>") || screen.contains("=="), "{screen:?}");
    assert!(
        screen.contains("32.00 MiB") && screen.contains("ETA"),
        "{screen:?}"
    );
    assert!(
        screen.contains("\x1b["),
        "terminal control sequences: {screen:?}"
    );
    assert!(screen.contains("cod5: downloaded"), "{screen:?}");

    // Piped: plain lines, no bar.
    let out = c.cli(&["--json", "download", "cod5", "--no-install"]);
    assert_eq!(out.code, 1, "already downloaded: {}", out.stderr);
    assert_eq!(out.error_kind(), "already-done", "{out:?}");
    std::fs::remove_file(games.path().join("cod5/version.ini")).unwrap();
    c.wait_games("cod5 no longer downloaded", |g| {
        g["local"]
            .as_array()
            .is_some_and(|l| l.iter().all(|r| r["downloaded"] != true))
    });
    let out = c.cli(&["download", "cod5", "--no-install"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !out.stdout.contains("ETA") && !out.stdout.contains('\x1b'),
        "{out:?}"
    );
    assert!(out.stdout.contains("cod5: downloaded"), "{out:?}");
}

/// A pseudo-terminal pair, 120×40, both ends close-on-exec: a process another test
/// starts meanwhile must not keep the terminal open (the reader waits for its last user).
fn pty() -> (OwnedFd, OwnedFd) {
    let last = || std::io::Error::last_os_error();
    // SAFETY: posix_openpt takes flags only and returns a new descriptor or -1.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(master >= 0, "posix_openpt: {}", last());
    // SAFETY: a descriptor posix_openpt returned, owned from here on.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the master's descriptor and a name buffer of the length given.
    unsafe {
        assert_eq!(libc::grantpt(master.as_raw_fd()), 0, "grantpt: {}", last());
        assert_eq!(
            libc::unlockpt(master.as_raw_fd()),
            0,
            "unlockpt: {}",
            last()
        );
        assert_eq!(
            libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
            0,
            "ptsname_r: {}",
            last()
        );
    }
    // SAFETY: ptsname_r wrote a NUL-terminated path into `name`.
    let slave = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    assert!(slave >= 0, "open the terminal's slave: {}", last());
    // SAFETY: a descriptor open returned, owned from here on.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid winsize.
    let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", last());
    (master, slave)
}
