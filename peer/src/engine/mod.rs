//! The download engine: one download's decisions as a state machine without IO, driven
//! the way quinn-proto's `Connection` is. The driver (the daemon's `download/`) feeds it
//! what happened — manifest answers, the root prepared, a batch's results, the time — and
//! performs what it asks for, read with [`Engine::poll`]:
//!
//! 1. [`Action::AskManifest`] to every newest source; the answers are validated by
//!    plurality ([`ManifestVote`]). Once the answers in settle the vote, the sources still
//!    silent get [`EngineConfig::manifest_grace`] more; a source silent for
//!    [`EngineConfig::manifest_timeout`] — neither its manifest nor progress of its
//!    hashing ([`Engine::on_manifest_progress`]) — is left out ([`Engine::poll_timeout`]
//!    says when to call [`Engine::handle_timeout`]).
//! 2. [`Action::Prepare`]: the driver prepares the root, re-verifies an interrupted
//!    attempt's journal and opens the lanes, then calls [`Engine::on_prepared`].
//! 3. [`Action::Fetch`] per batch, on the lane the engine chose; the per-source budget
//!    ([`max_in_flight_bytes`]) and batching of small chunks are the planner's. Each
//!    chunk's outcome comes back in [`Engine::on_fetched`]; a verified chunk is
//!    [`Action::Verified`] (journal it, count it), a failed one is retried elsewhere or
//!    there (see [`FailKind`]).
//! 4. [`Action::Commit`] when every chunk is verified, or [`Action::Fail`] with a typed
//!    reason ([`PeerError`]).
//!
//! Swarm: from [`Action::Prepare`] on, the driver tells the engine which peers hold part of
//! the same manifest ([`Engine::set_partials`]); they become partial sources of the
//! planner (asked with `PartialChunks`, [`Fetch::partial`]). When only partial sources are
//! left and none holds a missing chunk, the engine waits [`EngineConfig::swarm_wait`] for
//! them to verify more, then fails. It waits as long for sources whose link closed
//! ([`FailKind::Disconnected`]: a file server restarting) to come back
//! ([`Engine::add_ready`], [`Engine::set_partials`]).

mod lanes;
mod outcomes;
mod silence;
#[cfg(test)]
mod tests;
mod vote;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use lanspread_catalog::GameId;
use lanspread_proto::{ChunkSet, PeerId, CHUNK_SIZE, MAX_RANGES, MIN_CHUNKS_IN_FLIGHT, UNIT_SIZE};
use tracing::warn;

pub use lanes::{Lane, LaneBook, LaneDials, LANE_LASTED, LANE_REDIAL_FIRST, LANE_REDIAL_MAX};
pub use silence::credible_total;

use crate::{Chosen, ChunkSpec, FailKind, ManifestVote, PeerError, Planner, PlannerStatus};

/// Most chunks offered to a complete source at once in a swarm (`Planner::offer_to_complete_sources`).
pub const OFFER_CHUNKS: usize = 64;
/// Chunks in flight per source: many small files go out at once (their cost is round
/// trips and per-request work on both sides; S34 on 2 cores: 256 in four requests of 64
/// took 0.196 s where 64 in two requests of 32 took 0.216 s) ...
pub const MAX_IN_FLIGHT: usize = 256;
/// A run of consecutive chunks of at most `BATCH_CHUNK_LEN` bytes each (small files)
/// goes in one request of up to `BATCH_CHUNKS` ranges and `BATCH_BYTES` bytes: one
/// stream, one request frame and one reader task on the source per batch, not per file.
pub const BATCH_CHUNKS: usize = 64;
/// See [`BATCH_CHUNKS`].
pub const BATCH_CHUNK_LEN: u64 = 1 << 20;
/// See [`BATCH_CHUNKS`].
pub const BATCH_BYTES: u64 = 8 << 20;
const _: () = assert!(BATCH_CHUNKS <= MAX_RANGES);
/// How long a source asked for its manifest may stay silent: no manifest and no progress
/// of its hashing (a source that hashes a large game first reports progress about every
/// second), so a slow disk is waited for and a dead source is not.
pub const MANIFEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How much longer the sources that have not answered get once the others' answers
/// settle the vote (a strict plurality whatever the rest say).
pub const MANIFEST_GRACE: Duration = Duration::from_secs(5);
/// How long a download whose ready sources are all gone waits for its partial sources to
/// verify a chunk it misses before it fails (a LAN party whose server died: the clients
/// still finish every chunk that exists in the swarm, then stop), and for sources whose
/// link closed to come back (a file server restarted).
pub const SWARM_WAIT: Duration = Duration::from_secs(30);
/// How long a complete source that had none of the offered chunks free is left alone when
/// nothing else changes (a verified chunk or new holdings end the rest earlier). Cut in
/// proportion to the unit: 500 ms with 32 MiB units (the swarm simulation: 8 MiB units
/// gain only with the rests and turn holds cut too, bench/README.md).
pub const OFFER_REST: Duration = Duration::from_millis(125);

