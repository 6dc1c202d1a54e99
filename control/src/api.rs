//! The control protocol: JSON lines over the Unix socket. The CLI sends one [`Request`]
//! per line; the daemon answers with one [`Reply`] per line (`events` answers with a
//! stream of [`Reply::Event`]). Events are data, also appended to the events file.

// The value types the protocol carries, re-exported so its users need no other crate.
pub use lanspread_proto::{Availability, GameId, PeerId, Version};
use serde::{Deserialize, Serialize};

pub use crate::ErrorKind;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Commands without arguments are empty struct variants, not unit variants: serde ignores
// unknown fields on unit variants of an internally tagged enum even with
// `deny_unknown_fields`, and every command must refuse them alike.
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Peer id, listen address, games dir, active operations.
    Status {},
    /// Dial a peer directly.
    Connect {
        /// `host:port`.
        addr: String,
    },
    /// Local and aggregated remote games.
    ListGames {},
    /// Known peers and their games.
    ListPeers {},
    /// Block until `count` peers are connected or `timeout_ms` passes.
    WaitPeers {
        /// Peers to wait for.
        count: usize,
        /// Give up after this many milliseconds.
        timeout_ms: u64,
    },
    /// Stream every event from now on.
    Events {},
    /// Download a game from the peers with its newest version.
    Download {
        /// Game id.
        game: String,
        /// Install after the download commits.
        install: bool,
        /// Answer at once instead of streaming the game's events to the end.
        detach: bool,
    },
    /// Say goodbye to peers and exit.
    Shutdown {},
    /// Extract a downloaded game's archives into `local/`.
    Install {
        /// Game id.
        game: String,
    },
    /// Remove a game's `local/`.
    Uninstall {
        /// Game id.
        game: String,
    },
    /// Stop a running download (resumable later) or install.
    Cancel {
        /// Game id.
        game: String,
    },
    /// Delete a game's folder from the games dir, partial or complete, `local/` included.
    Remove {
        /// Game id.
        game: String,
    },
    /// Change the bandwidth limits now, for the running transfers too (until the daemon
    /// restarts). Absent: unchanged; `0`: unlimited; neither given: only show them.
    Limit {
        /// New upload limit, MiB/s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        upload_mib_s: Option<f64>,
        /// New download limit, MiB/s.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        download_mib_s: Option<f64>,
    },
    /// Read the config file again and apply what can change live (like `SIGHUP`).
    Reload {},
}

/// A reply from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// Answer to `status`.
    Status(StatusInfo),
    /// Answer to `connect`: the peer now connected.
    Connected(PeerInfo),
    /// Answer to `list-games`.
    Games(GamesList),
    /// Answer to `list-peers` and `wait-peers`.
    Peers(Vec<PeerInfo>),
    /// Answer to `limit`: the limits now.
    Limits(Limits),
    /// Answer to `reload`.
    Reloaded(ReloadInfo),
    /// One streamed event.
    Event(Event),
    /// An operation was started in the background (`--detach`).
    Started {
        /// The game.
        game_id: GameId,
    },
    /// Done, nothing to report.
    Ok,
    /// The daemon refused the request or it failed.
    Error {
        /// Human-readable reason.
        message: String,
        /// What kind of failure it is (stable, for scripts).
        #[serde(default)]
        kind: ErrorKind,
    },
}

/// Answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// Our peer id.
    pub peer_id: PeerId,
    /// Our QUIC listen address.
    pub addr: String,
    /// The games directory.
    pub games_dir: String,
    /// Operations in progress.
    pub operations: Vec<OperationInfo>,
    /// Connected peers.
    pub peers: usize,
    /// Daemon software version.
    pub version: String,
    /// Bandwidth limits.
    pub limits: Limits,
    /// Event lines not written to the events sink because its reader did not keep up.
    #[serde(default)]
    pub events_dropped: u64,
    /// Local games with a valid `version.ini` that are not offered, and why.
    #[serde(default)]
    pub problems: Vec<GameProblem>,
    /// Where Prometheus metrics are served (`http://ADDR/metrics`), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// What a reload did (`reload --json`, and the `config-reloaded` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadInfo {
    /// The config file read, if any (none: flags and defaults only).
    pub config: Option<String>,
    /// Settings that changed and took effect now.
    pub applied: Vec<String>,
    /// Settings that changed but take effect only when the daemon restarts (the old
    /// value stays in use until then).
    pub needs_restart: Vec<String>,
}

