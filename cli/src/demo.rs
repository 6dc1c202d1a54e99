//! `lanspread demo`: two daemons on loopback, in this process (started by the [`Host`]), in
//! a temp dir. A source
//! holds a generated 1 GiB game (`LANSPREAD_DEMO_BYTES` overrides the size); an empty
//! client connects and downloads it with the progress bar, the copy's SHA-256 is checked
//! against the source, the throughput is printed, and everything is removed again.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use lanspread_control::{Client, ErrorKind, Request};

use crate::{output, progress, CliError, DemoPeer, Host, HostedDaemon};

const DEFAULT_BYTES: u64 = 1 << 30;
const GAME: &str = "cod5";

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::failed(ErrorKind::Internal, format!("demo: {e}"))
}

async fn start<H: Host>(
    host: &H,
    dir: &Path,
    name: &str,
    games: &Path,
) -> Result<H::Daemon, CliError> {
    let peer = DemoPeer {
        games: games.to_path_buf(),
        state: dir.join(format!("{name}-state")),
        socket: dir.join(format!("{name}.sock")),
    };
    host.start_daemon(peer).await.map_err(|f| failed(f.message))
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

/// The demo's working dir, removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("lanspread-demo-{}-{nanos:09}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the demo game: `version.ini` and one archive-sized file of pseudo-random
/// (incompressible) bytes, from a xorshift64* stream — the demo needs bytes, not the
/// fixture lab.
fn write_game(games: &Path, bytes: u64) -> std::io::Result<()> {
    let root = games.join(GAME);
    std::fs::create_dir_all(&root)?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(root.join(format!("{GAME}.eti")))?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 4 << 20];
    let mut left = bytes;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            word.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::write(root.join("version.ini"), "20250101\n")
}

/// Runs the demo. With `json`, its one document says what it did (the peers, the
/// download's `download-finished` event, the copy's SHA-256) and nothing else is printed.
pub async fn run(host: &impl Host, json: bool) -> Result<(), CliError> {
    let say = |line: String| {
        if !json {
            outln!("{line}");
        }
    };
    let bytes = std::env::var("LANSPREAD_DEMO_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_BYTES);
    let tmp = TempDir::new().map_err(failed)?;
    let dir = tmp.0.clone();
    let (source_games, client_games) = (dir.join("source-games"), dir.join("client-games"));
    std::fs::create_dir_all(&client_games).map_err(failed)?;
    say(format!(
        "generating a {} game in {} ...",
        output::bytes(bytes),
        dir.display()
    ));
    let sg = source_games.clone();
    tokio::task::spawn_blocking(move || write_game(&sg, bytes))
        .await
        .map_err(failed)?
        .map_err(failed)?;

    let source = start(host, &dir, "source", &source_games).await?;
    let client = start(host, &dir, "client", &client_games).await?;
    let peers = [&source, &client]
        .map(|p| serde_json::json!({"peer_id": p.peer_id(), "addr": p.addr().to_string()}));
    say(format!("source {} on {}", source.peer_id(), source.addr()));
    say(format!("client {} on {}", client.peer_id(), client.addr()));
    let result = async {
        let mut c = Client::connect(&dir.join("client.sock")).await?;
        c.request(&Request::Connect {
            addr: source.addr().to_string(),
        })
        .await?;
        let mut c = Client::connect(&dir.join("client.sock")).await?;
        let finished = if json {
            progress::download_quietly(&mut c, GAME, false).await?
        } else {
            progress::download(&mut c, GAME, false, false, false).await?;
            serde_json::Value::Null
        };
        let rel = format!("{GAME}/{GAME}.eti");
        let (a, b) = (source_games.join(&rel), client_games.join(&rel));
        let (ha, hb) = tokio::task::spawn_blocking(move || (sha256(&a), sha256(&b)))
            .await
            .map_err(failed)?;
        let (ha, hb) = (ha.map_err(failed)?, hb.map_err(failed)?);
        if ha != hb {
            return Err(failed(format!("SHA-256 mismatch: source {ha}, copy {hb}")));
        }
        say(format!("SHA-256 of the copy matches the source: {ha}"));
        Ok::<_, CliError>((finished, ha))
    }
    .await;
    client.stop().await;
    source.stop().await;
    drop(tmp);
    let (finished, sha256) = result?;
    if json {
        crate::print(
            true,
            &serde_json::json!({
                "game": GAME,
                "bytes": bytes,
                "source": peers[0],
                "client": peers[1],
                "download": finished,
                "sha256": sha256,
                "sha256_matches": true,
            }),
            String::new,
        );
    } else {
        outln!("done; the temp dir is removed");
    }
    Ok(())
}
