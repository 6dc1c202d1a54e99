//! Single-flight operations: at most one download, install or uninstall per game.

use std::collections::BTreeMap;

use lanspread_catalog::GameId;

use crate::PeerError;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Download in progress.
    Download,
    /// Install in progress.
    Install,
    /// Uninstall in progress.
    Uninstall,
}

impl OpKind {
    /// Lowercase name for JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Download => "download",
            OpKind::Install => "install",
            OpKind::Uninstall => "uninstall",
        }
    }
}

/// The active operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operations {
    active: BTreeMap<GameId, OpKind>,
}

impl Operations {
    /// Starts an operation, refusing if one runs on the game.
    pub fn begin(&mut self, id: &GameId, kind: OpKind) -> Result<(), PeerError> {
        if self.active.contains_key(id) {
            return Err(PeerError::Busy(id.clone()));
        }
        self.active.insert(id.clone(), kind);
        Ok(())
    }

    /// Ends the operation on a game (no-op if none).
    pub fn end(&mut self, id: &GameId) {
        self.active.remove(id);
    }

    /// The operation on a game.
    pub fn get(&self, id: &GameId) -> Option<OpKind> {
        self.active.get(id).copied()
    }

    /// All operations, sorted by game.
    pub fn iter(&self) -> impl Iterator<Item = (&GameId, OpKind)> {
        self.active.iter().map(|(g, k)| (g, *k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_flight_per_game() {
        let mut ops = Operations::default();
        let g = GameId::new("ggoo").unwrap();
        let h = GameId::new("cnc4").unwrap();
        ops.begin(&g, OpKind::Download).unwrap();
        ops.begin(&h, OpKind::Download).unwrap();
        let err = ops.begin(&g, OpKind::Install).unwrap_err();
        assert_eq!(
            err.to_string(),
            "operation already in progress for game ggoo"
        );
        ops.end(&g);
        ops.begin(&g, OpKind::Install).unwrap();
        assert_eq!(ops.get(&g), Some(OpKind::Install));
        assert_eq!(ops.iter().count(), 2);
    }
}
