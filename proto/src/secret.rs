//! The LAN secret: when configured, each side of a connection proves it holds the same
//! secret, bound to this TLS session, before any library or data is exchanged.
//!
//! The proof is `HMAC-SHA256(secret, "lanspread-secret-v1" || role || ekm)` where `ekm` is
//! 32 bytes of TLS exported keying material (RFC 5705/8446 exporter, label
//! [`EXPORTER_LABEL`]) and `role` says whether the prover is the TLS client or server, so
//! a proof cannot be replayed on another connection nor reflected back to its sender.
//! The decision (`SecretCheck`) is a pure function of the two sides' settings; reading
//! the secret file is the transport's (`lanspread_transfer::load_secret`).

use ring::hmac;

use crate::ProtoError;

/// TLS exporter label for the secret proof.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-lanspread-secret";
/// Shortest accepted secret, in bytes (after trimming trailing whitespace).
pub const MIN_SECRET_LEN: usize = 16;
const DOMAIN: &[u8] = b"lanspread-secret-v1";

/// A loaded LAN secret.
#[derive(Clone)]
pub struct LanSecret(hmac::Key);

impl std::fmt::Debug for LanSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LanSecret(..)")
    }
}

impl LanSecret {
    /// A secret from its bytes; trailing whitespace (a final newline) is ignored.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProtoError> {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let bytes = &bytes[..end];
        if bytes.len() < MIN_SECRET_LEN {
            return Err(ProtoError::Secret(format!(
                "too short ({} bytes; at least {MIN_SECRET_LEN} needed)",
                bytes.len()
            )));
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// The proof this side sends; `client` is true for the side that dialled.
    pub fn prove(&self, ekm: &[u8; 32], client: bool) -> [u8; 32] {
        let tag = hmac::sign(&self.0, &message(ekm, client));
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether two loaded secrets are the same (by a keyed digest of a fixed label, so
    /// the secret itself is never compared or kept around): reload tells a changed
    /// secret file from one rewritten with the same secret.
    pub fn same_as(&self, other: &LanSecret) -> bool {
        let label = b"lanspread-secret-fingerprint";
        hmac::verify(&other.0, label, hmac::sign(&self.0, label).as_ref()).is_ok()
    }

    /// Whether `proof` is the other side's valid proof (constant-time comparison).
    pub fn verify(&self, ekm: &[u8; 32], their_role_client: bool, proof: &[u8]) -> bool {
        hmac::verify(&self.0, &message(ekm, their_role_client), proof).is_ok()
    }
}

fn message(ekm: &[u8; 32], client: bool) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 1 + ekm.len());
    m.extend_from_slice(DOMAIN);
    m.push(u8::from(client));
    m.extend_from_slice(ekm);
    m
}

/// The outcome of comparing our secret setting with the peer's proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretCheck {
    /// Neither side uses a secret, or both hold the same one.
    Accepted,
    /// Refused, with the reason both logs and the CLI show.
    Refused(String),
}

/// Decides whether a peer passes the LAN secret check. `ours` is our secret (if any),
/// `theirs` the proof in their hello, `their_role_client` whether they dialled.
pub fn secret_proof(
    ours: Option<&LanSecret>,
    ekm: &[u8; 32],
    their_role_client: bool,
    theirs: Option<&[u8; 32]>,
) -> SecretCheck {
    match (ours, theirs) {
        (None, None) => SecretCheck::Accepted,
        (Some(_), None) => SecretCheck::Refused(
            "LAN secret mismatch: this daemon requires a LAN secret and the peer sent none".into(),
        ),
        (None, Some(_)) => SecretCheck::Refused(
            "LAN secret mismatch: the peer uses a LAN secret and this daemon has none".into(),
        ),
        (Some(s), Some(p)) if s.verify(ekm, their_role_client, p) => SecretCheck::Accepted,
        (Some(_), Some(_)) => {
            SecretCheck::Refused("LAN secret mismatch: the peer holds a different secret".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> LanSecret {
        LanSecret::from_bytes(x.as_bytes()).unwrap()
    }

    #[test]
    fn same_as_tells_secrets_apart() {
        let a = s("correct horse battery staple");
        assert!(a.same_as(&s("correct horse battery staple\n")));
        assert!(!a.same_as(&s("correct horse battery stapler")));
    }

    #[test]
    fn same_secret_accepted_other_refused() {
        let ekm = [7u8; 32];
        let a = s("correct horse battery staple");
        let proof = a.prove(&ekm, true);
        assert_eq!(
            secret_proof(Some(&a), &ekm, true, Some(&proof)),
            SecretCheck::Accepted
        );
        let b = s("another secret of some length");
        assert!(matches!(
            secret_proof(Some(&b), &ekm, true, Some(&proof)),
            SecretCheck::Refused(m) if m.contains("different")
        ));
    }

    #[test]
    fn proofs_are_bound_to_session_and_role() {
        let a = s("correct horse battery staple");
        let proof = a.prove(&[1u8; 32], true);
        // Another session's keying material.
        assert!(!a.verify(&[2u8; 32], true, &proof));
        // Reflected back to its sender (the other role).
        assert!(!a.verify(&[1u8; 32], false, &proof));
        assert!(a.verify(&[1u8; 32], true, &proof));
    }

    #[test]
    fn one_sided_secret_is_refused_both_ways() {
        let a = s("correct horse battery staple");
        let ekm = [0u8; 32];
        assert_eq!(secret_proof(None, &ekm, false, None), SecretCheck::Accepted);
        assert!(matches!(
            secret_proof(Some(&a), &ekm, false, None),
            SecretCheck::Refused(_)
        ));
        assert!(matches!(
            secret_proof(None, &ekm, false, Some(&[0u8; 32])),
            SecretCheck::Refused(_)
        ));
    }

    #[test]
    fn short_secret_and_trailing_newline() {
        assert!(LanSecret::from_bytes(b"short\n").is_err());
        let a = s("0123456789abcdef\n");
        let b = s("0123456789abcdef");
        let ekm = [3u8; 32];
        assert!(b.verify(&ekm, false, &a.prove(&ekm, false)));
    }
}
