//! Hashing in flight: which files are being hashed now (so the background indexer and a
//! manifest request never hash one file twice at once: the second waits for the first)
//! and how far the hashing of each root is (what a source tells a downloader that waits
//! for its manifest).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// How far the hashing of a root is, in bytes of its files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashProgress {
    /// Bytes whose hashes are known (cached before, or hashed since).
    pub done: u64,
    /// The root's bytes.
    pub total: u64,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Files being hashed now, by path.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    busy: Mutex<BTreeSet<PathBuf>>,
    freed: Condvar,
}

/// One claimed file: released (and its waiters woken) on drop.
pub(crate) struct Claim<'a> {
    claims: &'a Claims,
    path: PathBuf,
}

impl Claims {
    /// Claims `path` unless someone hashes it now.
    pub(crate) fn try_claim(&self, path: &Path) -> Option<Claim<'_>> {
        locked(&self.busy)
            .insert(path.to_path_buf())
            .then(|| Claim {
                claims: self,
                path: path.to_path_buf(),
            })
    }

    /// Blocks until nobody hashes `path` (then `true`) or `go_on` says no (`false`,
    /// asked every 100 ms).
    pub(crate) fn wait_free(&self, path: &Path, go_on: &dyn Fn() -> bool) -> bool {
        let mut busy = locked(&self.busy);
        while busy.contains(path) {
            if !go_on() {
                return false;
            }
            busy = self
                .freed
                .wait_timeout(busy, std::time::Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        locked(&self.claims.busy).remove(&self.path);
        self.claims.freed.notify_all();
    }
}

#[derive(Debug)]
struct Entry {
    users: usize,
    progress: HashProgress,
}

/// How far the hashing of each root being hashed is; a root's entry lives while someone
/// builds its manifest.
#[derive(Debug, Default)]
pub(crate) struct RootProgress {
    roots: Mutex<BTreeMap<PathBuf, Entry>>,
}

/// One user of a root's entry: leaves it on drop (the last one removes it).
pub(crate) struct Watching<'a> {
    all: &'a RootProgress,
    root: PathBuf,
}

impl RootProgress {
    /// Starts watching `root` (`total` bytes, `todo` of them not hashed yet). The first
    /// user sets the figures; a second one joins them (what it finds missing is a part of
    /// what the first found missing, and whoever hashes a file counts it).
    pub(crate) fn begin(&self, root: &Path, total: u64, todo: u64) -> Watching<'_> {
        locked(&self.roots)
            .entry(root.to_path_buf())
            .and_modify(|e| e.users += 1)
            .or_insert(Entry {
                users: 1,
                progress: HashProgress {
                    done: total.saturating_sub(todo),
                    total,
                },
            });
        Watching {
            all: self,
            root: root.to_path_buf(),
        }
    }

    /// Counts `bytes` of `root` as hashed.
    pub(crate) fn add(&self, root: &Path, bytes: u64) {
        if let Some(e) = locked(&self.roots).get_mut(root) {
            e.progress.done = (e.progress.done + bytes).min(e.progress.total);
        }
    }

    /// Takes back `bytes` of `root` counted by a hashing that stopped or failed.
    pub(crate) fn take_back(&self, root: &Path, bytes: u64) {
        if let Some(e) = locked(&self.roots).get_mut(root) {
            e.progress.done = e.progress.done.saturating_sub(bytes);
        }
    }

    /// How far `root` is, while someone builds its manifest.
    pub(crate) fn get(&self, root: &Path) -> Option<HashProgress> {
        locked(&self.roots).get(root).map(|e| e.progress)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        let mut roots = locked(&self.all.roots);
        if let Some(e) = roots.get_mut(&self.root) {
            e.users -= 1;
            if e.users == 0 {
                roots.remove(&self.root);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_claimed_file_is_waited_for_and_freed_on_drop() {
        let claims = Arc::new(Claims::default());
        let p = Path::new("/g/a.bin");
        let held = claims.try_claim(p).unwrap();
        assert!(claims.try_claim(p).is_none(), "one hasher per file");
        assert!(claims.try_claim(Path::new("/g/b.bin")).is_some());
        let waiter = {
            let claims = claims.clone();
            std::thread::spawn(move || {
                assert!(claims.wait_free(Path::new("/g/a.bin"), &|| true));
                claims.try_claim(Path::new("/g/a.bin")).is_some()
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(held);
        assert!(waiter.join().unwrap(), "freed, claimable again");
        // A waiter told to stop gives up while the file is still claimed.
        let _held = claims.try_claim(p).unwrap();
        assert!(!claims.wait_free(p, &|| false));
    }

    #[test]
    fn progress_is_shared_by_the_users_of_a_root_and_ends_with_the_last() {
        let all = RootProgress::default();
        let root = Path::new("/g/cnc4");
        let first = all.begin(root, 100, 60);
        assert_eq!(
            all.get(root),
            Some(HashProgress {
                done: 40,
                total: 100
            })
        );
        all.add(root, 10);
        // A request joining later finds less missing; the figures stay the first's.
        let second = all.begin(root, 100, 50);
        assert_eq!(
            all.get(root),
            Some(HashProgress {
                done: 50,
                total: 100
            })
        );
        all.add(root, 500);
        assert_eq!(all.get(root).unwrap().done, 100, "never past the total");
        drop(first);
        assert!(all.get(root).is_some());
        drop(second);
        assert_eq!(all.get(root), None);
    }
}
