//! The bench's veth link (`compare --veth MTU`): the raw quinn and TCP references and S37's
//! two daemons all cross a veth pair between two network namespaces, which are gone
//! afterwards. Needs root (CI is root) and the release daemons, which
//! `cargo test --workspace --release` builds.

use lanspread_bench::{app, raw_quinn, tcp::tcp_copy, Fs, Net};

#[test]
fn veth_link_carries_every_case() {
    if lanspread_scenarios::skip_privileged("veth_link_carries_every_case") {
        return;
    }
    let bytes = 8u64 << 20;
    let net = Net::veth(1500).expect("veth pair");
    assert_eq!(net.name(), "veth MTU 1500");
    let names = net.namespaces();
    assert_eq!(names.len(), 2);
    let rx = |side| {
        net.rx_bytes(side)
            .expect("rx bytes")
            .expect("a veth counts")
    };

    let before = rx(0);
    raw_quinn(bytes, &net).expect("raw quinn over veth");
    assert!(
        rx(0) - before >= bytes,
        "the raw reference did not cross veth0"
    );

    let before = rx(0);
    tcp_copy(bytes, Fs::Tmpfs, &net).expect("TCP over veth");
    assert!(
        rx(0) - before >= bytes,
        "the TCP reference did not cross veth0"
    );

    let before = rx(0);
    let s37 = app::s37(2 * bytes, Fs::Tmpfs, Some(2), &net).expect("S37 over veth");
    assert!(s37.mib_s > 0.0 && s37.cpu_s > 0.0, "{s37:?}");
    assert!(rx(0) - before >= 2 * bytes, "S37 did not cross veth0");

    drop(net);
    for n in names {
        assert!(
            !std::path::Path::new("/run/netns").join(&n).exists(),
            "namespace {n} left behind"
        );
    }
    assert_eq!(Net::loopback().rx_bytes(0).expect("loopback"), None);
}
