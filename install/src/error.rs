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
    /// UnRAR refused an archive (corrupt, truncated, CRC error, unsupported).
    #[error("archive {archive}: {why}")]
    Archive {
        /// The archive.
        archive: PathBuf,
        /// UnRAR's error.
        why: String,
    },
    /// Two archives hold the same file.
    #[error("{name} is in both {first} and {second}")]
    Clash {
        /// The entry.
        name: String,
        /// The first archive.
        first: String,
        /// The second archive.
        second: String,
    },
    /// A link entry was refused: a symlink whose target leaves the install folder, or a
    /// hard link or file copy whose target is not a file extracted before it.
    #[error("{kind} {entry} -> {target}: {why}")]
    Link {
        /// "symlink", "hard link" or "file copy".
        kind: &'static str,
        /// The link entry.
        entry: String,
        /// Its target as stored.
        target: String,
        /// Why it was refused.
        why: String,
    },
    /// The archives are a volume set that cannot be put together (missing first or middle
    /// volume, a last volume that says more follow, two volumes with one number).
    #[error("{0}")]
    VolumeSet(String),
    /// An archive or one of its entries is encrypted.
    #[error("archive {0}: encrypted (lanspread cannot install password-protected archives)")]
    Encrypted(PathBuf),
    /// What was extracted differs from the archive's listing: an entry missing, short, or
    /// of another type.
    #[error("archive {archive}: entry {entry}: {why}")]
    Incomplete {
        /// The archive (first volume).
        archive: PathBuf,
        /// The entry.
        entry: String,
        /// What differs.
        why: String,
    },
    /// The filesystem lacks room for the unpacked size.
    #[error("not enough free space: need {need} bytes, {free} available")]
    NoSpace {
        /// Unpacked bytes.
        need: u64,
        /// Free bytes.
        free: u64,
    },
    /// The install was asked to stop; nothing was installed and an earlier install is kept.
    #[error("cancelled (an earlier install, if any, is kept)")]
    Cancelled,
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