/// Bandwidth limits to and from LAN peers (`null`: unlimited).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Upload limit, MiB/s.
    pub max_upload_mib_s: Option<f64>,
    /// Download limit, MiB/s.
    pub max_download_mib_s: Option<f64>,
}

/// One operation in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationInfo {
    /// The game.
    pub game_id: GameId,
    /// `download`, `install` or `uninstall`.
    pub kind: String,
    /// Bytes done (a resumed download counts what was already on disk).
    pub done_bytes: u64,
    /// Bytes in all; 0 while not known yet.
    pub total_bytes: u64,
    /// Percent done, one decimal, rounded down; `null` while the size is not known.
    pub percent: Option<f64>,
    /// `hashing` while a download waits for a source that hashes the game before it can
    /// send the manifest; `waiting` while none of its sources can send now and it waits
    /// for them (up to 30 s: partial holders to verify more, sources whose link closed
    /// to be back); else `running`.
    #[serde(default = "running")]
    pub state: String,
    /// While `hashing`: how far the source furthest along is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashing: Option<HashingInfo>,
}

fn running() -> String {
    "running".into()
}

/// `done` of `total` in percent, one decimal, rounded down (unfinished never reads 100);
/// `None` when `total` is 0.
pub fn percent(done: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| (done.min(total) as f64 * 1000.0 / total as f64).floor() / 10.0)
}

/// How far a source's hashing of a game is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HashingInfo {
    /// Bytes hashed (or known from its cache).
    pub done_bytes: u64,
    /// The game's bytes.
    pub total_bytes: u64,
    /// Percent done, one decimal, rounded down.
    pub percent: Option<f64>,
}

/// Answer to `list-games`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GamesList {
    /// Catalog games present in the games dir.
    pub local: Vec<LocalGame>,
    /// Catalog games advertised by connected peers, one row each.
    pub remote: Vec<RemoteGameRow>,
}

/// A local game row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalGame {
    /// Game id.
    pub id: GameId,
    /// Committed version, if the sentinel is valid.
    pub version: Option<Version>,
    /// True when the root is committed (valid sentinel).
    pub downloaded: bool,
    /// True when `local/` holds a completed install.
    pub installed: bool,
    /// Ready, Downloading, Installing or NotReady.
    pub availability: Availability,
    /// Payload bytes.
    pub size: u64,
    /// Why a root with a valid `version.ini` is not offered to peers (NotReady).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A local game that is not offered to peers, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameProblem {
    /// Game id.
    pub game_id: GameId,
    /// Why.
    pub reason: String,
}

/// A remote game row (one per id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteGameRow {
    /// Game id.
    pub id: GameId,
    /// Newest version among peers.
    pub eti_game_version: Version,
    /// Peers having the game at any version.
    pub peer_count: usize,
    /// Size at the newest version.
    pub size: u64,
}

impl EventKind {
    /// Whether this event ends a `download` request's stream (and the CLI's wait): a
    /// failure, or the download's end without `install`, or the install's end with it.
    pub fn ends_download(&self, install: bool) -> bool {
        match self {
            EventKind::DownloadFailed { .. }
            | EventKind::InstallFinished { .. }
            | EventKind::InstallFailed { .. } => true,
            EventKind::DownloadFinished { .. } => !install,
            _ => false,
        }
    }

