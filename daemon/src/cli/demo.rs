//! `lanspread demo`: two daemons on loopback, in this process, in a temp dir, each with
//! one half of the fixture lab; they connect and each lists what the other offers.
//! Everything is removed afterwards.

use std::path::Path;

use super::{output, CliError, Client};
use crate::api::{Reply, Request};
use crate::{Daemon, DaemonConfig};

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(format!("demo: {e}"))
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
        peers: Vec::new(),
    };
    Daemon::start(cfg).await.map_err(failed)
}

/// Runs the demo.
pub async fn run() -> Result<(), CliError> {
    let tmp = tempfile::Builder::new()
        .prefix("lanspread-demo-")
        .tempdir()
        .map_err(failed)?;
    let dir = tmp.path();
    println!("writing the fixture lab into {} ...", dir.display());
    lanspread_fixtures::lab(dir).map_err(failed)?;
    let alpha = start(dir, "alpha", &dir.join(lanspread_fixtures::ALPHA)).await?;
    let bravo = start(dir, "bravo", &dir.join(lanspread_fixtures::BRAVO)).await?;
    println!("alpha {} on {}", alpha.peer_id(), alpha.addr());
    println!("bravo {} on {}", bravo.peer_id(), bravo.addr());

    let result = async {
        let mut a = Client::connect(&dir.join("alpha.sock")).await?;
        let reply = a
            .request(&Request::Connect {
                addr: bravo.addr().to_string(),
            })
            .await?;
        if let Reply::Connected(p) = reply {
            println!(
                "alpha connected to bravo ({} games offered)\n",
                p.games.len()
            );
        }
        if let Reply::Games(g) = a.request(&Request::ListGames).await? {
            println!("alpha's view:\n{}\n", output::games(&g));
        }
        Ok::<_, CliError>(())
    }
    .await;
    alpha.stop().await;
    bravo.stop().await;
    drop(tmp);
    result?;
    println!("done; the temp dir is removed");
    Ok(())
}
