use std::path::PathBuf;

/// Errors of the install crate.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// An archive entry name is absolute, empty or escapes the archive root.
    #[error("unsafe archive entry name {0:?}")]
    UnsafeName(String),
    /// A reader delivered a different number of bytes than the size announced for it.
    #[error("entry {name:?}: announced {announced} bytes, read {read}")]
    SizeMismatch {
        /// The entry name.
        name: String,
        /// Size given to the writer.
        announced: u64,
        /// Bytes actually read.
        read: u64,
    },
    /// The writer was used after `finish`.
    #[error("archive already finished")]
    Finished,
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed (empty when writing to an anonymous stream).
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

impl InstallError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
