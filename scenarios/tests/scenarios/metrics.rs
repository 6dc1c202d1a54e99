//! Prometheus metrics (issue 23): both daemons of a real download are scraped over HTTP
//! while it runs and after; the counters must match the bytes moved, read back by an
//! independent parser (`prometheus-parse`), and the shipped Grafana dashboard must ask
//! only for series the daemon serves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use lanspread_scenarios::{bin, Node, NodeOptions, OutputWithin, WAIT};

const MIB: u64 = 1 << 20;

/// One HTTP/1.1 request; (status code, head, body).
fn http(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

pub struct Scrape {
    text: String,
    parsed: prometheus_parse::Scrape,
}

pub fn scrape(n: &Node) -> Scrape {
    let addr = n.json(&["status"])["metrics"]
        .as_str()
        .expect("status names the metrics address")
        .to_owned();
    let (code, head, text) = http(&addr, "GET", "/metrics");
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses");
    Scrape { text, parsed }
}

impl Scrape {
    /// The value of `metric` whose labels include `labels`; the sum when several do.
    pub fn value(&self, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in &self.parsed.samples {
            if s.metric != metric || labels.iter().any(|(k, v)| s.labels.get(k) != Some(*v)) {
                continue;
            }
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => continue,
            };
            found = Some(found.unwrap_or(0.0) + v);
        }
        found
    }
}

pub fn with_metrics(name: &str, games: &Path, more: &[&str]) -> Node {
    let mut args = vec!["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()];
    args.extend(more.iter().map(|s| s.to_string()));
    Node::start_with(
        name,
        games,
        NodeOptions {
            args,
            ..NodeOptions::default()
        },
    )
}

#[test]
fn a_scrape_during_and_after_a_download_matches_the_bytes_moved() {
    let src = tempfile::tempdir().unwrap();
    crate::util::sparse_game(src.path(), "cod5", 8, 8);
    let s = with_metrics("src", src.path(), &[]);
    let games = tempfile::tempdir().unwrap();
    // 64 MiB at 16 MiB/s: a few seconds to scrape in the middle.
    let c = with_metrics("client", games.path(), &["--max-download-mib-s", "16"]);
    c.connect(&s);
    let out = c.cli(&["download", "cod5", "--no-install", "--detach"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    c.wait_event("download-chunk-finished", |e| e["game_id"] == "cod5");

    let during = scrape(&c);
    assert_eq!(
        during.value("lanspread_operations_active", &[("kind", "download")]),
        Some(1.0),
        "{}",
        during.text
    );
    assert_eq!(during.value("lanspread_peers_linked", &[]), Some(1.0));
    assert_eq!(
        during.value(
            "lanspread_limit_bytes_per_second",
            &[("direction", "download")]
        ),
        Some(16.0 * MIB as f64)
    );
    assert!(
        during
            .value("process_resident_memory_bytes", &[])
            .unwrap_or(0.0)
            > 0.0
    );
    assert!(
        during
            .value("process_cpu_seconds_total", &[])
            .unwrap_or(0.0)
            > 0.0
    );
    let got = during
        .value("lanspread_game_received_bytes_total", &[("game", "cod5")])
        .unwrap_or(0.0);
    assert!(
        got > 0.0 && got < 64.0 * MIB as f64,
        "{got}: {}",
        during.text
    );

    let done = c.wait_event("download-finished", |e| e["game_id"] == "cod5");
    let after = scrape(&c);
    let total = done["bytes"].as_u64().unwrap() as f64;
    assert!(total >= 64.0 * MIB as f64, "{done}");
    let from_src = [("peer", s.peer_id.as_str())];
    assert_eq!(
        after.value("lanspread_peer_received_bytes_total", &from_src),
        Some(total),
        "{}",
        after.text
    );
    assert_eq!(
        after.value("lanspread_game_received_bytes_total", &[("game", "cod5")]),
        Some(total)
    );
    assert_eq!(
        after.value("lanspread_chunks_verified_total", &[]),
        done["chunks"].as_f64()
    );
    assert_eq!(
        after.value(
            "lanspread_operations_started_total",
            &[("kind", "download")]
        ),
        Some(1.0)
    );
    assert_eq!(
        after.value(
            "lanspread_operations_ended_total",
            &[("kind", "download"), ("outcome", "finished")]
        ),
        Some(1.0)
    );
    assert_eq!(
        after.value("lanspread_operations_active", &[("kind", "download")]),
        Some(0.0)
    );
    assert_eq!(after.value("lanspread_games_ready", &[]), Some(1.0));
    // 64 MiB at 16 MiB/s: pieces waited for the limit, seconds of it in all.
    let down = [("direction", "download")];
    assert!(
        after
            .value("lanspread_limit_waits_total", &down)
            .unwrap_or(0.0)
            > 10.0
    );
    let waited = after
        .value("lanspread_limit_waited_seconds_total", &down)
        .unwrap_or(0.0);
    assert!(waited > 1.0, "{waited}: {}", after.text);
    // The source counted the same bytes as sent, once its answers ended.
    let to_client = [("peer", c.peer_id.as_str())];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let src_scrape = scrape(&s);
        let sent = src_scrape.value("lanspread_peer_sent_bytes_total", &to_client);
        if sent == Some(total) {
            assert_eq!(
                src_scrape.value("lanspread_game_sent_bytes_total", &[("game", "cod5")]),
                Some(total)
            );
            assert_eq!(
                src_scrape.value("lanspread_manifest_requests_total", &[]),
                Some(1.0),
                "{}",
                src_scrape.text
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sent {sent:?}: {}",
            src_scrape.text
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Only GET/HEAD of /metrics.
    let addr = c.json(&["status"])["metrics"].as_str().unwrap().to_owned();
    assert_eq!(http(&addr, "GET", "/").0, 404);
    assert_eq!(http(&addr, "POST", "/metrics").0, 405);
    assert!(c
        .cli(&["status"])
        .stdout
        .contains(&format!("http://{addr}/metrics")));

    // The dashboard asks only for series this daemon serves.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/grafana/lanspread.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut asked = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')) {
                if word.starts_with("lanspread_") || word.starts_with("process_") {
                    asked.push(word.to_owned());
                }
            }
        }
    }
    assert!(asked.len() >= 10, "{asked:?}");
    let src_text = scrape(&s).text;
    for name in asked {
        let served = |text: &str| {
            text.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        };
        assert!(
            served(&after.text) || served(&src_text),
            "{name} is not served"
        );
    }
}

#[test]
fn metrics_on_a_network_address_need_to_be_asked_for() {
    let games = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    // A daemon started by hand with `--metrics-listen ADDR`; it must refuse to start.
    let start = |addr: &str| {
        std::process::Command::new(bin("lanspreadd"))
            .args([
                "--no-mdns",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                addr,
            ])
            .arg("--games")
            .arg(games.path())
            .arg("--state")
            .arg(state.path())
            .arg("--socket")
            .arg(state.path().join("s.sock"))
            .output_within(WAIT)
    };
    let out = start("0.0.0.0:0");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-allow-remote"), "{err}");
    assert!(!state.path().join("s.sock").exists(), "nothing left behind");

    // A loopback port that is taken: the start fails at the bind, before the control
    // socket exists, and says which address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = start(&addr);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("metrics listen address {addr}")),
        "{err}"
    );
    assert!(
        !state.path().join("s.sock").exists(),
        "no control socket left behind"
    );
}
