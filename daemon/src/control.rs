//! The Unix control socket: JSON-line requests in, JSON-line replies out.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::access::{caller_of, Policy};
use crate::api::{Reply, Request};
use crate::links::dial;
use crate::state::Shared;
use crate::DaemonError;

/// Longest accepted request line.
const MAX_REQUEST: usize = 64 * 1024;

/// Binds the control socket. An existing socket file is replaced only when no daemon
/// answers on it; the socket gets mode 0660.
pub async fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| DaemonError::io(dir, e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| DaemonError::io(dir, e))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(DaemonError::SocketInUse(path.to_path_buf()));
        }
        debug!(path = %path.display(), "removing stale control socket");
        std::fs::remove_file(path).map_err(|e| DaemonError::io(path, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| DaemonError::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| DaemonError::io(path, e))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| DaemonError::io(path, e))?;
    }
    Ok(listener)
}

/// Serves clients until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: UnixListener, policy: Policy) {
    let policy = Arc::new(policy);
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(client(shared.clone(), stream, policy.clone()));
                }
                Err(e) => {
                    warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = crate::state::until_shutdown(&mut shutdown) => break,
        }
    }
}

/// Removes the socket file if it is still ours.
pub fn unlink(path: &PathBuf) {
    let _ = std::fs::remove_file(path);
}

async fn client(shared: Arc<Shared>, stream: UnixStream, policy: Arc<Policy>) {
    let caller = match stream.peer_cred() {
        Ok(c) => caller_of(c.uid(), c.gid(), c.pid()),
        Err(e) => {
            warn!("control client without credentials: {e}");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64 * 64)).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                debug!("control client: {e}");
                return;
            }
        };
        if line.len() > MAX_REQUEST {
            let _ = send(&mut write, &error("request too long")).await;
            return;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                if send(&mut write, &error(&format!("bad request: {e}")))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
        };
        if let Err(why) = policy.check(&caller, &request) {
            warn!(uid = caller.uid, "{why}");
            if send(&mut write, &error(&why)).await.is_err() {
                return;
            }
            continue;
        }
        if matches!(request, Request::Events) {
            stream_events(&shared, &mut write).await;
            return;
        }
        if let Request::Download {
            game,
            install,
            detach,
        } = request
        {
            download(&shared, &mut write, &game, install, detach).await;
            return;
        }
        let reply = handle(&shared, request).await;
        if send(&mut write, &reply).await.is_err() {
            return;
        }
    }
}

fn error(message: &str) -> Reply {
    Reply::Error {
        message: message.to_owned(),
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle(shared: &Arc<Shared>, request: Request) -> Reply {
    match request {
        Request::Status => Reply::Status(shared.status()),
        Request::ListGames => Reply::Games(shared.games()),
        Request::ListPeers => Reply::Peers(shared.peers()),
        Request::Connect { addr } => match resolve(&addr).await {
            Ok(sa) => match dial(shared, sa).await {
                Ok(info) => Reply::Connected(info),
                Err(e) => error(&e),
            },
            Err(e) => error(&e),
        },
        Request::WaitPeers { count, timeout_ms } => {
            let mut rx = shared.peer_count.subscribe();
            let wait = async move { rx.wait_for(|n| *n >= count).await.is_ok() };
            match tokio::time::timeout(Duration::from_millis(timeout_ms), wait).await {
                Ok(true) => Reply::Peers(shared.peers()),
                _ => error(&format!(
                    "timed out after {timeout_ms} ms waiting for {count} peers ({} connected)",
                    *shared.peer_count.borrow()
                )),
            }
        }
        Request::Install { game } => match shared.catalog.get(&game) {
            Some(id) => match crate::install::install(shared, &id, false).await {
                Ok(event) => Reply::Event(event),
                Err(e) => error(&e),
            },
            None => error(&format!("game {game} is not in the local catalog")),
        },
        Request::Uninstall { game } => match shared.catalog.get(&game) {
            Some(id) => match crate::install::uninstall(shared, &id).await {
                Ok(event) => Reply::Event(event),
                Err(e) => error(&e),
            },
            None => error(&format!("game {game} is not in the local catalog")),
        },
        Request::Shutdown => {
            shared.shutdown.send_replace(true);
            Reply::Ok
        }
        Request::Events | Request::Download { .. } => error("this request is a stream"),
    }
}

async fn resolve(addr: &str) -> Result<std::net::SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("invalid peer address {addr:?}: {e} (expected host:port)"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))
}

async fn stream_events(shared: &Shared, write: &mut tokio::net::unix::OwnedWriteHalf) {
    let mut rx = shared.events.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = crate::state::until_shutdown(&mut shutdown) => return,
        };
        match event {
            Ok(e) => {
                if send(write, &Reply::Event(e)).await.is_err() {
                    return;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!("events client lagged; {n} events dropped");
            }
            Err(_) => return,
        }
    }
}

/// Starts a download; unless detached, streams the game's events until the terminal one.
async fn download(
    shared: &Arc<Shared>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    game: &str,
    install: bool,
    detach: bool,
) {
    // Subscribe before starting, so no event of this download is missed.
    let mut rx = shared.events.subscribe();
    let (id, sources) = match crate::download::begin(shared, game) {
        Ok(x) => x,
        Err(e) => {
            let _ = send(write, &error(&e)).await;
            return;
        }
    };
    let task = tokio::spawn(crate::download::run_with_install(
        shared.clone(),
        id.clone(),
        sources,
        install,
    ));
    if detach {
        let _ = send(write, &Reply::Started { game_id: id }).await;
        return;
    }
    loop {
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!("download client lagged; {n} events dropped");
                continue;
            }
            Err(_) => return,
        };
        if event.kind.game_id() != Some(&id) {
            continue;
        }
        let terminal = is_terminal(&event.kind, install);
        if send(write, &Reply::Event(event)).await.is_err() {
            // The client left; the download goes on.
            return;
        }
        if terminal {
            break;
        }
    }
    let _ = task.await;
}

/// The event that ends a `download` stream.
fn is_terminal(kind: &crate::api::EventKind, install: bool) -> bool {
    use crate::api::EventKind as K;
    match kind {
        K::DownloadFailed { .. } | K::InstallFinished { .. } | K::InstallFailed { .. } => true,
        K::DownloadFinished { .. } => !install,
        _ => false,
    }
}