    /// The game an event is about, if any.
    pub fn game_id(&self) -> Option<&GameId> {
        match self {
            EventKind::NoPeersHaveGame { game_id }
            | EventKind::GotGameFiles { game_id, .. }
            | EventKind::DownloadHashing { game_id, .. }
            | EventKind::DownloadWaiting { game_id, .. }
            | EventKind::DownloadBegin { game_id, .. }
            | EventKind::DownloadChunkFinished { game_id, .. }
            | EventKind::DownloadFinished { game_id, .. }
            | EventKind::DownloadFailed { game_id, .. }
            | EventKind::InstallBegin { game_id }
            | EventKind::InstallFinished { game_id }
            | EventKind::InstallFailed { game_id, .. }
            | EventKind::UninstallFinished { game_id } => Some(game_id),
            _ => None,
        }
    }
}

/// Bytes of a chunk one source sent (`download-chunk-finished`'s `sources`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceBytes {
    /// The source.
    pub peer_id: PeerId,
    /// Bytes it sent.
    pub bytes: u64,
}

/// A peer row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer_id: PeerId,
    /// Its address.
    pub addr: String,
    /// Its games.
    pub games: Vec<GameVersion>,
    /// Games it is downloading now and serves in part: the chunks it has verified (a
    /// swarm source, never counted as a copy in `list-games`).
    #[serde(default)]
    pub partial: Vec<PartialRow>,
}

/// A game a peer holds in part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialRow {
    /// Game id.
    pub id: GameId,
    /// The version it is downloading.
    pub version: Version,
    /// Units (8 MiB, four to a chunk) it has verified.
    pub chunks_verified: u64,
    /// Units of the game.
    pub chunks: u64,
}

/// A game id with a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameVersion {
    /// Game id.
    pub id: GameId,
    /// Version.
    pub version: Version,
}

/// A local game as reported by `local-library-changed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalGameState {
    /// Game id.
    pub id: GameId,
    /// Committed version, if any.
    pub version: Option<Version>,
    /// Committed (valid sentinel).
    pub downloaded: bool,
    /// Installed into `local/`.
    pub installed: bool,
}

/// A file as reported by `got-game-files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSize {
    /// Relative path.
    pub path: String,
    /// Bytes.
    pub size: u64,
}

/// An event with its timestamp (milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened.
    pub ts_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Why one source did not (fully) serve a download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFailure {
    /// The source.
    pub peer_id: PeerId,
    /// Its last failure.
    pub reason: String,
}

