//! S42: daemons in separate network namespaces joined by a bridge discover each other by
//! mDNS, without `connect`, and complete a download.

use std::time::Duration;

use lanspread_fixtures::GameSpec;
use lanspread_scenarios::{assert_same_tree, skip_privileged, NetLab, Node, NodeOptions};

/// A daemon with mDNS on in host `i` of `net`.
fn host(net: &NetLab, i: usize, name: &str, games: &std::path::Path) -> Node {
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
}

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
    let source = host(&net, 0, "source", gs.path());
    let client = host(&net, 1, "client", gc.path());
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

/// Advertises `_lanspread._udp` from the namespace `ns` as `id` at `ip:port`, until the
/// returned responder is dropped (its thread is made in that namespace).
fn forge(ns: &str, id: &str, ip: &str, port: u16) -> mdns_sd::ServiceDaemon {
    let (ns, id, ip) = (ns.to_owned(), id.to_owned(), ip.to_owned());
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        // SAFETY: setns on a descriptor `file` keeps open; it moves this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let responder = mdns_sd::ServiceDaemon::new().unwrap();
        let info = mdns_sd::ServiceInfo::new(
            "_lanspread._udp.local.",
            "forged",
            "forged.local.",
            ip.as_str(),
            port,
            &[("id", id.as_str())][..],
        )
        .unwrap();
        responder.register(info).unwrap();
        responder
    })
    .join()
    .unwrap()
}

#[test]
fn an_mdns_record_naming_a_linked_peers_address_under_another_id_leaves_the_link_alone() {
    if skip_privileged("an_mdns_record_naming_a_linked_peers_address_leaves_the_link") {
        return;
    }
    let net = NetLab::new(3);
    let (gs, gc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = host(&net, 0, "source", gs.path());
    let client = host(&net, 1, "client", gc.path());
    client.wait_event("peer-connected", |e| {
        e["peer_id"] == source.peer_id.as_str()
    });
    // Anyone on the LAN: a record that points at the source under an id no one has.
    // Before, the client dialled it, reached the source and replaced its live link with
    // the new one, again at every such record.
    let fake = lanspread_transfer::Identity::ephemeral().unwrap();
    let fake = fake.peer_id();
    let port: u16 = source.addr.rsplit(':').next().unwrap().parse().unwrap();
    let responder = forge(net.host(2).0, fake.as_str(), net.host(0).1, port);
    let tried = format!("mDNS peer {} not reachable there", fake.short());
    lanspread_scenarios::wait_for("the forged record to be tried", || {
        let log = client.log();
        (log.contains(&tried) || log.contains("replaces its link")).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !client.log().contains("replaces its link"),
        "{}",
        client.log_tail()
    );
    assert!(
        client.events_named("peer-lost").is_empty(),
        "the link was replaced: {:?}",
        client.events_named("peer-lost")
    );
    assert_eq!(client.events_named("peer-connected").len(), 1);
    assert_eq!(client.peer_ids(), vec![source.peer_id.clone()]);
    let _ = responder.shutdown();
}
