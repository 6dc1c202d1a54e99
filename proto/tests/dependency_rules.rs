//! Dependency rules, checked on the real dependency graph with `cargo tree`: neither
//! `lanspread-proto` nor `lanspread-peer` may pull in an IO stack (async runtime, QUIC,
//! TLS, sockets, io_uring) through any normal dependency, and the daemon that runs on file
//! servers carries no fixture generator and no `tempfile`; the CLI and the control protocol
//! carry neither the daemon nor a transport.

use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "tokio-uring",
    "io-uring",
    "quinn",
    "quinn-proto",
    "quinn-udp",
    "rustls",
    "socket2",
    "mio",
    "lanspread-transfer",
];

fn normal_deps(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .args(["--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let names: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        names.iter().any(|n| n == package),
        "{package} not in its own tree:\n{text}"
    );
    names
}

fn assert_no_io(package: &str) {
    let deps = normal_deps(package);
    let bad: Vec<&String> = deps
        .iter()
        .filter(|d| FORBIDDEN.contains(&d.as_str()))
        .collect();
    assert!(
        bad.is_empty(),
        "{package} pulls in {bad:?}; the sans-IO core must not (see ARCHITECTURE.md)"
    );
}

#[test]
fn the_protocol_crate_pulls_in_no_io_stack() {
    assert_no_io("lanspread-proto");
}

#[test]
fn the_peer_core_pulls_in_no_io_stack() {
    assert_no_io("lanspread-peer");
}

#[test]
fn the_check_sees_an_io_stack_where_there_is_one() {
    // The transport does pull in quinn and tokio: the check would catch a core that did.
    let deps = normal_deps("lanspread-transfer");
    for needed in ["quinn", "tokio", "rustls", "socket2"] {
        assert!(
            deps.iter().any(|d| d == needed),
            "{needed} missing: {deps:?}"
        );
    }
}

#[test]
fn the_daemon_carries_no_fixture_generator_or_tempfile() {
    let deps = normal_deps("lanspread-daemon");
    for unwanted in ["lanspread-fixtures", "tempfile"] {
        assert!(
            !deps.iter().any(|d| d == unwanted),
            "lanspread-daemon's normal dependencies include {unwanted}"
        );
    }
}

#[test]
fn the_cli_speaks_the_control_protocol_without_the_daemon_or_a_transport() {
    // The CLI crate reaches the daemon only through its Host trait (the `lanspread`
    // binary plugs the daemon in for `demo`); the control crate knows neither side.
    for package in ["lanspread-cli", "lanspread-control"] {
        let deps = normal_deps(package);
        for unwanted in [
            "lanspread-daemon",
            "lanspread-transfer",
            "lanspread-peer",
            "quinn",
            "rustls",
            "tokio-uring",
        ] {
            assert!(
                !deps.iter().any(|d| d == unwanted),
                "{package}'s normal dependencies include {unwanted}"
            );
        }
    }
    assert!(normal_deps("lanspread-cli")
        .iter()
        .any(|d| d == "lanspread-control"));
}
