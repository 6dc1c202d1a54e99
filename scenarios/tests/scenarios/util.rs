//! Helpers shared by the scenario modules.

use std::collections::BTreeMap;
use std::path::Path;

use lanspread_scenarios::manifest;
use serde_json::Value;

/// Expected `list-games` remote rows: id → (version, peer_count, size).
pub type Rows = BTreeMap<String, (String, u64, u64)>;

/// The remote rows of a `list-games --json` document, asserting each id appears once.
pub fn remote_rows(games: &Value) -> Rows {
    let mut rows = Rows::new();
    for r in games["remote"].as_array().expect("remote array") {
        let id = r["id"].as_str().expect("id").to_owned();
        let row = (
            r["eti_game_version"].as_str().expect("version").to_owned(),
            r["peer_count"].as_u64().expect("peer_count"),
            r["size"].as_u64().expect("size"),
        );
        assert!(
            rows.insert(id.clone(), row).is_none(),
            "{id} listed twice: {games}"
        );
    }
    rows
}

/// The size a game root advertises: every payload file (version.ini included).
pub fn root_size(root: &Path) -> u64 {
    manifest(root).values().map(|(size, _)| size).sum()
}

/// The ids of the local rows.
pub fn local_ids(games: &Value) -> Vec<String> {
    games["local"]
        .as_array()
        .expect("local array")
        .iter()
        .map(|g| g["id"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A raw protocol client: a fresh identity and endpoint, connected to `addr` (QUIC + TLS
/// only; no hello sent yet).
pub async fn raw_client(
    addr: &str,
) -> (
    lanspread_transfer::Identity,
    quinn::Endpoint,
    quinn::Connection,
) {
    use lanspread_transfer::{connect, make_endpoint, Identity, TransportTuning};
    let id = Identity::ephemeral().unwrap();
    let ep = make_endpoint(
        &id,
        "127.0.0.1:0".parse().unwrap(),
        &TransportTuning::default(),
    )
    .unwrap();
    let (conn, _) = connect(
        &ep,
        addr.parse().unwrap(),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    (id, ep, conn)
}

/// Starts a daemon with extra flags.
pub fn node_with_args(name: &str, games: &Path, args: &[&str]) -> lanspread_scenarios::Node {
    lanspread_scenarios::Node::start_with(
        name,
        games,
        lanspread_scenarios::NodeOptions {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        },
    )
}

/// A current-thread tokio runtime for a test's raw protocol client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until `game` is listed Ready in `n`'s local library.
pub fn wait_ready(n: &lanspread_scenarios::Node, game: &str) {
    n.wait_games(&format!("{game} ready"), |g| {
        g["local"].as_array().is_some_and(|l| {
            l.iter()
                .any(|r| r["id"] == game && r["availability"] == "Ready")
        })
    });
}
