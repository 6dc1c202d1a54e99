//! Daemon settings: command-line flags over an optional TOML config file.

mod source;

pub use source::{ConfigSource, Reloadable};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use lanspread_control::{ErrorKind, Failure};

use crate::DaemonError;

/// Config file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/lanspread/lanspreadd.toml";
/// Default QUIC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:41741";

/// The config file, in `--help` and the man page.
const CONFIG_FILE: &str = "Config file: a TOML file (--config; default /etc/lanspread/lanspreadd.toml \
when present) holds the same settings under the flag names with _ for - (games, state, listen, socket, \
catalog, events, mdns = false, mdns_interface, secret_file, max_upload_mib_s, max_links, ...) plus \
peers = [\"host:port\", ...], static peers dialled at start and kept linked. Flags win over the file; \
unknown keys are errors.

SIGHUP, `systemctl reload` or `lanspread reload` reads it again: the bandwidth limits, static peers, \
catalog, LAN secret, max_links and max_links_per_address change live; other settings wait for a restart (said in the log \
and the reply). A bad file fails the reload and changes nothing.";

/// `lanspreadd` flags.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "lanspreadd",
    version,
    about = "lanspread daemon: shares a games directory with LAN peers over QUIC",
    after_help = CONFIG_FILE
)]
pub struct DaemonArgs {
    /// Games directory (one folder per game id).
    #[arg(long, value_name = "DIR")]
    pub games: Option<PathBuf>,
    /// State directory (identity key, daemon state).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// QUIC listen address (UDP); port 0 picks a free port [default: 0.0.0.0:41741].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Control socket path, mode 0660 [default: $LANSPREAD_SOCKET, $RUNTIME_DIRECTORY/lanspread.sock (systemd), /run/lanspread/lanspread.sock (root), $XDG_RUNTIME_DIR/lanspread/lanspread.sock, /tmp/lanspread-UID/lanspread.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Catalog file replacing the built-in game ids.
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    /// Also append every event as a JSON line to PATH (`-` = stdout).
    #[arg(long, value_name = "PATH|-")]
    pub events: Option<PathBuf>,
    /// Do not announce or browse with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Use mDNS only on this interface (repeatable; default: all).
    #[arg(long = "mdns-interface", value_name = "NAME")]
    pub mdns_interfaces: Vec<String>,
    /// TOML config file [default: /etc/lanspread/lanspreadd.toml when present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// LAN secret: only peers holding the same secret may connect.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Group that may open the control socket (read-only use unless also admin).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Group whose members may make changes (download, install, connect, shutdown).
    #[arg(long, value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// Upload limit in MiB/s.
    #[arg(long, value_name = "N")]
    pub max_upload_mib_s: Option<f64>,
    /// Download limit in MiB/s.
    #[arg(long, value_name = "N")]
    pub max_download_mib_s: Option<f64>,
    /// Threads that drive QUIC connections, 1..=64; a download opens one data connection
    /// per thread to each source [default: one per core, at most 16].
    #[arg(long, value_name = "N")]
    pub transfer_threads: Option<usize>,
    /// Peer exchange dials the peers linked peers tell of while this daemon has fewer
    /// links than this, and peers holding part of a game it downloads up to 16 more; 0
    /// turns it off (connect, static peers and mDNS still link) [default: 64].
    #[arg(long, value_name = "N")]
    pub max_links: Option<usize>,
    /// Links one address may hold: a new peer identity from an address holding this many
    /// is refused (a daemon behind NAT shares its address with its neighbours); 0: no cap
    /// [default: 16].
    #[arg(long, value_name = "N")]
    pub max_links_per_address: Option<usize>,
    /// Largest UDP payload QUIC's path MTU discovery tries, 1200..=65527: 8952 on a LAN
    /// whose hosts and switches all carry 9000-byte jumbo frames, set on every daemon (a
    /// peer accepts at most its own bound) [default: 1452, a 1500-byte MTU].
    #[arg(long, value_name = "BYTES")]
    pub max_udp_payload: Option<u16>,
    /// Serve Prometheus metrics over HTTP at ADDR (`/metrics`); a loopback address unless
    /// --metrics-allow-remote [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Let --metrics-listen be an address other hosts can reach (the metrics name this
    /// daemon's peers and games).
    #[arg(long)]
    pub metrics_allow_remote: bool,
}

