//! Live library: the games dir is watched with inotify (notify crate); events are
//! debounced and only the roots they touch are rescanned. A periodic whole-dir rescan
//! backs this up (inotify overflow, watch limits, filesystems without inotify).

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lanspread_catalog::{is_reserved_top_level, Catalog, GameId};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::state::Shared;

/// Quiet time after the last event before rescanning.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// What a filesystem event touches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Touched {
    /// One game root.
    Root(GameId),
    /// Unknown extent (the games dir itself, or a lost event): rescan everything.
    All,
}

/// Maps a changed path to what must be rescanned; `None` for paths that never matter
/// (non-catalog folders, `local/`, `.lanspread*` metadata).
pub fn touched(games: &Path, catalog: &Catalog, path: &Path) -> Option<Touched> {
    let rel = path.strip_prefix(games).ok()?;
    let mut comps = rel.components().filter_map(|c| match c {
        Component::Normal(s) => s.to_str(),
        _ => None,
    });
    let Some(first) = comps.next() else {
        return Some(Touched::All);
    };
    let id = catalog.get(first)?;
    match comps.next() {
        Some(second) if is_reserved_top_level(second) => None,
        _ => Some(Touched::Root(id)),
    }
}

/// Starts watching. Returns the watcher (dropping it stops the watch), or `None` when
/// inotify is unavailable (the periodic rescan then carries the load alone).
pub fn start(shared: Arc<Shared>) -> Option<RecommendedWatcher> {
    let (tx, rx) = mpsc::unbounded_channel::<Option<PathBuf>>();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            if ev.need_rescan() {
                let _ = tx.send(None);
            }
            for p in ev.paths {
                let _ = tx.send(Some(p));
            }
        }
        Err(_) => {
            let _ = tx.send(None);
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            warn!("no inotify watcher ({e}); relying on the periodic rescan");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&shared.games_dir, RecursiveMode::Recursive) {
        warn!(dir = %shared.games_dir.display(), "cannot watch the games dir ({e}); relying on the periodic rescan");
        return None;
    }
    tokio::spawn(run(shared, rx));
    Some(watcher)
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Option<PathBuf>>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Collect until the events stop for a moment (a copy in progress keeps going).
        while let Ok(Some(next)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            batch.push(next);
        }
        let mut todo = BTreeSet::new();
        for p in batch {
            match p {
                Some(p) => todo.extend(touched(&shared.games_dir, &shared.catalog, &p)),
                None => {
                    todo.insert(Touched::All);
                }
            }
        }
        if todo.contains(&Touched::All) {
            debug!("watch: full rescan");
            shared.rescan().await;
            continue;
        }
        for t in todo {
            if let Touched::Root(id) = t {
                // A running download or install rescans its root when it ends.
                if shared.lock().operations.get(&id).is_some() {
                    continue;
                }
                debug!(game = %id, "watch: rescan");
                shared.rescan_root(&id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_paths_to_roots() {
        let g = Path::new("/games");
        let c = Catalog::builtin();
        let root = |s: &str| Some(Touched::Root(GameId::new(s).unwrap()));
        assert_eq!(touched(g, &c, Path::new("/games")), Some(Touched::All));
        assert_eq!(touched(g, &c, Path::new("/games/ggoo")), root("ggoo"));
        assert_eq!(
            touched(g, &c, Path::new("/games/ggoo/version.ini")),
            root("ggoo")
        );
        assert_eq!(
            touched(g, &c, Path::new("/games/ggoo/sub/x.bin")),
            root("ggoo")
        );
        assert_eq!(
            touched(g, &c, Path::new("/games/ggoo/local/game.exe")),
            None
        );
        assert_eq!(
            touched(g, &c, Path::new("/games/ggoo/.lanspread/chunks.json")),
            None
        );
        assert_eq!(
            touched(g, &c, Path::new("/games/ggoo/.lanspread-staging/x")),
            None
        );
        assert_eq!(touched(g, &c, Path::new("/games/not-a-game/x")), None);
        assert_eq!(touched(g, &c, Path::new("/elsewhere/ggoo")), None);
    }
}
