use std::path::PathBuf;

/// Errors of the catalog crate.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A game id, version or path does not parse.
    #[error(transparent)]
    Invalid(#[from] lanspread_proto::ProtoError),
    /// A line of a catalog file could not be parsed.
    #[error("catalog line {line}: {source}")]
    CatalogLine {
        /// 1-based line number.
        line: usize,
        /// The underlying problem.
        #[source]
        source: Box<CatalogError>,
    },
    /// Reading a file or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Hashing was stopped by its caller (the daemon is shutting down).
    #[error("hashing stopped")]
    Stopped,
}

impl CatalogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