/// The config file: the flags' names with `_` for `-`, plus `peers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    games: Option<PathBuf>,
    state: Option<PathBuf>,
    listen: Option<SocketAddr>,
    socket: Option<PathBuf>,
    catalog: Option<PathBuf>,
    events: Option<PathBuf>,
    mdns: Option<bool>,
    /// (Also under the flag's name, `--mdns-interface` with `_`: the contract's rule.)
    #[serde(default, alias = "mdns_interface")]
    mdns_interfaces: Vec<String>,
    secret_file: Option<PathBuf>,
    group: Option<String>,
    admin_group: Option<String>,
    max_upload_mib_s: Option<f64>,
    max_download_mib_s: Option<f64>,
    transfer_threads: Option<usize>,
    max_links: Option<usize>,
    max_links_per_address: Option<usize>,
    max_udp_payload: Option<u16>,
    metrics_listen: Option<SocketAddr>,
    metrics_allow_remote: Option<bool>,
    #[serde(default)]
    peers: Vec<String>,
}

/// Resolved daemon settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Games directory.
    pub games: PathBuf,
    /// State directory.
    pub state: PathBuf,
    /// QUIC listen address.
    pub listen: SocketAddr,
    /// Control socket path.
    pub socket: PathBuf,
    /// Catalog file, if any.
    pub catalog: Option<PathBuf>,
    /// Events file, if any.
    pub events: Option<PathBuf>,
    /// mDNS on or off.
    pub mdns: bool,
    /// Interfaces mDNS may use (empty: all).
    pub mdns_interfaces: Vec<String>,
    /// Static peers dialled at start.
    pub peers: Vec<String>,
    /// LAN secret file, if any.
    pub secret_file: Option<PathBuf>,
    /// Group owning the control socket.
    pub group: Option<String>,
    /// Group allowed to make changes.
    pub admin_group: Option<String>,
    /// Upload limit to LAN peers, MiB/s.
    pub max_upload_mib_s: Option<f64>,
    /// Download limit from LAN peers, MiB/s.
    pub max_download_mib_s: Option<f64>,
    /// Threads driving QUIC connections (the main one included).
    pub transfer_threads: usize,
    /// Links up to which peer exchange dials learned peers (0: it dials none).
    pub max_links: usize,
    /// Links one address may hold (0: no cap).
    pub max_links_per_address: usize,
    /// Largest UDP payload MTU discovery tries.
    pub max_udp_payload: u16,
    /// Where Prometheus metrics are served over HTTP, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl DaemonConfig {
    /// A daemon on loopback with an ephemeral port, no mDNS, no static peers, no limits,
    /// no secret: the demo's.
    pub fn loopback(games: PathBuf, state: PathBuf, socket: PathBuf) -> Self {
        Self {
            games,
            state,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            socket,
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
            transfer_threads: default_transfer_threads(),
            max_links: lanspread_peer::DEFAULT_MAX_LINKS,
            max_links_per_address: lanspread_peer::DEFAULT_MAX_LINKS_PER_ADDRESS,
            max_udp_payload: lanspread_transfer::DEFAULT_MAX_UDP_PAYLOAD,
            metrics_listen: None,
        }
    }
}

/// Most transfer threads a daemon may be given.
pub const MAX_TRANSFER_THREADS: usize = 64;

/// Most transfer threads a daemon takes by default, however many cores it has.
pub const DEFAULT_TRANSFER_THREADS_CAP: usize = 16;