/// ... while big chunks are capped by bytes: [`MIN_CHUNKS_IN_FLIGHT`] × 32 MiB per
/// source, or more when there are more transfer threads (`lanes`) than that would keep
/// busy: the lanes are shared out among the sources, one 32 MiB chunk each. What a source
/// sends is what was asked, so this also bounds what the client holds unread per source;
/// with many sources it stays at the minimum, as with one thread. Measured with the
/// compare tool's S34 case (bench/README.md).
pub fn max_in_flight_bytes(lanes: usize, sources: usize) -> u64 {
    (lanes.div_ceil(sources.max(1)) as u64).max(MIN_CHUNKS_IN_FLIGHT) * CHUNK_SIZE
}

/// How a download is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Transfer threads: data connections opened per source (1: the link alone).
    pub threads: usize,
    /// See [`MANIFEST_TIMEOUT`].
    pub manifest_timeout: Duration,
    /// See [`MANIFEST_GRACE`].
    pub manifest_grace: Duration,
    /// See [`SWARM_WAIT`].
    pub swarm_wait: Duration,
    /// Shuffles the order chunks are fetched in (see [`Planner::shuffled`]); `None`:
    /// file order.
    pub shuffle: Option<u64>,
    /// In a swarm, offers complete sources up to this many chunks to choose from (0 or
    /// 1: asks for one; see [`Planner::offer_to_complete_sources`]).
    pub offer: usize,
    /// See [`OFFER_REST`].
    pub offer_rest: Duration,
    /// Bytes of the planner's unit: [`UNIT_SIZE`] (the protocol's), or another divisor
    /// of [`CHUNK_SIZE`] that is a whole number of pieces, which only the swarm simulation
    /// uses (see [`Planner::with_unit`]). The daemon leaves it at [`UNIT_SIZE`]: its
    /// journal and the holdings it announces count units.
    pub unit: u64,
}

impl EngineConfig {
    /// The defaults with `threads` transfer threads.
    pub fn new(threads: usize) -> Self {
        Self {
            threads: threads.max(1),
            manifest_timeout: MANIFEST_TIMEOUT,
            manifest_grace: MANIFEST_GRACE,
            swarm_wait: SWARM_WAIT,
            shuffle: None,
            offer: 0,
            offer_rest: OFFER_REST,
            unit: UNIT_SIZE,
        }
    }
}

/// Names one batch in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub u64);

/// Chunks to fetch from one source in one request, on one of its lanes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// Name for [`Engine::on_fetched`].
    pub id: BatchId,
    /// The source.
    pub peer: PeerId,
    /// The connection to ask on.
    pub lane: Lane,
    /// Indices into [`Engine::chunks`], in order.
    pub chunks: Vec<usize>,
    /// The source is a partial holder: ask with `PartialChunks` at the manifest's digest.
    pub partial: bool,
    /// The chunks are an offer (`Offer`): the source sends one of them; report the others
    /// as [`FailKind::NotChosen`].
    pub offer: bool,
    /// A second request for a chunk on its way from another source (the end game): not
    /// to be passed on as it arrives (the first request is), and cancelled
    /// ([`Action::Cancel`]) if the other copy is verified first.
    pub race: bool,
}

/// A batch in flight: its source, lane and chunks (an offer's: the chosen one only, once
/// the source said which; `picked` is its place in the batch as asked).
#[derive(Debug)]
struct Asked {
    peer: PeerId,
    lane: Lane,
    chunks: Vec<usize>,
    picked: Option<usize>,
    /// Cancelled ([`Action::Cancel`]): its chunk came from elsewhere.
    cancelled: bool,
}

/// The outcome of one chunk of a batch: verified and written, or why not.
pub type ChunkResult = Result<(), (FailKind, String)>;

