//! Newtypes for game ids and versions: parsed once at the edge, trusted inside.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// A game id such as `bf1942`: 1-64 characters of `[A-Za-z0-9._-]`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GameId(String);

impl GameId {
    /// Checks and wraps an id.
    pub fn new(id: &str) -> Result<Self, ProtoError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(ProtoError::InvalidGameId(id.to_owned()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GameId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for GameId {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for GameId {
    type Error = ProtoError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<GameId> for String {
    fn from(id: GameId) -> Self {
        id.0
    }
}

/// A game version: exactly eight ASCII digits (`YYYYMMDD`). Versions compare as strings,
/// which for fixed-width digits is the same as comparing dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version([u8; 8]);

impl Version {
    /// Parses the content of a `version.ini`: surrounding whitespace is allowed, nothing else.
    pub fn parse(text: &str) -> Result<Self, ProtoError> {
        let t = text.trim();
        let bytes = t.as_bytes();
        if bytes.len() == 8 && bytes.iter().all(u8::is_ascii_digit) {
            let mut v = [0u8; 8];
            v.copy_from_slice(bytes);
            Ok(Self(v))
        } else {
            let shown: String = t.chars().take(32).collect();
            Err(ProtoError::InvalidVersion(shown))
        }
    }

    /// The version as its eight digits.
    pub fn as_str(&self) -> &str {
        // The constructor admits ASCII digits only, which are valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("00000000")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Version {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Version {
    type Error = ProtoError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        // On the wire and in JSON a version carries no whitespace at all.
        if s.trim() != s {
            return Err(ProtoError::InvalidVersion(s));
        }
        Self::parse(&s)
    }
}

impl From<Version> for String {
    fn from(v: Version) -> Self {
        v.as_str().to_owned()
    }
}

/// Whether a root may be served and listed as downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Availability {
    /// Valid sentinel, no operation active.
    Ready,
    /// A download is writing into the root.
    Downloading,
    /// An install is extracting the root's archives.
    Installing,
    /// No valid `version.ini`: incomplete or foreign data.
    NotReady,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_accepts_eight_digits_with_whitespace() {
        assert_eq!(Version::parse("20250101").unwrap().as_str(), "20250101");
        assert_eq!(
            Version::parse("  20250301\r\n").unwrap().as_str(),
            "20250301"
        );
    }

    #[test]
    fn version_rejects_everything_else() {
        for bad in [
            "",
            "2025010",
            "202501011",
            "2025-01-01",
            "abcdefgh",
            "2025 0101",
            "２０２５０１０１",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn versions_order_as_dates() {
        let a = Version::parse("20250101").unwrap();
        let b = Version::parse("20250201").unwrap();
        let c = Version::parse("20260501").unwrap();
        assert!(a < b && b < c);
    }

    #[test]
    fn version_serde_is_a_plain_string() {
        let v = Version::parse("20250301").unwrap();
        let json = serde_json_like(&v);
        assert_eq!(json, "20250301");
        assert!(Version::try_from(" 20250301".to_string()).is_err());
    }

    fn serde_json_like(v: &Version) -> String {
        String::from(*v)
    }

    #[test]
    fn game_id_rules() {
        for good in ["bf1942", "mystery-game", "a", "cod5_x.y"] {
            assert!(GameId::new(good).is_ok(), "{good} refused");
        }
        let long = "x".repeat(65);
        for bad in ["", ".hidden", "a/b", "..", "a b", "é", long.as_str()] {
            assert!(GameId::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
