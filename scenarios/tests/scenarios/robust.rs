//! Robustness against a careless or hostile world (issue 18): a second daemon on the same
//! dirs, racing first starts, stuck readers, odd files, floods.

use std::path::Path;
use std::process::{Command, Output};

use lanspread_fixtures::GameSpec;
use lanspread_scenarios::{bin, collect_within, Node, NodeOptions, OutputWithin, CLI_LIMIT, WAIT};

/// Runs `lanspreadd` on `games`/`state` with a socket of its own and waits for its exit.
fn second_daemon(games: &Path, state: &Path, socket: &Path) -> Output {
    Command::new(bin("lanspreadd"))
        .arg("--games")
        .arg(games)
        .arg("--state")
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .args(["--listen", "127.0.0.1:0", "--no-mdns"])
        .output_within(WAIT)
}

#[test]
fn second_daemon_on_the_same_dirs_refuses_and_touches_nothing() {
    let games = tempfile::tempdir().unwrap();
    let root = GameSpec::lab_bfbc2().write(games.path()).unwrap();
    let a = Node::start("owner", games.path());
    let pid = a.events_named("daemon-started")[0]["pid"].as_u64().unwrap();
    // What a running operation of the owner has in flight: the start-up sweep of a second
    // daemon used to remove it.
    let in_flight = root.join(".lanspread/incoming/version.ini");
    std::fs::create_dir_all(in_flight.parent().unwrap()).unwrap();
    std::fs::write(&in_flight, "20250101").unwrap();
    let staging = root.join(".lanspread-staging/x");
    std::fs::create_dir_all(&staging).unwrap();

    let dir = tempfile::tempdir().unwrap();
    // Same games dir, own state: refused, naming the games dir and the owner's pid.
    let out = second_daemon(
        games.path(),
        &dir.path().join("s"),
        &dir.path().join("b.sock"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "games dir {} is in use by another lanspreadd (pid {pid})",
            games.path().display()
        )),
        "{err}"
    );
    // Same state dir, own games dir: refused, naming the state dir.
    let other = tempfile::tempdir().unwrap();
    let out = second_daemon(other.path(), &a.state, &dir.path().join("c.sock"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "state dir {} is in use by another lanspreadd (pid {pid})",
            a.state.display()
        )),
        "{err}"
    );
    assert!(
        in_flight.exists() && staging.exists(),
        "the refused start swept the owner's work"
    );
    assert!(!dir.path().join("b.sock").exists() && !dir.path().join("c.sock").exists());
    assert_eq!(a.json(&["status"])["peer_id"], a.peer_id.as_str());
}

#[test]
fn racing_first_starts_on_one_state_dir_leave_one_daemon_and_one_identity() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let children: Vec<_> = (0..4)
        .map(|i| {
            let games = dir.path().join(format!("g{i}"));
            std::fs::create_dir_all(&games).unwrap();
            Command::new(bin("lanspreadd"))
                .arg("--games")
                .arg(&games)
                .arg("--state")
                .arg(&state)
                .arg("--socket")
                .arg(dir.path().join(format!("{i}.sock")))
                .args(["--listen", "127.0.0.1:0", "--no-mdns", "--events", "-"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut winners = Vec::new();
    let mut refused = 0;
    for (i, mut child) in children.into_iter().enumerate() {
        let sock = dir.path().join(format!("{i}.sock"));
        // A refused start exits at once; a winner runs until told to stop.
        let exited = lanspread_scenarios::wait_for("each start to settle", || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Some(status));
            }
            sock.exists().then_some(None)
        });
        match exited {
            Some(status) => {
                let out = collect_within(child, WAIT, "a refused lanspreadd");
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(status.code(), Some(1), "{err}");
                assert!(err.contains("is in use by another lanspreadd"), "{err}");
                refused += 1;
            }
            None => winners.push((sock, child)),
        }
    }
    assert_eq!(winners.len(), 1, "{refused} refused");
    let (sock, child) = winners.pop().unwrap();
    let status = Command::new(bin("lanspread"))
        .arg("--socket")
        .arg(&sock)
        .args(["--json", "status"])
        .output_within(CLI_LIMIT);
    let running: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let ok = Command::new(bin("lanspread"))
        .arg("--socket")
        .arg(&sock)
        .arg("shutdown")
        .output_within(CLI_LIMIT);
    assert!(ok.status.success(), "{ok:?}");
    collect_within(child, WAIT, "lanspreadd after shutdown");
    // The id it ran with is the saved one: a restart gets it again.
    let mut again = Node::start_with(
        "again",
        &dir.path().join("g0"),
        lanspread_scenarios::NodeOptions {
            state: Some(state.clone()),
            ..Default::default()
        },
    );
    assert_eq!(running["peer_id"], again.peer_id.as_str());
    again.shutdown();
}

