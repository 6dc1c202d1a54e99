//! Stopping a download from outside: `cancel` and daemon shutdown. The notifier of each
//! download is registered with its operation (`begin`) and dropped after its terminal
//! event (`run`), so `cancel` can wait for that event.

use lanspread_catalog::GameId;

use crate::state::Shared;
use lanspread_control::{ErrorKind, Failure};

/// Asks the running download of `id` to stop (`cancel`); its `download-failed` follows.
/// `false`: no download of it is running.
pub fn cancel(shared: &Shared, id: &GameId) -> bool {
    let cancels = shared.cancels.lock().unwrap_or_else(|p| p.into_inner());
    match cancels.get(id) {
        Some(n) => {
            // A stored permit: the download sees it even if it is not waiting right now.
            n.notify_one();
            true
        }
        None => false,
    }
}

/// Whether a download of `id` is registered (running, or not yet past its terminal event).
pub fn cancellable(shared: &Shared, id: &GameId) -> bool {
    shared
        .cancels
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(id)
}

/// Resolves when the daemon shuts down or the download is cancelled, with the reason.
/// Raced against the phases that wait on peers (manifests, transfer); preparing the
/// files is told to stop between files and between the units its journal's check
/// re-reads (and is then waited for); committing always runs to its end, so a stop never
/// races a commit.
pub(super) async fn stop_requested(
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    cancel: &tokio::sync::Notify,
) -> Failure {
    tokio::select! {
        () = crate::state::until_shutdown(shutdown) => Failure::new(
            ErrorKind::Shutdown,
            "the daemon is shutting down (a later download resumes from the verified chunks)",
        ),
        () = cancel.notified() => Failure::new(
            ErrorKind::Cancelled,
            "cancelled (a later download resumes from the verified chunks)",
        ),
    }
}
