//! The lanspread daemon (`lanspreadd`): peers, downloads, serving, installs, the control
//! socket's server side. The package also holds the `lanspread` binary, which is the CLI
//! (`lanspread-cli`) with this crate plugged in for `demo` and `man --daemon`. Both binaries
//! are thin: `main` maps results to exit codes.
#![warn(missing_docs)]

mod access;
mod builds;
pub mod config;
mod control;
mod control_slots;
mod daemon;
mod data_conn;
mod directory;
mod download;
mod error;
mod event_lines;
mod events;
mod failure;
mod handshake;
mod handshake_slots;
mod index;
mod install;
mod limit;
mod links;
mod lock;
pub mod logging;
mod manifest_frames;
mod mdns;
mod metrics;
mod metrics_http;
mod partial;
mod recover;
mod reload;
mod resources;
mod seed;
mod serve;
mod state;
mod threads;
mod watch;
mod writer;

pub use config::ConfigSource;
pub use config::{DaemonArgs, DaemonConfig};
pub use daemon::Daemon;
pub use error::DaemonError;
