use std::path::PathBuf;

/// Errors of the daemon library.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// mDNS discovery could not start (the daemon runs on without it).
    #[error("{0}")]
    Discovery(String),
    /// Another daemon answers on the control socket.
    #[error("another lanspreadd is already listening on {0}")]
    SocketInUse(PathBuf),
    /// Something other than a stale socket is at the control socket's path: it is left
    /// alone (`--socket /etc/lanspread/lanspreadd.toml` must not remove the config).
    #[error("{}: {why}; it is left as it is (check --socket)", path.display())]
    SocketPathTaken {
        /// The path.
        path: PathBuf,
        /// What is there, or why it cannot be told.
        why: String,
    },
    /// The control socket's folder is missing and its parent too: only one folder level
    /// is created (the defaults' `lanspread/`), so a mistyped `--socket` makes no tree.
    #[error("cannot create the control socket's folder {}: {source} (only its last folder is created; check --socket)", dir.display())]
    SocketFolder {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another daemon holds the state dir or the games dir.
    #[error("{what} {} is in use by another lanspreadd{owner}; stop it first or use another {what}", dir.display())]
    DirInUse {
        /// "state dir" or "games dir".
        what: String,
        /// The directory.
        dir: PathBuf,
        /// " (pid N)" when known, else empty.
        owner: String,
    },
    /// The catalog could not be loaded or the games dir scanned.
    #[error(transparent)]
    Catalog(#[from] lanspread_catalog::CatalogError),
    /// QUIC or identity setup failed.
    #[error(transparent)]
    Transfer(#[from] lanspread_transfer::TransferError),
}

impl DaemonError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
