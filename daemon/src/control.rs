//! The Unix control socket: JSON-line requests in, JSON-line replies out.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::access::{caller_of, Policy};
use crate::control_slots::{admit, hung_up};
use crate::event_lines::{download, send, stream_events};
use crate::links::dial;
use crate::state::Shared;
use crate::DaemonError;
use lanspread_control::api::{ErrorKind, EventKind, Reply, Request};
use lanspread_control::Failure;

/// Longest accepted request line.
const MAX_REQUEST: usize = 64 * 1024;

/// Binds the control socket. A missing folder is created (mode 0755) only when its
/// parent exists, as the defaults' `lanspread/` under `/run` or `$XDG_RUNTIME_DIR`. An
/// existing socket file is replaced only when no daemon answers on it; the socket gets
/// mode 0660.
pub async fn bind(
    path: &Path,
    group: Option<u32>,
) -> Result<(UnixListener, SocketFile), DaemonError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            match std::fs::create_dir(dir) {
                // Made meanwhile (another daemon starting): fine.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                other => other.map_err(|source| DaemonError::SocketFolder {
                    dir: dir.to_path_buf(),
                    source,
                })?,
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| DaemonError::io(dir, e))?;
        }
    }
    let taken = |why: String| DaemonError::SocketPathTaken {
        path: path.to_path_buf(),
        why,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DaemonError::io(path, e)),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(taken("it exists and is not a socket".into()))
        }
        // Only a socket no one listens on is stale; one that answers EAGAIN (its backlog
        // full) or EACCES may be a live daemon's.
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => return Err(DaemonError::SocketInUse(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                debug!(path = %path.display(), "removing stale control socket");
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(DaemonError::io(path, e))
                    }
                    _ => {}
                }
            }
            // Removed meanwhile: free.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(taken(format!("a socket that cannot be told stale ({e})"))),
        },
    }
    let listener = UnixListener::bind(path).map_err(|e| DaemonError::io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| DaemonError::io(path, e))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| DaemonError::io(path, e))?;
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| DaemonError::io(path, e))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((listener, file))
}

/// The control socket's file, as bound: removed at stop only while it is still the one
/// this daemon made (a daemon started since on the same path keeps its own).
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Removes the socket file if it is still ours.
    pub fn unlink(&self) {
        if std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Once a request line has begun, the rest of it must arrive within this (a client that
/// sends half a line and stops holds no connection for long).
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that begins no request for this long is closed: idle connections would
/// otherwise hold the socket's slots for good (the CLI sends its request at once).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves clients until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: UnixListener, policy: Policy) {
    let policy = Arc::new(policy);
    let open = Arc::new(AtomicUsize::new(0));
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(client(shared.clone(), stream, policy.clone(), open.clone()));
                }
                Err(e) => {
                    // Out of descriptors (EMFILE): the connections open now hold them;
                    // pause rather than spin.
                    warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = crate::state::until_shutdown(&mut shutdown) => break,
        }
    }
}

