//! Library, peers, catalog: S1, S2, S3, S10, S11, S27, S28 (e2e part), S30.

use lanspread_fixtures::{GameSpec, ALPHA, BRAVO};
use lanspread_scenarios::{lab, wait_for, Node, NodeOptions};

use crate::util::{local_ids, remote_rows, root_size, Rows};

fn alpha() -> Node {
    Node::start("alpha", &lab().join(ALPHA))
}

fn bravo() -> Node {
    Node::start("bravo", &lab().join(BRAVO))
}

fn empty(name: &str) -> (Node, tempfile::TempDir) {
    let games = tempfile::tempdir().unwrap();
    (Node::start(name, games.path()), games)
}

/// The rows an empty client sees when connected to alpha and bravo.
fn lab_rows() -> Rows {
    let a = lab().join(ALPHA);
    let b = lab().join(BRAVO);
    let row = |v: &str, n: u64, root: std::path::PathBuf| (v.to_owned(), n, root_size(&root));
    Rows::from([
        (
            "alienswarm".into(),
            row("20250101", 1, a.join("alienswarm")),
        ),
        ("bf1942".into(), row("20250115", 1, a.join("bf1942"))),
        ("bfbc2".into(), row("20250201", 1, b.join("bfbc2"))),
        ("cnc4".into(), row("20250101", 1, b.join("cnc4"))),
        ("cnctw".into(), row("20250110", 1, b.join("cnctw"))),
        ("ggoo".into(), row("20250301", 2, a.join("ggoo"))),
    ])
}

#[test]
fn s01_startup_scan() {
    let a = alpha();
    a.wait_event("local-peer-ready", |e| e["peer_id"] == a.peer_id.as_str());
    let lib = a.wait_event("local-library-changed", |_| true);
    let mut listed: Vec<_> = lib["games"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ["alienswarm", "bf1942", "ggoo"]);
    let games = a.json(&["list-games"]);
    assert_eq!(local_ids(&games), ["alienswarm", "bf1942", "ggoo"]);
    for g in games["local"].as_array().unwrap() {
        assert_eq!(g["downloaded"], true, "{g}");
        assert_eq!(g["installed"], false, "{g}");
        assert_eq!(g["availability"], "Ready", "{g}");
        let root = lab().join(ALPHA).join(g["id"].as_str().unwrap());
        assert_eq!(g["size"].as_u64().unwrap(), root_size(&root), "{g}");
    }
    assert_eq!(games["local"][0]["version"], "20250101");
    assert!(games["remote"].as_array().unwrap().is_empty());
    // The events stream starts with daemon-started.
    assert_eq!(a.events()[0]["event"], "daemon-started");
}

#[test]
fn s01_not_ready_and_foreign_roots() {
    let games = tempfile::tempdir().unwrap();
    GameSpec::new("cnc4", "20250101")
        .with_archive(1, &[1000])
        .write(games.path())
        .unwrap();
    let mut broken = GameSpec::new("bf1942", "2025").with_archive(2, &[10]);
    broken.write(games.path()).unwrap();
    broken.id = "not-in-catalog".into();
    broken.write(games.path()).unwrap();
    let n = Node::start("mixed", games.path());
    let v = n.json(&["list-games"]);
    assert_eq!(local_ids(&v), ["bf1942", "cnc4"]);
    assert_eq!(v["local"][0]["availability"], "NotReady");
    assert_eq!(v["local"][0]["downloaded"], false);
    assert_eq!(v["local"][1]["availability"], "Ready");
    // A peer only sees the ready root.
    let (c, _g) = empty("client");
    c.connect(&n);
    let rows = remote_rows(&c.json(&["list-games"]));
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["cnc4"]);
}

