//! Peers and what they offer: the peer table keyed by peer id, aggregation of remote
//! libraries into one row per game, latest-version source selection and the rules for
//! which connection to a peer is kept.
//!
//! **Architecture invariant:** everything here is sans-IO: no sockets, files or clock.
//! The daemon feeds events in and reads decisions out.
#![warn(missing_docs)]

mod aggregate;
mod links;
mod table;

pub use aggregate::{aggregate, latest_sources, RemoteRow, Sources};
pub use links::{check_not_self, prefer_new_link, Direction, PeerError};
pub use table::{PeerEntry, PeerTable, RemoteGame, Upsert};
