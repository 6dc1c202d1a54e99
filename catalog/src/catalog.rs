//! The list of game ids this node knows: built in, or replaced by a `--catalog FILE`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{CatalogError, GameId};

/// Ids known without a catalog file.
pub const BUILTIN_IDS: &[&str] = &[
    "alienswarm",
    "bf1942",
    "bfbc2",
    "cnc4",
    "cnctw",
    "cod5",
    "ggoo",
];

/// One known game.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The game id.
    pub id: GameId,
    /// Optional human name from the catalog file.
    pub name: Option<String>,
}

/// The set of game ids a node lists, serves and downloads. Unknown ids are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    entries: BTreeMap<GameId, Option<String>>,
}

impl Catalog {
    /// The built-in catalog.
    pub fn builtin() -> Self {
        let entries = BUILTIN_IDS
            .iter()
            .filter_map(|id| GameId::new(id).ok())
            .map(|id| (id, None))
            .collect();
        Self { entries }
    }

    /// Parses a catalog file: one id per line, optional display name after whitespace,
    /// `#` starts a comment, blank lines are skipped.
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let mut entries = BTreeMap::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (id, name) = match line.split_once(char::is_whitespace) {
                Some((id, name)) => (id, Some(name.trim().to_owned())),
                None => (line, None),
            };
            let id = GameId::new(id).map_err(|e| CatalogError::CatalogLine {
                line: n + 1,
                source: Box::new(e.into()),
            })?;
            entries.insert(id, name.filter(|n| !n.is_empty()));
        }
        Ok(Self { entries })
    }

    /// Reads and parses a catalog file.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError::io(path, e))?;
        Self::parse(&text)
    }

    /// True when `id` is known.
    pub fn contains(&self, id: &GameId) -> bool {
        self.entries.contains_key(id)
    }

    /// Looks up an id given as text; `None` when it is malformed or unknown.
    pub fn get(&self, id: &str) -> Option<GameId> {
        let id = GameId::new(id).ok()?;
        self.entries.contains_key(&id).then_some(id)
    }

    /// All entries, sorted by id.
    pub fn entries(&self) -> impl Iterator<Item = CatalogEntry> + '_ {
        self.entries.iter().map(|(id, name)| CatalogEntry {
            id: id.clone(),
            name: name.clone(),
        })
    }

    /// Number of known ids.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no id is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_the_contract_ids() {
        let c = Catalog::builtin();
        for id in [
            "alienswarm",
            "bf1942",
            "bfbc2",
            "cnc4",
            "cnctw",
            "cod5",
            "ggoo",
        ] {
            assert!(c.get(id).is_some(), "{id} missing");
        }
        assert!(c.get("mystery-game").is_none());
        assert_eq!(c.len(), 7);
    }

    #[test]
    fn parses_ids_names_and_comments() {
        let c = Catalog::parse(
            "# my LAN\n\nmystery-game  Mystery Game Deluxe\nbf1942 # Battlefield\n  ggoo\n",
        )
        .unwrap();
        let entries: Vec<_> = c.entries().collect();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].id.as_str(), "bf1942");
        assert_eq!(entries[0].name, None);
        assert_eq!(entries[2].id.as_str(), "mystery-game");
        assert_eq!(entries[2].name.as_deref(), Some("Mystery Game Deluxe"));
        assert!(
            c.get("alienswarm").is_none(),
            "a file replaces the built-in list"
        );
    }

    #[test]
    fn bad_line_names_its_number() {
        let err = Catalog::parse("ok\n../evil\n").unwrap_err();
        assert!(err.to_string().starts_with("catalog line 2"), "{err}");
    }
}
