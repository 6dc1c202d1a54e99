//! The wire: peer identity (persistent key, peer id derived from the public key), TLS and
//! QUIC endpoint setup, and the versioned postcard frame protocol spoken between daemons.
//!
//! **Architecture invariant:** this crate knows nothing of the control socket or the
//! peer table; it moves typed frames between two authenticated endpoints.
#![warn(missing_docs)]

mod endpoint;
mod error;
mod frame;
mod identity;
mod protocol;
mod secret;
mod tls;

pub use endpoint::{
    connect, connect_data, data_client_config, is_data_connection, make_data_endpoint,
    make_endpoint, peer_id_of, session_binding, TransportTuning, MIN_LANE_WINDOW,
};
pub use error::TransferError;
pub use frame::{decode_frame, encode_frame, read_frame, write_frame, FrameError, MAX_FRAME_LEN};
pub use identity::{Identity, PeerId, KEY_FILE};
pub use protocol::{
    close_code, ChunkRange, GameAd, Hello, Message, PeerRequest, PeerResponse, ALPN, DATA_ALPN,
    MAX_RANGES, PROTOCOL_VERSION, SERVER_NAME,
};
pub use secret::{secret_proof, LanSecret, SecretCheck, MIN_SECRET_LEN};
