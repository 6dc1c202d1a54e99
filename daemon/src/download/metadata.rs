//! The metadata phase of a download, driven for the engine (`lanspread_peer::Engine`):
//! every source it names is asked for its manifest on a stream of its link, and the
//! answers and the vote's deadlines (grace, timeout) are fed back until the engine asks
//! to prepare the root or fails. A source that hashes the game first reports how far it
//! is (`PeerResponse::Hashing`): that keeps it alive for the engine (its timeout is one of
//! silence) and shows in `status` and `download-hashing` events.

use std::sync::Arc;
use std::time::Instant;

use lanspread_catalog::{GameId, Manifest, Version};
use lanspread_control::api::EventKind;
use lanspread_peer::{Action, Engine, Progress};
use lanspread_proto::{manifest_answer, PeerRequest, PeerResponse};
use lanspread_transfer::{read_frame, write_frame};
use quinn::Connection;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::stop::stop_requested;
use crate::failure::peer_failure;
use crate::state::Shared;
use lanspread_control::{ErrorKind, Failure};

/// How often a source's hashing progress is shown at most (`download-hashing`).
const SHOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the engine until it asks for [`Action::Prepare`] (the manifest is chosen).
pub(super) async fn validated(
    shared: &Arc<Shared>,
    engine: &mut Engine,
    (id, version): (&GameId, Version),
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    cancel: &tokio::sync::Notify,
) -> Result<(), Failure> {
    let mut asks = JoinSet::new();
    // Bounded: a source that floods reports loses them, never our memory.
    let (progress, mut reports) = tokio::sync::mpsc::channel(64);
    let mut shown = std::collections::BTreeMap::new();
    // The sources asked, for the sizes the others advertise (`credible_total`).
    let mut asked: Vec<lanspread_proto::PeerId> = Vec::new();
    loop {
        while let Some(action) = engine.poll() {
            match action {
                Action::AskManifest(peer) => {
                    asked.push(peer.clone());
                    let Some(conn) = shared.peers.link(&peer) else {
                        engine.on_manifest(peer, Err("peer disconnected".into()), Instant::now());
                        continue;
                    };
                    let id = id.clone();
                    let progress = progress.clone();
                    asks.spawn(
                        async move {
                            let report = |done, total| {
                                let _ = progress.try_send((peer.clone(), done, total));
                            };
                            let answer = request_files(&conn, id, version, report).await;
                            (peer, answer)
                        }
                        .in_current_span(),
                    );
                }
                Action::Prepare => return Ok(()),
                Action::Fail(e) => return Err(peer_failure(e)),
                other => {
                    return Err(Failure::internal(format_args!(
                        "download engine asked {other:?} before the manifest was chosen"
                    )))
                }
            }
        }
        let Some(deadline) = engine.poll_timeout() else {
            return Err(Failure::internal("download engine waits for nothing"));
        };
        tokio::select! {
            Some(joined) = asks.join_next(), if !asks.is_empty() => match joined {
                Ok((peer, answer)) => {
                    let answer = answer.map_err(|f| f.message);
                    engine.on_manifest(peer, answer, Instant::now())
                }
                Err(e) => return Err(Failure::internal(format_args!("manifest task failed: {e}"))),
            },
            Some((peer, done, total)) = reports.recv() => {
                // The total must be the size the source advertises for the game, and
                // counts for no more than another source advertises.
                let size = shared.peers.advertised_size(&peer, id);
                let others = asked
                    .iter()
                    .filter(|p| **p != peer)
                    .filter_map(|p| shared.peers.advertised_size(p, id));
                let credible = lanspread_peer::credible_total(total, size, others);
                let now = Instant::now();
                let counted = credible.is_some_and(|t| {
                    engine.on_manifest_progress(&peer, done.min(t), t, now)
                });
                if counted {
                    shared.lock().operations.hashing(id, Progress { done, total });
                    // Shown at most once a second per source (and its last report).
                    let due = shown.get(&peer).is_none_or(|t: &Instant| now >= *t + SHOW_EVERY);
                    if due || done == total {
                        shown.insert(peer.clone(), now);
                        shared.events.emit(EventKind::DownloadHashing {
                            game_id: id.clone(),
                            peer_id: peer,
                            done_bytes: done,
                            total_bytes: total,
                        });
                    }
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => engine.handle_timeout(Instant::now()),
            why = stop_requested(shutdown, cancel) => return Err(why),
        }
    }
}

/// Asks a source for its manifest; `report` hears each `Hashing` frame that comes first.
async fn request_files(
    conn: &Connection,
    game: GameId,
    version: Version,
    report: impl Fn(u64, u64),
) -> Result<Manifest, Failure> {
    let failed = |e: &dyn std::fmt::Display| Failure::new(ErrorKind::SourceFailed, e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
    let _ = send.set_priority(lanspread_transfer::CONTROL_PRIORITY);
    write_frame(&mut send, &PeerRequest::Files { game, version })
        .await
        .map_err(|e| failed(&e))?;
    let _ = send.finish();
    loop {
        let answer = read_frame::<_, PeerResponse>(&mut recv)
            .await
            .map_err(|e| failed(&e))?;
        match answer {
            Some(PeerResponse::Hashing { done, total }) => report(done, total),
            other => return manifest_answer(other).map_err(|e| failed(&e)),
        }
    }
}
