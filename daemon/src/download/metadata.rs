//! The metadata phase of a download: every newest source is asked for its manifest and
//! the answers are validated by plurality (`ManifestVote`), with a grace period for the
//! sources still silent once the vote is settled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lanspread_catalog::{FileManifest, GameId};
use lanspread_peer::{Chosen, ManifestVote, Sources};
use lanspread_transfer::{read_frame, write_frame, PeerId, PeerRequest, PeerResponse};
use quinn::Connection;
use tokio::task::JoinSet;
use tracing::{warn, Instrument};

use super::{link, stop::stop_requested};
use crate::failure::Failure;
use crate::state::Shared;

/// How long a source may take to send a manifest (it may hash a large game first).
const MANIFEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How much longer the sources that have not answered get once the others' answers
/// settle the vote (a strict plurality whatever the rest say).
const MANIFEST_GRACE: Duration = Duration::from_secs(5);

/// Asks every newest source for its manifest and returns the chosen one; the sources left
/// out, and why, are added to `why`.
pub(super) async fn validated(
    shared: &Shared,
    id: &GameId,
    sources: &Sources,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    cancel: &tokio::sync::Notify,
    why: &mut BTreeMap<PeerId, String>,
) -> Result<Chosen, Failure> {
    // Metadata from every newest source, validated by plurality.
    let mut asks = JoinSet::new();
    let mut waiting = BTreeSet::new();
    for peer in &sources.peers {
        let Some((conn, _)) = link(shared, peer) else {
            continue;
        };
        waiting.insert(peer.clone());
        let (peer, id, version) = (peer.clone(), id.clone(), sources.version);
        asks.spawn(
            async move {
                let answer =
                    tokio::time::timeout(MANIFEST_TIMEOUT, request_files(&conn, id, version)).await;
                (
                    peer,
                    answer.unwrap_or_else(|_| Err("no manifest in time".into())),
                )
            }
            .in_current_span(),
        );
    }
    let mut vote = ManifestVote::default();
    // Set once the sources still to answer can no longer change the vote: they get
    // MANIFEST_GRACE more, so one that never answers holds the download seconds, not
    // MANIFEST_TIMEOUT.
    let mut grace_ends = None;
    loop {
        let next = async {
            match grace_ends {
                None => asks.join_next().await,
                Some(end) => tokio::time::timeout_at(end, asks.join_next())
                    .await
                    .unwrap_or(None),
            }
        };
        let joined = tokio::select! {
            j = next => j,
            why = stop_requested(shutdown, cancel) => return Err(why),
        };
        let Some(joined) = joined else { break };
        match joined {
            Ok((peer, answer)) => {
                waiting.remove(&peer);
                match answer {
                    Ok(files) => vote.add(peer, files),
                    Err(e) => {
                        warn!(peer = %peer.short(), "no manifest: {e}");
                        vote.no_answer(peer, format!("no manifest: {e}"));
                    }
                }
            }
            Err(e) => warn!("manifest task failed: {e}"),
        }
        if grace_ends.is_none() && !asks.is_empty() && vote.settled(asks.len()) {
            grace_ends = Some(tokio::time::Instant::now() + MANIFEST_GRACE);
        }
    }
    if !asks.is_empty() {
        asks.abort_all();
        for peer in &waiting {
            warn!(
                peer = %peer.short(),
                "not a source for {id}: no manifest {MANIFEST_GRACE:?} after the others settled the vote"
            );
        }
    }
    why.extend(vote.rejected().iter().cloned());
    Ok(vote.choose(id)?)
}

async fn request_files(
    conn: &Connection,
    game: GameId,
    version: lanspread_catalog::Version,
) -> Result<Vec<FileManifest>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, &PeerRequest::Files { game, version })
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    match read_frame::<_, PeerResponse>(&mut recv).await {
        Ok(Some(PeerResponse::Files(files))) => Ok(files),
        Ok(Some(PeerResponse::Refused { reason })) => Err(format!("refused: {reason}")),
        Ok(Some(other)) => Err(format!("unexpected answer {other:?}")),
        Ok(None) => Err("stream ended".into()),
        Err(e) => Err(e.to_string()),
    }
}
