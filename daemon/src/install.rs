//! Install and uninstall operations: single-flight with downloads of the same game,
//! extraction on a blocking thread, events, rescan.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lanspread_catalog::GameId;
use lanspread_peer::OpKind;

use crate::failure::{install_failure, peer_failure};
use crate::state::Shared;
use lanspread_control::api::{ErrorKind, Event, EventKind};
use lanspread_control::Failure;

/// Installs a downloaded game. Emits `install-begin` then `install-finished` or
/// `install-failed`. A refusal before the start (unknown, not downloaded, busy) is returned
/// without events unless `report_refusal` is set (the download-then-install flow, whose
/// client waits for an install event).
pub async fn install(
    shared: &Arc<Shared>,
    id: &GameId,
    report_refusal: bool,
) -> Result<Event, Failure> {
    let root = match begin(shared, id, OpKind::Install) {
        Ok(r) => r,
        Err(e) => {
            if report_refusal {
                shared.events.emit(EventKind::InstallFailed {
                    game_id: id.clone(),
                    reason: e.message.clone(),
                    kind: e.kind,
                });
            }
            return Err(e);
        }
    };
    shared.events.emit(EventKind::InstallBegin {
        game_id: id.clone(),
    });
    // `cancel` and shutdown set the flag; the extraction stops within one output block.
    let stop = Arc::new(AtomicBool::new(false));
    stops(shared).insert(id.clone(), stop.clone());
    let on_shutdown = {
        let (stop, mut shutdown) = (stop.clone(), shared.shutdown.subscribe());
        tokio::spawn(async move {
            crate::state::until_shutdown(&mut shutdown).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let progress = {
        let (shared, id) = (shared.clone(), id.clone());
        move |p: lanspread_install::InstallProgress| {
            shared.lock().operations.sized(&id, p.total, p.done)
        }
    };
    let res = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || lanspread_install::install_root_until(&root, &mut { progress }, &stop)
    })
    .await
    .map_err(Failure::internal)
    .and_then(|r| r.map_err(install_failure));
    on_shutdown.abort();
    shared.rescan_root_ending(id).await;
    let res = match res {
        Ok(summary) => {
            tracing::info!(game = %id, files = summary.files, bytes = summary.bytes, "installed");
            Ok(shared.events.emit(EventKind::InstallFinished {
                game_id: id.clone(),
            }))
        }
        Err(failure) => {
            tracing::warn!(game = %id, "install failed: {failure}");
            shared.events.emit(EventKind::InstallFailed {
                game_id: id.clone(),
                reason: failure.message.clone(),
                kind: failure.kind,
            });
            Err(failure)
        }
    };
    // After the terminal event: `cancel` waits for this.
    stops(shared).remove(id);
    res
}

fn stops(
    shared: &Shared,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<GameId, Arc<AtomicBool>>> {
    shared
        .install_stops
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Asks the running install of `id` to stop; its `install-failed` ("cancelled") follows.
/// `false`: no install of it is running.
pub fn cancel(shared: &Shared, id: &GameId) -> bool {
    match stops(shared).get(id) {
        Some(stop) => {
            stop.store(true, Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Whether an install of `id` is registered (running, or not yet past its terminal event).
pub fn cancellable(shared: &Shared, id: &GameId) -> bool {
    stops(shared).contains_key(id)
}

/// Removes a game's `local/`, keeping the downloaded root.
pub async fn uninstall(shared: &Arc<Shared>, id: &GameId) -> Result<Event, Failure> {
    let root = begin(shared, id, OpKind::Uninstall)?;
    let res = tokio::task::spawn_blocking(move || lanspread_install::uninstall_root(&root))
        .await
        .map_err(Failure::internal)
        .and_then(|r| r.map_err(install_failure));
    shared.rescan_root_ending(id).await;
    if let Err(f) = &res {
        // No event says so (the reply does): counted here.
        shared.net.metrics.failed("uninstall", f.kind);
    }
    res?;
    Ok(shared.events.emit(EventKind::UninstallFinished {
        game_id: id.clone(),
    }))
}

/// Prefix of a game folder being removed: it is renamed out of the way first (so no scan
/// sees half of it), then deleted; the start-up sweep deletes what a crash left.
pub const REMOVING_PREFIX: &str = ".lanspread-removing-";

/// Deletes a game's folder, partial or complete (`local/`, journal and metadata
/// included). Refused while an operation runs on it. Only what lies inside the folder is
/// deleted: symlinks are removed, never followed.
pub async fn remove(shared: &Arc<Shared>, id: &GameId) -> Result<(), Failure> {
    let dir = shared.games_dir.join(id.as_str());
    {
        let mut inner = shared.lock();
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Failure::new(
                    ErrorKind::Io,
                    format!(
                        "{} is not a folder (a symlink?); remove it by hand",
                        dir.display()
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_here(id)),
            Err(e) => return Err(Failure::io(dir.display(), &e)),
        }
        inner
            .operations
            .begin(id, OpKind::Remove)
            .map_err(peer_failure)?;
    }
    shared.refresh_advert();
    // Unique: a removal that failed half-way leaves its folder for the next start's sweep.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let aside = shared
        .games_dir
        .join(format!("{REMOVING_PREFIX}{id}-{nanos}"));
    let res = tokio::task::spawn_blocking(move || {
        std::fs::rename(&dir, &aside).map_err(|e| Failure::io(dir.display(), &e))?;
        lanspread_install::remove_tree(&aside).map_err(install_failure)
    })
    .await
    .map_err(Failure::internal)
    .and_then(|r| r);
    shared.rescan_root_ending(id).await;
    if res.is_ok() {
        tracing::info!(game = %id, "removed");
    }
    res
}

fn not_here(id: &GameId) -> Failure {
    Failure::new(
        ErrorKind::NotFound,
        format!("game {id} is not in the games dir"),
    )
}

fn begin(shared: &Arc<Shared>, id: &GameId, kind: OpKind) -> Result<std::path::PathBuf, Failure> {
    let mut inner = shared.lock();
    // A running operation first: a download under way has no ready root yet, and "not
    // in the games dir" would send the user looking for the wrong thing.
    if inner.operations.get(id).is_some() {
        return Err(peer_failure(lanspread_peer::PeerError::Busy(id.clone())));
    }
    let Some(root) = inner.library.get(id) else {
        return Err(not_here(id));
    };
    if root.version.is_none() {
        return Err(Failure::new(
            ErrorKind::NotFound,
            format!("game {id} is not downloaded (no valid version.ini)"),
        ));
    }
    let dir = root.dir.clone();
    inner.operations.begin(id, kind).map_err(peer_failure)?;
    drop(inner);
    shared.net.metrics.started(kind.as_str());
    shared.refresh_advert();
    Ok(dir)
}
