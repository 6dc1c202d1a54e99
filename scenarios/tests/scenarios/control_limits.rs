//! The control socket and the CLI under a careless or hostile client (issue 18): floods,
//! endless lines, long-lived connections, stopped daemons, closed pipes, odd timeouts.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use lanspread_scenarios::{bin, Node, OutputWithin, CLI_LIMIT, WAIT};

fn ask(stream: &mut UnixStream, line: &[u8]) -> String {
    // A daemon that never answers fails the test, not the run.
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // A refusal (a line too long) may close the connection before all is written: the
    // reply says what happened.
    let _ = stream
        .write_all(line)
        .and_then(|()| stream.write_all(b"\n"));
    let mut reply = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    reply
}

#[test]
fn unknown_fields_are_refused_on_every_command() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("strict", games.path());
    let mut s = UnixStream::connect(n.socket_path()).unwrap();
    for bad in [
        r#"{"cmd":"status","force":true}"#,
        r#"{"cmd":"shutdown","now":1}"#,
        r#"{"cmd":"install","game":"ggoo","force":true}"#,
        r#"{"cmd":"reload","now":1}"#,
    ] {
        let reply = ask(&mut s, bad.as_bytes());
        assert!(reply.contains("unknown field"), "{bad}: {reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["error"]["kind"], "bad-request", "{bad}: {reply}");
    }
    assert!(ask(&mut s, br#"{"cmd":"status"}"#).contains("peer_id"));
}

#[test]
fn long_lived_connections_are_bounded_per_line_not_in_total() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("lines", games.path());
    let mut s = UnixStream::connect(n.socket_path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // 80 requests of 60 KiB each: 4.7 MiB on one connection, every one answered (a
    // total cap of 4 MiB used to cut the connection silently).
    let mut padded = br#"{"cmd":"status""#.to_vec();
    padded.resize(60 << 10, b' ');
    padded.push(b'}');
    for i in 0..80 {
        let reply = ask(&mut s, &padded);
        assert!(reply.contains("peer_id"), "request {i}: {reply:?}");
    }
    // One line longer than 64 KiB is refused, whatever came before.
    let mut long = vec![b' '; 70 << 10];
    long.push(b'{');
    assert!(ask(&mut s, &long).contains("request too long"));
}

#[test]
fn a_flood_of_idle_connections_leaves_room_for_the_admin() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("flood", games.path());
    // Tests run as root, an admin: 128 connections for anyone plus 16 in reserve.
    let idle: Vec<UnixStream> = (0..144)
        .map(|_| UnixStream::connect(n.socket_path()).unwrap())
        .collect();
    // Every one of them still has its slot: the first answers.
    let mut first = idle[0].try_clone().unwrap();
    assert!(ask(&mut first, br#"{"cmd":"status"}"#).contains("peer_id"));
    let over = UnixStream::connect(n.socket_path()).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = String::new();
    BufReader::new(over.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    assert!(reply.contains("too many control connections"), "{reply}");
    // The CLI says so too: `busy`, exit 1, even when the refusal closed the connection
    // before its request went out (it read EPIPE and said "unreachable", exit 3).
    for _ in 0..10 {
        let out = n.cli(&["--json", "status"]);
        assert_eq!(out.code, 1, "{out:?}");
        assert_eq!(out.error_kind(), "busy", "{out:?}");
    }
    // Once they close, the socket serves again.
    drop(idle);
    drop(first);
    lanspread_scenarios::wait_for("the slots to free", || {
        (n.cli(&["status"]).code == 0).then_some(())
    });
}

#[test]
fn a_connection_that_asks_nothing_is_closed() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("idle", games.path());
    let mut used = UnixStream::connect(n.socket_path()).unwrap();
    assert!(ask(&mut used, br#"{"cmd":"status"}"#).contains("peer_id"));
    let silent = UnixStream::connect(n.socket_path()).unwrap();
    // A client may take its time (a script between two requests) ...
    let mut late = UnixStream::connect(n.socket_path()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(ask(&mut late, br#"{"cmd":"status"}"#).contains("peer_id"));
    // ... but not for good: the daemon closes a connection idle for a minute (they held
    // the socket's slots forever).
    for mut s in [used, silent] {
        s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
        let mut rest = Vec::new();
        let got = std::io::Read::read_to_end(&mut s, &mut rest);
        assert!(matches!(got, Ok(0)), "closed, not timed out: {got:?}");
    }
}

#[test]
fn cli_never_hangs_on_a_stopped_daemon_nor_panics_on_a_closed_pipe() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("cli", games.path());
    // A stopped daemon still accepts connections; the CLI gives up (exit 3).
    n.signal(libc::SIGSTOP);
    let out = Command::new(bin("lanspread"))
        .env("LANSPREAD_REPLY_TIMEOUT_MS", "1500")
        .arg("--socket")
        .arg(n.socket_path())
        .arg("status")
        .output_within(CLI_LIMIT);
    n.signal(libc::SIGCONT);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not answer within 1.5 s"),
        "{out:?}"
    );

    // The reader of `events` goes away: the CLI ends quietly (exit 0) on the next event,
    // no panic (exit 101).
    let mut events = Command::new(bin("lanspread"))
        .arg("--socket")
        .arg(n.socket_path())
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader takes one line and goes away (its end of the pipe closes).
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
    });
    // Subscribing is asynchronous: make events until the stream shows one.
    let mut others = Vec::new();
    loop {
        assert!(others.len() < 10, "the events stream stayed silent");
        let games = tempfile::tempdir().unwrap();
        let other = Node::start("other", games.path());
        n.connect(&other);
        others.push((other, games));
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(3)) {
            assert!(matches!(line, Some(Ok(_))), "no event line: {line:?}");
            break;
        }
    }
    let third_games = tempfile::tempdir().unwrap();
    let third = Node::start("third", third_games.path());
    n.connect(&third);
    let out = lanspread_scenarios::wait_for("events to end", || events.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut events.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(out.code(), Some(0), "{out:?} {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn usage_errors_under_json_print_one_json_document() {
    // No daemon needed: clap refuses these before any connection.
    for args in [
        &["--json", "--bogus", "status"][..],
        &["--json", "download"],
        &["status", "--json", "--frobnicate"],
        &["--json", "limit", "--upload-mib-s", "nan"],
        &["--json", "wait-peers", "abc"],
    ] {
        let out = Command::new(bin("lanspread"))
            .args(args)
            .output_within(CLI_LIMIT);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut docs = serde_json::Deserializer::from_str(&stdout).into_iter::<serde_json::Value>();
        let doc = docs.next().and_then(Result::ok).unwrap_or_default();
        assert!(docs.next().is_none(), "{args:?}: one document: {stdout}");
        assert_eq!(doc["error"]["kind"], "bad-request", "{args:?}: {stdout}");
        assert!(!doc["error"]["message"].as_str().unwrap_or("").is_empty());
        // The human message still goes to stderr.
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    // Without --json only stderr speaks; --help is no error.
    let out = Command::new(bin("lanspread"))
        .args(["--bogus"])
        .output_within(CLI_LIMIT);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = Command::new(bin("lanspread"))
        .args(["--json", "--help"])
        .output_within(CLI_LIMIT);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
}

#[test]
fn wait_peers_timeouts_mean_what_they_say() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("wait", games.path());
    for bad in ["nan", "-1", "soon"] {
        let out = n.cli(&["wait-peers", "1", "--timeout", bad]);
        assert_eq!(out.code, 2, "{bad}: {out:?}");
    }
    // `inf` and huge values wait for the peer instead of returning at once.
    for forever in ["inf", "1e20"] {
        let peer_games = tempfile::tempdir().unwrap();
        let waiter = Command::new(bin("lanspread"))
            .arg("--socket")
            .arg(n.socket_path())
            .args(["wait-peers", "1", "--timeout", forever])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let mut waiter = waiter;
        assert!(
            waiter.try_wait().unwrap().is_none(),
            "{forever}: returned at once"
        );
        let mut peer = Node::start("peer", peer_games.path());
        n.connect(&peer);
        let status =
            lanspread_scenarios::wait_for("wait-peers to return", || waiter.try_wait().unwrap());
        assert!(status.success(), "{forever}: {status:?}");
        peer.shutdown();
        lanspread_scenarios::wait_for("the peer gone", || n.peer_ids().is_empty().then_some(()));
    }
}

/// Clients that wait (`events`, `wait-peers`; a waiting `download` alike) and hang up —
/// a Ctrl-C — give their slots back at once: 150 of them (more than the cap and the admins'
/// reserve together) on an idle daemon that emits no event left it refusing everyone,
/// `shutdown` included, until its next event or their waits' end. A client that only
/// ended its requests (shut its socket for writing) still gets its events.
#[test]
fn waiting_clients_that_hang_up_free_their_slots() {
    let games = tempfile::tempdir().unwrap();
    let n = Node::start("hangups", games.path());
    let mut half = UnixStream::connect(n.socket_path()).unwrap();
    half.write_all(b"{\"cmd\":\"events\"}\n").unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    let requests: [&[u8]; 2] = [
        b"{\"cmd\":\"events\"}\n",
        b"{\"cmd\":\"wait-peers\",\"count\":5,\"timeout_ms\":100000000}\n",
    ];
    for i in 0..150 {
        let mut s = UnixStream::connect(n.socket_path()).unwrap();
        // Refused ones (while earlier slots are still being given back) close at once.
        let _ = s.write_all(requests[i % 2]);
    }
    lanspread_scenarios::wait_for("the hung-up clients' slots to free", || {
        (n.cli(&["status"]).code == 0).then_some(())
    });
    // The half-closed client is still there, and hears the next event.
    let seen = n.events_named("peer-connected").len();
    let other = tempfile::tempdir().unwrap();
    let peer = Node::start("peer", other.path());
    peer.connect(&n);
    n.wait_new_event(seen, "peer-connected", |_| true);
    half.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(half).read_line(&mut line).unwrap();
    assert!(line.contains("peer-connected"), "{line}");
}

/// A `wait-peers` cut short by the daemon's shutdown says so (kind `shutdown`), not a
/// connection closed without a word (the CLI said "unreachable", exit 3).
#[test]
fn a_wait_cut_by_shutdown_says_so() {
    let games = tempfile::tempdir().unwrap();
    let mut n = Node::start("stopping", games.path());
    let mut s = UnixStream::connect(n.socket_path()).unwrap();
    // The connection is served (a reply came) before the wait goes in on it.
    assert!(ask(&mut s, br#"{"cmd":"status"}"#).contains("peer_id"));
    s.write_all(b"{\"cmd\":\"wait-peers\",\"count\":5,\"timeout_ms\":100000000}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    n.shutdown();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    assert_eq!(v["error"]["kind"], "shutdown", "{v}");
}
