//! The lanspread peer protocol without IO: peer ids, game ids, versions and paths, the
//! manifest and its chunk arithmetic, wire messages, frame encoding over byte buffers,
//! hello checks (protocol version, identity, LAN secret) and the framing of answers.
//!
//! **Architecture invariant:** nothing in this crate or its dependency tree does IO — no
//! tokio, quinn, rustls, socket2 or io-uring (`tests/dependency_rules.rs` checks it). The
//! transport (`lanspread-transfer`) moves these frames; the sans-IO core
//! (`lanspread-peer`) decides with these types.
#![warn(missing_docs)]

mod answer;
mod chunkset;
mod error;
mod frame;
mod hello;
mod ids;
mod manifest;
mod peer_id;
mod relpath;
mod secret;
mod tree;
mod wire;

pub use answer::{chunk_head, manifest_answer, AnswerFault};
pub use chunkset::{ChunkSet, MAX_CHUNKS};
pub use error::ProtoError;
pub use frame::{
    decode_body, decode_frame, encode_frame, frame_body_len, frame_body_len_within, FRAME_HEAD_LEN,
    MAX_ANNOUNCE_LEN, MAX_FRAME_LEN, MAX_HELLO_LEN,
};
pub use hello::{Handshake, Refusal, AGENT};
pub use ids::{Availability, GameId, Version};
pub use manifest::{
    chunk_count, chunk_hash, chunk_hashes, chunk_ranges, chunk_rest, file_mode, folders_digest,
    manifest_digest, manifest_fits_a_frame, manifest_len_bound, piece_count, piece_hash,
    unit_count, unit_of_rest, ChunkHash, FileManifest, Manifest, CHUNK_SIZE, CONTENT_HASH,
    MAX_MANIFEST_ENTRIES, MIN_CHUNKS_IN_FLIGHT, PIECES_PER_CHUNK, PIECE_SIZE, UNIT_SIZE,
};
pub use peer_id::PeerId;
pub use relpath::{case_clash, folds_to_reserved, is_reserved_top_level, RelPath};
pub use secret::{secret_proof, LanSecret, SecretCheck, EXPORTER_LABEL, MIN_SECRET_LEN};
pub use tree::{check_tree, MAX_DEPTH, MAX_FOLDERS};
pub use wire::{
    close_code, peer_text, reset_code, ChunkRange, GameAd, Hello, Holding, Message, PeerAddr,
    PeerRequest, PeerResponse, ALPN, DATA_ALPN, MAX_GROWING, MAX_LIBRARY, MAX_PEER_TEXT, MAX_PEX,
    MAX_PEX_GAMES, MAX_RANGES, MAX_REQUEST_LEN, PROTOCOL_VERSION, SERVER_NAME,
};

/// Name of the commit sentinel inside a game root.
pub const VERSION_FILE: &str = "version.ini";
/// Name of the install target inside a game root; never transferred.
pub const LOCAL_DIR: &str = "local";
/// Prefix of daemon metadata entries inside a game root; never transferred.
pub const METADATA_PREFIX: &str = ".lanspread";
