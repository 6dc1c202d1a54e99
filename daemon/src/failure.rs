//! The one place where the core's typed errors become control-protocol failures (the
//! stable `kind` plus the message). `Failure` and `ErrorKind` live in `lanspread-control`;
//! the mapping of `lanspread-peer` and `lanspread-install` errors lives here because the
//! daemon is the crate that knows all three.

use lanspread_control::{io_kind, ErrorKind, Failure};

/// The control failure for a `lanspread-peer` error (download decisions, busy games, a
/// connection to ourselves).
pub fn peer_failure(e: lanspread_peer::PeerError) -> Failure {
    use lanspread_peer::PeerError as P;
    let kind = match &e {
        P::SelfConnect => ErrorKind::ConnectFailed,
        P::Busy(_) => ErrorKind::Busy,
        P::NoMetadata { .. } | P::InvalidManifest(_) | P::Refused(_) => ErrorKind::SourceFailed,
        P::MetadataConflict { .. } => ErrorKind::MetadataConflict,
        P::SourcesFailed(_) => ErrorKind::SourceFailed,
        P::Stuck => ErrorKind::Internal,
    };
    Failure::new(kind, e.to_string())
}

/// The control failure for a failed install, uninstall or remove.
pub fn install_failure(e: lanspread_install::InstallError) -> Failure {
    use lanspread_install::InstallError as I;
    let kind = match &e {
        I::NoSpace { .. } => ErrorKind::DiskFull,
        I::Cancelled => ErrorKind::Cancelled,
        I::Io { source, .. } => io_kind(source),
        _ => ErrorKind::BadArchive,
    };
    Failure::new(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanspread_install::InstallError;
    use lanspread_peer::PeerError;

    #[test]
    fn core_errors_map_to_their_kinds() {
        assert_eq!(
            peer_failure(PeerError::Busy("x".parse().unwrap())).kind,
            ErrorKind::Busy
        );
        assert_eq!(peer_failure(PeerError::Stuck).kind, ErrorKind::Internal);
        assert_eq!(
            install_failure(InstallError::Cancelled).kind,
            ErrorKind::Cancelled
        );
        let full = InstallError::Io {
            path: "/g/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(install_failure(full).kind, ErrorKind::DiskFull);
    }
}
