//! A deterministic simulation of downloads: the real engine (vote and grace, budget,
//! batching, lanes, resume, retries) driven by discrete events with no sockets, files or
//! clock. Sources have a rate and a latency and serve one batch at a time; some lie,
//! vanish, lose a data connection or never answer. This is the base the swarm
//! simulation grows from.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use lanspread_catalog::{FileManifest, GameId, RelPath};
use lanspread_peer::{
    max_in_flight_bytes, Action, BatchId, ChunkResult, Engine, EngineConfig, FailKind, Lane,
    PeerError, MANIFEST_GRACE,
};
use lanspread_proto::{unit_count, PeerId, CHUNK_SIZE};

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Honest,
    /// Every chunk it sends fails its hash.
    Liar,
    /// Its link is gone from this time on: batches finishing later fail.
    VanishesAt(Duration),
    /// Never answers the manifest request.
    Silent,
    /// Answers with another manifest.
    Different,
    /// Its data connection 0 is lost at this time (the link lives).
    LosesLaneAt(Duration),
}

#[derive(Debug, Clone)]
struct SimSource {
    id: PeerId,
    /// Bytes per second, shared by its lanes.
    rate: u64,
    latency: Duration,
    behaviour: Behaviour,
    /// When its uplink is free again.
    free_at: Duration,
}

#[derive(Debug)]
enum Event {
    Manifest(PeerId, Result<Vec<FileManifest>, String>),
    Fetched(BatchId, Vec<ChunkResult>, bool),
}

#[derive(Debug, Default, PartialEq)]
struct Outcome {
    finished_at: Option<Duration>,
    failed: Option<String>,
    /// Chunk → the source that delivered it.
    verified: BTreeMap<usize, PeerId>,
    bytes_from: BTreeMap<PeerId, u64>,
    requests: usize,
    prepared_at: Option<Duration>,
    chosen: Vec<PeerId>,
    why: BTreeMap<PeerId, String>,
    /// Most bytes in flight from one source at once.
    max_in_flight_bytes: u64,
    /// Requests cancelled: races lost.
    cancelled: usize,
}

fn pid(n: u8) -> PeerId {
    PeerId::from_spki(&[n])
}

fn file(name: &str, size: u64, seed: u8) -> FileManifest {
    let pieces = (0..lanspread_catalog::piece_count(size))
        .map(|i| {
            let mut h = [seed; 32];
            h[..8].copy_from_slice(&i.to_le_bytes());
            h
        })
        .collect();
    FileManifest::from_pieces(RelPath::new(name).unwrap(), size, 0o644, pieces)
}

/// A game: `big` chunks of an archive, `small` 100 KiB files, the sentinel.
fn game_files(big: u64, small: usize) -> Vec<FileManifest> {
    let mut files = vec![
        file("game.eti", big * CHUNK_SIZE - 12_345, 1),
        file("version.ini", 8, 2),
    ];
    files.extend((0..small).map(|i| file(&format!("data/{i:04}.pak"), 100 << 10, 3)));
    files
}

struct Sim {
    now: Duration,
    t0: Instant,
    sources: Vec<SimSource>,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    events: Vec<Option<Event>>,
    seq: u64,
}

impl Sim {
    fn new(sources: Vec<SimSource>) -> Self {
        Self {
            now: Duration::ZERO,
            t0: Instant::now(),
            sources,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            seq: 0,
        }
    }

    fn at(&mut self, when: Duration, e: Event) {
        self.events.push(Some(e));
        self.queue
            .push(Reverse((when, self.seq, self.events.len() - 1)));
        self.seq += 1;
    }

    fn source(&mut self, id: &PeerId) -> &mut SimSource {
        self.sources.iter_mut().find(|s| &s.id == id).unwrap()
    }