/// A daemon started by hand (flags of the test's choosing), killed on drop.
struct Raw {
    child: std::process::Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Raw {
    fn start(games: &Path, extra: &[&str], stdout: std::process::Stdio) -> Raw {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ctl.sock");
        let child = Command::new(bin("lanspreadd"))
            .arg("--games")
            .arg(games)
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(&socket)
            .args(["--listen", "127.0.0.1:0", "--no-mdns"])
            .args(extra)
            .stdout(stdout)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        lanspread_scenarios::wait_for("the control socket", || socket.exists().then_some(()));
        Raw {
            child,
            socket,
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("lanspread"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output_within(CLI_LIMIT)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.cli(&a);
        assert!(out.status.success(), "{args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn events_into_a_pipe_nobody_reads_never_freeze_the_daemon() {
    // 2 000 small files: 2 000 chunk events, far more than a pipe (64 KiB) and the events
    // queue hold. Writing them in the runtime used to block it for good.
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .with_small_files(7, 2000, 100)
        .write(d.path())
        .unwrap();
    let s = Node::start("src", d.path());
    let games = tempfile::tempdir().unwrap();
    let mut c = Raw::start(
        games.path(),
        &["--events", "-"],
        std::process::Stdio::piped(),
    );
    let stdout = c.child.stdout.take().unwrap();
    c.json(&["connect", &s.addr]);
    let done = c.json(&["download", "cod5", "--no-install"]);
    assert_eq!(done["event"], "download-finished", "{done}");
    let dropped = c.json(&["status"])["events_dropped"].as_u64().unwrap();
    assert!(
        dropped > 0,
        "nothing was dropped: the test did not fill the queue"
    );
    // Once the reader reads again, the stream says how many lines it missed.
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("\"events-dropped\""))
    });
    let empty = tempfile::tempdir().unwrap();
    let s2 = Node::start("src2", empty.path());
    c.json(&["connect", &s2.addr]);
    let line = reader.join().unwrap().expect("an events-dropped line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v["count"].as_u64().unwrap() >= dropped, "{line}");
    lanspread_scenarios::assert_same_tree(&d.path().join("cod5"), &games.path().join("cod5"));
}

#[test]
fn a_root_with_a_file_peers_cannot_get_is_not_offered_and_says_why() {
    use std::os::unix::ffi::OsStrExt;
    let d = tempfile::tempdir().unwrap();
    let root = GameSpec::lab_bfbc2().write(d.path()).unwrap();
    let odd = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9 \\ notes.txt"));
    std::fs::write(&odd, "latin-1 name with a backslash").unwrap();
    let s = Node::start("src", d.path());
    let row = s.local_row("bfbc2").unwrap();
    assert_eq!(row["availability"], "NotReady", "{row}");
    assert_eq!(row["downloaded"], true, "{row}");
    assert!(
        row["reason"].as_str().unwrap().contains("not UTF-8"),
        "{row}"
    );
    let status = s.json(&["status"]);
    assert_eq!(status["problems"][0]["game_id"], "bfbc2", "{status}");
    assert!(s.log().contains("not offered"), "{}", s.log_tail());
    let human = s.cli(&["list-games"]);
    assert!(
        human.stdout.contains("bfbc2 is not offered to peers"),
        "{}",
        human.stdout
    );

    let games = tempfile::tempdir().unwrap();
    let c = Node::start("client", games.path());
    c.connect(&s);
    let out = c.download("bfbc2", &["--no-install"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(!games.path().join("bfbc2/version.ini").exists());

    // Renamed to a name that travels: offered again, and the copy has every file.
    std::fs::rename(&odd, root.join("cafe notes.txt")).unwrap();
    c.wait_games("bfbc2 offered again", |g| {
        g["remote"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "bfbc2")
    });
    c.download_ok("bfbc2", &["--no-install"]);
    lanspread_scenarios::assert_same_tree(&root, &games.path().join("bfbc2"));
}

#[test]
fn odd_sentinels_never_hang_the_scan_and_sigterm_always_stops() {
    let d = tempfile::tempdir().unwrap();
    let fifo = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    };
    // At start: a FIFO sentinel (used to hang start-up, and SIGTERM with it) and one that
    // is a symlink to an endless file (used to be read until allocation failed).
    std::fs::create_dir_all(d.path().join("cnc4")).unwrap();
    fifo(&d.path().join("cnc4/version.ini"));
    std::fs::create_dir_all(d.path().join("cod5")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.path().join("cod5/version.ini")).unwrap();
    let mut n = Node::start("odd", d.path());
    let row = n.local_row("cnc4").unwrap();
    assert_eq!(
        (row["downloaded"].clone(), row["availability"].clone()),
        (false.into(), "NotReady".into())
    );
    assert_eq!(n.local_row("cod5").unwrap()["downloaded"], false);
    // At run time: a FIFO sentinel appears; the scanner keeps going (a game added after
    // it is still seen).
    std::fs::create_dir_all(d.path().join("cnctw")).unwrap();
    fifo(&d.path().join("cnctw/version.ini"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    GameSpec::lab_bfbc2().write(d.path()).unwrap();
    n.wait_games("bfbc2 seen after the FIFO", |g| {
        g["local"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == "bfbc2" && r["availability"] == "Ready")
    });
    assert_eq!(n.terminate(), Some(0), "{}", n.log_tail());
}

#[test]
fn a_download_running_at_shutdown_ends_with_download_failed() {
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .with_archive(18, &[16 << 20])
        .write(d.path())
        .unwrap();
    let s = Node::start("src", d.path());
    let games = tempfile::tempdir().unwrap();
    let mut c = Node::start_with(
        "client",
        games.path(),
        lanspread_scenarios::NodeOptions {
            args: vec!["--max-download-mib-s".into(), "1".into()],
            ..Default::default()
        },
    );
    c.connect(&s);
    let out = c.cli(&["download", "cod5", "--no-install", "--detach"]);
    assert_eq!(out.code, 0, "{out:?}");
    c.wait_event("download-begin", |_| true);
    c.shutdown();
    let failed = c.events_named("download-failed");
    assert_eq!(failed.len(), 1, "{:?}", c.events());
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("shutting down"),
        "{}",
        failed[0]
    );
    assert_eq!(failed[0]["kind"], "shutdown", "{}", failed[0]);
    assert!(!games.path().join("cod5/version.ini").exists());
}

#[test]
fn a_static_peer_that_does_not_resolve_yet_is_looked_up_again() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("lanspreadd.toml");
    std::fs::write(&cfg, "peers = [\"lanspread-peer.invalid:41741\"]\n").unwrap();
    let games = tempfile::tempdir().unwrap();
    let n = Node::start_with(
        "static",
        games.path(),
        lanspread_scenarios::NodeOptions {
            args: vec!["--config".into(), cfg.display().to_string()],
            // A resolver that cannot be reached fails each lookup in a second (glibc).
            env: vec![("RES_OPTIONS".into(), "timeout:1 attempts:1".into())],
            ..Default::default()
        },
    );
    // Backoff 1 s, 2 s, ...: the second lookup is logged with the next wait.
    lanspread_scenarios::wait_for("a second lookup", || {
        let log = n.log();
        (log.contains("lanspread-peer.invalid") && log.contains("retrying in 2s")).then_some(())
    });
    assert_eq!(n.json(&["status"])["peers"], 0);
}

#[test]
fn a_game_of_more_files_than_the_soft_open_files_limit_downloads() {
    // Started from a shell with the usual soft limit, the daemon raises it to the hard
    // one (as /proc says, the kernel's word). Here the soft limit is 256 and the game has
    // 300 files (600 descriptors if all were open): it downloads (a daemon that neither
    // raised the limit nor bounded its open files failed to prepare it with "Too many
    // open files").
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert!(
        lim.rlim_max >= 1024,
        "the hard open-files limit is {}: this test needs 1,024 (ulimit -Hn)",
        lim.rlim_max
    );
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .with_small_files(5, 300, 1000)
        .write(d.path())
        .unwrap();
    let low = || NodeOptions {
        open_files_soft: Some(256),
        ..NodeOptions::default()
    };
    let s = Node::start_with("src", d.path(), low());
    let games = tempfile::tempdir().unwrap();
    let c = Node::start_with("dst", games.path(), low());
    for node in [&s, &c] {
        let pid = node.pid().expect("daemon running");
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let row = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("a Max open files row");
        let nums: Vec<&str> = row.split_whitespace().skip(3).take(2).collect();
        assert_eq!(
            nums,
            [lim.rlim_max.to_string(), lim.rlim_max.to_string()],
            "soft and hard limits of the daemon: {row}"
        );
    }
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    lanspread_scenarios::assert_same_tree(&d.path().join("cod5"), &games.path().join("cod5"));
}

#[test]
fn a_game_of_more_files_than_the_hard_open_files_limit_downloads() {
    // Where the hard limit is low too (a container, a unit with a small LimitNOFILE), the
    // writer holds only so many files open (8 at this limit) and reopens the others
    // as it writes them: 600 files (1,200 descriptors if all were open) download under a
    // hard limit of 256 on both sides, and the source serves them all.
    let d = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .with_small_files(5, 600, 1000)
        .with_archive(6, &[3 << 20])
        .write(d.path())
        .unwrap();
    let low = || NodeOptions {
        open_files_soft: Some(256),
        open_files_hard: Some(256),
        ..NodeOptions::default()
    };
    let s = Node::start_with("src", d.path(), low());
    let games = tempfile::tempdir().unwrap();
    let c = Node::start_with("dst", games.path(), low());
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);
    lanspread_scenarios::assert_same_tree(&d.path().join("cod5"), &games.path().join("cod5"));
}
