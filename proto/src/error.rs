/// Errors of the protocol crate: a value from a peer or a user that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A game id is empty, too long or holds characters outside `[A-Za-z0-9._-]`.
    #[error(
        "invalid game id {0:?}: use 1-64 characters of A-Z a-z 0-9 . _ - (not starting with '.')"
    )]
    InvalidGameId(String),
    /// A version is not exactly eight ASCII digits.
    #[error("invalid version {0:?}: expected 8 digits YYYYMMDD")]
    InvalidVersion(String),
    /// A relative game path is absolute, empty, escapes the root or names reserved entries.
    #[error("invalid game path {path:?}: {why}")]
    InvalidPath {
        /// The offending path as received.
        path: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// A peer id is not 32 lowercase hex digits.
    #[error("invalid peer id {0:?}")]
    InvalidPeerId(String),
    /// A frame's announced length exceeds [`crate::MAX_FRAME_LEN`], or the smaller limit
    /// of what the reader expects (such as [`crate::MAX_REQUEST_LEN`]).
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// A frame's body is not a valid postcard message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A LAN secret is unusable (too short).
    #[error("{0}")]
    Secret(String),
}
