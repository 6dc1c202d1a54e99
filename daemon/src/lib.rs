//! The lanspread daemon (`lanspreadd`) and its control protocol, plus the CLI client
//! (`lanspread`). Both binaries are thin: `main` maps results to exit codes.
//!
//! **Architecture invariant:** only this crate knows the control protocol.
#![warn(missing_docs)]

mod access;
pub mod api;
pub mod cli;
pub mod config;
mod control;
mod daemon;
mod data_conn;
mod download;
mod error;
mod events;
mod failure;
mod handshake;
mod install;
mod limit;
mod links;
mod lock;
pub mod logging;
mod mdns;
pub mod paths;
mod recover;
mod resources;
mod serve;
mod state;
mod threads;
mod watch;
mod writer;

pub use config::{DaemonArgs, DaemonConfig};
pub use daemon::Daemon;
pub use error::DaemonError;
pub use failure::{ErrorKind, Failure};
