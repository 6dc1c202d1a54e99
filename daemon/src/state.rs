//! Shared daemon state. The lock is a plain mutex that is never held across an await.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use lanspread_catalog::{Availability, Catalog, GameId, Library};
use lanspread_peer::{OpKind, Operations};
use lanspread_proto::GameAd;
use tokio::sync::watch;

use crate::directory::Directory;
use crate::events::EventBus;
use crate::handshake::LocalPeer;
use crate::partial::Partials;
use crate::resources::Transfers;
use lanspread_control::api::{GamesList, LocalGame, LocalGameState, OperationInfo, StatusInfo};

/// The library and the operations, behind one lock: an operation starts only on a root
/// in a fitting state, and what is advertised and served is a root with no operation.
#[derive(Default)]
pub struct Inner {
    /// Local game roots.
    pub library: Library,
    /// Active operations per game.
    pub operations: Operations,
    /// Bumped by every targeted root rescan, so a slower whole-dir scan that started
    /// earlier never overwrites a newer root state.
    pub library_gen: u64,
}

/// State shared by every task of the daemon.
pub struct Shared {
    /// Who we are in every hello: id, bound QUIC address, LAN secret (peers must prove
    /// the same one).
    pub me: LocalPeer,
    /// The transfer resources (endpoints, threads, limits, writer, serve slots, hashes).
    pub net: Transfers,
    /// The peer directory (links, peer libraries, redials), under its own lock.
    pub peers: Directory,
    /// The partial copies of running downloads: announced, and served chunk by chunk.
    pub partials: Partials,
    /// The games directory.
    pub games_dir: PathBuf,
    /// Known game ids (reload may replace them: see [`Shared::catalog`]).
    catalog: std::sync::RwLock<Arc<Catalog>>,
    /// Event fan-out.
    pub events: EventBus,
    /// What we advertise; link writers watch it.
    pub advert: watch::Sender<Arc<Vec<GameAd>>>,
    /// Bumped whenever a rescan changed the library; the background indexer watches it.
    pub library_changed: watch::Sender<u64>,
    /// Flips to true once on shutdown.
    pub shutdown: watch::Sender<bool>,
    /// How `cancel` reaches a running download: one notifier per game downloading.
    pub cancels: Mutex<HashMap<GameId, Arc<tokio::sync::Notify>>>,
    /// How `cancel` and shutdown reach a running install: its stop flag, registered until
    /// its terminal event.
    pub install_stops: Mutex<HashMap<GameId, Arc<std::sync::atomic::AtomicBool>>>,
    /// Where the metrics are served, once bound.
    pub metrics_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// What `reload` reads again and the settings in force (none for the demo's daemons).
    pub reload: tokio::sync::Mutex<Option<crate::config::Reloadable>>,
    inner: Mutex<Inner>,
}

impl Shared {
    /// Builds the shared state.
    pub fn new(
        me: LocalPeer,
        net: Transfers,
        peers: Directory,
        games_dir: PathBuf,
        catalog: Catalog,
        events: EventBus,
        library: Library,
    ) -> Arc<Self> {
        let inner = Inner {
            library,
            ..Inner::default()
        };
        let advert = advert_of(&inner);
        Arc::new(Self {
            me,
            net,
            peers,
            partials: Partials::default(),
            games_dir,
            catalog: std::sync::RwLock::new(Arc::new(catalog)),
            events,
            advert: watch::channel(Arc::new(advert)).0,
            library_changed: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            cancels: Mutex::default(),
            install_stops: Mutex::default(),
            reload: tokio::sync::Mutex::new(None),
            metrics_addr: std::sync::OnceLock::new(),
            inner: Mutex::new(inner),
        })
    }

    /// Locks the state. A poisoned lock is recovered: every mutation keeps it consistent
    /// step by step, so a panic elsewhere leaves usable data.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The catalog now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the catalog (reload); the caller rescans.
    pub fn set_catalog(&self, catalog: Catalog) {
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
    }

