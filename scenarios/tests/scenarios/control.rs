//! The control socket and CLI commands beyond listing: stale sockets, wait-peers, events.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use lanspread_scenarios::{
    bin, collect_within, nobody_part, output_within, spawn_copy, wait_within, NobodyCopy, Node,
    CLI_LIMIT, WAIT,
};

#[test]
fn socket_in_use_is_refused_and_stale_socket_is_replaced() {
    let games = tempfile::tempdir().unwrap();
    let a = Node::start("first", games.path());
    let sock = a.json(&["status"]);
    assert_eq!(sock["peers"], 0);
    let dir = tempfile::tempdir().unwrap();
    // A second daemon (on other dirs) on the live socket fails and leaves the first one
    // working.
    let live = a.socket_path();
    let other_games = tempfile::tempdir().unwrap();
    // A daemon on other dirs and `socket` that must fail to start, saying `why`.
    let refused = |socket: &std::path::Path, why: &str| {
        let out = output_within(
            Command::new(bin("lanspreadd"))
                .arg("--games")
                .arg(other_games.path())
                .arg("--state")
                .arg(dir.path().join("s"))
                .arg("--socket")
                .arg(socket)
                .args(["--listen", "127.0.0.1:0", "--no-mdns"]),
            WAIT,
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{out:?}"
        );
    };
    refused(&live, "already listening");
    assert_eq!(a.json(&["status"])["peer_id"], a.peer_id.as_str());

    // A mistyped socket path makes no folders: only the socket's own folder is created,
    // when its parent exists.
    refused(
        &dir.path().join("no/such/x.sock"),
        "cannot create the control socket's folder",
    );
    assert!(!dir.path().join("no").exists());

    // A file that is not a socket is never taken for a stale one (it was removed: a
    // `--socket` mistyped as the config's path deleted the config).
    let config = dir.path().join("lanspreadd.toml");
    std::fs::write(&config, "max_links = 8\n").unwrap();
    refused(&config, "not a socket");
    assert_eq!(std::fs::read(&config).unwrap(), b"max_links = 8\n");

    // A socket file nobody answers on is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut child = Command::new(bin("lanspreadd"))
        .arg("--games")
        .arg(other_games.path())
        .arg("--state")
        .arg(dir.path().join("s2"))
        .arg("--socket")
        .arg(&stale)
        .args(["--listen", "127.0.0.1:0", "--no-mdns", "--events", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("daemon-started"), "{first}");
    let ready = lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("local-peer-ready")));
    assert!(ready.is_some());
    let out = output_within(
        Command::new(bin("lanspread"))
            .arg("--socket")
            .arg(&stale)
            .arg("shutdown"),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        wait_within(&mut child, WAIT, "lanspreadd after shutdown").code(),
        Some(0)
    );
    assert!(!stale.exists(), "the socket file is removed on exit");

    // A daemon whose socket file was replaced meanwhile (by a daemon started since on
    // the same path) leaves the new file at its stop.
    let (mut b, _b_games) = crate::downloads::client();
    let path = b.socket_path();
    std::fs::remove_file(&path).unwrap();
    let newer_listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let newer = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(b.terminate(), Some(0));
    drop(newer_listener);
    let now = std::fs::symlink_metadata(&path).expect("the newer socket file stays");
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&now),
        std::os::unix::fs::MetadataExt::ino(&newer)
    );
}

#[test]
fn wait_peers_times_out_then_succeeds() {
    let g1 = tempfile::tempdir().unwrap();
    let g2 = tempfile::tempdir().unwrap();
    let a = Node::start("a", g1.path());
    let b = Node::start("b", g2.path());
    let out = a.cli(&["wait-peers", "1", "--timeout", "0.2"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);
    b.connect(&a);
    let peers = a.json(&["wait-peers", "1", "--timeout", "20"]);
    assert_eq!(peers[0]["peer_id"], b.peer_id.as_str());
}

#[test]
fn events_command_streams_json_lines() {
    let (line, peers) = first_event_line(true);
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v["ts_ms"].as_u64().unwrap() > 0);
    assert!(
        v["event"] == "peer-connected" || v["event"] == "remote-library-changed",
        "{v}"
    );
    assert!(peers.iter().any(|p| v["peer_id"] == p.as_str()), "{v}");
}

