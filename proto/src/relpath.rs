//! Checked relative paths inside a game root.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ProtoError, LOCAL_DIR, METADATA_PREFIX};

/// Longest accepted relative path, in bytes.
const MAX_PATH_LEN: usize = 4096;

/// A `/`-separated path relative to a game root that can never escape it: no empty,
/// `.` or `..` components, not absolute, no NUL or backslash, and not under `local/` or
/// `.lanspread*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(String);

/// True when a top-level entry of a game root is never advertised, transferred or accepted.
pub fn is_reserved_top_level(name: &str) -> bool {
    name == LOCAL_DIR || name.starts_with(METADATA_PREFIX)
}

/// True when the top-level entry `name` is not itself reserved (nor the sentinel
/// `version.ini`), but a filesystem that ignores case would take it for one: `LOCAL`,
/// `.LanSpread-x`, `Version.INI`, compared in Unicode upper case (so `ſ` counts as `s`
/// and `ı` as `i`, as ext4's and exFAT's folding do), and with trailing dots and spaces
/// dropped (vfat and exFAT drop them from names). Only such a filesystem makes these
/// names a danger; on others they are ordinary names.
pub fn folds_to_reserved(name: &str) -> bool {
    if is_reserved_top_level(name) || name == crate::VERSION_FILE {
        return false;
    }
    let up = name.trim_end_matches(['.', ' ']).to_uppercase();
    up == LOCAL_DIR.to_ascii_uppercase()
        || up == crate::VERSION_FILE.to_ascii_uppercase()
        || up.starts_with(&METADATA_PREFIX.to_ascii_uppercase())
}

/// Two names among `paths` and their folders that a filesystem that ignores case takes
/// for one (`a.bin` and `A.BIN`; the folders of `Data/a.bin` and `data/b.bin`; the file
/// `A` and the folder of `a/x`), compared in Unicode upper case: the first such pair, as
/// spelt. Each folder is compared once, however many paths lie under it.
pub fn case_clash<'a>(paths: impl IntoIterator<Item = &'a RelPath>) -> Option<(&'a str, &'a str)> {
    let mut seen: std::collections::HashMap<String, &'a str> = std::collections::HashMap::new();
    let mut folders: std::collections::HashSet<&'a str> = std::collections::HashSet::new();
    for p in paths {
        let p = p.as_str();
        // The path itself, then its folders from the deepest up to the first one seen
        // as spelt (its own folders were compared with it).
        let ends = std::iter::once(p.len()).chain(p.match_indices('/').map(|(i, _)| i).rev());
        for (n, end) in ends.enumerate() {
            let name = &p[..end];
            if n > 0 && !folders.insert(name) {
                break;
            }
            match seen.insert(name.to_uppercase(), name) {
                Some(first) if first != name => return Some((first, name)),
                _ => {}
            }
        }
    }
    None
}

impl RelPath {
    /// Checks and wraps a relative path.
    pub fn new(path: &str) -> Result<Self, ProtoError> {
        let refuse = |why| {
            Err(ProtoError::InvalidPath {
                path: path.chars().take(256).collect(),
                why,
            })
        };
        if path.is_empty() {
            return refuse("empty");
        }
        if path.len() > MAX_PATH_LEN {
            return refuse("too long");
        }
        if path.starts_with('/') {
            return refuse("absolute");
        }
        if path.contains('\0') || path.contains('\\') {
            return refuse("contains NUL or backslash");
        }
        for (i, comp) in path.split('/').enumerate() {
            match comp {
                "" => return refuse("empty component"),
                "." | ".." => return refuse("dot component escapes the root"),
                c if i == 0 && is_reserved_top_level(c) => {
                    return refuse("under local/ or .lanspread*")
                }
                _ => {}
            }
        }
        Ok(Self(path.to_owned()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Joins this path onto a root directory.
    pub fn to_path(&self, root: &Path) -> PathBuf {
        let mut p = root.to_path_buf();
        p.extend(self.0.split('/'));
        p
    }

    /// True for the commit sentinel `version.ini` at the top of the root.
    pub fn is_version_file(&self) -> bool {
        self.0 == crate::VERSION_FILE
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RelPath {
    type Error = ProtoError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> Self {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for good in [
            "a.eti",
            "dir/sub/file.bin",
            "localx/file",
            "x/local/y",
            "x/.lanspread",
        ] {
            assert!(RelPath::new(good).is_ok(), "{good} refused");
        }
    }

    #[test]
    fn refuses_escapes_and_reserved_entries() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "local",
            "local/game.exe",
            ".lanspread",
            ".lanspread-meta/x",
            "a\\..\\b",
            "nul\0byte",
        ] {
            assert!(RelPath::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_a_case_blind_filesystem_takes_for_reserved_ones_are_told_apart() {
        for folds in [
            "LOCAL",
            "Local",
            "local.",
            "local. .",
            "Version.ini",
            "VERSION.INI",
            "versıon.ını",
            ".LANSPREAD",
            ".LanSpread-meta",
            ".lanſpread",
        ] {
            assert!(folds_to_reserved(folds), "{folds:?}");
        }
        // The reserved names themselves are refused by `RelPath` (and `version.ini` is
        // the sentinel); names that only look alike are ordinary.
        for plain in [
            "local",
            ".lanspread",
            ".lanspread-x",
            "version.ini",
            "locale",
            "Locals",
            "version.ini.bak",
            "lanspread",
            ".lan",
        ] {
            assert!(!folds_to_reserved(plain), "{plain:?}");
        }
    }

    #[test]
    fn paths_that_differ_only_in_case_clash() {
        let paths: Vec<RelPath> = ["a/x.bin", "b/X.bin", "A/x.BIN", "c"]
            .iter()
            .map(|p| RelPath::new(p).unwrap())
            .collect();
        assert_eq!(case_clash(&paths), Some(("a/x.bin", "A/x.BIN")));
        assert!(case_clash(&paths[..2]).is_none());
        let long_s = [RelPath::new("ſave").unwrap(), RelPath::new("save").unwrap()];
        assert!(case_clash(&long_s).is_some());
        let clash = |ps: &[&str]| {
            let ps: Vec<RelPath> = ps.iter().map(|p| RelPath::new(p).unwrap()).collect();
            case_clash(&ps).map(|(a, b)| (a.to_owned(), b.to_owned()))
        };
        // Folders that are one, whatever the files in them are called.
        assert_eq!(
            clash(&["Data/a.bin", "data/b.bin"]),
            Some(("Data".into(), "data".into()))
        );
        assert_eq!(
            clash(&["x/Sub/a", "x/y", "x/sub/deeper/b"]),
            Some(("x/Sub".into(), "x/sub".into()))
        );
        // A file and a folder that are one.
        assert_eq!(clash(&["A", "a/x"]), Some(("A".into(), "a".into())));
        // Files in one folder, spelt alike, clash with nothing; a path listed twice is
        // no clash of case (refused elsewhere).
        assert_eq!(clash(&["d/a", "d/b", "d/e/f", "d/e/g", "d/a"]), None);
        assert_eq!(clash(&["x/Y/f.bin", "x/y.bin"]), None);
    }

    #[test]
    fn joins_under_root() {
        let p = RelPath::new("a/b.txt").unwrap();
        assert_eq!(p.to_path(Path::new("/g/x")), PathBuf::from("/g/x/a/b.txt"));
    }
}