    /// Runs a download of `files` (with `present` chunks resumed) to its end.
    fn run(&mut self, files: &[FileManifest], threads: usize, present: &[usize]) -> Outcome {
        let ids: Vec<PeerId> = self.sources.iter().map(|s| s.id.clone()).collect();
        let game = GameId::new("simgame").unwrap();
        let mut engine = Engine::new(game, &ids, EngineConfig::new(threads), self.t0);
        let mut out = Outcome::default();
        let mut in_flight: BTreeMap<BatchId, (PeerId, u64)> = BTreeMap::new();
        // Bounds for a run that would not end (an engine that keeps asking, or waits on
        // a timer that does not move): far past any case here.
        let mut steps = 0u64;
        let mut step = |now: Duration| {
            steps += 1;
            assert!(
                steps < 10_000_000 && now < Duration::from_secs(24 * 3600),
                "the simulation does not end: {steps} steps, {now:?} simulated"
            );
        };
        loop {
            step(self.now);
            while let Some(action) = engine.poll() {
                step(self.now);
                match action {
                    Action::AskManifest(p) => self.ask_manifest(&p, files),
                    Action::Prepare => {
                        out.prepared_at = Some(self.now);
                        out.chosen = engine.chosen().unwrap().sources.clone();
                        let data: Vec<usize> = if threads > 1 {
                            (0..threads).collect()
                        } else {
                            vec![]
                        };
                        let opened: Vec<(PeerId, Vec<usize>)> = out
                            .chosen
                            .iter()
                            .map(|p| (p.clone(), data.clone()))
                            .collect();
                        engine.on_prepared(present, &opened);
                    }
                    Action::Fetch(f) => {
                        let bytes: u64 = f.chunks.iter().map(|&c| engine.chunks()[c].len).sum();
                        in_flight.insert(f.id, (f.peer.clone(), bytes));
                        let mine: u64 = in_flight
                            .values()
                            .filter(|(p, _)| *p == f.peer)
                            .map(|(_, b)| b)
                            .sum();
                        out.max_in_flight_bytes = out.max_in_flight_bytes.max(mine);
                        out.requests += 1;
                        self.fetch(f.id, &f.peer, f.lane, f.chunks.len(), bytes);
                    }
                    Action::Verified { chunk, peer } => {
                        assert!(
                            out.verified.insert(chunk, peer.clone()).is_none(),
                            "chunk {chunk} verified twice"
                        );
                        *out.bytes_from.entry(peer).or_default() += engine.chunks()[chunk].len;
                    }
                    // A race's loser (a lagging source's unit, sent again by an idle
                    // one): its request ends now, as the daemon's does.
                    Action::Cancel(id) => {
                        let i = self
                            .events
                            .iter()
                            .position(|e| matches!(e, Some(Event::Fetched(b, ..)) if *b == id))
                            .expect("a cancel of a request on its way");
                        let Some(Event::Fetched(_, res, _)) = self.events[i].take() else {
                            unreachable!()
                        };
                        let lost = "another source sent it first".to_owned();
                        let res = vec![Err((FailKind::NotChosen, lost)); res.len()];
                        out.cancelled += 1;
                        self.at(self.now, Event::Fetched(id, res, false));
                    }
                    Action::Commit => {
                        out.finished_at = Some(self.now);
                        out.why = engine.why().clone();
                        return out;
                    }
                    Action::Fail(e) => {
                        out.failed = Some(match e {
                            PeerError::MetadataConflict { .. } => format!("conflict: {e}"),
                            e => e.to_string(),
                        });
                        out.why = engine.why().clone();
                        return out;
                    }
                }
            }
            let timer = engine.poll_timeout().map(|t| t - self.t0);
            let next = self.queue.peek().map(|Reverse((t, ..))| *t);
            match (next, timer) {
                (Some(t), Some(d)) if d < t => {
                    self.now = d;
                    engine.handle_timeout(self.t0 + d);
                }
                (Some(t), _) => {
                    let Some(Reverse((_, _, i))) = self.queue.pop() else {
                        unreachable!()
                    };
                    self.now = t;
                    match self.events[i].take() {
                        Some(Event::Manifest(p, m)) => {
                            engine.on_manifest(p, m.map(Into::into), self.t0 + t)
                        }
                        Some(Event::Fetched(id, res, lost)) => {
                            in_flight.remove(&id);
                            engine.tick(self.t0 + t);
                            engine.on_fetched(id, res, lost)
                        }
                        // (Cancelled: its end was sent at once.)
                        None => {}
                    }
                }
                (None, Some(d)) => {
                    self.now = d;
                    engine.handle_timeout(self.t0 + d);
                }
                (None, None) => panic!("the engine waits for nothing: {out:?}"),
            }
        }
    }