async fn client(
    shared: Arc<Shared>,
    stream: UnixStream,
    policy: Arc<Policy>,
    open: Arc<AtomicUsize>,
) {
    let caller = match stream.peer_cred() {
        Ok(c) => caller_of(c.uid(), c.gid(), c.pid()),
        Err(e) => {
            warn!("control client without credentials: {e}");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let _slot = match admit(&policy, &caller, &open) {
        Ok(slot) => slot,
        Err(busy) => {
            let _ = send(&mut write, &failed(busy)).await;
            return;
        }
    };
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let request = match next_request(&mut read, &mut line).await {
            Next::Request(r) => r,
            Next::Bad(reply) => {
                if send(&mut write, &reply).await.is_err() {
                    return;
                }
                continue;
            }
            Next::End(last) => {
                if let Some(reply) = last {
                    let _ = send(&mut write, &reply).await;
                }
                return;
            }
        };
        if let Err(why) = policy.check(&caller, &request) {
            warn!(uid = caller.uid, "{why}");
            if send(&mut write, &failed(why)).await.is_err() {
                return;
            }
            continue;
        }
        // The waits below end when the client hangs up (Ctrl-C): its slot is not held
        // until the next event, the download's end or the wait's timeout; a line is cut
        // short only for a client no longer there to read it.
        if matches!(request, Request::Events {}) {
            let _ = unless_hung_up(&mut read, stream_events(&shared, &mut write)).await;
            return;
        }
        if let Request::Download {
            game,
            install,
            detach,
        } = request
        {
            // A download goes on whether its client waits or not.
            let waited = download(&shared, &mut write, &game, install, detach);
            let _ = unless_hung_up(&mut read, waited).await;
            return;
        }
        // (An operation runs as a task of its own: the wait ends, the operation does not.)
        let waits = matches!(
            request,
            Request::WaitPeers { .. }
                | Request::Install { .. }
                | Request::Uninstall { .. }
                | Request::Remove { .. }
        );
        let reply = if waits {
            match unless_hung_up(&mut read, handle(&shared, request)).await {
                Some(reply) => reply,
                None => return,
            }
        } else {
            handle(&shared, request).await
        };
        if send(&mut write, &reply).await.is_err() {
            return;
        }
    }
}

/// What the next line of a control connection holds.
enum Next {
    /// A request.
    Request(Request),
    /// Not a request; answer this and read on.
    Bad(Reply),
    /// The connection ends, after this answer if there is one.
    End(Option<Reply>),
}

async fn next_request(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> Next {
    line.clear();
    match read_request(read, line).await {
        Ok(true) => {}
        Ok(false) => return Next::End(None),
        Err(LineError::TooLong) => {
            return Next::End(Some(error(ErrorKind::BadRequest, "request too long")))
        }
        Err(LineError::Io(e)) => {
            debug!("control client: {e}");
            return Next::End(None);
        }
    }
    match serde_json::from_slice(line) {
        Ok(r) => Next::Request(r),
        Err(e) => Next::Bad(error(ErrorKind::BadRequest, &format!("bad request: {e}"))),
    }
}

enum LineError {
    TooLong,
    Io(std::io::Error),
}

/// Reads one request line (without its newline) into `line`, never holding more than
/// [`MAX_REQUEST`] bytes of it: a longer line is refused, whatever the connection sent
/// before. `Ok(false)`: the client closed the connection between requests.
async fn read_request(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
) -> Result<bool, LineError> {
    // A request must begin within IDLE_TIMEOUT (a client may keep its connection between
    // requests, not for good); once one has begun it must end within LINE_TIMEOUT.
    let idle = tokio::time::Instant::now() + IDLE_TIMEOUT;
    let mut deadline = None;
    loop {
        let (until, what) = match deadline {
            None => (idle, "no request for 60 s"),
            Some(d) => (d, "request line not finished in time"),
        };
        let avail = match tokio::time::timeout_at(until, read.fill_buf()).await {
            Ok(r) => r.map_err(LineError::Io)?,
            Err(_) => {
                return Err(LineError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    what,
                )))
            }
        };
        if avail.is_empty() {
            // End of stream: a last line without a newline still counts.
            return Ok(!line.is_empty());
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if line.len() + take > MAX_REQUEST {
            return Err(LineError::TooLong);
        }
        line.extend_from_slice(&avail[..take]);
        read.consume(take + usize::from(done));
        if done {
            return Ok(true);
        }
        deadline.get_or_insert_with(|| tokio::time::Instant::now() + LINE_TIMEOUT);
    }
}

fn error(kind: ErrorKind, message: &str) -> Reply {
    Reply::Error {
        message: message.to_owned(),
        kind,
    }
}

fn failed(f: Failure) -> Reply {
    Reply::Error {
        message: f.message,
        kind: f.kind,
    }
}

/// `wait`'s outcome, or `None` once the client hung up first (`biased`: `wait` is polled
/// first, so a download is begun even for a client already gone).
async fn unless_hung_up<T>(
    read: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    wait: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        done = wait => Some(done),
        () = hung_up(read) => {
            debug!("a waiting control client hung up");
            None
        }
    }
}