/// What the engine asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask this source for the manifest; answer with [`Engine::on_manifest`].
    AskManifest(PeerId),
    /// The manifest is validated ([`Engine::chosen`]): prepare the root, re-verify the
    /// journal, open the lanes, then call [`Engine::on_prepared`].
    Prepare,
    /// Fetch a batch; answer with [`Engine::on_fetched`].
    Fetch(Fetch),
    /// A chunk is verified and written: journal it and count it.
    Verified {
        /// Index into [`Engine::chunks`].
        chunk: usize,
        /// The source that sent it.
        peer: PeerId,
    },
    /// Stop this batch (a race's loser: its chunk was verified from another source);
    /// its results still come back through [`Engine::on_fetched`].
    Cancel(BatchId),
    /// Every chunk is verified: sync and commit.
    Commit,
    /// The download cannot finish.
    Fail(PeerError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Manifests,
    Preparing,
    Transfer,
    Ended,
}

/// One download's decisions (see the module docs).
#[derive(Debug)]
pub struct Engine {
    game: GameId,
    config: EngineConfig,
    phase: Phase,
    actions: VecDeque<Action>,
    /// Each source's last failure, for the message when the download fails.
    why: BTreeMap<PeerId, String>,
    vote: ManifestVote,
    /// Sources asked for their manifest that have not answered yet.
    waiting: silence::Waiting,
    grace_ends: Option<Instant>,
    chosen: Option<Chosen>,
    planner: Option<Planner>,
    lanes: LaneBook,
    in_flight: BTreeMap<BatchId, Asked>,
    next_batch: u64,
    /// The latest time the driver told.
    clock: Instant,
    /// Since when no source can send a missing chunk ([`PlannerStatus::Starved`]).
    starved_at: Option<Instant>,
    /// Complete sources added after the vote ([`Engine::add_ready`]).
    late: BTreeSet<PeerId>,
    /// Whether a partial source was ever known (failures then count the missing chunks).
    swarm: bool,
    /// Since when a complete source rests (see [`OFFER_REST`]).
    rest_since: Option<Instant>,
    /// When a chunk last verified (or the transfer began).
    progress_at: Instant,
    /// When the end game stops waiting on other sources' last units while a source sits
    /// idle (`planner::LAG_RACE_AFTER`).
    end_game_at: Option<Instant>,
}

impl Engine {
    /// A download of `game` from `sources` (the newest-version peers linked now): asks
    /// each for its manifest.
    pub fn new(game: GameId, sources: &[PeerId], config: EngineConfig, now: Instant) -> Self {
        let waiting = silence::Waiting::new(sources, now, config.manifest_timeout);
        let mut engine = Self {
            game,
            config,
            phase: Phase::Manifests,
            actions: sources.iter().cloned().map(Action::AskManifest).collect(),
            why: BTreeMap::new(),
            vote: ManifestVote::default(),
            waiting,
            grace_ends: None,
            chosen: None,
            planner: None,
            lanes: LaneBook::default(),
            in_flight: BTreeMap::new(),
            next_batch: 0,
            clock: now,
            starved_at: None,
            late: BTreeSet::new(),
            swarm: false,
            rest_since: None,
            progress_at: now,
            end_game_at: None,
        };
        if engine.waiting.is_empty() {
            engine.close_vote();
        }
        engine
    }

    /// The next thing to do; call until `None` after every input.
    pub fn poll(&mut self) -> Option<Action> {
        loop {
            if let Some(a) = self.actions.pop_front() {
                return Some(a);
            }
            if self.phase != Phase::Transfer {
                return None;
            }
            let planner = self.planner.as_mut()?;
            let Some(batch) = planner.poll_batch() else {
                // The end game waits on other sources' last units: for a while.
                if planner.end_game_waits() {
                    let due = self.clock + crate::planner::LAG_RACE_AFTER;
                    self.end_game_at.get_or_insert(due);
                } else {
                    self.end_game_at = None;
                }
                let resting = planner.resting();
                if self.in_flight.is_empty()
                    && planner.status() == PlannerStatus::Running
                    && !resting
                {
                    self.fail(PeerError::Stuck);
                    continue;
                }
                return None;
            };
            let id = BatchId(self.next_batch);
            self.next_batch += 1;
            let partial = planner.is_partial(&batch.peer);
            match self.lanes.take(&batch.peer) {
                Some(lane) => {
                    let held = Asked {
                        peer: batch.peer.clone(),
                        lane,
                        chunks: batch.chunks.clone(),
                        picked: None,
                        cancelled: false,
                    };
                    self.in_flight.insert(id, held);
                    return Some(Action::Fetch(Fetch {
                        id,
                        peer: batch.peer,
                        lane,
                        chunks: batch.chunks,
                        partial,
                        offer: batch.offer,
                        race: batch.race,
                    }));
                }
                None => {
                    // No lane: the source was no longer linked when they were opened.
                    let gone = Err((FailKind::Disconnected, "peer disconnected".to_owned()));
                    let results = vec![gone; batch.chunks.len()];
                    self.settle(&batch.peer, &batch.chunks, results, (false, false));
                    self.check_status();
                }
            }
        }
    }