/// Every event of the contract; `"event"` holds the kebab-case name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[allow(missing_docs)]
pub enum EventKind {
    DaemonStarted {
        version: String,
        pid: u32,
    },
    LocalPeerReady {
        peer_id: PeerId,
        addr: String,
    },
    LocalLibraryChanged {
        games: Vec<LocalGameState>,
    },
    PeerConnected {
        peer_id: PeerId,
        addr: String,
    },
    PeerLost {
        peer_id: PeerId,
        addr: String,
    },
    RemoteLibraryChanged {
        peer_id: PeerId,
        games: Vec<GameVersion>,
    },
    NoPeersHaveGame {
        game_id: GameId,
    },
    /// `SIGHUP` or `reload` read the config again and applied it.
    ConfigReloaded {
        config: Option<String>,
        applied: Vec<String>,
        needs_restart: Vec<String>,
    },
    /// `SIGHUP` or `reload` found a bad config; the daemon kept the settings it had.
    ConfigReloadFailed {
        reason: String,
    },
    GotGameFiles {
        game_id: GameId,
        version: Version,
        files: Vec<FileSize>,
        sources: Vec<PeerId>,
    },
    /// A source asked for the manifest hashes the game first (about once a second while
    /// it does).
    DownloadHashing {
        game_id: GameId,
        peer_id: PeerId,
        done_bytes: u64,
        total_bytes: u64,
    },
    /// A download none of whose sources can send now has waited for them 1 s (`waiting`:
    /// true) and waits up to `wait_ms` in all (partial holders to verify more, sources
    /// whose link closed — a file server restarted — to be back), or a source can send
    /// again (`waiting`: false). If the wait runs out it ends with `download-failed`.
    DownloadWaiting {
        game_id: GameId,
        waiting: bool,
        wait_ms: u64,
    },
    /// This daemon hashed a ready game of its own in the background (only when something
    /// had to be read: `hashed_bytes` > 0), so manifest requests are answered at once.
    LocalGameIndexed {
        game_id: GameId,
        version: Version,
        bytes: u64,
        hashed_bytes: u64,
        duration_ms: u64,
    },
    DownloadBegin {
        game_id: GameId,
        version: Version,
        bytes: u64,
        files: u64,
        chunks: u64,
        /// Chunks verified by an interrupted earlier attempt and not fetched again.
        resumed_chunks: u64,
        /// Their bytes, and the pieces it verified of chunks it did not finish.
        resumed_bytes: u64,
    },
    DownloadChunkFinished {
        game_id: GameId,
        path: String,
        offset: u64,
        len: u64,
        peer_id: PeerId,
        addr: String,
        /// Bytes of this chunk an interrupted earlier attempt had verified (counted in
        /// `download-begin`'s `resumed_bytes`, not received now).
        #[serde(default)]
        resumed_bytes: u64,
        /// Every source that sent part of the chunk now, most bytes first (the first is
        /// `peer_id`): a chunk is fetched in units that may come from several peers.
        #[serde(default)]
        sources: Vec<SourceBytes>,
    },
    DownloadFinished {
        game_id: GameId,
        version: Version,
        bytes: u64,
        chunks: u64,
        duration_ms: u64,
        /// Bytes reused from an interrupted earlier attempt (not in the rate).
        resumed_bytes: u64,
        mib_per_s: f64,
        mbit_per_s: f64,
    },
    DownloadFailed {
        game_id: GameId,
        reason: String,
        #[serde(default)]
        kind: ErrorKind,
        /// Each source that failed or was left out, with its last reason.
        #[serde(default)]
        sources: Vec<SourceFailure>,
    },
    InstallBegin {
        game_id: GameId,
    },
    InstallFinished {
        game_id: GameId,
    },
    InstallFailed {
        game_id: GameId,
        reason: String,
        #[serde(default)]
        kind: ErrorKind,
    },
    UninstallFinished {
        game_id: GameId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_shape() {
        let e = Event {
            ts_ms: 7,
            kind: EventKind::DaemonStarted {
                version: "0.1.0".into(),
                pid: 42,
            },
        };
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ts_ms": 7, "event": "daemon-started", "version": "0.1.0", "pid": 42})
        );
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn request_json_shape() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"wait-peers","count":2,"timeout_ms":100}"#).unwrap();
        assert_eq!(
            r,
            Request::WaitPeers {
                count: 2,
                timeout_ms: 100
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
        assert_eq!(serde_json::to_string(&Reply::Ok).unwrap(), r#""ok""#);
        // Unknown fields are refused on every command, with arguments or without.
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status {}
        );
        assert_eq!(
            serde_json::to_string(&Request::Status {}).unwrap(),
            r#"{"cmd":"status"}"#
        );
        for bad in [
            r#"{"cmd":"status","force":true}"#,
            r#"{"cmd":"shutdown","now":1}"#,
            r#"{"cmd":"list-games","x":null}"#,
            r#"{"cmd":"install","game":"ggoo","force":true}"#,
        ] {
            let err = serde_json::from_str::<Request>(bad).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{bad}: {err}");
        }
    }

    #[test]
    fn local_game_json_matches_the_contract() {
        let g = LocalGame {
            id: GameId::new("bf1942").unwrap(),
            version: Some(Version::parse("20250101").unwrap()),
            downloaded: true,
            installed: false,
            availability: Availability::Ready,
            size: 123,
            reason: None,
        };
        assert_eq!(
            serde_json::to_value(&g).unwrap(),
            serde_json::json!({"id":"bf1942","version":"20250101","downloaded":true,"installed":false,"availability":"Ready","size":123})
        );
    }
}
