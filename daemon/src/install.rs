//! Install and uninstall operations: single-flight with downloads of the same game,
//! extraction on a blocking thread, events, rescan.

use std::sync::Arc;

use lanspread_catalog::GameId;
use lanspread_peer::OpKind;

use crate::api::{Event, EventKind};
use crate::state::Shared;

/// Installs a downloaded game. Emits `install-begin` then `install-finished` or
/// `install-failed`. A refusal before the start (unknown, not downloaded, busy) is returned
/// without events unless `report_refusal` is set (the download-then-install flow, whose
/// client waits for an install event).
pub async fn install(
    shared: &Arc<Shared>,
    id: &GameId,
    report_refusal: bool,
) -> Result<Event, String> {
    let root = match begin(shared, id, OpKind::Install) {
        Ok(r) => r,
        Err(e) => {
            if report_refusal {
                shared.events.emit(EventKind::InstallFailed {
                    game_id: id.clone(),
                    reason: e.clone(),
                });
            }
            return Err(e);
        }
    };
    shared.events.emit(EventKind::InstallBegin {
        game_id: id.clone(),
    });
    let progress = {
        let (shared, id) = (shared.clone(), id.clone());
        move |p: lanspread_install::InstallProgress| {
            shared.lock().operations.sized(&id, p.total, p.done)
        }
    };
    let res = tokio::task::spawn_blocking(move || {
        lanspread_install::install_root_with(&root, &mut { progress })
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    shared.lock().operations.end(id);
    shared.rescan_root(id).await;
    match res {
        Ok(summary) => {
            tracing::info!(game = %id, files = summary.files, bytes = summary.bytes, "installed");
            Ok(shared.events.emit(EventKind::InstallFinished {
                game_id: id.clone(),
            }))
        }
        Err(reason) => {
            tracing::warn!(game = %id, "install failed: {reason}");
            shared.events.emit(EventKind::InstallFailed {
                game_id: id.clone(),
                reason: reason.clone(),
            });
            Err(reason)
        }
    }
}

/// Removes a game's `local/`, keeping the downloaded root.
pub async fn uninstall(shared: &Arc<Shared>, id: &GameId) -> Result<Event, String> {
    let root = begin(shared, id, OpKind::Uninstall)?;
    let res = tokio::task::spawn_blocking(move || lanspread_install::uninstall_root(&root))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    shared.lock().operations.end(id);
    shared.rescan_root(id).await;
    res?;
    Ok(shared.events.emit(EventKind::UninstallFinished {
        game_id: id.clone(),
    }))
}

fn begin(shared: &Arc<Shared>, id: &GameId, kind: OpKind) -> Result<std::path::PathBuf, String> {
    let mut inner = shared.lock();
    let Some(root) = inner.library.get(id) else {
        return Err(format!("game {id} is not in the games dir"));
    };
    if root.version.is_none() {
        return Err(format!(
            "game {id} is not downloaded (no valid version.ini)"
        ));
    }
    let dir = root.dir.clone();
    inner
        .operations
        .begin(id, kind)
        .map_err(|e| e.to_string())?;
    drop(inner);
    shared.refresh_advert();
    Ok(dir)
}