    /// Answer to `status`.
    pub fn status(&self) -> StatusInfo {
        let inner = self.lock();
        StatusInfo {
            peer_id: self.me.id.clone(),
            addr: self.me.listen.to_string(),
            games_dir: self.games_dir.display().to_string(),
            operations: inner
                .operations
                .iter()
                .map(|(id, op)| OperationInfo {
                    game_id: id.clone(),
                    kind: op.kind.as_str().into(),
                    done_bytes: op.shown().done,
                    total_bytes: op.progress.total,
                    percent: op.shown().percent(),
                    state: op.state().into(),
                    hashing: op.hashing.map(|h| lanspread_control::api::HashingInfo {
                        done_bytes: h.done,
                        total_bytes: h.total,
                        percent: h.percent(),
                    }),
                })
                .collect(),
            peers: self.peers.linked_count(),
            version: env!("CARGO_PKG_VERSION").into(),
            limits: lanspread_control::api::Limits {
                max_upload_mib_s: self.net.upload_limit.mib_per_s(),
                max_download_mib_s: self.net.download_limit.mib_per_s(),
            },
            events_dropped: self.events.dropped(),
            problems: inner
                .library
                .values()
                .filter_map(|r| {
                    Some(lanspread_control::api::GameProblem {
                        game_id: r.id.clone(),
                        reason: r.problem.clone()?,
                    })
                })
                .collect(),
            metrics: self.metrics_addr.get().map(|a| a.to_string()),
        }
    }

    /// Answer to `list-games`.
    pub fn games(&self) -> GamesList {
        let inner = self.lock();
        let mut local: Vec<LocalGame> = inner
            .library
            .values()
            .map(|root| LocalGame {
                id: root.id.clone(),
                version: root.version,
                // (The contract's *downloaded*: a valid sentinel and no operation on it.)
                downloaded: root.version.is_some() && inner.operations.get(&root.id).is_none(),
                installed: root.installed,
                availability: availability(&inner, &root.id, root.availability()),
                size: root.size(),
                reason: root.problem.clone(),
            })
            .collect();
        // A game's first download: its root joins the library when the download ends (the
        // watch leaves a root with an operation alone), and is listed as downloading
        // meanwhile, with the game's size once known.
        let first: Vec<LocalGame> = inner
            .operations
            .iter()
            .filter(|(id, op)| op.kind == OpKind::Download && !inner.library.contains_key(*id))
            .map(|(id, op)| LocalGame {
                id: id.clone(),
                version: None,
                downloaded: false,
                installed: false,
                availability: Availability::Downloading,
                size: op.progress.total,
                reason: None,
            })
            .collect();
        drop(inner);
        if !first.is_empty() {
            local.extend(first);
            local.sort_by(|a, b| a.id.cmp(&b.id));
        }
        GamesList {
            local,
            remote: self.peers.remote_games(),
        }
    }

    /// The local library as reported by `local-library-changed`.
    pub fn local_states(&self) -> Vec<LocalGameState> {
        let inner = self.lock();
        inner
            .library
            .values()
            .map(|r| LocalGameState {
                id: r.id.clone(),
                version: r.version,
                downloaded: r.version.is_some() && inner.operations.get(&r.id).is_none(),
                installed: r.installed,
            })
            .collect()
    }

    /// Rescans one game root after a download or install and announces the change.
    pub async fn rescan_root(self: &Arc<Self>, id: &GameId) {
        self.rescan_root_and(id, |_| {}).await;
    }

    /// Rescans one game root and, under the same lock as the library's update, ends the
    /// operation on it: no one sees the operation gone and the root not yet as it is now
    /// (a first download's row vanished from `list-games` between the two), and the
    /// event that follows says what both say.
    pub async fn rescan_root_ending(self: &Arc<Self>, id: &GameId) {
        self.rescan_root_and(id, |inner| inner.operations.end(id))
            .await;
    }

