//! The lanspread control protocol, shared by the daemon (server side) and the CLI
//! (client side): JSON lines over a Unix socket. A client sends one [`Request`] per line;
//! the daemon answers with one [`Reply`] per line (`events` answers with a stream of
//! [`Reply::Event`]). Failures carry a stable [`ErrorKind`]. [`Client`] is the client
//! side of the socket; [`default_socket_path`] says where the socket is.
//!
//! This crate knows neither the daemon nor the CLI; both depend on it.
#![warn(missing_docs)]

pub mod api;
mod client;
mod error;
mod failure;
mod limits;
mod paths;
mod sources;

pub use api::{Event, EventKind, Reply, Request};
pub use client::Client;
pub use error::ControlError;
pub use failure::{io_kind, ErrorKind, Failure};
pub use limits::{check_limit, MAX_LIMIT_MIB_S, MIN_LIMIT_MIB_S};
pub use paths::{default_socket_path, socket_path_from_env};
pub use sources::chunk_sources;