    fn ask_manifest(&mut self, peer: &PeerId, files: &[FileManifest]) {
        let now = self.now;
        let s = self.source(peer).clone();
        let answer = match s.behaviour {
            Behaviour::Silent => return,
            Behaviour::Different => {
                let mut other = files.to_vec();
                let f = &other[0];
                let mut pieces = f.pieces.clone();
                pieces[0][31] ^= 0xff;
                other[0] = FileManifest::from_pieces(f.path.clone(), f.size, f.mode, pieces);
                Ok(other)
            }
            _ => Ok(files.to_vec()),
        };
        // A source hashes before it answers: the slower, the later.
        let hashing = Duration::from_millis(200 * 100 * MIB / s.rate);
        self.at(
            now + s.latency + hashing,
            Event::Manifest(peer.clone(), answer),
        );
    }

    fn fetch(&mut self, id: BatchId, peer: &PeerId, lane: Lane, n: usize, bytes: u64) {
        let now = self.now;
        let s = self.source(peer);
        let start = s.free_at.max(now + s.latency);
        let done = start + Duration::from_secs_f64(bytes as f64 / s.rate as f64);
        s.free_at = done;
        let mut at = done + s.latency;
        let results: Vec<ChunkResult>;
        let mut lost = false;
        match s.behaviour {
            Behaviour::Liar => {
                results = vec![Err((FailKind::BadData, "hash mismatch".into())); n];
            }
            Behaviour::VanishesAt(t) if at >= t => {
                results = vec![Err((FailKind::SourceGone, "connection lost".into())); n];
                at = t.max(now);
            }
            Behaviour::LosesLaneAt(t) if at >= t && lane == Lane::Data(0) => {
                let gone = "connection lost: timed out".to_owned();
                results = vec![Err((FailKind::SourceGone, gone)); n];
                lost = true;
            }
            _ => results = vec![Ok(()); n],
        }
        self.at(at, Event::Fetched(id, results, lost));
    }
}

fn source(n: u8, mib_s: u64, behaviour: Behaviour) -> SimSource {
    SimSource {
        id: pid(n),
        rate: mib_s * MIB,
        latency: Duration::from_micros(300),
        behaviour,
        free_at: Duration::ZERO,
    }
}

fn all_verified(out: &Outcome, files: &[FileManifest]) {
    let total: u64 = files.iter().map(|f| unit_count(f.size)).sum();
    assert_eq!(out.verified.len() as u64, total, "{out:?}");
}

#[test]
fn three_sources_of_different_speeds_share_the_work() {
    let files = game_files(24, 50);
    let total: u64 = files.iter().map(|f| f.size).sum();
    let mut sim = Sim::new(vec![
        source(1, 110, Behaviour::Honest),
        source(2, 60, Behaviour::Honest),
        source(3, 30, Behaviour::Honest),
    ]);
    let out = sim.run(&files, 1, &[]);
    assert!(out.finished_at.is_some(), "{out:?}");
    all_verified(&out, &files);
    // Each sends its share at its own pace: the faster the more, and the whole ends
    // before the slowest could have sent a third (the balance alone held every source
    // to an even share: to the slowest one's pace).
    let b = |n| out.bytes_from[&pid(n)];
    assert!(
        b(1) > b(2) && b(2) > b(3) && b(3) > 0,
        "{:?}",
        out.bytes_from
    );
    let third_at_slowest = Duration::from_secs_f64(total as f64 / 3.0 / (30 * MIB) as f64);
    assert!(out.finished_at.unwrap() < third_at_slowest, "{out:?}");
    // 50 small files went in a few batched requests, not 50.
    let big_units = unit_count(24 * CHUNK_SIZE) as usize;
    assert!(
        out.requests < big_units + 10 + out.cancelled,
        "{} requests",
        out.requests
    );
    // The budget (one thread): a source takes more only while under four chunks' bytes.
    let cap = max_in_flight_bytes(1, 3);
    assert_eq!(cap, 4 * CHUNK_SIZE);
    assert!(
        out.max_in_flight_bytes < cap + CHUNK_SIZE,
        "{}",
        out.max_in_flight_bytes
    );
    assert!(
        out.max_in_flight_bytes >= cap,
        "{}",
        out.max_in_flight_bytes
    );
}

