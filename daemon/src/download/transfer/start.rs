//! Starting a fetch: the engine's batch as jobs on its lane's connection and thread, and
//! its results as the transfer loop takes them back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lanspread_catalog::PIECE_SIZE;
use lanspread_control::Failure;
use lanspread_peer::{Engine, FailKind, Fetch, Lane};
use lanspread_proto::chunk_rest;
use tracing::Instrument;

use super::super::fetch::{self, ChunkJob, FetchError};
use super::{Transfer, Work};

impl Transfer<'_, '_> {
    /// Starts a batch on its lane's thread (the fetch runs where its connection is
    /// driven; dropping `running`, a failed download, aborts it there too). A source
    /// whose link is gone is gone, whatever lanes it had. A chunk whose first pieces are
    /// kept is asked for from the first piece it lacks.
    pub(super) fn start(&mut self, engine: &mut Engine, f: Fetch) {
        let Work {
            files,
            file_ids,
            kept,
            in_flight,
            ..
        } = &mut self.work;
        let jobs: Vec<ChunkJob> = f
            .chunks
            .iter()
            .map(|&c| {
                let spec = &engine.chunks()[c];
                let kept = kept.get(&c).copied().unwrap_or(0);
                let (offset, len, first) = chunk_rest(spec.offset, spec.len, kept);
                // A chunk of more than one piece is worth passing on as it arrives (it is
                // announced once its first piece is verified).
                // The end game's second request leaves that to the first.
                let relay = (spec.len > PIECE_SIZE && !f.race)
                    .then(|| u32::try_from(c).ok())
                    .flatten()
                    .map(|k| {
                        let (shared, game) = (self.shared.clone(), self.game.0.clone());
                        fetch::Relay::new(move || shared.partials.grow(&game, k, offset))
                    });
                ChunkJob {
                    path: files[spec.file].path.clone(),
                    file: file_ids[spec.file],
                    offset,
                    len,
                    pieces: spec.pieces[first..].to_vec(),
                    progress: match f.race {
                        false => in_flight.start(c, offset - spec.offset),
                        true => Arc::default(),
                    },
                    relay,
                }
            })
            .collect();
        // Bytes of each chunk before its job's range: what a failure keeps adds to them.
        let skipped: Vec<(usize, u64)> = f
            .chunks
            .iter()
            .zip(&jobs)
            .map(|(&c, j)| (c, j.offset - engine.chunks()[c].offset))
            .collect();
        // The link as it is now (a partial source has no other lane); a source whose
        // link is gone is gone, whatever lanes it had.
        let conn = self
            .shared
            .peers
            .link_and_addr(&f.peer)
            .map(|(link, addr)| {
                self.addrs.insert(f.peer.clone(), addr);
                match f.lane {
                    Lane::Link => Some((link, tokio::runtime::Handle::current())),
                    Lane::Data(_) => self.work.lanes.get(&f.peer, f.lane),
                }
            });
        if let Some(None) = conn {
            // A data lane without a connection: not expected (a slot is emptied only as
            // its lane is retired), but if so it is the lane's loss, not the source's.
            let lost = Err((FailKind::SourceGone, "data connection closed".to_owned()));
            self.not_started(&f);
            return engine.on_fetched(f.id, vec![lost; jobs.len()], true);
        }
        let Some((conn, runtime)) = conn.flatten() else {
            self.not_started(&f);
            let gone = Err((FailKind::Disconnected, "peer disconnected".to_owned()));
            engine.on_fetched(f.id, vec![gone; jobs.len()], false);
            // Its data connections go with it.
            self.work.lanes.agree(&f.peer, engine);
            return;
        };
        debug_assert!(jobs.iter().all(|j| j.offset % PIECE_SIZE == 0));
        tracing::debug!(peer = %f.peer.short(), chunks = ?f.chunks, partial = f.partial,
            offer = f.offer, race = f.race, "fetch started");
        let source = self.activity.entry(f.peer.clone()).or_default().clone();
        let (shared, game, version) = (self.shared.clone(), self.game.0.clone(), self.game.1);
        let digest = self.digest;
        let (partial, offer) = (f.partial, f.offer);
        let (choices, id) = (self.choices.0.clone(), f.id);
        let used = conn.clone();
        let fetch = runtime.spawn(
            async move {
                let told = move |i: usize| {
                    let _ = choices.send((id, i));
                };
                let how = match (partial, offer) {
                    (true, _) => fetch::How::Partial(&digest),
                    (false, true) => fetch::How::Offer(&told),
                    (false, false) => fetch::How::Ready,
                };
                let limit = &shared.net.download_limit;
                fetch::fetch(
                    &conn,
                    &source,
                    &shared.net.writer,
                    limit,
                    (&game, version, how),
                    &jobs,
                )
                .await
            }
            .in_current_span(),
        );
        if f.race {
            self.races.insert(f.id);
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        self.aborts
            .insert(f.id, (fetch.abort_handle(), cancelled.clone()));
        let abort = AbortOnDrop(fetch.abort_handle());
        self.running.spawn(async move {
            let _abort = abort;
            let results = match fetch.await {
                Ok(results) => results,
                // A race's loser (`Action::Cancel`): its chunk came from elsewhere.
                Err(e) if e.is_cancelled() && cancelled.load(Ordering::SeqCst) => (0..skipped
                    .len())
                    .map(|_| {
                        fetch::Outcome::failed(FetchError::Source(
                            FailKind::NotChosen,
                            "another source sent it first".into(),
                        ))
                    })
                    .collect(),
                Err(e) => return Err(Failure::internal(format_args!("chunk task failed: {e}"))),
            };
            let results = results
                .into_iter()
                .zip(skipped)
                .map(|(o, (chunk, skipped))| match o.result {
                    Ok(()) => Ok((chunk, Ok(()), 0)),
                    Err(FetchError::Source(kind, why)) => {
                        let kept = if o.kept > 0 { skipped + o.kept } else { 0 };
                        Ok((chunk, Err((kind, why)), kept))
                    }
                    Err(FetchError::Local(failure)) => Err(failure),
                    // (Not after `fetch`, which reports every transport failure as the
                    // source's.)
                    Err(FetchError::Lost(why)) => Ok((chunk, Err((FailKind::SourceGone, why)), 0)),
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            Ok((f.id, f.peer, used, results))
        });
    }

    /// A fetch that could not start: its chunks are not on their way. (A race's second
    /// request has no progress entry nor relay of its own: those are the first
    /// request's, which goes on.)
    pub(super) fn not_started(&mut self, f: &Fetch) {
        for &c in f.chunks.iter().filter(|_| !f.race) {
            self.work.in_flight.end(c, false);
            self.grown(c, false);
        }
    }
}

/// Aborts a task (on whichever runtime it runs) when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
