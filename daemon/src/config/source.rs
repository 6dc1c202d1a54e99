//! Where the settings come from (the command line and the directory it was given in,
//! read again by a reload) and the settings in force.

use std::path::PathBuf;

use super::{DaemonArgs, DaemonConfig};
use crate::DaemonError;

/// Where the settings come from: the command line, and the directory it was given in
/// (relative paths keep meaning the same files after the daemon moved to `/`).
#[derive(Debug, Clone)]
pub struct ConfigSource {
    args: DaemonArgs,
    base: PathBuf,
}

impl ConfigSource {
    /// The command line, given in the current directory.
    pub fn new(args: DaemonArgs) -> Result<Self, DaemonError> {
        let base = std::env::current_dir().map_err(|e| DaemonError::io(".", e))?;
        Ok(Self::with_base(args, base))
    }

    /// The command line, given in `base`. The config file is pinned now: a default file
    /// read at start must still be there at a reload (moved aside, it is an error, not
    /// "every setting back to its default", which would drop the LAN secret).
    pub fn with_base(mut args: DaemonArgs, base: PathBuf) -> Self {
        // Absolute now: the daemon changes to `/` before it reads the file.
        args.config = DaemonConfig::file(&args).map(|p| base.join(p));
        Self { args, base }
    }

    /// The settings: flags over the config file, paths absolute.
    pub fn load(&self) -> Result<DaemonConfig, DaemonError> {
        Ok(self.args.clone().resolve()?.absolute_from(&self.base))
    }

    /// The config file read, if any, as the user named it.
    pub(crate) fn file(&self) -> Option<String> {
        DaemonConfig::file(&self.args).map(|p| self.base.join(p).display().to_string())
    }
}

/// The source and the settings in force; kept by the daemon when it was started from a
/// command line (the demo's daemons have none and cannot be reloaded).
#[derive(Debug)]
pub struct Reloadable {
    /// What is read again.
    pub(crate) source: ConfigSource,
    /// The settings in force.
    pub(crate) config: DaemonConfig,
}

impl Reloadable {
    /// The settings `config` was loaded from `source`.
    pub fn new(source: ConfigSource, config: DaemonConfig) -> Self {
        Self { source, config }
    }
}
