//! The daemon's persistent identity: an ECDSA P-256 key in the state dir and a peer id
//! derived from its public key, so a peer cannot claim another's id without its key.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use lanspread_proto::{PeerId, SERVER_NAME};
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::TransferError;

/// File name of the private key inside the state dir.
pub const KEY_FILE: &str = "identity.key";

/// The peer id of the key in a DER X.509 certificate.
pub fn peer_id_of_cert(cert: &CertificateDer<'_>) -> Result<PeerId, TransferError> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|_| TransferError::NoPeerIdentity)?;
    Ok(PeerId::from_spki(ee.subject_public_key_info().as_ref()))
}

/// Writes `bytes` to `path` (mode 0600, synced) only if no file is there: through a
/// temporary file of this process linked into place. `Ok(false)`: another file won.
fn create_exclusive(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{KEY_FILE}.tmp.{}.{n}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| match fs::hard_link(&tmp, path) {
        // A filesystem without hard links: rename (the daemon's state-dir lock already
        // keeps a second start away; only the no-replace guarantee is lost).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::Unsupported
            ) =>
        {
            fs::rename(&tmp, path)
        }
        other => other,
    });
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// The local identity: key, self-signed certificate and derived peer id.
pub struct Identity {
    key_der: Vec<u8>,
    cert: CertificateDer<'static>,
    peer_id: PeerId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// The largest key file read (a PEM key is a few hundred bytes).
const MAX_KEY_FILE: u64 = 64 << 10;

/// Reads the key file at `path` (a link to it is followed: a key provisioned from a
/// secrets store): never blocking (a FIFO), a regular file of at most [`MAX_KEY_FILE`]
/// bytes. Returns the file with its text; its mode is fixed through that descriptor only
/// once the text is a key (a file that is not one is never chmodded).
fn read_key(path: &Path) -> std::io::Result<(fs::File, String)> {
    use std::io::Read;
    let refuse =
        |why: &str| std::io::Error::other(format!("{why}; the key must be a regular file"));
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(refuse("it is larger than a key can be"));
    }
    let mut pem = String::new();
    (&mut file).take(MAX_KEY_FILE).read_to_string(&mut pem)?;
    Ok((file, pem))
}

/// Makes the key `file` (at `path`) readable by its owner only, through its descriptor;
/// a key that is a link (into a secrets store, perhaps shared or read-only) or whose mode
/// cannot be changed is only warned about.
fn keep_private(file: &fs::File, path: &Path) {
    let Ok(meta) = file.metadata() else {
        return;
    };
    if meta.permissions().mode() & 0o077 == 0 {
        return;
    }
    let linked = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if linked {
        tracing::warn!(path = %path.display(), "identity key is readable by others; it is a link, its target's mode is left alone");
        return;
    }
    tracing::warn!(path = %path.display(), "identity key is readable by others; fixing mode to 0600");
    if let Err(e) = file.set_permissions(fs::Permissions::from_mode(0o600)) {
        tracing::warn!(path = %path.display(), "cannot make the identity key private: {e}");
    }
}

