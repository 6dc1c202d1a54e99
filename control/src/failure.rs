//! Failures the daemon reports to its users and the CLI prints: a stable [`ErrorKind`] (the contract's `kind`
//! in error replies and in `download-failed` / `install-failed`) and a message naming the
//! cause. Operations return [`Failure`]; the control server and the events carry both.

use std::fmt::Display;
use std::io;

use serde::{Deserialize, Serialize};

/// The stable kind of a failure, in error replies (`{"error":{"message","kind"}}`) and in
/// `download-failed` / `install-failed`. Scripts match on it; messages may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// A malformed or invalid request: bad JSON, unknown field, bad argument.
    BadRequest,
    /// The game id is not in the catalog.
    NotInCatalog,
    /// The game (or the operation to cancel) is not there: not in the games dir, not
    /// downloaded, nothing running.
    NotFound,
    /// Nothing to do: the game is already downloaded at the newest version.
    AlreadyDone,
    /// Another operation runs on the game, or the daemon is at a limit; try again later.
    Busy,
    /// No connected peer has the game.
    NoSources,
    /// The newest sources disagree about the game's files and none has a majority.
    MetadataConflict,
    /// Every source failed: bad bytes, refusals, stalls, closed connections (see
    /// `sources` in `download-failed`).
    SourceFailed,
    /// A peer could not be linked: no such host, no answer, refused (version, secret,
    /// identity).
    ConnectFailed,
    /// The disk (or quota) is full.
    DiskFull,
    /// The OS refused access to a file, or the control policy refused the caller.
    PermissionDenied,
    /// Another local file error.
    Io,
    /// An archive is damaged, encrypted, incomplete or unsafe.
    BadArchive,
    /// Stopped by `cancel`.
    Cancelled,
    /// The daemon is shutting down.
    Shutdown,
    /// A wait ran out of time.
    Timeout,
    /// `reload`: the config file (or a file it names) cannot be read or is invalid; the
    /// daemon keeps the settings it had.
    BadConfig,
    /// The CLI could not reach the daemon (exit 3).
    DaemonUnreachable,
    /// A bug or an internal task failure.
    Internal,
    /// A kind this build does not know (a newer daemon).
    #[default]
    #[serde(other)]
    Other,
}

impl ErrorKind {
    /// The kebab-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::NotInCatalog => "not-in-catalog",
            Self::NotFound => "not-found",
            Self::AlreadyDone => "already-done",
            Self::Busy => "busy",
            Self::NoSources => "no-sources",
            Self::MetadataConflict => "metadata-conflict",
            Self::SourceFailed => "source-failed",
            Self::ConnectFailed => "connect-failed",
            Self::DiskFull => "disk-full",
            Self::PermissionDenied => "permission-denied",
            Self::Io => "io",
            Self::BadArchive => "bad-archive",
            Self::Cancelled => "cancelled",
            Self::Shutdown => "shutdown",
            Self::Timeout => "timeout",
            Self::BadConfig => "bad-config",
            Self::DaemonUnreachable => "daemon-unreachable",
            Self::Internal => "internal",
            Self::Other => "other",
        }
    }
}

/// A failed request or operation: its kind and what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The stable kind.
    pub kind: ErrorKind,
    /// The human-readable cause.
    pub message: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A local file error: `"{what}: {e}"`, its kind from the OS error.
    pub fn io(what: impl Display, e: &io::Error) -> Self {
        Self::new(io_kind(e), format!("{what}: {e}"))
    }

    /// A task that panicked or was aborted.
    pub fn internal(e: impl Display) -> Self {
        Self::new(ErrorKind::Internal, e.to_string())
    }

    /// The same failure, its message prefixed.
    pub fn context(self, what: impl Display) -> Self {
        Self::new(self.kind, format!("{what}: {}", self.message))
    }
}

/// The kind of a local file error.
pub fn io_kind(e: &io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => ErrorKind::DiskFull,
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => ErrorKind::PermissionDenied,
        _ => match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::DiskFull,
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                ErrorKind::PermissionDenied
            }
            _ => ErrorKind::Io,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorKind; 19] = [
        ErrorKind::BadRequest,
        ErrorKind::NotInCatalog,
        ErrorKind::NotFound,
        ErrorKind::AlreadyDone,
        ErrorKind::Busy,
        ErrorKind::NoSources,
        ErrorKind::MetadataConflict,
        ErrorKind::SourceFailed,
        ErrorKind::ConnectFailed,
        ErrorKind::DiskFull,
        ErrorKind::PermissionDenied,
        ErrorKind::Io,
        ErrorKind::BadArchive,
        ErrorKind::Cancelled,
        ErrorKind::Shutdown,
        ErrorKind::Timeout,
        ErrorKind::DaemonUnreachable,
        ErrorKind::Internal,
        ErrorKind::Other,
    ];

    #[test]
    fn names_are_the_json_names_and_round_trip() {
        for k in ALL {
            let json = serde_json::to_value(k).unwrap();
            assert_eq!(json, serde_json::json!(k.as_str()));
            assert_eq!(serde_json::from_value::<ErrorKind>(json).unwrap(), k);
        }
        // A kind from a newer daemon is read, not refused.
        let k: ErrorKind = serde_json::from_str(r#""quantum-flux""#).unwrap();
        assert_eq!(k, ErrorKind::Other);
    }

    #[test]
    fn error_reply_json_matches_the_contract() {
        let reply = crate::Reply::Error {
            message: "no peers have game ggoo".into(),
            kind: ErrorKind::NoSources,
        };
        assert_eq!(
            serde_json::to_value(&reply).unwrap(),
            serde_json::json!({"error": {"message": "no peers have game ggoo", "kind": "no-sources"}})
        );
    }

    #[test]
    fn os_errors_map_to_kinds() {
        let k = |code| io_kind(&io::Error::from_raw_os_error(code));
        assert_eq!(k(libc::ENOSPC), ErrorKind::DiskFull);
        assert_eq!(k(libc::EDQUOT), ErrorKind::DiskFull);
        assert_eq!(k(libc::EACCES), ErrorKind::PermissionDenied);
        assert_eq!(k(libc::EROFS), ErrorKind::PermissionDenied);
        assert_eq!(k(libc::EIO), ErrorKind::Io);
        let f = Failure::io("/g/x.eti", &io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(f.kind, ErrorKind::DiskFull);
        assert!(f.message.starts_with("/g/x.eti: "), "{}", f.message);
    }
}
