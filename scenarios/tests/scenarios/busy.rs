//! A busy source is slow, not dead (issue 18): several clients download one game at once
//! from one server whose link is rate-limited (`tc`), each host in its own network
//! namespace. Every client gets a small share of the link, and the streams of one client
//! are drained one after another, so a queued chunk waits far longer than the stall
//! timeout without a byte; judging the source per stream used to drop it and fail every
//! download ("no eligible source left"). Sizes are scaled down with the stall timeout
//! (4 s here against 30 s by default; a queued 8 MiB chunk waits about 7 s).

use lanspread_fixtures::{Content, GameSpec};
use lanspread_scenarios::{assert_same_tree, skip_privileged, NetLab, Node, NodeOptions};

const CLIENTS: usize = 4;

#[test]
fn busy_server_on_a_slow_link_serves_every_client_to_the_end() {
    if skip_privileged("busy_server_on_a_slow_link_serves_every_client_to_the_end") {
        return;
    }
    let net = NetLab::new(CLIENTS + 1);
    net.limit(0, "40mbit");
    let gs = tempfile::tempdir().unwrap();
    let mut spec = GameSpec::new("ggoo", "20250301");
    for i in 0..4u64 {
        spec = spec.file(
            &format!("ggoo.part{i}.eti"),
            0o644,
            Content::Random {
                seed: 1800 + i,
                size: 8 << 20,
            },
        );
    }
    spec.write(gs.path()).unwrap();
    let host = |i: usize, name: &str, games: &std::path::Path| {
        Node::start_with(
            name,
            games,
            NodeOptions {
                listen: Some(format!("{}:0", net.host(i).1)),
                netns: Some(net.host(i).0.to_owned()),
                env: vec![("LANSPREAD_STALL_TIMEOUT_MS".into(), "4000".into())],
                ..Default::default()
            },
        )
    };
    let server = host(0, "server", gs.path());
    let dirs: Vec<_> = (0..CLIENTS).map(|_| tempfile::tempdir().unwrap()).collect();
    let clients: Vec<Node> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| host(i + 1, &format!("client{i}"), d.path()))
        .collect();
    for c in &clients {
        c.connect(&server);
    }
    let outs: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = clients
            .iter()
            .map(|c| s.spawn(|| c.download("ggoo", &["--no-install"])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, out) in clients.iter().zip(&outs) {
        assert_eq!(
            out.code,
            0,
            "{}: {out:?}{}{}",
            c.name,
            c.log_tail(),
            server.log_tail()
        );
    }
    for d in &dirs {
        assert_same_tree(&gs.path().join("ggoo"), &d.path().join("ggoo"));
    }
    // The server kept answering while it was busy.
    assert_eq!(server.json(&["status"])["peer_id"], server.peer_id.as_str());
}
