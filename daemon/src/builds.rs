//! Manifest builds shared by the requests that want the same one: a source's answer to a
//! manifest request is built on a blocking thread (`index::Hashing`), and a request for a
//! root that is being built waits for that build instead of starting another.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use lanspread_catalog::GameRoot;
use tokio::sync::watch;

/// A root's manifest, ready to send.
#[derive(Clone)]
pub struct Built {
    /// The `Files` frame, shared with every answer of the same manifest
    /// (`serve::ManifestFrames`).
    pub frame: bytes::Bytes,
    /// Bytes read and hashed to build it.
    pub hashed: u64,
}

/// What a build ends with (`None` while it runs).
pub type Outcome = Option<Result<Built, String>>;

/// One manifest build on a blocking thread, shared by the requests that wait for it;
/// the last one gone stops it.
pub struct Build {
    /// The root as scanned when the build began.
    root: Arc<GameRoot>,
    outcome: watch::Receiver<Outcome>,
    stop: Arc<AtomicBool>,
}

impl Build {
    /// Where its outcome comes.
    pub fn outcome(&self) -> watch::Receiver<Outcome> {
        self.outcome.clone()
    }

    /// Still running: no outcome yet, and its thread is there to send one (a thread that
    /// went without one, having panicked, is not joined).
    fn running(&self) -> bool {
        self.outcome.borrow().is_none() && self.outcome.has_changed().is_ok()
    }
}

impl Drop for Build {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The manifest builds running, one per root: a request for a root that is being built
/// (as scanned: the same files and folders) waits for that build instead of starting
/// another. A request that joins late gets a manifest of files looked at since the build
/// began (at most one build old: a file rewritten meanwhile at the same size is refused
/// when read, "changed since hashed"). A party's clients ask a file server for one manifest within seconds: one
/// build (one decoded manifest, one stat of every file) serves them all, where each used
/// to build its own on a blocking thread of its own. A request that comes after a build
/// ended builds again (from the hash cache: what changed since is seen).
#[derive(Default)]
pub struct Builds {
    running: Mutex<Vec<Weak<Build>>>,
}

impl Builds {
    /// The build of `root` running now, or a new one: `spawn` starts it with the root,
    /// where to send its outcome and the flag that asks it to stop.
    pub fn join_or_start(
        &self,
        root: GameRoot,
        spawn: impl FnOnce(Arc<GameRoot>, watch::Sender<Outcome>, Arc<AtomicBool>),
    ) -> Arc<Build> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|b| b.strong_count() > 0);
        let joined = running
            .iter()
            .filter_map(Weak::upgrade)
            .find(|b| *b.root == root && b.running());
        if let Some(build) = joined {
            return build;
        }
        let (tx, outcome) = watch::channel(None);
        let stop = Arc::new(AtomicBool::new(false));
        let build = Arc::new(Build {
            root: Arc::new(root),
            outcome,
            stop: stop.clone(),
        });
        running.push(Arc::downgrade(&build));
        spawn(build.root.clone(), tx, stop);
        build
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(name: &str) -> GameRoot {
        GameRoot {
            id: lanspread_catalog::GameId::new("ggoo").unwrap(),
            dir: std::path::PathBuf::from(format!("/games/{name}")),
            version: None,
            files: Vec::new(),
            folders: Vec::new(),
            installed: false,
            problem: None,
        }
    }

    /// Starts nothing: hands the test the build's outcome sender and stop flag.
    fn start(
        builds: &Builds,
        root: &GameRoot,
        started: &mut Vec<(watch::Sender<Outcome>, Arc<AtomicBool>)>,
    ) -> Arc<Build> {
        builds.join_or_start(root.clone(), |_, tx, stop| started.push((tx, stop)))
    }

    #[test]
    fn requests_for_a_root_being_built_wait_for_that_build() {
        let builds = Builds::default();
        let mut started = Vec::new();
        let a = start(&builds, &root("a"), &mut started);
        let b = start(&builds, &root("a"), &mut started);
        assert!(Arc::ptr_eq(&a, &b), "joined");
        assert_eq!(started.len(), 1);
        // Another root, or the same folder scanned otherwise: builds of their own.
        let c = start(&builds, &root("c"), &mut started);
        let mut changed = root("a");
        changed
            .folders
            .push(lanspread_catalog::RelPath::new("saves").unwrap());
        let d = start(&builds, &changed, &mut started);
        assert!(!Arc::ptr_eq(&a, &c) && !Arc::ptr_eq(&a, &d));
        assert_eq!(started.len(), 3);
        // Ended: the next request builds again (what changed since is seen).
        let frame = bytes::Bytes::from_static(b"frame");
        let _ = started[0].0.send(Some(Ok(Built { frame, hashed: 0 })));
        let e = start(&builds, &root("a"), &mut started);
        assert!(!Arc::ptr_eq(&a, &e));
        assert_eq!(started.len(), 4);
    }

    #[test]
    fn a_build_stops_once_every_request_waiting_for_it_is_gone() {
        let builds = Builds::default();
        let mut started = Vec::new();
        let a = start(&builds, &root("a"), &mut started);
        let b = start(&builds, &root("a"), &mut started);
        let stop = started[0].1.clone();
        drop(a);
        assert!(!stop.load(Ordering::Relaxed), "one still waits");
        drop(b);
        assert!(stop.load(Ordering::Relaxed));
        // Gone: a new request starts a new build.
        let _c = start(&builds, &root("a"), &mut started);
        assert_eq!(started.len(), 2);
    }

    #[tokio::test]
    async fn every_request_gets_the_outcome() {
        let builds = Builds::default();
        let mut started = Vec::new();
        let a = start(&builds, &root("a"), &mut started);
        let b = start(&builds, &root("a"), &mut started);
        let (tx, _) = started.pop().unwrap();
        let mut outcomes = [a.outcome(), b.outcome()];
        let _ = tx.send(Some(Err("no such file".into())));
        for o in &mut outcomes {
            let got = o.wait_for(Option::is_some).await.unwrap().clone();
            assert!(matches!(got, Some(Err(e)) if e == "no such file"));
        }
        // A build whose thread went without an outcome: the waiters hear it ended.
        let c = start(&builds, &root("c"), &mut started);
        drop(started.pop());
        assert!(c.outcome().wait_for(Option::is_some).await.is_err());
        // ... and is not joined: the next request builds again.
        let again = start(&builds, &root("c"), &mut started);
        assert!(!Arc::ptr_eq(&c, &again));
        assert_eq!(started.len(), 1);
    }
}