    /// When [`Engine::handle_timeout`] is due (the manifest phase's deadlines, the end of
    /// the wait of a download none of whose sources can send now).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Manifests => self.waiting.next().into_iter().chain(self.grace_ends).min(),
            Phase::Transfer => {
                let starved = self.starved_at.map(|t| t + self.config.swarm_wait);
                let rested = self.rest_since.map(|t| t + self.config.offer_rest);
                starved
                    .into_iter()
                    .chain(rested)
                    .chain(self.end_game_at)
                    .min()
            }
            _ => None,
        }
    }

    /// The time passed `now`: closes the vote when the grace or the timeout ran out;
    /// fails a download whose sources cannot send when its wait is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        if self.phase == Phase::Transfer {
            if self
                .rest_since
                .is_some_and(|t| now >= t + self.config.offer_rest)
            {
                self.rest_since = None;
                if let Some(p) = self.planner.as_mut() {
                    p.wake();
                }
            }
            if self.end_game_at.is_some_and(|t| now >= t) {
                self.end_game_at = None;
                if let Some(p) = self.planner.as_mut() {
                    p.end_game_laggards();
                }
            }
            self.check_status();
            if self
                .starved_at
                .is_some_and(|t| now >= t + self.config.swarm_wait)
            {
                let missing = self.missing_chunks();
                let why = self.reasons();
                let wait = self.config.swarm_wait;
                self.fail(PeerError::SourcesFailed(if self.swarm {
                    format!(
                        "no linked peer holds {missing} missing unit(s) of 8 MiB: the ready sources are gone \
                         and the peers downloading the same files did not get them in {wait:?}{why}"
                    )
                } else {
                    format!(
                        "the sources disconnected and none came back in {wait:?}: \
                         {missing} missing unit(s) of 8 MiB{why}"
                    )
                }));
            }
            return;
        }
        if self.phase != Phase::Manifests {
            return;
        }
        if self.grace_ends.is_some_and(|g| now >= g) {
            let grace = self.config.manifest_grace;
            for peer in self.waiting.take_all() {
                let why = format!("no manifest {grace:?} after the others settled the vote");
                warn!(peer = %peer.short(), "not a source for {}: {why}", self.game);
                self.why.insert(peer, why);
            }
            self.close_vote();
            return;
        }
        let idle = self.config.manifest_timeout;
        let silent = self.waiting.expired(now);
        if silent.is_empty() {
            return;
        }
        for peer in silent {
            warn!(peer = %peer.short(), "no manifest in time: silent for {idle:?}");
            self.vote.no_answer(
                peer,
                format!("no manifest: no manifest in time (silent for {idle:?})"),
            );
        }
        self.after_answer(now);
    }

    /// The validated manifest, its sources and the sources left out (after
    /// [`Action::Prepare`]).
    pub fn chosen(&self) -> Option<&Chosen> {
        self.chosen.as_ref()
    }

    /// Every chunk of the validated manifest (empty before [`Action::Prepare`]).
    pub fn chunks(&self) -> &[ChunkSpec] {
        self.planner.as_ref().map_or(&[], |p| p.chunks())
    }

    /// The root is prepared: `present` lists the chunks an interrupted attempt at this
    /// manifest already verified (they are not fetched), `opened` the sources still
    /// linked with the transfer threads whose data connection to each opened (none: the
    /// link alone). Returns the
    /// chunks and bytes resumed.
    pub fn on_prepared(
        &mut self,
        present: &[usize],
        opened: &[(PeerId, Vec<usize>)],
    ) -> (u64, u64) {
        if self.phase != Phase::Preparing {
            return (0, 0);
        }
        let Some(planner) = self.planner.as_mut() else {
            return (0, 0);
        };
        let (mut chunks, mut bytes) = (0, 0);
        for &c in present {
            if planner.mark_present(c) {
                chunks += 1;
                bytes += planner.chunks()[c].len;
            }
        }
        self.lanes = LaneBook::new(opened, self.config.threads);
        self.progress_at = self.clock;
        for peer in planner.partial_sources() {
            self.lanes.add_link(peer);
        }
        for peer in &self.late {
            self.lanes.add_link(peer);
        }
        self.phase = Phase::Transfer;
        self.check_status();
        (chunks, bytes)
    }

    /// The time is `now` (timers started from here on count from it; call before
    /// [`Engine::on_fetched`]).
    pub fn tick(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
    }

    /// Peers that became ready at the version being downloaded since the vote (often a
    /// partial source whose own download just committed): complete sources from now on,
    /// over their link. Their bytes are checked against the validated manifest like any
    /// source's (a peer with other files at that version is dropped at its first chunk).
    pub fn add_ready(&mut self, ready: &[PeerId]) {
        if !matches!(self.phase, Phase::Preparing | Phase::Transfer) {
            return;
        }
        let Some(planner) = self.planner.as_mut() else {
            return;
        };
        for peer in ready {
            if planner.add_complete(peer) {
                // A source back after its link closed has only its new link.
                self.lanes.relink(peer);
                self.late.insert(peer.clone());
            }
        }
        self.check_status();
    }

    /// The peers that hold part of the validated manifest now, with what each verified
    /// (from their announcements, checked against the manifest's digest and chunk count
    /// by the caller). Peers not in the list are no longer partial sources; ready sources
    /// in it are ignored. Call after [`Action::Prepare`], whenever the holdings change.
    pub fn set_partials(&mut self, holders: Vec<(PeerId, ChunkSet)>, now: Instant) {
        self.clock = self.clock.max(now);
        if !matches!(self.phase, Phase::Preparing | Phase::Transfer) {
            return;
        }
        let Some(planner) = self.planner.as_mut() else {
            return;
        };
        let listed: BTreeSet<PeerId> = holders.iter().map(|(p, _)| p.clone()).collect();
        let gone: Vec<PeerId> = planner
            .partial_sources()
            .filter(|p| !listed.contains(*p))
            .cloned()
            .collect();
        for peer in gone {
            planner.remove_partial(&peer);
        }
        for (peer, has) in holders {
            if planner.set_partial(&peer, has) {
                self.lanes.add_link(&peer);
                self.swarm = true;
            }
        }
        self.check_status();
    }

    /// Of what the partial holders serve, the chunks each is still fetching (they pass
    /// them on as they arrive, no faster than they get them): asked for only when a
    /// holder has no verified chunk this download needs. Call after
    /// [`Engine::set_partials`]; a holder not listed fetches nothing now.
    pub fn set_growing(&mut self, growing: &[(PeerId, Vec<usize>)]) {
        let Some(planner) = self.planner.as_mut() else {
            return;
        };
        let partial: Vec<PeerId> = planner.partial_sources().cloned().collect();
        for peer in partial {
            let list = growing
                .iter()
                .find(|(p, _)| *p == peer)
                .map_or(&[][..], |(_, g)| g);
            planner.set_growing(&peer, list);
        }
    }

    fn fail(&mut self, e: PeerError) {
        self.phase = Phase::Ended;
        self.in_flight.clear();
        self.actions.push_back(Action::Fail(e));
    }

    /// Whether the download waits for its sources: none can send a missing chunk now,
    /// and some may later (see [`EngineConfig::swarm_wait`]).
    pub fn waiting(&self) -> bool {
        self.waiting_since().is_some()
    }

    /// Since when it waits (see [`Engine::waiting`]), on the clock the driver told.
    pub fn waiting_since(&self) -> Option<Instant> {
        self.starved_at.filter(|_| self.phase == Phase::Transfer)
    }

    /// How long a download waits for its sources at most ([`EngineConfig::swarm_wait`]).
    pub fn wait(&self) -> Duration {
        self.config.swarm_wait
    }

    /// Why each source was left out or given up so far (its last reason).
    pub fn why(&self) -> &BTreeMap<PeerId, String> {
        &self.why
    }
}
