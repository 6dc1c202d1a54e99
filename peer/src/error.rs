use lanspread_catalog::GameId;

/// Errors of the peer crate: every refusal and failure a decision function reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// A dial reached this node itself (S27).
    #[error("cannot connect peer to itself")]
    SelfConnect,
    /// Another operation runs on the game (S26).
    #[error("operation already in progress for game {0}")]
    Busy(GameId),
    /// No eligible source answered with a usable manifest.
    #[error("no source sent usable metadata for game {game}{why}")]
    NoMetadata {
        /// The game.
        game: GameId,
        /// Why the answers were refused (`: peer: reason; ...`), or empty.
        why: String,
    },
    /// The newest sources disagree and no manifest has a strict majority (S8, S17).
    #[error("conflicting metadata for game {game}: {groups} different file sets, top vote {top} of {voters}")]
    MetadataConflict {
        /// The game.
        game: GameId,
        /// Distinct manifests.
        groups: usize,
        /// Votes of the largest group.
        top: usize,
        /// Voting sources.
        voters: usize,
    },
    /// A manifest is internally inconsistent.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// The chunks could not all be fetched: every source was given up (the message
    /// says why each), or one chunk kept failing locally.
    #[error("{0}")]
    SourcesFailed(String),
    /// Nothing was in flight and nothing could be assigned (a bug, not a peer's doing).
    #[error("download stalled: nothing in flight and nothing assignable")]
    Stuck,
    /// A serve request was refused by a gate (S12).
    #[error("{0}")]
    Refused(String),
}
