//! Where log lines go: the systemd journal (native protocol, structured fields, spans as
//! `SPAN_NAME`) when systemd connected our stderr to it, stderr otherwise.
//! `LANSPREAD_LOG` holds the filter (`tracing_subscriber::EnvFilter` syntax).

use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where [`init`] sent the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The systemd journal.
    Journal,
    /// Standard error.
    Stderr,
}

/// True when `JOURNAL_STREAM` (`device:inode`, set by systemd) names our stderr. Checking
/// the inode, as systemd.exec(5) advises, keeps a child whose stderr was redirected
/// elsewhere from writing to the journal because it inherited the variable.
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Installs the global subscriber. `default_filter` applies when `LANSPREAD_LOG` is unset
/// or invalid. `journal` allows the journal (the daemon); the CLI always uses stderr.
pub fn init(default_filter: &str, journal: bool) -> LogTarget {
    let filter =
        || EnvFilter::try_from_env("LANSPREAD_LOG").unwrap_or_else(|_| default_filter.into());
    let stream = std::env::var("JOURNAL_STREAM").ok();
    if journal && stderr_is_journal(stream.as_deref()) {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer.with_syslog_identifier("lanspreadd".into());
            let installed = tracing_subscriber::registry()
                .with(layer.with_filter(filter()))
                .try_init();
            if installed.is_ok() {
                return LogTarget::Journal;
            }
        }
    }
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = tracing_subscriber::registry()
        .with(stderr.with_filter(filter()))
        .try_init();
    LogTarget::Stderr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("")));
        assert!(!stderr_is_journal(Some("12")));
        assert!(!stderr_is_journal(Some("x:y")));
        let m = std::fs::metadata("/proc/self/fd/2").unwrap();
        let ours = format!("{}:{}", m.dev(), m.ino());
        assert!(stderr_is_journal(Some(&ours)));
        let other = format!("{}:{}", m.dev(), m.ino().wrapping_add(1));
        assert!(!stderr_is_journal(Some(&other)));
    }
}