    async fn rescan_root_and(self: &Arc<Self>, id: &GameId, then: impl FnOnce(&mut Inner)) {
        let dir = self.games_dir.join(id.as_str());
        let gid = id.clone();
        // Like the whole-dir scan: a root is a real folder, never a symlink to elsewhere.
        let scanned = tokio::task::spawn_blocking(move || {
            std::fs::symlink_metadata(&dir)
                .is_ok_and(|m| m.is_dir())
                .then(|| lanspread_catalog::scan_root(&dir, gid))
        })
        .await;
        let changed = {
            let mut inner = self.lock();
            inner.library_gen += 1;
            let changed = match scanned {
                Ok(Some(root)) => {
                    inner.library.insert(id.clone(), root.clone()).as_ref() != Some(&root)
                }
                Ok(None) => inner.library.remove(id).is_some(),
                Err(e) => {
                    tracing::warn!("rescan of {id} failed: {e}");
                    false
                }
            };
            then(&mut inner);
            changed
        };
        if changed {
            self.library_changed.send_modify(|g| *g += 1);
            self.events
                .emit(lanspread_control::api::EventKind::LocalLibraryChanged {
                    games: self.local_states(),
                });
        }
        // Operations may have ended even when the files did not change.
        self.refresh_advert();
    }

    /// Rescans the games dir. On a change, emits `local-library-changed` and updates the
    /// advertisement (which the link writers send to every peer).
    pub async fn rescan(self: &Arc<Self>) {
        let this = self.clone();
        let gen = self.lock().library_gen;
        let scanned = tokio::task::spawn_blocking(move || {
            lanspread_catalog::scan_games_dir(&this.games_dir, &this.catalog())
        })
        .await;
        let library = match scanned {
            Ok(Ok(lib)) => lib,
            // The games dir itself is gone (removed, a mount gone, a file in its place):
            // it offers nothing until it is back, rather than games whose files are gone.
            Ok(Err(lanspread_catalog::CatalogError::Io { source, .. }))
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                if !self.lock().library.is_empty() {
                    tracing::warn!(dir = %self.games_dir.display(), "the games dir is gone: no games offered until it is back");
                }
                lanspread_catalog::Library::new()
            }
            Ok(Err(e)) => return tracing::warn!("rescan failed: {e}"),
            Err(e) => return tracing::warn!("rescan task failed: {e}"),
        };
        let changed = {
            let mut inner = self.lock();
            if inner.library_gen != gen {
                // A download or install changed a root meanwhile; the next pass catches up.
                return;
            }
            let changed = inner.library != library;
            inner.library = library;
            changed
        };
        if changed {
            self.library_changed.send_modify(|g| *g += 1);
            self.events
                .emit(lanspread_control::api::EventKind::LocalLibraryChanged {
                    games: self.local_states(),
                });
            self.refresh_advert();
        }
    }

    /// Recomputes the advertisement after a library or operation change.
    pub fn refresh_advert(&self) {
        let ads = advert_of(&self.lock());
        self.advert.send_if_modified(|cur| {
            if **cur == ads {
                false
            } else {
                *cur = Arc::new(ads);
                true
            }
        });
    }
}

fn availability(inner: &Inner, id: &GameId, base: Availability) -> Availability {
    match inner.operations.get(id) {
        Some(OpKind::Download) => Availability::Downloading,
        Some(OpKind::Install | OpKind::Uninstall) => Availability::Installing,
        Some(OpKind::Remove) => Availability::NotReady,
        None => base,
    }
}

/// Only ready roots with no active operation are advertised.
/// The ready games peers are told of: at most [`lanspread_proto::MAX_LIBRARY`], which
/// fit one announce frame (a longer library would end every link it is sent on).
fn advert_of(inner: &Inner) -> Vec<GameAd> {
    let ads: Vec<GameAd> = inner
        .library
        .values()
        .filter(|r| availability(inner, &r.id, r.availability()) == Availability::Ready)
        .filter_map(|r| {
            Some(GameAd {
                id: r.id.clone(),
                version: r.version?,
                size: r.size(),
            })
        })
        .take(lanspread_proto::MAX_LIBRARY + 1)
        .collect();
    if ads.len() > lanspread_proto::MAX_LIBRARY {
        tracing::warn!(
            "more than {} ready games: peers are told of the first {0} only",
            lanspread_proto::MAX_LIBRARY
        );
        return ads[..lanspread_proto::MAX_LIBRARY].to_vec();
    }
    ads
}

/// Resolves once shutdown was requested. The watch guard is dropped inside, so callers
/// can hold this future across awaits in `select!`.
pub async fn until_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
