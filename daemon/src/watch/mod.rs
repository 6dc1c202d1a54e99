//! Live library: the games dir is watched with inotify (`tree.rs`, our own recursive
//! watch with a narrow mask); events are debounced and only the roots they touch are
//! rescanned. A periodic whole-dir rescan backs this up (inotify overflow, watch limits,
//! filesystems without inotify).

mod rewalks;
mod tree;

use std::collections::BTreeSet;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use lanspread_catalog::{is_reserved_top_level, Catalog, GameId};
use tokio::sync::Notify;
use tracing::{debug, warn};

use tree::Seen;
pub use tree::TreeWatch;

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

/// Changes seen by the watcher thread and not yet handled.
#[derive(Default)]
struct Pending {
    todo: BTreeSet<Touched>,
    /// Bumped by every relevant event, so the debounce sees activity.
    events: u64,
}

/// Folders (relative to the games dir) whose changes never matter: a root's `local/`
/// (installed files: thousands of folders) and the daemon's own metadata.
fn skipped(rel: &Path) -> bool {
    rel.components()
        .nth(1)
        .and_then(|c| c.as_os_str().to_str())
        .is_some_and(is_reserved_top_level)
}

/// Starts watching. Returns the watch (dropping it stops the watch), or `None` when
/// inotify is unavailable (the periodic rescan then carries the load alone).
///
/// The watch's thread maps each event to its root itself and drops events of roots with
/// an operation running (a download writes thousands of files; that operation rescans
/// its root when it ends), so those never wake the runtime; the runtime is woken once
/// per new root, not once per event.
pub fn start(shared: Arc<Shared>) -> Option<TreeWatch> {
    let pending = Arc::new(std::sync::Mutex::new(Pending::default()));
    let wake = Arc::new(Notify::new());
    let handler = {
        let (shared, pending, wake) = (shared.clone(), pending.clone(), wake.clone());
        move |seen: Seen| {
            let mut found: Vec<Touched> = match seen {
                Seen::Path(p) => touched(&shared.games_dir, &shared.catalog(), &p)
                    .into_iter()
                    .collect(),
                Seen::Lost => vec![Touched::All],
            };
            if !found.is_empty() {
                let busy = shared.lock();
                found.retain(|t| match t {
                    Touched::Root(id) => busy.operations.get(id).is_none(),
                    Touched::All => true,
                });
            }
            if found.is_empty() {
                return;
            }
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            p.events += 1;
            let mut new = false;
            for t in found {
                new |= p.todo.insert(t);
            }
            drop(p);
            if new {
                wake.notify_one();
            }
        }
    };
    let watch = match TreeWatch::start(&shared.games_dir, skipped, handler) {
        Ok(w) => w,
        Err(e) => {
            warn!(dir = %shared.games_dir.display(), "cannot watch the games dir ({e}); relying on the periodic rescan");
            return None;
        }
    };
    tokio::spawn(run(shared, pending, wake));
    Some(watch)
}

async fn run(shared: Arc<Shared>, pending: Arc<std::sync::Mutex<Pending>>, wake: Arc<Notify>) {
    let events = || pending.lock().unwrap_or_else(|e| e.into_inner()).events;
    loop {
        wake.notified().await;
        // Wait until the events stop for a moment (a copy in progress keeps going).
        let mut seen = events();
        loop {
            tokio::time::sleep(DEBOUNCE).await;
            let now = events();
            if now == seen {
                break;
            }
            seen = now;
        }
        let todo = std::mem::take(&mut pending.lock().unwrap_or_else(|e| e.into_inner()).todo);
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
    fn local_and_metadata_folders_are_not_watched() {
        for (rel, skip) in [
            ("ggoo", false),
            ("ggoo/sub", false),
            ("ggoo/sub/local", false),
            ("ggoo/local", true),
            ("ggoo/local/deep", true),
            ("ggoo/.lanspread", true),
            ("ggoo/.lanspread-staging/x", true),
            ("local", false),
        ] {
            assert_eq!(skipped(Path::new(rel)), skip, "{rel}");
        }
    }

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
            touched(g, &c, Path::new("/games/ggoo/.lanspread/pieces.json")),
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
