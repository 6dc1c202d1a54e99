//! Unit tests of `metrics.rs`.
use super::*;
use lanspread_control::api::{GameId, PeerId};
use lanspread_control::ErrorKind;

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn events_and_answers_become_counters_and_the_snapshot_gauges() {
    let m = Metrics::new();
    let peer = PeerId::try_from("ab".repeat(16)).unwrap();
    let game = GameId::new("cod5").unwrap();
    // Bytes count per verified unit, as they arrive; chunks as their events come.
    for _ in 0..3 {
        m.received(peer.as_str(), "cod5", 1000);
    }
    // A unit an earlier attempt had kept 600 bytes of: 400 were received now.
    m.received(peer.as_str(), "cod5", 400);
    // Another peer sent part of the game.
    let other = PeerId::try_from("cd".repeat(16)).unwrap();
    m.received(other.as_str(), "cod5", 700);
    m.received(peer.as_str(), "cod5", 300);
    for _ in 0..5 {
        m.observe(&EventKind::DownloadChunkFinished {
            game_id: game.clone(),
            path: "a".into(),
            offset: 0,
            len: 1000,
            peer_id: peer.clone(),
            addr: String::new(),
            resumed_bytes: 0,
            sources: vec![],
        });
    }
    m.observe(&EventKind::DownloadFailed {
        game_id: game.clone(),
        reason: "x".into(),
        kind: ErrorKind::DiskFull,
        sources: vec![],
    });
    m.started("download");
    m.failed("uninstall", ErrorKind::PermissionDenied);
    m.sent("p2", "cod5", 500);
    m.chunk_failed("bad-data");
    m.manifest(true);
    let text = m
        .render(&Snapshot {
            operations: vec![("download", 2)],
            peers: 3,
            games_ready: 4,
            limits: (Some(2.0), None),
            waited: [(3, 1.5), (0, 0.0)],
        })
        .unwrap();
    let peer_label = format!("{{peer=\"{peer}\"}}");
    assert_eq!(
        value(
            &text,
            &format!("lanspread_peer_received_bytes_total{peer_label}")
        ),
        Some(3700.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("lanspread_peer_received_bytes_total{{peer=\"{other}\"}}")
        ),
        Some(700.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "lanspread_game_received_bytes_total{game=\"cod5\"}"),
        Some(4400.0)
    );
    assert_eq!(value(&text, "lanspread_chunks_verified_total"), Some(5.0));
    assert_eq!(
        value(&text, "lanspread_operations_ended_total{kind=\"download\",outcome=\"failed\",error=\"disk-full\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "lanspread_operations_started_total{kind=\"download\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "lanspread_game_sent_bytes_total{game=\"cod5\"}"),
        Some(500.0)
    );
    assert_eq!(
        value(&text, "lanspread_chunks_failed_total{reason=\"bad-data\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "lanspread_manifest_requests_total{cache=\"hit\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "lanspread_operations_active{kind=\"download\"}"),
        Some(2.0)
    );
    assert_eq!(value(&text, "lanspread_peers_linked"), Some(3.0));
    assert_eq!(value(&text, "lanspread_games_ready"), Some(4.0));
    assert_eq!(
        value(
            &text,
            "lanspread_limit_bytes_per_second{direction=\"upload\"}"
        ),
        Some(2.0 * 1048576.0)
    );
    assert!(!text.contains("lanspread_limit_bytes_per_second{direction=\"download\"}"));
    assert!(value(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 0.0);
    assert_eq!(
        value(&text, "lanspread_limit_waits_total{direction=\"upload\"}"),
        Some(3.0)
    );
    assert_eq!(
        value(
            &text,
            "lanspread_limit_waited_seconds_total{direction=\"upload\"}"
        ),
        Some(1.5)
    );
    assert_eq!(
        value(
            &text,
            "lanspread_operations_ended_total{kind=\"uninstall\",outcome=\"failed\",error=\"permission-denied\"}"
        ),
        Some(1.0)
    );
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn the_rate_is_the_bytes_of_the_last_seconds() {
    let m = Metrics::new();
    let now = Instant::now();
    m.sample(now - Duration::from_secs(9));
    m.sent("p", "g", 1 << 30);
    // Older than the window: dropped, and its bytes no longer count.
    m.sample(now - Duration::from_secs(4));
    m.sent("p", "g", 8 << 20);
    let text = m.render(&Snapshot::default()).unwrap();
    let rate = value(
        &text,
        "lanspread_transfer_rate_bytes_per_second{direction=\"upload\"}",
    )
    .unwrap();
    // 8 MiB over the 4 s (and a little) since the sample in the window.
    assert!((rate - 2.0 * 1048576.0).abs() < 0.01 * 1048576.0, "{rate}");
    assert_eq!(
        value(
            &text,
            "lanspread_transfer_rate_bytes_per_second{direction=\"download\"}"
        ),
        Some(0.0)
    );
}

#[test]
fn peer_series_are_bounded_and_dropped_with_the_peer() {
    let m = Metrics::new();
    for n in 0..MAX_PEER_SERIES + 5 {
        m.sent(&format!("peer{n}"), "g", 10);
    }
    let text = m.render(&Snapshot::default()).unwrap();
    assert_eq!(
        value(&text, "lanspread_peer_sent_bytes_total{peer=\"other\"}"),
        Some(50.0)
    );
    let id = PeerId::try_from("cd".repeat(16)).unwrap();
    m.forget("peer0");
    m.sent(id.as_str(), "g", 7);
    m.observe(&EventKind::PeerLost {
        peer_id: id.clone(),
        addr: String::new(),
    });
    let text = m.render(&Snapshot::default()).unwrap();
    assert!(!text.contains("peer0\""), "a lost peer's series goes");
    assert!(!text.contains(id.as_str()));
    assert_eq!(
        value(&text, "lanspread_game_sent_bytes_total{game=\"g\"}"),
        Some(10.0 * (MAX_PEER_SERIES + 5) as f64 + 7.0)
    );
}