/// Runs an operation (install, uninstall, remove) as a task of its own and waits for it:
/// a client that hangs up ends the wait, never the operation half-way.
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, Failure>> + Send + 'static,
) -> Result<T, Failure> {
    tokio::spawn(op).await.unwrap_or_else(|e| {
        Err(Failure::internal(format_args!(
            "operation task failed: {e}"
        )))
    })
}

async fn handle(shared: &Arc<Shared>, request: Request) -> Reply {
    match request {
        Request::Status {} => Reply::Status(shared.status()),
        Request::ListGames {} => Reply::Games(shared.games()),
        Request::ListPeers {} => Reply::Peers(shared.peers.infos()),
        Request::Connect { addr } => match resolve(&addr).await {
            Ok(sa) => match dial(shared, sa).await {
                Ok(info) => Reply::Connected(info),
                Err(e) => failed(e),
            },
            Err(e) => failed(e),
        },
        Request::WaitPeers { count, timeout_ms } => {
            let mut rx = shared.peers.watch_count();
            let wait = async move { rx.wait_for(|n| *n >= count).await.is_ok() };
            let mut shutdown = shared.shutdown.subscribe();
            let waited = tokio::select! {
                waited = tokio::time::timeout(Duration::from_millis(timeout_ms), wait) => waited,
                () = crate::state::until_shutdown(&mut shutdown) => {
                    return error(ErrorKind::Shutdown, "the daemon is shutting down")
                }
            };
            match waited {
                Ok(true) => Reply::Peers(shared.peers.infos()),
                _ => error(
                    ErrorKind::Timeout,
                    &format!(
                        "timed out after {timeout_ms} ms waiting for {count} peers ({} connected)",
                        shared.peers.linked_count()
                    ),
                ),
            }
        }
        Request::Install { game } => match shared.catalog().get(&game) {
            Some(id) => {
                let shared = shared.clone();
                match detached(async move { crate::install::install(&shared, &id, false).await })
                    .await
                {
                    Ok(event) => Reply::Event(event),
                    Err(e) => failed(e),
                }
            }
            None => not_in_catalog(&game),
        },
        Request::Uninstall { game } => match shared.catalog().get(&game) {
            Some(id) => {
                let shared = shared.clone();
                match detached(async move { crate::install::uninstall(&shared, &id).await }).await {
                    Ok(event) => Reply::Event(event),
                    Err(e) => failed(e),
                }
            }
            None => not_in_catalog(&game),
        },
        // By id, not by catalog: a download of a game a reload dropped from the catalog
        // can still be stopped.
        Request::Cancel { game } => match lanspread_catalog::GameId::new(&game) {
            Ok(id) if shared.lock().operations.get(&id).is_some() => cancel(shared, &id).await,
            _ => match shared.catalog().get(&game) {
                Some(id) => cancel(shared, &id).await,
                None => not_in_catalog(&game),
            },
        },
        Request::Remove { game } => match shared.catalog().get(&game) {
            Some(id) => {
                let shared = shared.clone();
                match detached(async move { crate::install::remove(&shared, &id).await }).await {
                    Ok(()) => Reply::Ok,
                    Err(e) => failed(e),
                }
            }
            None => not_in_catalog(&game),
        },
        Request::Limit {
            upload_mib_s,
            download_mib_s,
        } => match set_limits(shared, upload_mib_s, download_mib_s) {
            Ok(limits) => Reply::Limits(limits),
            Err(message) => Reply::Error {
                message,
                kind: ErrorKind::BadRequest,
            },
        },
        Request::Reload {} => match crate::reload::reload(shared).await {
            Ok(info) => Reply::Reloaded(info),
            Err(f) => Reply::Error {
                message: f.message,
                kind: f.kind,
            },
        },
        Request::Shutdown {} => {
            shared.shutdown.send_replace(true);
            Reply::Ok
        }
        Request::Events {} | Request::Download { .. } => {
            error(ErrorKind::BadRequest, "this request is a stream")
        }
    }
}

