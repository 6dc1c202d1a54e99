//! `lanspread demo`: two daemons on loopback, in this process, in a temp dir. A source
//! holds a generated 1 GiB game (`LANSPREAD_DEMO_BYTES` overrides the size); an empty
//! client connects and downloads it with the progress bar, the copy's SHA-256 is checked
//! against the source, the throughput is printed, and everything is removed again.

use std::io::Read;
use std::path::Path;

use lanspread_fixtures::{Content, GameSpec};
use sha2::{Digest, Sha256};

use super::{output, progress, CliError, Client};
use crate::api::Request;
use crate::{Daemon, DaemonConfig};

const DEFAULT_BYTES: u64 = 1 << 30;
const GAME: &str = "cod5";

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::failed(crate::ErrorKind::Internal, format!("demo: {e}"))
}

async fn start(dir: &Path, name: &str, games: &Path) -> Result<Daemon, CliError> {
    let cfg = DaemonConfig {
        games: games.to_path_buf(),
        state: dir.join(format!("{name}-state")),
        listen: "127.0.0.1:0".parse().map_err(failed)?,
        socket: dir.join(format!("{name}.sock")),
        catalog: None,
        events: None,
        mdns: false,
        mdns_interfaces: Vec::new(),
        peers: Vec::new(),
        secret_file: None,
        group: None,
        admin_group: None,
        max_upload_mib_s: None,
        max_download_mib_s: None,
        transfer_threads: crate::config::default_transfer_threads(),
    };
    Daemon::start(cfg).await.map_err(failed)
}

fn sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// Runs the demo.
pub async fn run() -> Result<(), CliError> {
    let bytes = std::env::var("LANSPREAD_DEMO_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_BYTES);
    let tmp = tempfile::Builder::new()
        .prefix("lanspread-demo-")
        .tempdir()
        .map_err(failed)?;
    let dir = tmp.path().to_path_buf();
    let (source_games, client_games) = (dir.join("source-games"), dir.join("client-games"));
    std::fs::create_dir_all(&client_games).map_err(failed)?;
    outln!(
        "generating a {} game in {} ...",
        output::bytes(bytes),
        dir.display()
    );
    let spec = GameSpec::new(GAME, "20250101").file(
        &format!("{GAME}.eti"),
        0o644,
        Content::Random {
            seed: 1,
            size: bytes,
        },
    );
    let sg = source_games.clone();
    tokio::task::spawn_blocking(move || spec.write(&sg))
        .await
        .map_err(failed)?
        .map_err(failed)?;

    let source = start(&dir, "source", &source_games).await?;
    let client = start(&dir, "client", &client_games).await?;
    outln!("source {} on {}", source.peer_id(), source.addr());
    outln!("client {} on {}", client.peer_id(), client.addr());
    let result = async {
        let mut c = Client::connect(&dir.join("client.sock")).await?;
        c.request(&Request::Connect {
            addr: source.addr().to_string(),
        })
        .await?;
        let mut c = Client::connect(&dir.join("client.sock")).await?;
        progress::download(&mut c, GAME, false, false, false).await?;
        let rel = format!("{GAME}/{GAME}.eti");
        let (a, b) = (source_games.join(&rel), client_games.join(&rel));
        let (ha, hb) = tokio::task::spawn_blocking(move || (sha256(&a), sha256(&b)))
            .await
            .map_err(failed)?;
        let (ha, hb) = (ha.map_err(failed)?, hb.map_err(failed)?);
        if ha != hb {
            return Err(failed(format!("SHA-256 mismatch: source {ha}, copy {hb}")));
        }
        outln!("SHA-256 of the copy matches the source: {ha}");
        Ok::<_, CliError>(())
    }
    .await;
    client.stop().await;
    source.stop().await;
    drop(tmp);
    result?;
    outln!("done; the temp dir is removed");
    Ok(())
}
