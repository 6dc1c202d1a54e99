//! Daemon start-up and shutdown. [`Daemon::start`] binds everything and returns a handle,
//! so the binary, the demo and tests run the same code in-process or as a process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use lanspread_catalog::{scan_games_dir, Catalog};
use lanspread_proto::{close_code, PeerId};
use lanspread_transfer::{
    data_client_config, make_data_endpoint, make_endpoint, Identity, TransportTuning,
};
use quinn::VarInt;
use tracing::{info, warn};

use crate::access::{resolve_group, Policy};
use crate::config::DaemonConfig;
use crate::directory::Directory;
use crate::events::EventBus;
use crate::handshake::LocalPeer;
use crate::handshake_slots::HandshakeSlots;
use crate::limit::RateLimit;
use crate::lock::DaemonLocks;
use crate::resources::Transfers;
use crate::state::Shared;
use crate::threads::TransferThreads;
use crate::writer::Writer;
use crate::{control, links, mdns, watch, DaemonError};
use lanspread_control::api::EventKind;

/// How often the games dir is rescanned as a whole without inotify.
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);
/// How often it is rescanned as a backup of inotify (overflow, watch limits).
const RESCAN_BACKUP: Duration = Duration::from_secs(30);

async fn periodic_rescan(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        shared.rescan().await;
    }
}

/// A running daemon.
pub struct Daemon {
    shared: Arc<Shared>,
    socket: control::SocketFile,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _watcher: Option<watch::TreeWatch>,
    _mdns: Option<mdns::Mdns>,
    _locks: DaemonLocks,
}

impl Daemon {
    /// Opens the events file, scans the games dir, loads the identity, binds the control
    /// socket and the QUIC endpoint, then starts serving.
    pub async fn start(config: DaemonConfig) -> Result<Self, DaemonError> {
        // First of all: a second daemon on the same dirs must refuse before it touches
        // anything (events file, sweep, identity, socket).
        // (Files of the daemon's own that peers could download: refused first, touching
        // nothing.)
        for (file, what) in [
            (&config.events, "--events"),
            (&config.secret_file, "--secret-file"),
        ] {
            if let Some(file) = file {
                crate::lock::not_in_a_game(file, &config.games, what)?;
            }
        }
        let locks = DaemonLocks::acquire(&config.state, &config.games)?;
        raise_open_files_limit();
        let events = EventBus::new(config.events.as_deref())?;
        events.emit(EventKind::DaemonStarted {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
        });
        let catalog = match &config.catalog {
            Some(p) => Catalog::load(p)?,
            None => Catalog::builtin(),
        };
        let games = config.games.clone();
        let _ = tokio::task::spawn_blocking(move || crate::recover::sweep(&games)).await;
        let library = scan_games_dir(&config.games, &catalog)?;
        let identity = Identity::load_or_create(&config.state)?;
        let secret = match &config.secret_file {
            Some(p) => Some(lanspread_transfer::load_secret(p)?),
            None => None,
        };
        let (group, policy) = access_policy(&config)?;
        // Before the control socket, so a metrics address that cannot be bound leaves no
        // socket file behind.
        let metrics = match config.metrics_listen {
            Some(addr) => Some(crate::metrics_http::bind(addr).await?),
            None => None,
        };
        let (listener, socket) = control::bind(&config.socket, group).await?;
        // A QUIC address that cannot be bound leaves no socket file behind either (a CLI
        // would find it and be refused, as by a daemon that died).
        let quic = transfers(&identity, &config).and_then(|net| {
            let listen = net
                .endpoint
                .local_addr()
                .map_err(|e| DaemonError::io("quic socket", e))?;
            Ok((net, listen))
        });
        let (net, listen) = quic.inspect_err(|_| socket.unlink())?;
        let me = LocalPeer::new(identity.peer_id().clone(), listen, secret);
        events.observe(net.metrics.clone());
        let peers = Directory::new(config.max_links, config.max_links_per_address);
        let shared = Shared::new(
            me,
            net,
            peers,
            config.games.clone(),
            catalog,
            events,
            library,
        );
        info!(peer_id = %shared.me.id, %listen, threads = config.transfer_threads, games = %config.games.display(), socket = %config.socket.display(), "lanspreadd ready");
        shared.events.emit(EventKind::LocalPeerReady {
            peer_id: shared.me.id.clone(),
            addr: listen.to_string(),
        });
        shared.events.emit(EventKind::LocalLibraryChanged {
            games: shared.local_states(),
        });
        let (mut tasks, watcher, mdns) = spawn_tasks(&shared, listener, policy, &config);
        if let Some(m) = metrics {
            if let Ok(addr) = m.local_addr() {
                let _ = shared.metrics_addr.set(addr);
            }
            tasks.push(tokio::spawn(crate::metrics_http::serve(shared.clone(), m)));
        }
        Ok(Self {
            shared,
            socket,
            tasks,
            _watcher: watcher,
            _mdns: mdns,
            _locks: locks,
        })
    }

