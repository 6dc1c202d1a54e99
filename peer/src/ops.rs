//! Single-flight operations: at most one download, install, uninstall or removal per game.

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
    /// The game's files are being deleted (`remove`).
    Remove,
}

impl OpKind {
    /// Lowercase name for JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Download => "download",
            OpKind::Install => "install",
            OpKind::Uninstall => "uninstall",
            OpKind::Remove => "remove",
        }
    }
}

/// How far an operation is, in bytes. `total` is 0 until the operation knows its size
/// (a download before the manifest is chosen, an install before its archives are listed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes done (for a resumed download, including what was already on disk).
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

impl Progress {
    /// Percent done, one decimal; `None` while the size is unknown. An empty operation
    /// whose size is known to be 0 is 100 % done.
    pub fn percent(self) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let p = self.done.min(self.total) as f64 * 100.0 / self.total as f64;
        Some((p * 10.0).floor() / 10.0)
    }
}

/// One running operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// What it does.
    pub kind: OpKind,
    /// How far it is.
    pub progress: Progress,
    /// A download waiting for its manifest while a source hashes the game: how far that
    /// source is (the one furthest along); `None` once the size is known.
    pub hashing: Option<Progress>,
    /// A download's bytes verified and written of chunks still on their way (not in
    /// `progress.done` until their chunk is whole).
    pub partial: u64,
    /// A download none of whose sources can send now, waiting for them: partial sources
    /// to verify more, or sources whose link closed to be back.
    pub waiting: bool,
}

impl Operation {
    /// What `status` calls its state: `hashing` (its manifest waits for a source that
    /// hashes the game), `waiting` (for its sources) or `running`.
    pub fn state(&self) -> &'static str {
        if self.hashing.is_some() {
            "hashing"
        } else if self.waiting {
            "waiting"
        } else {
            "running"
        }
    }

    /// How far it is, a download's chunks on their way included: never past the total
    /// (a chunk's bytes move from on their way to done within one pass of the transfer).
    pub fn shown(&self) -> Progress {
        let done = self.progress.done.saturating_add(self.partial);
        Progress {
            done: done.min(self.progress.total.max(self.progress.done)),
            total: self.progress.total,
        }
    }
}

/// The active operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Operations {
    active: BTreeMap<GameId, Operation>,
}

impl Operations {
    /// Starts an operation, refusing if one runs on the game.
    pub fn begin(&mut self, id: &GameId, kind: OpKind) -> Result<(), PeerError> {
        if self.active.contains_key(id) {
            return Err(PeerError::Busy(id.clone()));
        }
        self.active.insert(
            id.clone(),
            Operation {
                kind,
                progress: Progress::default(),
                hashing: None,
                partial: 0,
                waiting: false,
            },
        );
        Ok(())
    }

    /// Ends the operation on a game (no-op if none).
    pub fn end(&mut self, id: &GameId) {
        self.active.remove(id);
    }

    /// The kind of operation on a game.
    pub fn get(&self, id: &GameId) -> Option<OpKind> {
        self.active.get(id).map(|o| o.kind)
    }

    /// Sets the size once known and what is already done (no-op without an operation).
    pub fn sized(&mut self, id: &GameId, total: u64, done: u64) {
        if let Some(o) = self.active.get_mut(id) {
            o.progress = Progress { done, total };
            o.hashing = None;
        }
    }

    /// A source of a download that waits for its manifest reports how far its hashing
    /// is; the furthest one is kept (no-op without an operation or once sized).
    pub fn hashing(&mut self, id: &GameId, at: Progress) {
        if let Some(o) = self.active.get_mut(id) {
            if o.progress.total == 0 {
                let best = o
                    .hashing
                    .map_or(at, |h| if at.percent() >= h.percent() { at } else { h });
                o.hashing = Some(best);
            }
        }
    }

    /// Counts `bytes` more as done (no-op without an operation).
    pub fn advance(&mut self, id: &GameId, bytes: u64) {
        if let Some(o) = self.active.get_mut(id) {
            o.progress.done = o.progress.done.saturating_add(bytes);
        }
    }

    /// Sets what a download verified of the chunks on their way (no-op without an
    /// operation).
    pub fn set_partial(&mut self, id: &GameId, bytes: u64) {
        if let Some(o) = self.active.get_mut(id) {
            o.partial = bytes;
        }
    }