/// One per core, at most [`DEFAULT_TRANSFER_THREADS_CAP`]. Each thread dials from its own
/// socket, so a second thread costs no extra CPU per byte: on 2 cores, with both daemons
/// on the same box, S37 ran as fast with 2 as with 1; on a 16-core box S37 went 2.8, 3.0,
/// 3.3 GiB/s with 8, 12, 16 threads, each spending less CPU per byte (bench/README.md).
pub fn default_transfer_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.clamp(1, DEFAULT_TRANSFER_THREADS_CAP)
}

/// Checks the shape of a peer address, `host:port` (a name, an IPv4 address or a
/// bracketed IPv6 address), before any lookup: so a bad port is said as such, not as "does
/// not resolve".
pub fn check_host_port(addr: &str) -> Result<(), Failure> {
    let bad = |why: String| Err(Failure::new(ErrorKind::BadRequest, why));
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad(format!("{addr:?} is not host:port"));
    };
    if host.is_empty() || (host.contains(':') && !(host.starts_with('[') && host.ends_with(']'))) {
        return bad(format!(
            "{addr:?} is not host:port (an IPv6 address goes in brackets: [::1]:41741)"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => bad(format!(
            "{addr:?}: port {port:?} is not a number in 1..=65535"
        )),
    }
}

impl DaemonArgs {
    /// Merges flags over the config file (flags win) and checks the result.
    pub fn resolve(self) -> Result<DaemonConfig, DaemonError> {
        let file = match DaemonConfig::file(&self) {
            Some(p) => load_file(&p)?,
            None => FileConfig::default(),
        };
        let limit = |name: &str, v: Option<f64>| {
            v.map(|v| lanspread_control::check_limit(name, v).map_err(DaemonError::Config))
                .transpose()
        };
        let max_upload_mib_s = limit(
            "max_upload_mib_s",
            self.max_upload_mib_s.or(file.max_upload_mib_s),
        )?;
        let max_download_mib_s = limit(
            "max_download_mib_s",
            self.max_download_mib_s.or(file.max_download_mib_s),
        )?;
        let games = self.games.or(file.games).ok_or_else(|| {
            DaemonError::Config("missing --games DIR (or `games` in the config file)".into())
        })?;
        let state = self.state.or(file.state).ok_or_else(|| {
            DaemonError::Config("missing --state DIR (or `state` in the config file)".into())
        })?;
        let listen = match self.listen.or(file.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|e| DaemonError::Config(format!("default listen address: {e}")))?,
        };
        let transfer_threads = match self.transfer_threads.or(file.transfer_threads) {
            None => default_transfer_threads(),
            Some(n @ 1..=MAX_TRANSFER_THREADS) => n,
            Some(n) => {
                return Err(DaemonError::Config(format!(
                    "transfer_threads must be 1..={MAX_TRANSFER_THREADS}, got {n}"
                )))
            }
        };
        let max_udp_payload = match self.max_udp_payload.or(file.max_udp_payload) {
            None => lanspread_transfer::DEFAULT_MAX_UDP_PAYLOAD,
            Some(n @ 1200..=65_527) => n,
            Some(n) => {
                return Err(DaemonError::Config(format!(
                    "max_udp_payload must be 1200..=65527 bytes, got {n}"
                )))
            }
        };
        let metrics_listen = self.metrics_listen.or(file.metrics_listen);
        let remote_ok = self.metrics_allow_remote || file.metrics_allow_remote.unwrap_or(false);
        if let Some(addr) = metrics_listen.filter(|a| !a.ip().is_loopback() && !remote_ok) {
            return Err(DaemonError::Config(format!(
                "metrics_listen {addr} is not a loopback address: the metrics name this daemon's peers and games, so serving them to the network needs --metrics-allow-remote (metrics_allow_remote = true)"
            )));
        }
        let socket = self
            .socket
            .or(file.socket)
            .unwrap_or_else(lanspread_control::socket_path_from_env);
        Ok(DaemonConfig {
            games,
            state,
            listen,
            socket,
            catalog: self.catalog.or(file.catalog),
            events: self.events.or(file.events),
            mdns: !self.no_mdns && file.mdns.unwrap_or(true),
            mdns_interfaces: if self.mdns_interfaces.is_empty() {
                file.mdns_interfaces
            } else {
                self.mdns_interfaces
            },
            peers: {
                for p in &file.peers {
                    check_host_port(p).map_err(|e| DaemonError::Config(format!("peers: {e}")))?;
                }
                file.peers
            },
            secret_file: self.secret_file.or(file.secret_file),
            group: self.group.or(file.group),
            admin_group: self.admin_group.or(file.admin_group),
            max_upload_mib_s,
            max_download_mib_s,
            transfer_threads,
            max_links: self
                .max_links
                .or(file.max_links)
                .unwrap_or(lanspread_peer::DEFAULT_MAX_LINKS),
            max_links_per_address: self
                .max_links_per_address
                .or(file.max_links_per_address)
                .unwrap_or(lanspread_peer::DEFAULT_MAX_LINKS_PER_ADDRESS),
            max_udp_payload,
            metrics_listen,
        })
    }
}