/// S14's pair of like sources (two daemons on one LAN): the totals end within a chunk
/// of each other, and neither is found lagging (no race, nothing sent twice).
#[test]
fn s14_two_sources_of_like_speeds_end_within_one_chunk() {
    for (fast, other) in [(110, 110), (110, 95)] {
        let files = game_files(31, 0);
        let out = Sim::new(vec![
            source(1, fast, Behaviour::Honest),
            source(2, other, Behaviour::Honest),
        ])
        .run(&files, 1, &[]);
        all_verified(&out, &files);
        let b: Vec<u64> = out.bytes_from.values().copied().collect();
        assert!(
            b[0].abs_diff(b[1]) < CHUNK_SIZE,
            "{other}: {:?}",
            out.bytes_from
        );
        assert_eq!(out.cancelled, 0, "{other}");
    }
}

/// Sources of unlike speeds (a peer on a slow link beside a file server): the slow one
/// does not hold the fast one to its pace — the two end sooner than the fast one alone
/// would (with the balance alone they took as long as the slow one sending half).
#[test]
fn two_sources_of_unlike_speeds_end_sooner_than_the_fast_one_alone() {
    let files = game_files(31, 0);
    let total: u64 = files.iter().map(|f| f.size).sum();
    let out = Sim::new(vec![
        source(1, 110, Behaviour::Honest),
        source(2, 35, Behaviour::Honest),
    ])
    .run(&files, 1, &[]);
    all_verified(&out, &files);
    let alone = Duration::from_secs_f64(total as f64 / (110 * MIB) as f64);
    let took = out.finished_at.unwrap();
    assert!(
        took < alone,
        "{took:?} vs {alone:?} from the fast one alone"
    );
    let (fast, slow) = (out.bytes_from[&pid(1)], out.bytes_from[&pid(2)]);
    assert!(fast > 2 * slow && slow > 0, "{:?}", out.bytes_from);
    // Its last units were sent again by the fast one, the slow one's requests cancelled.
    assert!(out.cancelled > 0, "{out:?}");
}

#[test]
fn a_liar_a_vanishing_source_and_a_silent_one_cannot_stop_the_download() {
    let files = game_files(40, 20);
    let mut sim = Sim::new(vec![
        source(1, 100, Behaviour::Honest),
        source(2, 100, Behaviour::Liar),
        source(3, 100, Behaviour::VanishesAt(Duration::from_secs(8))),
        source(4, 100, Behaviour::Silent),
        source(5, 50, Behaviour::Honest),
    ]);
    let out = sim.run(&files, 1, &[]);
    assert!(out.finished_at.is_some(), "{out:?}");
    all_verified(&out, &files);
    // Nothing verified came from the liar; the vanished source's chunks were refetched.
    assert!(!out.verified.values().any(|p| *p == pid(2)));
    assert_eq!(out.why[&pid(2)], "hash mismatch");
    assert_eq!(out.why[&pid(3)], "connection lost");
    assert!(
        out.bytes_from.get(&pid(3)).is_some_and(|&b| b > 0),
        "{:?}",
        out.bytes_from
    );
    // The silent source held the vote for the grace only, not the manifest timeout.
    let prepared = out.prepared_at.unwrap();
    assert!(
        prepared >= MANIFEST_GRACE && prepared < MANIFEST_GRACE * 2,
        "{prepared:?}"
    );
    assert!(out.why[&pid(4)].contains("settled the vote"));
    assert!(!out.chosen.contains(&pid(4)));
}