    /// Whether a download waits for its sources (no-op without an operation).
    pub fn set_waiting(&mut self, id: &GameId, waiting: bool) {
        if let Some(o) = self.active.get_mut(id) {
            o.waiting = waiting;
        }
    }

    /// All operations, sorted by game.
    pub fn iter(&self) -> impl Iterator<Item = (&GameId, Operation)> {
        self.active.iter().map(|(g, o)| (g, *o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_is_hashing_waiting_or_running() {
        let mut ops = Operations::default();
        let g = GameId::new("ggoo").unwrap();
        ops.begin(&g, OpKind::Download).unwrap();
        let state = |ops: &Operations| ops.iter().next().unwrap().1.state();
        assert_eq!(state(&ops), "running");
        ops.hashing(&g, Progress { done: 1, total: 4 });
        assert_eq!(state(&ops), "hashing");
        ops.sized(&g, 100, 0);
        ops.set_waiting(&g, true);
        assert_eq!(state(&ops), "waiting");
        ops.set_waiting(&g, false);
        assert_eq!(state(&ops), "running");
    }

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

    #[test]
    fn progress_counts_bytes_and_reports_percent() {
        let mut ops = Operations::default();
        let g = GameId::new("ggoo").unwrap();
        ops.begin(&g, OpKind::Download).unwrap();
        let first = ops.iter().next().unwrap().1.progress;
        assert_eq!(first.percent(), None, "size unknown yet");
        ops.sized(&g, 1000, 250);
        ops.advance(&g, 123);
        let p = ops.iter().next().unwrap().1.progress;
        assert_eq!(
            p,
            Progress {
                done: 373,
                total: 1000
            }
        );
        assert_eq!(p.percent(), Some(37.3));
        // Chunks on their way count as shown, not as done.
        ops.set_partial(&g, 100);
        let op = ops.iter().next().unwrap().1;
        assert_eq!(op.progress.done, 373);
        assert_eq!(op.shown().percent(), Some(47.3));
        ops.set_partial(&g, 0);
        ops.advance(&g, 10_000);
        assert_eq!(ops.iter().next().unwrap().1.progress.percent(), Some(100.0));
        ops.set_partial(&g, 10_000);
        let shown = ops.iter().next().unwrap().1.shown();
        assert_eq!((shown.done, shown.percent()), (10_373, Some(100.0)));
        // Chunks on their way never show more than the total.
        ops.sized(&g, 1000, 900);
        ops.set_partial(&g, 500);
        assert_eq!(ops.iter().next().unwrap().1.shown().done, 1000);
        // A new operation starts from zero; updates for a game without one do nothing.
        ops.end(&g);
        ops.advance(&g, 5);
        ops.sized(&g, 5, 5);
        assert_eq!(ops.iter().count(), 0);
        ops.begin(&g, OpKind::Install).unwrap();
        assert_eq!(ops.iter().next().unwrap().1.progress, Progress::default());
    }

    #[test]
    fn hashing_progress_keeps_the_furthest_source_until_the_size_is_known() {
        let mut ops = Operations::default();
        let g = GameId::new("ggoo").unwrap();
        ops.begin(&g, OpKind::Download).unwrap();
        let at = |done, total| Progress { done, total };
        ops.hashing(&g, at(10, 100));
        ops.hashing(&g, at(5, 100));
        assert_eq!(ops.iter().next().unwrap().1.hashing, Some(at(10, 100)));
        ops.hashing(&g, at(60, 100));
        assert_eq!(ops.iter().next().unwrap().1.hashing, Some(at(60, 100)));
        ops.sized(&g, 100, 0);
        assert_eq!(ops.iter().next().unwrap().1.hashing, None);
        ops.hashing(&g, at(70, 100));
        assert_eq!(
            ops.iter().next().unwrap().1.hashing,
            None,
            "sized: transferring"
        );
    }

    #[test]
    fn percent_rounds_down_so_unfinished_never_reads_100() {
        let p = Progress {
            done: 9_999,
            total: 10_000,
        };
        assert_eq!(p.percent(), Some(99.9));
        let p = Progress {
            done: 999_999,
            total: 1_000_000,
        };
        assert_eq!(p.percent(), Some(99.9));
    }
}
