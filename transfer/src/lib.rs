//! The transport: the persistent identity key, TLS and QUIC endpoint setup, and frames
//! (`lanspread_proto`'s messages) read from and written to QUIC streams.
//!
//! **Architecture invariant:** this crate knows nothing of the control socket or the
//! peer table; it moves typed frames between two authenticated endpoints.
#![warn(missing_docs)]

mod endpoint;
mod error;
mod frame;
mod gso;
mod identity;
mod secret;
mod tls;

pub use endpoint::{
    connect, connect_data, data_client_config, is_data_connection, make_data_endpoint,
    make_endpoint, peer_id_of, session_binding, TransportTuning, CONTROL_PRIORITY,
    DEFAULT_MAX_UDP_PAYLOAD, MIN_LANE_WINDOW,
};
pub use error::TransferError;
pub use frame::{read_frame, read_frame_within, write_frame};
pub use gso::{batch_limit, FitBatches, MAX_UDP_SEND};
pub use identity::{peer_id_of_cert, Identity, KEY_FILE};
pub use secret::load_secret;