impl Identity {
    /// Loads the key from `state/identity.key`, creating it (mode 0600) on first start.
    /// The certificate is regenerated from the key on every start; only the key persists.
    pub fn load_or_create(state: &Path) -> Result<Self, TransferError> {
        let path = state.join(KEY_FILE);
        let key_io = |source| TransferError::KeyIo {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(state).map_err(key_io)?;
        // Two starts racing on a fresh state dir must end with one key, the saved one:
        // each writes its own temporary file and links it into place, which fails if the
        // other got there first; the loser then loads the winner's key.
        for _ in 0..3 {
            match read_key(&path) {
                Ok((file, pem)) => {
                    let key = KeyPair::from_pem(&pem).map_err(|e| TransferError::BadKey {
                        path: path.clone(),
                        why: e.to_string(),
                    })?;
                    keep_private(&file, &path);
                    return Self::from_key(key);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && fs::symlink_metadata(&path)
                            .is_ok_and(|m| m.file_type().is_symlink()) =>
                {
                    return Err(key_io(std::io::Error::other(
                        "it is a symlink to nothing; make it name the key, or remove it",
                    )));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let key = KeyPair::generate().map_err(|e| TransferError::Tls(e.to_string()))?;
                    if create_exclusive(state, &path, key.serialize_pem().as_bytes())
                        .map_err(key_io)?
                    {
                        return Self::from_key(key);
                    }
                }
                Err(e) => return Err(key_io(e)),
            }
        }
        Err(key_io(std::io::Error::other(
            "the key file keeps disappearing while it is created",
        )))
    }

    /// The key of this peer's QUIC stateless resets, derived from its identity key: a
    /// daemon restarted on the same state (after a crash, an upgrade) answers its
    /// former self's connections with resets they accept, so its peers drop those links
    /// at once and dial it again, instead of waiting out the idle timeout while every
    /// request on them fails (RFC 9000 §10.3.2: the key must outlive the process, and
    /// stay as secret as the identity key it comes from).
    pub fn reset_key(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.derive(b"stateless reset"))
    }

    /// The key our connection ids are signed with, derived like [`Identity::reset_key`]:
    /// an endpoint answers only packets whose connection id it signed itself with a
    /// reset, so a restarted daemon must recognise its former self's ids.
    pub fn cid_key(&self) -> u64 {
        let d = self.derive(b"connection ids");
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    /// A secret of its own for `purpose`, from the identity key.
    fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"lanspread QUIC key v1\0");
        ctx.update(purpose);
        ctx.update(b"\0");
        ctx.update(&self.key_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// An identity from a fresh in-memory key (tests and tools).
    pub fn ephemeral() -> Result<Self, TransferError> {
        Self::from_key(KeyPair::generate().map_err(|e| TransferError::Tls(e.to_string()))?)
    }

    fn from_key(key: KeyPair) -> Result<Self, TransferError> {
        let params = CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .map_err(|e| TransferError::Tls(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| TransferError::Tls(e.to_string()))?;
        let cert = cert.der().clone();
        let peer_id = peer_id_of_cert(&cert)?;
        Ok(Self {
            key_der: key.serialize_der(),
            cert,
            peer_id,
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> &PeerId {
        &self.peer_id
    }

    /// The self-signed certificate.
    pub fn cert(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// The private key for rustls.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_persists_with_mode_0600_and_same_id() {
        let t = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(t.path()).unwrap();
        let mode = fs::metadata(t.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Identity::load_or_create(t.path()).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        assert_eq!(a.peer_id().as_str().len(), 32);
        let other = tempfile::tempdir().unwrap();
        let c = Identity::load_or_create(other.path()).unwrap();
        assert_ne!(a.peer_id(), c.peer_id());
    }

    #[test]
    fn peer_id_depends_on_the_key_not_the_certificate() {
        let t = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(t.path()).unwrap();
        let b = Identity::load_or_create(t.path()).unwrap();
        // Certificates differ (fresh serial per start) but the id is the key's.
        assert_ne!(a.cert(), b.cert());
        assert_eq!(
            peer_id_of_cert(&a.cert()).unwrap(),
            peer_id_of_cert(&b.cert()).unwrap()
        );
    }

    #[test]
    fn racing_first_starts_end_with_the_saved_key() {
        for _ in 0..5 {
            let t = tempfile::tempdir().unwrap();
            let ids: Vec<PeerId> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| Identity::load_or_create(t.path()).unwrap()))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap().peer_id().clone())
                    .collect()
            });
            let saved = Identity::load_or_create(t.path()).unwrap();
            assert!(ids.iter().all(|id| id == saved.peer_id()), "{ids:?}");
            let names: Vec<_> = fs::read_dir(t.path()).unwrap().flatten().collect();
            assert_eq!(names.len(), 1, "temporary key files left: {names:?}");
        }
    }

    /// A key file that is a FIFO or huge is refused with a clear error, at once (no wait
    /// for a FIFO's writer, nothing huge read); one that is a symlink to a key is read,
    /// and no linked file's mode is changed.
    #[test]
    fn a_key_file_that_is_not_a_plain_key_is_refused_and_chmods_nothing() {
        let t = tempfile::tempdir().unwrap();
        let key = t.path().join(KEY_FILE);
        let other = t.path().join("other");
        fs::write(&other, "someone's file").unwrap();
        fs::set_permissions(&other, fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&other, &key).unwrap();
        let err = Identity::load_or_create(t.path()).unwrap_err();
        assert!(err.to_string().contains("unusable"), "{err}");
        let mode = fs::metadata(&other).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "the link's target was chmodded");
        fs::remove_file(&key).unwrap();
        // A link to a real key (a secrets store, perhaps shared): read, its mode left.
        let store = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(store.path()).unwrap();
        let stored = store.path().join(KEY_FILE);
        fs::set_permissions(&stored, fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&stored, &key).unwrap();
        let b = Identity::load_or_create(t.path()).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        let mode = fs::metadata(&stored).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        fs::remove_file(&key).unwrap();
        // A link to nothing: said so, no key made behind it.
        std::os::unix::fs::symlink(t.path().join("nothing"), &key).unwrap();
        let err = Identity::load_or_create(t.path()).unwrap_err();
        assert!(err.to_string().contains("symlink to nothing"), "{err}");
        assert!(!t.path().join("nothing").exists());
        fs::remove_file(&key).unwrap();
        let fifo = std::ffi::CString::new(key.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `fifo` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = Identity::load_or_create(t.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        fs::remove_file(&key).unwrap();
        let huge = fs::File::create(&key).unwrap();
        huge.set_len(1 << 40).unwrap();
        let err = Identity::load_or_create(t.path()).unwrap_err();
        assert!(err.to_string().contains("larger than a key"), "{err}");
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join(KEY_FILE), "not a key").unwrap();
        let err = Identity::load_or_create(t.path()).unwrap_err();
        assert!(err.to_string().contains("unusable"), "{err}");
    }

    #[test]
    fn a_certificate_without_a_key_has_no_peer_id() {
        assert!(peer_id_of_cert(&CertificateDer::from(vec![1, 2, 3])).is_err());
    }
}
