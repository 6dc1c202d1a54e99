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
pub fn rt() -> Rt {
    Rt(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap())
}

/// The longest a test's raw protocol client runs: a daemon that never answers fails the
/// test with where it stood instead of stalling the run.
pub const RAW_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// A runtime whose every `block_on` ends within [`RAW_LIMIT`].
pub struct Rt(tokio::runtime::Runtime);

impl Rt {
    /// Runs `f` to its end, or panics after [`RAW_LIMIT`].
    #[track_caller]
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        let caller = std::panic::Location::caller();
        self.0
            .block_on(async { tokio::time::timeout(RAW_LIMIT, f).await })
            .unwrap_or_else(|_| panic!("the raw client at {caller} did not end in {RAW_LIMIT:?}"))
    }

    /// Enters the runtime (for code that needs one around it, not in it).
    pub fn enter(&self) -> tokio::runtime::EnterGuard<'_> {
        self.0.enter()
    }
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

/// Writes a root of `id` at version 20250101 with `files` sparse files of `mib` MiB each
/// (`ID.e00`, `ID.e01`, …).
pub fn sparse_game(dir: &Path, id: &str, files: usize, mib: u64) {
    let mut spec = lanspread_fixtures::GameSpec::new(id, "20250101");
    for i in 0..files {
        spec = spec.file(
            &format!("{id}.e{i:02}"),
            0o644,
            lanspread_fixtures::Content::Sparse { size: mib << 20 },
        );
    }
    spec.write(dir).expect("write the game");
}

/// Milliseconds since the epoch, as events stamp them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The bytes of `game` verified from `since_ms` on and their rate in MiB/s up to the
/// download's end (`done`: its `download-finished` event).
pub fn rate_since(n: &lanspread_scenarios::Node, since_ms: u64, done: &Value) -> (u64, f64) {
    let game = &done["game_id"];
    let after: u64 = n
        .events_named("download-chunk-finished")
        .iter()
        .filter(|e| &e["game_id"] == game && e["ts_ms"].as_u64().unwrap_or(0) >= since_ms)
        .map(|e| e["len"].as_u64().unwrap_or(0))
        .sum();
    let end = done["ts_ms"].as_u64().expect("ts_ms");
    let span_s = end.saturating_sub(since_ms).max(1) as f64 / 1000.0;
    (after, after as f64 / (1u64 << 20) as f64 / span_s)
}