#[test]
fn s02_direct_connect() {
    let a = alpha();
    let b = bravo();
    let reply = a.connect(&b);
    assert_eq!(reply["peer_id"], b.peer_id.as_str());
    b.wait_event("remote-library-changed", |e| {
        e["peer_id"] == a.peer_id.as_str()
    });
    assert_eq!(a.peer_ids(), vec![b.peer_id.clone()]);
    assert_eq!(b.peer_ids(), vec![a.peer_id.clone()]);
    let seen_by_a: Vec<_> = remote_rows(&a.json(&["list-games"])).into_keys().collect();
    assert_eq!(seen_by_a, ["bfbc2", "cnc4", "cnctw", "ggoo"]);
    let seen_by_b: Vec<_> = remote_rows(&b.json(&["list-games"])).into_keys().collect();
    assert_eq!(seen_by_b, ["alienswarm", "bf1942", "ggoo"]);
    // Both sides emitted peer-connected for each other.
    a.wait_event("peer-connected", |e| e["peer_id"] == b.peer_id.as_str());
    b.wait_event("peer-connected", |e| {
        e["peer_id"] == a.peer_id.as_str() && e["addr"] == a.addr.as_str()
    });
    // Human output lists the other peer.
    let human = a.cli(&["list-peers"]);
    assert_eq!(human.code, 0);
    assert!(
        human.stdout.contains(&b.peer_id) && human.stdout.contains(&b.addr),
        "{}",
        human.stdout
    );
}

#[test]
fn s03_aggregation() {
    let a = alpha();
    let b = bravo();
    let (c, _g) = empty("client");
    c.connect(&a);
    c.connect(&b);
    let games = c.json(&["list-games"]);
    assert_eq!(remote_rows(&games), lab_rows());
    assert!(games["local"].as_array().unwrap().is_empty());
    // Human table: one line per game plus headers.
    let human = c.cli(&["list-games"]);
    assert_eq!(human.code, 0);
    assert_eq!(
        human
            .stdout
            .lines()
            .filter(|l| l.starts_with("ggoo"))
            .count(),
        1,
        "{}",
        human.stdout
    );
    assert!(human
        .stdout
        .lines()
        .any(|l| l.starts_with("ggoo") && l.contains("20250301") && l.contains(" 2 ")));
}

#[test]
fn s10_goodbye() {
    let a = alpha();
    let mut b = bravo();
    a.connect(&b);
    assert_eq!(remote_rows(&a.json(&["list-games"])).len(), 4);
    let bravo_id = b.peer_id.clone();
    b.shutdown();
    let lost = a.wait_event("peer-lost", |e| e["peer_id"] == bravo_id.as_str());
    assert_eq!(lost["addr"], b.addr.as_str());
    assert!(a.peer_ids().is_empty());
    assert!(
        remote_rows(&a.json(&["list-games"])).is_empty(),
        "bravo's games left alpha's list"
    );
    // SIGTERM is a clean exit too.
    let mut a = a;
    assert_eq!(a.terminate(), Some(0));
}

#[test]
fn s11_same_identity_new_port() {
    let a = alpha();
    let mut b = bravo();
    a.connect(&b);
    let (old_id, old_addr) = (b.peer_id.clone(), b.addr.clone());
    b.shutdown();
    a.wait_event("peer-lost", |e| e["peer_id"] == old_id.as_str());
    b.restart();
    assert_eq!(b.peer_id, old_id, "same state dir, same peer id");
    assert_ne!(b.addr, old_addr, "port 0 picked a new port");
    a.connect(&b);
    let peers = a.json(&["list-peers"]);
    let peers = peers.as_array().unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0]["peer_id"], old_id.as_str());
    assert_eq!(peers[0]["addr"], b.addr.as_str());
    assert_eq!(peers[0]["games"].as_array().unwrap().len(), 4);
}

#[test]
fn s27_self_connect() {
    let a = alpha();
    let out = a.cli(&["connect", &a.addr]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("cannot connect peer to itself"),
        "{}",
        out.stderr
    );
    assert!(a.peer_ids().is_empty());
    assert_eq!(a.json(&["status"])["peer_id"], a.peer_id.as_str());
}

#[test]
fn s27_self_connect_through_another_address() {
    // Bound to the wildcard, the daemon is reachable at 127.0.0.2 too; only the proven
    // peer id can tell that the dial reached itself.
    let games = tempfile::tempdir().unwrap();
    let a = Node::start_with(
        "wild",
        games.path(),
        NodeOptions {
            listen: Some("0.0.0.0:0".into()),
            ..Default::default()
        },
    );
    let port = a.addr.rsplit(':').next().unwrap();
    let out = a.cli(&["connect", &format!("127.0.0.2:{port}")]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("cannot connect peer to itself"),
        "{}",
        out.stderr
    );
    assert!(a.peer_ids().is_empty());
    assert!(a.events_named("peer-connected").is_empty());
    assert_eq!(a.json(&["status"])["peers"], 0);
}

