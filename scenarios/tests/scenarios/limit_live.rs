//! `lanspread limit` (issue 23): bandwidth limits change at run time, for the transfers
//! already running, without restarting them; bad values change nothing.

use std::time::Duration;

use lanspread_scenarios::{Node, NodeOptions};
use serde_json::json;

use crate::downloads::source;

const MIB: u64 = 1 << 20;

/// One request line on the control socket, as any client could send it.
fn raw(n: &Node, line: &str) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(n.socket_path()).unwrap();
    s.set_read_timeout(Some(lanspread_scenarios::WAIT)).unwrap();
    writeln!(s, "{line}").unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn a_limit_lifted_at_run_time_speeds_up_the_running_download() {
    let src = tempfile::tempdir().unwrap();
    crate::util::sparse_game(src.path(), "cod5", 8, 8);
    let s = source("src", src.path());
    let games = tempfile::tempdir().unwrap();
    let c = Node::start_with(
        "client",
        games.path(),
        NodeOptions {
            args: vec!["--max-download-mib-s".into(), "4".into()],
            ..NodeOptions::default()
        },
    );
    c.connect(&s);
    let limits = |n: &Node| n.json(&["status"])["limits"].clone();
    assert_eq!(
        limits(&c),
        json!({"max_upload_mib_s": null, "max_download_mib_s": 4.0})
    );
    // Bad values are refused before anything changes.
    assert_eq!(c.cli(&["limit", "--download-mib-s", "fast"]).code, 2);
    assert_eq!(c.cli(&["limit", "--upload-mib-s=-1"]).code, 2);
    // Out of range too, in one line (`1e300` printed 301 digits), as JSON under --json.
    for bad in ["1e300", "0.001", "2000000"] {
        let out = c.cli(&["--json", "limit", "--upload-mib-s", bad]);
        assert_eq!(out.code, 2, "{out:?}");
        assert_eq!(out.error_kind(), "bad-request", "{out:?}");
        assert!(out.stdout.len() < 300, "{out:?}");
    }
    // The daemon checks too (a client that is not our CLI), both values before either.
    for bad in [
        r#"{"cmd":"limit","download_mib_s":-5}"#,
        r#"{"cmd":"limit","upload_mib_s":8,"download_mib_s":1e-30}"#,
    ] {
        let reply = raw(&c, bad);
        assert_eq!(reply["error"]["kind"], "bad-request", "{reply}");
    }
    assert_eq!(
        limits(&c),
        json!({"max_upload_mib_s": null, "max_download_mib_s": 4.0})
    );
    // Without options: the limits as they are.
    assert_eq!(c.json(&["limit"]), limits(&c));

    // 64 MiB at 4 MiB/s would take 16 s; lifted a second in.
    let out = c.cli(&["download", "cod5", "--no-install", "--detach"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    c.wait_event("download-begin", |e| e["game_id"] == "cod5");
    std::thread::sleep(Duration::from_secs(1));
    let changed_ms = crate::util::now_ms();
    let now = c.json(&["limit", "--download-mib-s", "off", "--upload-mib-s", "2.5"]);
    assert_eq!(
        now,
        json!({"max_upload_mib_s": 2.5, "max_download_mib_s": null})
    );
    assert_eq!(limits(&c), now);
    let human = c.cli(&["status"]).stdout;
    assert!(
        human.contains("limits:      upload 2.5 MiB/s, download unlimited"),
        "{human}"
    );
    let done = c.wait_event("download-finished", |e| e["game_id"] == "cod5");
    // The same download went on: begun once, never failed.
    assert_eq!(c.events_named("download-begin").len(), 1);
    assert!(c.events_named("download-failed").is_empty());
    // What finished after the change came far faster than the old limit allows.
    let (after, rate) = crate::util::rate_since(&c, changed_ms, &done);
    assert!(
        after >= 32 * MIB && rate > 3.0 * 4.0,
        "{after} bytes after the limit was lifted: {rate:.1} MiB/s"
    );
    // Back on: a limit set again shows; `off` and `0` both lift.
    assert_eq!(
        c.json(&["limit", "--download-mib-s", "16", "--upload-mib-s", "0"]),
        json!({"max_upload_mib_s": null, "max_download_mib_s": 16.0})
    );
}