#[test]
fn events_command_has_a_readable_mode() {
    let (line, peers) = first_event_line(false);
    assert!(
        line.contains(" peer-connected ") || line.contains(" remote-library-changed "),
        "{line}"
    );
    assert!(
        peers.iter().any(|p| line.contains(&format!("peer_id={p}"))),
        "{line}"
    );
    assert!(serde_json::from_str::<serde_json::Value>(&line).is_err());
}

/// Starts `lanspread [--json] events` on a node and makes events until one line arrives;
/// returns it and the peer ids that caused events.
fn first_event_line(json: bool) -> (String, Vec<String>) {
    let g1 = tempfile::tempdir().unwrap();
    let a = Node::start("a", g1.path());
    let mut child = Command::new(bin("lanspread"))
        .arg("--socket")
        .arg(a.socket_path())
        .args(json.then_some("--json"))
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Subscribing is asynchronous: keep making events until the stream shows one.
    let mut peers = Vec::new();
    let mut dirs = Vec::new();
    let line = loop {
        assert!(peers.len() < 10, "the events stream stayed silent");
        let g = tempfile::tempdir().unwrap();
        let b = Node::start("b", g.path());
        b.connect(&a);
        peers.push(b);
        dirs.push(g);
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(3)) {
            break line;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    (line, peers.iter().map(|p| p.peer_id.clone()).collect())
}

/// Runs `lanspread` as uid/gid 65534 (nobody/nogroup) from a copy it can execute.
fn cli_as_nobody(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    let copy = NobodyCopy::of(&bin("lanspread"));
    let mut cmd = copy.command();
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    collect_within(spawn_copy(&mut cmd), CLI_LIMIT, "lanspread as nobody")
}

fn node_with(name: &str, games: &std::path::Path, args: &[&str]) -> Node {
    use std::os::unix::fs::PermissionsExt;
    let n = Node::start_with(
        name,
        games,
        lanspread_scenarios::NodeOptions {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    );
    // Let other users reach the socket file; its own mode and group decide the rest.
    let dir = n.socket_path().parent().unwrap().to_path_buf();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    n
}

#[test]
fn socket_access_reads_for_the_group_changes_for_admins() {
    use std::os::unix::fs::MetadataExt;
    if lanspread_scenarios::skip_privileged("socket_access_reads_for_the_group_changes_for_admins")
    {
        return;
    }
    let games = tempfile::tempdir().unwrap();
    // Not in the socket's group: cannot even open it.
    let closed = node_with("closed", games.path(), &[]);
    let out = cli_as_nobody(&closed.socket_path(), &["status"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ermission denied"),
        "{out:?}"
    );

    // In the socket's group: reads yes, changes no (a games dir of its own: one daemon
    // per games dir).
    let games2 = tempfile::tempdir().unwrap();
    let n = node_with("grouped", games2.path(), &["--group", "65534"]);
    let meta = std::fs::metadata(n.socket_path()).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 65534));
    let out = cli_as_nobody(&n.socket_path(), &["--json", "status"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    for args in [
        &["download", "cod5"][..],
        &["install", "cod5"],
        &["uninstall", "cod5"],
        &["connect", "127.0.0.1:9"],
        &["shutdown"],
    ] {
        let out = cli_as_nobody(&n.socket_path(), &[&["--json"][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("permission denied"), "{args:?}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["error"]["kind"], "permission-denied", "{args:?}: {v}");
    }
    assert_eq!(
        n.json(&["status"])["peer_id"],
        n.peer_id.as_str(),
        "still up"
    );
    assert!(n.log().contains("permission denied: `shutdown`"));

    // Members of the admin group may make changes.
    let games3 = tempfile::tempdir().unwrap();
    let a = node_with(
        "admin",
        games3.path(),
        &["--group", "65534", "--admin-group", "65534"],
    );
    let out = cli_as_nobody(&a.socket_path(), &["download", "cod5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("permission denied"), "{err}");
    assert!(err.contains("no peers have game cod5"), "{err}");
}

/// The test's unprivileged part, run as uid 65534 in a process of its own
/// ([`NobodyCopy::rerun`]): 128 idle connections are accepted, the 129th is refused; then
/// it tells the parent (a `flood-ready` line) and holds them until its stdin closes. The
/// exit code names the failed step.
fn flood_as_nobody(socket: &std::path::Path) -> i32 {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let mut idle = Vec::with_capacity(128);
    for _ in 0..128 {
        match UnixStream::connect(socket) {
            Ok(s) => idle.push(s),
            Err(_) => return 2,
        }
    }
    // The first one still has its slot.
    let mut first = match idle[0].try_clone() {
        Ok(s) => s,
        Err(_) => return 3,
    };
    if std::io::Write::write_all(&mut first, b"{\"cmd\":\"status\"}\n").is_err() {
        return 3;
    }
    let _ = first.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut reply = String::new();
    if BufReader::new(&first).read_line(&mut reply).is_err() || !reply.contains("peer_id") {
        return 4;
    }
    let Ok(over) = UnixStream::connect(socket) else {
        return 5;
    };
    let _ = over.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut reply = String::new();
    if BufReader::new(&over).read_line(&mut reply).is_err()
        || !reply.contains("too many control connections")
    {
        return 6;
    }
    println!("flood-ready");
    // The parent waits for this line.
    if std::io::Write::flush(&mut std::io::stdout()).is_err() {
        return 7;
    }
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    drop(idle);
    0
}

#[test]
fn a_non_admin_flood_is_capped_and_the_admin_still_gets_in() {
    if let Some(socket) = nobody_part() {
        std::process::exit(flood_as_nobody(std::path::Path::new(&socket)));
    }
    if lanspread_scenarios::skip_privileged(
        "a_non_admin_flood_is_capped_and_the_admin_still_gets_in",
    ) {
        return;
    }
    let games = tempfile::tempdir().unwrap();
    let n = node_with("flooded", games.path(), &["--group", "65534"]);
    let copy = NobodyCopy::of_this_test();
    let mut cmd = copy.rerun(
        "control::a_non_admin_flood_is_capped_and_the_admin_still_gets_in",
        n.socket_path().as_os_str(),
    );
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_copy(&mut cmd);
    // Its stdout read on a thread: a child stuck before its line fails the test at WAIT.
    let out = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + WAIT;
    let ready = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            break false;
        };
        seen.push_str(&line);
        seen.push('\n');
        // libtest may have written "test <name> ... " on the same line.
        if line.trim_end().ends_with("flood-ready") {
            break true;
        }
    };
    // While the non-admin holds every slot it may have, root (an admin) still gets in.
    let status = ready.then(|| n.cli(&["status"]));
    // Closing its stdin releases the child (killed past WAIT).
    drop(child.stdin.take());
    let done = collect_within(child, WAIT, "the flood's child");
    let _ = reader.join();
    seen.extend(lines.try_iter().map(|l| l + "\n"));
    assert_eq!(
        done.status.code(),
        Some(0),
        "flood step failed (2 connect, 4 first not served, 6 the 129th not refused)\n{seen}{}\n{}",
        String::from_utf8_lossy(&done.stderr),
        n.log_tail()
    );
    let status = status.expect("the child signalled");
    assert_eq!(status.code, 0, "the admin was locked out: {status:?}");
    assert!(n.log().contains("connections open; refused one"));
}
