use std::path::PathBuf;

/// Errors of the transfer crate.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Reading or writing the identity key failed.
    #[error("identity key {path}: {source}")]
    KeyIo {
        /// The key file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but does not hold a usable key.
    #[error("identity key {path} is unusable: {why}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Building the certificate or TLS configuration failed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// Binding the UDP socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: std::net::SocketAddr,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Dialling a peer failed before the QUIC handshake completed.
    #[error("cannot connect to {addr}: {why}")]
    Connect {
        /// The dialled address.
        addr: std::net::SocketAddr,
        /// What went wrong.
        why: String,
    },
    /// The peer presented no certificate or one whose key cannot be read.
    #[error("peer presented no usable certificate")]
    NoPeerIdentity,
    /// The LAN secret file cannot be used.
    #[error("LAN secret {path}: {why}")]
    Secret {
        /// The secret file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A frame breaks the protocol (too large, malformed).
    #[error(transparent)]
    Proto(#[from] lanspread_proto::ProtoError),
    /// A stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// A stream failed while a frame was read or written.
    #[error("stream: {0}")]
    Stream(#[from] std::io::Error),
}