#[test]
fn a_manifest_outvoted_never_serves_and_a_tie_fails() {
    let files = game_files(8, 0);
    let mut sim = Sim::new(vec![
        source(1, 100, Behaviour::Honest),
        source(2, 100, Behaviour::Different),
        source(3, 100, Behaviour::Honest),
    ]);
    let out = sim.run(&files, 1, &[]);
    all_verified(&out, &files);
    let mut honest = vec![pid(1), pid(3)];
    honest.sort();
    assert_eq!(out.chosen, honest);
    assert!(!out.bytes_from.contains_key(&pid(2)));
    assert_eq!(out.why[&pid(2)], "outvoted manifest");

    let mut tie = Sim::new(vec![
        source(1, 100, Behaviour::Honest),
        source(2, 100, Behaviour::Different),
    ]);
    let out = tie.run(&files, 1, &[]);
    assert!(
        out.failed
            .as_deref()
            .is_some_and(|f| f.starts_with("conflict")),
        "{out:?}"
    );
    assert!(out.verified.is_empty());
}

#[test]
fn a_resumed_download_fetches_only_what_is_missing() {
    let files = game_files(10, 0);
    let present: Vec<usize> = (0..6).collect();
    let mut sim = Sim::new(vec![source(1, 100, Behaviour::Honest)]);
    let out = sim.run(&files, 1, &present);
    assert!(out.finished_at.is_some(), "{out:?}");
    let fetched: Vec<usize> = out.verified.keys().copied().collect();
    let units: u64 = files.iter().map(|f| unit_count(f.size)).sum();
    assert_eq!(fetched, (6..units as usize).collect::<Vec<_>>());
}

#[test]
fn a_lost_data_connection_is_a_stall_and_the_source_still_serves() {
    let files = game_files(32, 0);
    let mut sim = Sim::new(vec![
        source(1, 100, Behaviour::LosesLaneAt(Duration::from_secs(1))),
        source(2, 100, Behaviour::Honest),
    ]);
    let out = sim.run(&files, 4, &[]);
    assert!(out.finished_at.is_some(), "{out:?}");
    all_verified(&out, &files);
    assert!(out.why[&pid(1)].starts_with("data connection lost"));
    // Kept as a source after the loss: it delivered its share to the end.
    let from_1 = out.bytes_from[&pid(1)];
    assert!(from_1 > 10 * CHUNK_SIZE, "{:?}", out.bytes_from);
}

#[test]
fn every_source_lost_fails_with_each_reason() {
    let files = game_files(16, 0);
    let mut sim = Sim::new(vec![
        source(1, 100, Behaviour::VanishesAt(Duration::from_millis(1900))),
        source(2, 100, Behaviour::Liar),
    ]);
    let out = sim.run(&files, 1, &[]);
    let failed = out.failed.expect("fails");
    assert!(failed.starts_with("no eligible source left"), "{failed}");
    assert!(
        failed.contains("hash mismatch") && failed.contains("connection lost"),
        "{failed}"
    );
    assert!(out.finished_at.is_none());
}

#[test]
fn the_simulation_is_deterministic() {
    let run = || {
        let files = game_files(20, 30);
        Sim::new(vec![
            source(1, 90, Behaviour::Honest),
            source(2, 40, Behaviour::VanishesAt(Duration::from_secs(4))),
            source(3, 70, Behaviour::Liar),
        ])
        .run(&files, 2, &[])
    };
    let (a, b) = (run(), run());
    assert!(a.finished_at.is_some(), "{a:?}");
    assert_eq!(a, b);
}
