//! Bandwidth limits: `--max-download-mib-s` holds within 10% on a 256 MiB download, and
//! `--max-upload-mib-s` is shared fairly by two clients downloading at once. Clients
//! write to tmpfs so the disk's flush speed does not blur the rate (needs root).

use lanspread_fixtures::{Content, GameSpec};
use lanspread_scenarios::{skip_privileged, Node, NodeOptions, Tmpfs};

use crate::downloads::source;

const MIB: u64 = 1 << 20;

fn bytes() -> u64 {
    std::env::var("LANSPREAD_LIMIT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256 * MIB)
}

fn game_source(dir: &std::path::Path, id: &str, size: u64, args: &[&str]) -> Node {
    GameSpec::new(id, "20250101")
        .file(&format!("{id}.eti"), 0o644, Content::Sparse { size })
        .write(dir)
        .unwrap();
    if args.is_empty() {
        return source("src", dir);
    }
    Node::start_with(
        "src",
        dir,
        NodeOptions {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..NodeOptions::default()
        },
    )
}

fn within(rate: f64, limit: f64, tolerance: f64) -> bool {
    (rate - limit).abs() <= limit * tolerance
}

#[test]
fn download_limit_holds_within_ten_percent() {
    if skip_privileged("download_limit_holds_within_ten_percent") {
        return;
    }
    let size = bytes();
    let src = tempfile::tempdir().unwrap();
    let s = game_source(src.path(), "cod5", size, &[]);
    let fs = Tmpfs::mount(size / MIB + 16);
    let c = Node::start_with(
        "client",
        fs.path(),
        NodeOptions {
            args: vec!["--max-download-mib-s".into(), "64".into()],
            ..NodeOptions::default()
        },
    );
    assert_eq!(c.json(&["status"])["limits"]["max_download_mib_s"], 64.0);
    assert!(c.cli(&["status"]).stdout.contains("download 64 MiB/s"));
    c.connect(&s);
    let done = c.download_ok("cod5", &["--no-install"]);
    let rate = done["mib_per_s"].as_f64().unwrap();
    eprintln!("download limit 64 MiB/s: measured {rate:.1} MiB/s");
    assert!(
        within(rate, 64.0, 0.10),
        "{rate} MiB/s under a 64 MiB/s limit"
    );
}

#[test]
fn upload_limit_is_shared_fairly_between_clients() {
    if skip_privileged("upload_limit_is_shared_fairly_between_clients") {
        return;
    }
    let size = bytes() / 2;
    let src = tempfile::tempdir().unwrap();
    let s = game_source(src.path(), "cod5", size, &["--max-upload-mib-s", "64"]);
    assert_eq!(s.json(&["status"])["limits"]["max_upload_mib_s"], 64.0);
    let fs = Tmpfs::mount(2 * (size / MIB) + 32);
    // Not linked to each other (no peer exchange): each gets every byte from the source,
    // so what is measured is the source's limit, not a swarm's trading.
    let clients: Vec<Node> = ["one", "two"]
        .iter()
        .map(|n| {
            let dir = fs.path().join(n);
            std::fs::create_dir(&dir).unwrap();
            let opts = NodeOptions {
                args: vec!["--max-links".into(), "0".into()],
                ..NodeOptions::default()
            };
            let c = Node::start_with(n, &dir, opts);
            c.connect(&s);
            c
        })
        .collect();
    std::thread::scope(|sc| {
        for c in &clients {
            sc.spawn(move || c.download_ok("cod5", &["--no-install"]));
        }
    });
    // Each download's span from its daemon's own events (one clock: same machine).
    let spans: Vec<(f64, f64)> = clients
        .iter()
        .map(|c| {
            let at = |name: &str| c.events_named(name)[0]["ts_ms"].as_f64().unwrap() / 1e3;
            (at("download-begin"), at("download-finished"))
        })
        .collect();
    let mib = (size / MIB) as f64;
    let (first, last) = (
        spans.iter().map(|s| s.0).fold(f64::MAX, f64::min),
        spans.iter().map(|s| s.1).fold(0.0, f64::max),
    );
    // Together they get the limit: 2·size over the union of both spans.
    let total = 2.0 * mib / (last - first);
    // Fair sharing: whoever starts `skew` earlier runs alone at the limit for that long,
    // the two share it half and half, and the later one ends alone for as long — so both
    // take `union - skew`, whatever the skew (a start skew under a loaded machine is not
    // unfairness); one client served first and the other after (FIFO) is not.
    let skew = (spans[0].0 - spans[1].0).abs();
    let fair = mib / (last - first - skew);
    let rates: Vec<f64> = spans.iter().map(|s| mib / (s.1 - s.0)).collect();
    for c in &clients {
        let per = c.bytes_per_source("cod5");
        assert_eq!(
            per.keys().collect::<Vec<_>>(),
            [&s.peer_id],
            "{}: {per:?}",
            c.name
        );
    }
    eprintln!(
        "upload limit 64 MiB/s, two clients: together {total:.1} MiB/s, each {rates:.1?} \
         MiB/s over its own span (start skew {skew:.2} s, fair share {fair:.1} MiB/s)"
    );
    assert!(within(total, 64.0, 0.15), "together {total} MiB/s");
    for r in &rates {
        assert!(
            within(*r, fair, 0.2),
            "unfair split {rates:?} (fair {fair})"
        );
    }
}
