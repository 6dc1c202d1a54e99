//! Reading the LAN secret file; the proofs and their check are `lanspread_proto`'s.

use std::path::Path;

use lanspread_proto::LanSecret;

use crate::TransferError;

/// Reads a secret file. A file that others may read is refused, as ssh does for keys.
pub fn load_secret(path: &Path) -> Result<LanSecret, TransferError> {
    use std::os::unix::fs::MetadataExt;
    let bad = |why: String| TransferError::Secret {
        path: path.to_path_buf(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad(
            "is not a regular file (a file holding the secret is expected)".into(),
        ));
    }
    if meta.mode() & 0o007 != 0 {
        return Err(bad(format!(
            "readable by others (mode {:o}); chmod o-rwx it",
            meta.mode() & 0o777
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    LanSecret::from_bytes(&bytes).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_not_a_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_secret(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(!err.contains("others"), "{err}");
    }

    #[test]
    fn world_readable_file_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_secret(&p).unwrap_err().to_string().contains("others"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load_secret(&p).is_ok());
    }
}
