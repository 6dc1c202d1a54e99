use std::path::PathBuf;

/// Errors of the catalog crate.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
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
}

impl CatalogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
