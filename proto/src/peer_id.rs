//! Peer ids: derived from a peer's public key, so an id cannot be claimed without the key.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ProtoError;

/// Bytes of the SHA-256 of the public key that form the peer id (128 bits).
const PEER_ID_BYTES: usize = 16;

/// A peer id: lowercase hex of the first 16 bytes of SHA-256 over the DER
/// `SubjectPublicKeyInfo` of the peer's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerId(String);

impl PeerId {
    /// Derives the id of a public key given as DER `SubjectPublicKeyInfo`.
    pub fn from_spki(spki_der: &[u8]) -> Self {
        let digest = Sha256::digest(spki_der);
        Self(hex::encode(&digest[..PEER_ID_BYTES]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short prefix for human tables and logs.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PeerId {
    type Error = ProtoError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = s.len() == PEER_ID_BYTES * 2
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(Self(s))
        } else {
            Err(ProtoError::InvalidPeerId(s))
        }
    }
}

impl std::str::FromStr for PeerId {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl From<PeerId> for String {
    fn from(p: PeerId) -> Self {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_text_is_checked() {
        assert!(PeerId::try_from("ab".repeat(16)).is_ok());
        assert!(PeerId::try_from("AB".repeat(16)).is_err());
        assert!(PeerId::try_from("ab".to_string()).is_err());
        let id = PeerId::from_spki(b"key");
        assert_eq!(id.as_str().len(), 32);
        assert_eq!(id.short().len(), 12);
        assert_eq!(PeerId::try_from(id.to_string()), Ok(id));
    }
}