#[test]
fn s30_mesh() {
    let dirs: Vec<tempfile::TempDir> = (0..6).map(|_| tempfile::tempdir().unwrap()).collect();
    let specs: [&[(&str, &str, u64)]; 6] = [
        &[("ggoo", "20250301", 11), ("cnc4", "20250101", 12)],
        &[
            ("ggoo", "20250301", 11),
            ("cnc4", "20250201", 13),
            ("bf1942", "20250115", 14),
        ],
        &[("ggoo", "20250101", 15), ("cod5", "20250505", 16)],
        &[("cnc4", "20250201", 13), ("cod5", "20250505", 16)],
        &[("bf1942", "20250201", 17)],
        // The sixth peer has a newer ggoo itself: its own games never count as remote.
        &[("ggoo", "20260101", 18)],
    ];
    for (dir, games) in dirs.iter().zip(specs) {
        for (id, version, seed) in games {
            GameSpec::new(id, version)
                .with_archive(*seed, &[1000 + *seed * 100])
                .write(dir.path())
                .unwrap();
        }
    }
    let nodes: Vec<Node> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| Node::start(&format!("p{}", i + 1), d.path()))
        .collect();
    // The first five form a partial mesh among themselves.
    nodes[0].connect(&nodes[1]);
    nodes[1].connect(&nodes[2]);
    nodes[2].connect(&nodes[3]);
    nodes[3].connect(&nodes[4]);
    nodes[4].connect(&nodes[0]);
    let sixth = &nodes[5];
    for n in &nodes[..5] {
        sixth.connect(n);
    }
    let size = |peer: usize, id: &str| crate::util::root_size(&dirs[peer].path().join(id));
    let expected = Rows::from([
        ("bf1942".into(), ("20250201".into(), 2, size(4, "bf1942"))),
        ("cnc4".into(), ("20250201".into(), 3, size(1, "cnc4"))),
        ("cod5".into(), ("20250505".into(), 2, size(2, "cod5"))),
        ("ggoo".into(), ("20250301".into(), 3, size(0, "ggoo"))),
    ]);
    assert_eq!(remote_rows(&sixth.json(&["list-games"])), expected);
    let mut ids = sixth.peer_ids();
    ids.sort();
    let mut want: Vec<_> = nodes[..5].iter().map(|n| n.peer_id.clone()).collect();
    want.sort();
    assert_eq!(ids, want, "five peers, no self, no duplicates");
    // Each of the five sees the sixth exactly once, next to its mesh neighbours.
    for (i, n) in nodes[..5].iter().enumerate() {
        let peers = wait_for(
            &format!("p{} sees its neighbours and the sixth", i + 1),
            || {
                let p = n.peer_ids();
                (p.len() == 3).then_some(p)
            },
        );
        assert_eq!(peers.iter().filter(|p| **p == sixth.peer_id).count(), 1);
        assert!(!peers.contains(&n.peer_id));
    }
}

#[test]
fn dual_stack_listener_takes_ipv4_and_ipv6_peers() {
    let (g1, g2, g3) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let both = Node::start_with(
        "both",
        g1.path(),
        NodeOptions {
            listen: Some("[::]:0".into()),
            ..Default::default()
        },
    );
    let port = both.addr.rsplit(':').next().unwrap().to_owned();
    let v4 = Node::start("v4", g2.path());
    let v6 = Node::start_with(
        "v6",
        g3.path(),
        NodeOptions {
            listen: Some("[::1]:0".into()),
            ..Default::default()
        },
    );
    v4.json(&["connect", &format!("127.0.0.1:{port}")]);
    v6.json(&["connect", &format!("[::1]:{port}")]);
    let peers = both.json(&["list-peers"]);
    let mut addrs: Vec<_> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["addr"].as_str().unwrap().to_owned())
        .collect();
    addrs.sort();
    assert_eq!(
        addrs,
        [v4.addr.clone(), v6.addr.clone()],
        "IPv4 peers are listed as IPv4, not mapped"
    );
}