    /// Starts from a command line (and the config file it names), which `reload` and
    /// [`Daemon::reload`] read again.
    pub async fn start_from(source: crate::config::ConfigSource) -> Result<Self, DaemonError> {
        let config = source.load()?;
        let daemon = Self::start(config.clone()).await?;
        *daemon.shared.reload.lock().await = Some(crate::config::Reloadable::new(source, config));
        Ok(daemon)
    }

    /// Reads the config again and applies what can change live (`SIGHUP`).
    pub async fn reload(
        &self,
    ) -> Result<lanspread_control::api::ReloadInfo, lanspread_control::Failure> {
        crate::reload::reload(&self.shared).await
    }

    /// Our peer id.
    pub fn peer_id(&self) -> &PeerId {
        &self.shared.me.id
    }

    /// Our bound QUIC address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.me.listen
    }

    /// Resolves when shutdown was requested (by `shutdown` or [`Daemon::request_shutdown`]).
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shared.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Asks the daemon to stop.
    pub fn request_shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Whether links or downloads are still ending after a shutdown request.
    fn winding_down(&self) -> bool {
        self.shared.peers.any_link()
            || self
                .shared
                .lock()
                .operations
                .iter()
                .any(|(_, op)| op.kind == lanspread_peer::OpKind::Download)
    }

    /// Says goodbye to every peer, closes the endpoint and removes the control socket.
    pub async fn stop(self) {
        self.request_shutdown();
        // Link tasks send goodbyes and remove themselves, downloads end with their terminal
        // event; wait for them, boundedly (an install's extraction is not interrupted).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline && self.winding_down() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.shared
            .net
            .endpoint
            .close(VarInt::from_u32(close_code::GOODBYE), b"goodbye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.net.endpoint.wait_idle())
            .await;
        for t in self.tasks {
            t.abort();
        }
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.net.threads.stop()).await;
        self.socket.unlink();
        info!("lanspreadd stopped");
        self.shared.events.close(Duration::from_secs(1));
    }
}

/// The control socket's group and the access policy, from the group names in the config.
fn access_policy(config: &DaemonConfig) -> Result<(Option<libc::gid_t>, Policy), DaemonError> {
    let group = match &config.group {
        Some(g) => Some(resolve_group("group", g)?),
        None => None,
    };
    let admin = match &config.admin_group {
        Some(g) => Some((g.clone(), resolve_group("admin_group", g)?)),
        None => None,
    };
    let policy = Policy {
        // SAFETY: geteuid has no preconditions.
        daemon_uid: unsafe { libc::geteuid() },
        admin,
    };
    Ok((group, policy))
}

