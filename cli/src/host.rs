//! What the CLI needs from a daemon it does not link: `demo` runs two daemons in this
//! process, `man --daemon` prints the daemon's page. The `lanspread` binary implements
//! [`Host`] with `lanspread-daemon`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use lanspread_control::Failure;

/// One daemon of the demo: its games dir, state dir and control socket (all in the
/// demo's temp dir); it listens on loopback with an ephemeral port and no mDNS.
#[derive(Debug, Clone)]
pub struct DemoPeer {
    /// Games directory.
    pub games: PathBuf,
    /// State directory.
    pub state: PathBuf,
    /// Control socket path.
    pub socket: PathBuf,
}

/// A daemon started by a [`Host`].
pub trait HostedDaemon {
    /// Its peer id, as printed.
    fn peer_id(&self) -> String;
    /// Its QUIC listen address.
    fn addr(&self) -> SocketAddr;
    /// Stops it: goodbye to peers, every task ended.
    fn stop(self) -> impl Future<Output = ()>;
}

/// The daemon side of the `lanspread` binary.
pub trait Host {
    /// A running daemon.
    type Daemon: HostedDaemon;
    /// The daemon's command line (for `man --daemon`).
    fn daemon_command(&self) -> clap::Command;
    /// Starts a daemon in this process.
    fn start_daemon(&self, peer: DemoPeer) -> impl Future<Output = Result<Self::Daemon, Failure>>;
}