impl DaemonConfig {
    /// Every path made absolute against the current directory, so the daemon can leave it
    /// (`lanspreadd` runs from `/`: nothing it opens may depend on where it was started).
    pub fn absolute(self) -> Result<Self, DaemonError> {
        let cwd = std::env::current_dir().map_err(|e| DaemonError::io(".", e))?;
        Ok(self.absolute_from(&cwd))
    }

    /// Every relative path joined to `base` (the directory the daemon was started from:
    /// a reload resolves the same flags to the same paths).
    pub fn absolute_from(mut self, base: &Path) -> Self {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.games);
        abs(&mut self.state);
        abs(&mut self.socket);
        for p in [&mut self.catalog, &mut self.events, &mut self.secret_file]
            .into_iter()
            .flatten()
            .filter(|p| p.as_path() != Path::new("-"))
        {
            abs(p);
        }
        self
    }

    /// The config file these settings were read from, if any.
    pub fn file(args: &DaemonArgs) -> Option<PathBuf> {
        match &args.config {
            Some(p) => Some(p.clone()),
            None if Path::new(DEFAULT_CONFIG).exists() => Some(DEFAULT_CONFIG.into()),
            None => None,
        }
    }
}

fn load_file(path: &Path) -> Result<FileConfig, DaemonError> {
    let text = std::fs::read_to_string(path).map_err(|e| DaemonError::io(path, e))?;
    toml::from_str(&text).map_err(|e| DaemonError::Config(format!("{}: {e}", path.display())))
}

/// A duration knob for tests and tuning: `var` in milliseconds when set and valid, else
/// `default`.
pub(crate) fn env_ms(var: &str, default: std::time::Duration) -> std::time::Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(default, std::time::Duration::from_millis)
}

/// Longest time a source may send nothing at all — on any of its streams and lanes —
/// before a chunk waiting on it counts as stalled. Generous: a source shared by many
/// clients on a slow link sends each client little, and one client's streams are drained
/// one after another (no send fairness), so one stream may wait long while the others
/// move; that is busy, not dead (the QUIC idle timeout catches dead peers).
/// `LANSPREAD_STALL_TIMEOUT_MS` overrides it (tests, tuning).
pub const CHUNK_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// [`CHUNK_STALL_TIMEOUT`], or the environment's.
pub(crate) fn stall_timeout() -> std::time::Duration {
    static T: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
    *T.get_or_init(|| env_ms("LANSPREAD_STALL_TIMEOUT_MS", CHUNK_STALL_TIMEOUT))
}

/// A count from the environment (tuning and tests), `default` when unset or not a number.
pub(crate) fn env_usize(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests;