/// Cancels the running download or install of `id` and answers once it has ended (its
/// `download-failed` or `install-failed` emitted), boundedly.
async fn cancel(shared: &Arc<Shared>, id: &lanspread_catalog::GameId) -> Reply {
    use lanspread_peer::OpKind;
    // Subscribed before the stop is asked for: the operation's terminal event says how it
    // ended.
    let mut events = shared.events.subscribe();
    let running = shared.lock().operations.get(id);
    let (asked, still): (bool, fn(&Shared, &lanspread_catalog::GameId) -> bool) = match running {
        Some(OpKind::Download) => (
            crate::download::cancel(shared, id),
            crate::download::cancellable,
        ),
        Some(OpKind::Install) => (
            crate::install::cancel(shared, id),
            crate::install::cancellable,
        ),
        Some(kind) => {
            return error(
                ErrorKind::Busy,
                &format!(
                    "game {id} has a running {}, which cannot be cancelled; it ends by itself",
                    kind.as_str()
                ),
            )
        }
        None => {
            return error(
                ErrorKind::NotFound,
                &format!("no download or install of game {id} is running"),
            )
        }
    };
    let what = running.map_or("operation", |k| k.as_str());
    if !asked {
        return error(
            ErrorKind::NotFound,
            &format!("no {what} of game {id} is running"),
        );
    }
    // The operation drops its registration after its terminal event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while still(shared, id) {
        if tokio::time::Instant::now() >= deadline {
            return error(
                ErrorKind::Busy,
                &format!("the {what} of {id} is still stopping"),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Asked too late (a download committing, an install renaming into place): it ended
    // as it would have, and the user must not believe it was stopped. The first terminal
    // event of the cancelled kind decides (a download's install may begin right after).
    let download = running == Some(OpKind::Download);
    let finished = loop {
        match events.try_recv() {
            Ok(e) if e.kind.game_id() == Some(id) => match e.kind {
                EventKind::DownloadFinished { .. } if download => break true,
                EventKind::DownloadFailed { .. } if download => break false,
                EventKind::InstallFinished { .. } if !download => break true,
                EventKind::InstallFailed { .. } if !download => break false,
                _ => {}
            },
            Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
            // Not seen (lost to a lag): it stopped, as far as we know.
            Err(_) => break false,
        }
    };
    if finished {
        return error(
            ErrorKind::NotFound,
            &format!("too late: the {what} of {id} had finished; nothing was cancelled"),
        );
    }
    Reply::Ok
}

async fn resolve(addr: &str) -> Result<std::net::SocketAddr, Failure> {
    crate::config::check_host_port(addr).map_err(|e| e.context("invalid peer address"))?;
    let mut addrs = tokio::net::lookup_host(addr).await.map_err(|e| {
        Failure::new(
            ErrorKind::ConnectFailed,
            format!("invalid peer address {addr:?}: {e} (expected host:port)"),
        )
    })?;
    addrs.next().ok_or_else(|| {
        Failure::new(
            ErrorKind::ConnectFailed,
            format!("{addr} resolves to no address"),
        )
    })
}

fn not_in_catalog(game: &str) -> Reply {
    error(
        ErrorKind::NotInCatalog,
        &format!("game {game} is not in the local catalog"),
    )
}

/// `limit`: checks both new values first (nothing changes when one is bad), then applies
/// them; `0` lifts a limit. Returns the limits now.
fn set_limits(
    shared: &Shared,
    upload: Option<f64>,
    download: Option<f64>,
) -> Result<lanspread_control::api::Limits, String> {
    let check = |name: &str, v: Option<f64>| -> Result<Option<Option<f64>>, String> {
        match v {
            None => Ok(None),
            Some(0.0) => Ok(Some(None)),
            Some(r) => lanspread_control::check_limit(name, r).map(|r| Some(Some(r))),
        }
    };
    let upload = check("upload limit", upload)?;
    let download = check("download limit", download)?;
    if let Some(rate) = upload {
        shared.net.upload_limit.set(rate);
    }
    if let Some(rate) = download {
        shared.net.download_limit.set(rate);
    }
    if upload.is_some() || download.is_some() {
        tracing::info!(
            upload = ?shared.net.upload_limit.mib_per_s(),
            download = ?shared.net.download_limit.mib_per_s(),
            "bandwidth limits changed"
        );
    }
    Ok(shared.status().limits)
}