/// The QUIC listener, the transfer threads with their data endpoints, the limits, the
/// writer, the serve slots and the hash cache.
fn transfers(identity: &Identity, config: &DaemonConfig) -> Result<Transfers, DaemonError> {
    let tuning = TransportTuning {
        max_udp_payload: config.max_udp_payload,
        ..TransportTuning::default()
    };
    let endpoint = make_endpoint(identity, config.listen, &tuning)?;
    // A download's N data connections to one source share one connection window.
    let data_client = data_client_config(identity, &tuning.per_lane(config.transfer_threads))?;
    let listen = endpoint
        .local_addr()
        .map_err(|e| DaemonError::io("quic socket", e))?;
    // Data endpoints bind the listen address's IP on a free port (dial only).
    let data_bind = SocketAddr::new(listen.ip(), 0);
    let threads = TransferThreads::start(config.transfer_threads, || {
        make_data_endpoint(data_bind, &tuning, data_client.clone())
    })?;
    Ok(Transfers {
        endpoint,
        data_client,
        threads,
        tuning,
        upload_limit: RateLimit::new(config.max_upload_mib_s),
        download_limit: RateLimit::new(config.max_download_mib_s),
        writer: Writer::new(),
        serve_slots: tokio::sync::Semaphore::new(crate::serve::CHUNK_STREAMS_TOTAL),
        hashes: Arc::new(lanspread_catalog::HashCache::new()),
        upload_turns: std::sync::Mutex::new(lanspread_peer::UploadTurns::new(
            crate::config::env_usize("LANSPREAD_SWARM_UPLOADS", lanspread_peer::SWARM_UPLOADS),
        )),
        askers: Default::default(),
        seeds: Arc::default(),
        metrics: Arc::default(),
        handshakes: HandshakeSlots::new(lanspread_peer::Handshakes::new(
            lanspread_peer::MAX_HANDSHAKES,
            crate::config::env_usize(
                "LANSPREAD_HANDSHAKES_PER_ADDRESS",
                lanspread_peer::MAX_HANDSHAKES_PER_ADDRESS,
            )
            .max(1),
        )),
        manifest_frames: crate::manifest_frames::ManifestFrames::default(),
        manifest_builds: crate::builds::Builds::default(),
    })
}

/// The daemon's tasks: accept loop, control server, redial manager, mDNS, the watcher
/// with its backup rescan, the static peers.
fn spawn_tasks(
    shared: &Arc<Shared>,
    listener: tokio::net::UnixListener,
    policy: Policy,
    config: &DaemonConfig,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    Option<watch::TreeWatch>,
    Option<mdns::Mdns>,
) {
    let mut tasks = vec![
        tokio::spawn(links::accept_loop(shared.clone())),
        tokio::spawn(control::serve(shared.clone(), listener, policy)),
    ];
    if let Some(rx) = shared
        .peers
        .redial_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        tasks.push(tokio::spawn(links::redial_manager(shared.clone(), rx)));
    }
    if let Some(rx) = shared
        .peers
        .pex_dial_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        tasks.push(tokio::spawn(links::pex_dialler(shared.clone(), rx)));
    }
    let mdns = if config.mdns {
        match mdns::start(shared.clone(), &config.mdns_interfaces) {
            Ok(m) => Some(m),
            Err(e) => {
                warn!("{e}; discovery off (use `lanspread connect` or `peers = [...]`)");
                None
            }
        }
    } else {
        None
    };
    let watcher = watch::start(shared.clone());
    let interval = if watcher.is_some() {
        RESCAN_BACKUP
    } else {
        RESCAN_INTERVAL
    };
    tasks.push(tokio::spawn(periodic_rescan(shared.clone(), interval)));
    tasks.push(crate::index::spawn(shared));
    for peer in config.peers.iter().cloned() {
        links::static_peers::start(shared, peer);
    }
    (tasks, watcher, mdns)
}

/// Raises the soft limit on open files to the hard one (capped by the kernel's `nr_open`):
/// links, served files and the writer's descriptor cache (a quarter of the limit in files, see
/// `writer::files`: a game of thousands of small files is written fastest when they all
/// stay open) scale with it, and the soft limit of a login shell, or of a unit without
/// `LimitNOFILE`, is 1,024. Failing to raise it only leaves the limit as it was.
fn raise_open_files_limit() {
    match lanspread_catalog::raise_open_files_limit() {
        Ok((was, now)) if now > was => {
            tracing::debug!(from = was, to = now, "open files limit raised");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(
            "cannot raise the open files limit ({e}): a download of many files reopens them as it writes"
        ),
    }
}
