//! The CLI's exit codes and the daemon-less `pack` command, through the real binaries.
//! (This integration test also makes `cargo test --workspace` build both binaries, which
//! the scenario tests then drive.)

use std::process::Command;

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lanspread"))
}

/// `lanspreadd` on `dir/games` and `dir/state`, its control socket at `socket`.
fn daemon_in(dir: &std::path::Path, socket: &std::path::Path) -> Command {
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_lanspreadd"));
    daemon
        .arg("--games")
        .arg(dir.join("games"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(socket);
    daemon
}

#[test]
fn usage_error_exits_2() {
    let out = cli().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = cli().args(["wait-peers", "not-a-number"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unreachable_daemon_exits_3_with_a_message() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("none.sock");
    let out = cli()
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach lanspreadd"), "{err}");
    let out = cli()
        .arg("--socket")
        .arg(&sock)
        .args(["--json", "list-games"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot reach"));
    assert_eq!(v["error"]["kind"], "daemon-unreachable", "{v}");
}

#[test]
fn pack_writes_a_rar5_archive() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/a.txt"), b"abc").unwrap();
    let out_file = t.path().join("x.eti");
    let out = cli()
        .arg("--json")
        .arg("pack")
        .arg(&src)
        .arg("-o")
        .arg(&out_file)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"], 1);
    assert_eq!(v["bytes"], 3);
    let bytes = std::fs::read(&out_file).unwrap();
    assert_eq!(&bytes[..8], b"Rar!\x1a\x07\x01\x00");
    // A missing source directory is a failure (exit 1), and leaves no archive.
    let missing = t.path().join("missing.eti");
    let out = cli()
        .arg("pack")
        .arg(t.path().join("nope"))
        .arg("-o")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!missing.exists());
}

#[test]
fn daemon_refuses_a_missing_games_dir_clearly() {
    let t = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lanspreadd"))
        .arg("--games")
        .arg(t.path().join("nope"))
        .arg("--state")
        .arg(t.path().join("state"))
        .arg("--socket")
        .arg(t.path().join("d.sock"))
        .args(["--listen", "127.0.0.1:0", "--no-mdns"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn demo_downloads_and_cleans_up() {
    let out = cli()
        .arg("demo")
        .env("LANSPREAD_DEMO_BYTES", (40u64 << 20).to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("SHA-256 of the copy matches the source"),
        "{stdout}"
    );
    assert!(stdout.contains("MiB/s"), "{stdout}");
    let dir = stdout
        .lines()
        .find_map(|l| l.split(" in ").nth(1))
        .map(|d| d.trim_end_matches(" ...").to_owned())
        .unwrap();
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
}

/// `demo --json`: one JSON document, nothing else on stdout.
#[test]
fn demo_with_json_prints_one_document() {
    let out = cli()
        .args(["--json", "demo"])
        .env("LANSPREAD_DEMO_BYTES", (8u64 << 20).to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(doc["download"]["event"], "download-finished", "{doc}");
    assert!(doc["download"]["mib_per_s"].as_f64().is_some(), "{doc}");
    assert_eq!(doc["bytes"], 8u64 << 20, "{doc}");
    assert_eq!(doc["sha256"].as_str().map(str::len), Some(64), "{doc}");
    assert_ne!(doc["source"]["peer_id"], doc["client"]["peer_id"], "{doc}");
}

#[test]
fn daemon_signals_readiness_to_systemd() {
    use std::os::unix::net::UnixDatagram;
    let t = tempfile::tempdir().unwrap();
    let notify = t.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    std::fs::create_dir_all(t.path().join("games")).unwrap();
    let sock = t.path().join("d.sock");
    let mut child = daemon_in(t.path(), &sock)
        .args(["--listen", "127.0.0.1:0", "--no-mdns"])
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = listener.recv(&mut buf).unwrap();
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    // Ready is sent only once the control socket answers.
    let status = cli()
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .output()
        .unwrap();
    let _ = cli().arg("--socket").arg(&sock).arg("shutdown").output();
    let _ = child.wait();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.lines().any(|l| l.starts_with("STATUS=peer ")), "{msg}");
    assert_eq!(status.status.code(), Some(0));
}

#[test]
fn completions_and_man_pages_come_from_the_clap_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cli().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["download", "list-games", "wait-peers", "no-install"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = cli().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "unknown shell is a usage error");
    let out = cli().arg("man").output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH lanspread 1") && page.contains("download"),
        "{page}"
    );
    // Commands by name (no page per command is installed) and the exit codes.
    assert!(page.contains(".SH COMMANDS\n"), "{page}");
    assert!(!page.contains("lanspread-status(1)"), "{page}");
    assert!(page.contains(".SH EXIT STATUS\n.PP\n0 ok;"), "{page}");
    let out = cli().args(["man", "--daemon"]).output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH lanspreadd 1"), "{page}");
    assert!(page.contains(".SH CONFIG FILE\n.PP\nA TOML file"), "{page}");
    for flag in ["secret\\-file", "max\\-upload\\-mib\\-s", "admin\\-group"] {
        assert!(page.contains(flag), "daemon page lacks {flag}");
    }
}

#[test]
fn output_into_a_pipe_nobody_reads_ends_quietly() {
    for args in [&["man"][..], &["completions", "bash"], &["status"]] {
        let out = cli()
            .args(args)
            .env("LANSPREAD_SOCKET", "/nonexistent/lanspread.sock")
            .stdout(std::process::Stdio::from(pipe_nobody_reads()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if args == ["status"] {
            // No daemon: its error is on stderr, whatever stdout is.
            assert_eq!(out.status.code(), Some(3), "{err}");
        } else {
            assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
            assert!(err.is_empty(), "{args:?}: {err}");
        }
    }
}

/// The writing end of a pipe whose reader is gone already: every write fails (EPIPE).
/// Close-on-exec, so no process another test starts meanwhile keeps a reader open.
fn pipe_nobody_reads() -> std::os::fd::OwnedFd {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2(2) returns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are ours and open; each is owned once (the reader dropped).
    let (_read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    write
}

#[test]
fn errors_into_an_output_nobody_reads_keep_their_exit_code() {
    // No daemon: exit 3 with its message on a stderr that fails (EPIPE), not a panic (101).
    let out = cli()
        .args(["--json", "status"])
        .env("LANSPREAD_SOCKET", "/nonexistent/lanspread.sock")
        .stderr(std::process::Stdio::from(pipe_nobody_reads()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "daemon-unreachable", "{doc}");
    // The same with the JSON document going into a stdout nobody reads: still the
    // failure's exit code, not the quiet 0 of output cut short by `| head`.
    let out = cli()
        .args(["--json", "status"])
        .env("LANSPREAD_SOCKET", "/nonexistent/lanspread.sock")
        .stdout(std::process::Stdio::from(pipe_nobody_reads()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let usage = cli()
        .args(["--json", "download"])
        .stdout(std::process::Stdio::from(pipe_nobody_reads()))
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
}

/// Runs `lanspreadd` with `args` (plus a socket and loopback listen of its own) and
/// returns its exit code and stderr.
fn daemon_fails(dir: &std::path::Path, args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lanspreadd"))
        .args(args)
        .arg("--socket")
        .arg(dir.join("d.sock"))
        .args(["--listen", "127.0.0.1:0", "--no-mdns"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a daemon that is expected to stop by itself: its exit status and stderr, or a
/// panic saying `what` after 30 s (the daemon killed).
fn ends_within_30s(daemon: &mut Command, what: &str) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut child = daemon
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status, err)
}

/// A QUIC address already in use: the daemon exits 1 saying so and leaves no control
/// socket file behind (a CLI would find it and be refused).
#[test]
fn a_listen_address_in_use_leaves_no_socket_behind() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("games")).unwrap();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sock = t.path().join("d.sock");
    let mut daemon = daemon_in(t.path(), &sock);
    daemon
        .arg("--listen")
        .arg(taken.local_addr().unwrap().to_string())
        .arg("--no-mdns");
    let (status, err) = ends_within_30s(&mut daemon, "lanspreadd runs on an address in use");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(!sock.exists(), "a socket file was left behind");
}

/// A FIFO given as the state or games dir is refused at once as not a directory, not
/// waited on for a writer (the daemon opened it to lock it, and that open blocked).
#[test]
fn a_fifo_given_as_a_dir_is_refused_without_waiting() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("games")).unwrap();
    let fifo = t.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (games, state) in [
        (fifo.clone(), t.path().join("s1")),
        (t.path().join("games"), fifo.clone()),
    ] {
        let mut daemon = Command::new(env!("CARGO_BIN_EXE_lanspreadd"));
        daemon
            .arg("--games")
            .arg(&games)
            .arg("--state")
            .arg(&state)
            .arg("--socket")
            .arg(t.path().join("d.sock"))
            .args(["--listen", "127.0.0.1:0", "--no-mdns"]);
        let (status, err) =
            ends_within_30s(&mut daemon, "lanspreadd waits on a FIFO given as a dir");
        assert!(!status.success(), "{err}");
        assert!(err.contains("is not a directory"), "{err}");
    }
}

#[test]
fn start_up_errors_name_the_cause_once() {
    let t = tempfile::tempdir().unwrap();
    let p = |name: &str| t.path().join(name).into_os_string();
    std::fs::create_dir_all(t.path().join("games")).unwrap();
    std::fs::write(t.path().join("a-file"), "x").unwrap();
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec!["--games".into(), p("missing"), "--state".into(), p("s1")],
            "No such file or directory",
        ),
        (
            vec!["--games".into(), p("games"), "--state".into(), p("a-file")],
            "is not a directory",
        ),
        (
            vec![
                "--games".into(),
                p("games"),
                "--state".into(),
                p("s2"),
                "--events".into(),
                p("missing/events.jsonl"),
            ],
            "No such file or directory",
        ),
        (
            vec![
                "--games".into(),
                p("games"),
                "--state".into(),
                p("s3"),
                "--config".into(),
                p("bad-port.toml"),
            ],
            "port \"99999\" is not a number in 1..=65535",
        ),
        (
            vec![
                "--games".into(),
                p("games"),
                "--state".into(),
                p("s4"),
                "--secret-file".into(),
                p("games"),
            ],
            "not a regular file",
        ),
    ];
    std::fs::write(
        t.path().join("bad-port.toml"),
        "peers = [\"10.0.0.1:99999\"]\n",
    )
    .unwrap();
    for (args, says) in cases {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (code, err) = daemon_fails(t.path(), &args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert_eq!(err.matches(says).count(), 1, "{args:?}: {err}");
        assert!(!err.contains("os error 2): No such"), "said twice: {err}");
    }
}
