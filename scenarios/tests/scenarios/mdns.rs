//! S42: daemons in separate network namespaces joined by a bridge discover each other by
//! mDNS, without `connect`, and complete a download.

use lanspread_fixtures::GameSpec;
use lanspread_scenarios::{assert_same_tree, skip_privileged, NetLab, Node, NodeOptions};

#[test]
fn s42_mdns_across_namespaces() {
    if skip_privileged("s42_mdns_across_namespaces") {
        return;
    }
    // Declared first so it is dropped last, after the daemons.
    let net = NetLab::new(2);
    let (gs, gc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    GameSpec::new("ggoo", "20250301")
        .with_archive(42, &[3 << 20])
        .write(gs.path())
        .unwrap();
    let host = |i: usize, name: &str, games: &std::path::Path| {
        Node::start_with(
            name,
            games,
            NodeOptions {
                listen: Some("0.0.0.0:0".into()),
                netns: Some(net.host(i).0.to_owned()),
                mdns: true,
                ..Default::default()
            },
        )
    };
    let source = host(0, "source", gs.path());
    let client = host(1, "client", gc.path());
    let found = client.wait_event("peer-connected", |e| {
        e["peer_id"] == source.peer_id.as_str()
    });
    assert!(
        found["addr"].as_str().unwrap().starts_with(net.host(0).1),
        "{found}"
    );
    source.wait_event("peer-connected", |e| {
        e["peer_id"] == client.peer_id.as_str()
    });
    assert_eq!(
        client.peer_ids(),
        vec![source.peer_id.clone()],
        "one link, no self"
    );
    client.download_ok("ggoo", &["--no-install"]);
    assert_same_tree(&gs.path().join("ggoo"), &gc.path().join("ggoo"));
}
