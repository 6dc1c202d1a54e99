//! The lab: nodes, links, flows (max-min fair), the event loop and its report. Every
//! client runs the daemon's download engine (`Engine`: the planner's shuffled order,
//! partial sources with rarest first, offers to the server, rests, the swarm wait); the
//! server answers offers with the daemon's `SeedChooser`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lanspread_catalog::{FileManifest, GameId, RelPath};
use lanspread_peer::{
    Action, BatchId, Engine, EngineConfig, FailKind, SeedChooser, UploadTurns, OFFER_CHUNKS,
    OFFER_REST, TURN_HOLD,
};
use lanspread_proto::{ChunkSet, PeerId, CHUNK_SIZE, UNIT_SIZE};

use crate::timeline::Timeline;

mod rates;
mod relay;
mod report;
mod requests;

pub use report::Report;

use rates::rates;

const MBIT: f64 = 1e6 / 8.0;
const EPS: f64 = 1e-6;

/// When a node leaves the party.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kill {
    /// Nobody leaves.
    Never,
    /// Node `.0` leaves at `.1` seconds.
    At(usize, f64),
    /// The server leaves as soon as every chunk is verified on some client.
    ServerAfterOneCopy,
}

#[derive(Debug, Clone)]
pub struct Lab {
    pub clients: usize,
    /// 32 MiB chunks in the game.
    pub chunks: usize,
    /// Server upload, bytes/s.
    pub server_up: f64,
    /// Every client's upload and download, bytes/s.
    pub client_up: f64,
    pub client_down: f64,
    /// Links per client to other clients (the server is linked to everyone).
    pub max_links: usize,
    /// Client i starts at i × stagger seconds.
    pub stagger: f64,
    /// A node that leaves (SIGKILL: its flows end unfinished).
    pub kill: Kill,
    /// A client whose every upload fails its hash.
    pub liar: Option<usize>,
    /// Partial holders also serve the chunks they are fetching (cut-through: a relayed
    /// flow never gets ahead of the flow it relays), as the daemon does unless
    /// `LANSPREAD_CUT_THROUGH=0`.
    pub relay: bool,
    /// Share of each link's rate that carries payload (1: all of it; QUIC through the
    /// real lab's `tbf` carries ≈ 0.95). T_min stays that of the full rates.
    pub payload: f64,
    /// Real flows do not share a link equally at every instant: loss-driven congestion
    /// control backs a flow off and lets it climb again. Every `.1` seconds each flow's
    /// weight in the max-min sharing is drawn anew from 1 ± `.0` (0: the fluid model,
    /// equal shares). A relay that caught up with its upstream keeps to the upstream's
    /// rate, so what the sharing gives it above that is lost, as in the real lab.
    pub jitter: (f64, f64),
    /// The engines' unit (`EngineConfig::unit`): the protocol's `UNIT_SIZE` (8 MiB), or
    /// another slice of the 32 MiB chunks, which holders announce and serve alone.
    pub unit: u64,
    /// `EngineConfig::offer_rest` of every client, and the hold of every node's upload
    /// turns (`UploadTurns::holding_places_for`).
    pub offer_rest: Duration,
    pub turn_hold: Duration,
    pub seed: u64,
}

impl Lab {
    /// A 1 GiB game (32 chunks), every link 100 Mbit/s, clients linked to 40 others.
    pub fn party(clients: usize) -> Self {
        Self {
            clients,
            chunks: 32,
            server_up: 100.0 * MBIT,
            client_up: 100.0 * MBIT,
            client_down: 100.0 * MBIT,
            max_links: 40,
            stagger: 0.0,
            kill: Kill::Never,
            liar: None,
            relay: true,
            payload: 1.0,
            jitter: (0.0, 1.0),
            unit: UNIT_SIZE,
            offer_rest: OFFER_REST,
            turn_hold: TURN_HOLD,
            seed: 1,
        }
    }

    /// The game's units (the sentinel's not counted).
    pub fn units(&self) -> usize {
        self.chunks * (CHUNK_SIZE / self.unit) as usize
    }

    pub fn file_bytes(&self) -> f64 {
        self.chunks as f64 * CHUNK_SIZE as f64
    }

    pub fn t_min(&self) -> f64 {
        let f = self.file_bytes();
        let n = self.clients as f64;
        (f / self.server_up)
            .max(n * f / (self.server_up + n * self.client_up))
            .max(f / self.client_down)
    }
}

#[derive(Debug, Clone)]
struct Flow {
    id: u64,
    /// A relayed flow: the flow into its source that brings the same chunk.
    up: Option<u64>,
    src: usize,
    dst: usize,
    chunk: usize,
    left: f64,
    rate: f64,
    /// Its bytes.
    len: f64,
    /// The batch it answers, and its chunks (an offer's others come back not chosen).
    batch: BatchId,
    asked: Vec<usize>,
    /// It holds an upload turn of its source (released when it ends).
    turn: bool,
    /// Its weight in the links' sharing (`Lab::jitter`).
    weight: f64,
}

struct Node {
    id: PeerId,
    up: f64,
    down: f64,
    /// `None` for the server (it holds everything).
    engine: Option<Engine>,
    /// What it verified (announced to its links at once).
    have: ChunkSet,
    /// The server's choice among offered chunks.
    chooser: SeedChooser,
    /// Its upload turns (the daemon's: one per downloader, freed ones to who waited).
    turns: UploadTurns,
    /// Peers it is linked to.
    links: Vec<usize>,
    start: f64,
    started: bool,
    done_at: Option<f64>,
    failed: bool,
    /// Why its download failed.
    why: String,
    uploaded: f64,
    from_clients: f64,
    dead: bool,
}

fn pid(i: usize) -> PeerId {
    PeerId::from_spki(&(i as u64).to_le_bytes())
}

/// xorshift64*: the lab's own link choice (the engines have their own seeded shuffles).
fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn build(lab: &Lab) -> Vec<Node> {
    let n = lab.clients;
    let mut nodes: Vec<Node> = (0..=n)
        .map(|i| Node {
            id: pid(i),
            up: lab.payload * if i == 0 { lab.server_up } else { lab.client_up },
            down: lab.payload * if i == 0 { 0.0 } else { lab.client_down },
            engine: None,
            // The archive's units and the sentinel's.
            have: if i == 0 {
                ChunkSet::full(lab.units() + 1)
            } else {
                ChunkSet::empty(lab.units() + 1)
            },
            chooser: SeedChooser::new(lab.units() + 1),
            turns: UploadTurns::default().holding_places_for(lab.turn_hold),
            links: Vec::new(),
            start: (i.saturating_sub(1)) as f64 * lab.stagger,
            started: false,
            done_at: None,
            failed: false,
            why: String::new(),
            uploaded: 0.0,
            from_clients: 0.0,
            dead: false,
        })
        .collect();
    // The server is linked to every client; clients to up to `max_links` others, at random
    // (what peer exchange with a link cap gives).
    let mut x = lab.seed | 1;
    let link = |a: usize, b: usize, nodes: &mut Vec<Node>| {
        if a != b && !nodes[a].links.contains(&b) {
            nodes[a].links.push(b);
            nodes[b].links.push(a);
        }
    };
    for c in 1..=n {
        link(c, 0, &mut nodes);
    }
    for c in 1..=n {
        let mut tries = 0;
        while nodes[c].links.len() < lab.max_links.min(n - 1) + 1 && tries < 10 * lab.max_links {
            let other = 1 + (next(&mut x) % n as u64) as usize;
            if nodes[other].links.len() < lab.max_links + 1 {
                link(c, other, &mut nodes);
            }
            tries += 1;
        }
    }
    nodes
}

/// The party's state while it runs.
struct Party<'a> {
    lab: &'a Lab,
    nodes: Vec<Node>,
    index: HashMap<PeerId, usize>,
    flows: Vec<Flow>,
    /// Simulated time zero, as the engines' clock.
    base: Instant,
    now: f64,
    liar_rejected: usize,
    races_lost: usize,
    one_copy_at: Option<f64>,
    server_flows_max: usize,
    /// Recorded only when asked for (`LANSPREAD_SWARM_TIMELINE`): it costs a pass over
    /// the flows per client and step.
    timeline: Option<Timeline>,
    next_flow: u64,
    /// Clients whose holdings changed: their links learn it before time moves on.
    dirty: Vec<usize>,
    /// Flows that ended without their chunk (what relayed them must end too).
    bad: std::collections::HashSet<u64>,
}

pub fn run(lab: &Lab) -> Report {
    let nodes = build(lab);
    let index = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.clone(), i))
        .collect();
    let mut p = Party {
        lab,
        nodes,
        index,
        flows: Vec::new(),
        base: Instant::now(),
        now: 0.0,
        liar_rejected: 0,
        races_lost: 0,
        one_copy_at: None,
        server_flows_max: 0,
        timeline: std::env::var_os("LANSPREAD_SWARM_TIMELINE").map(|_| Timeline::default()),
        next_flow: 0,
        dirty: Vec::new(),
        bad: Default::default(),
    };
    let limit = 1000.0 * lab.t_min() + lab.stagger * lab.clients as f64;
    // (Steps at one instant are bounded too: an engine that asks again at once forever
    // would otherwise hold the run with its clock stopped.)
    let (mut at, mut same) = (p.now, 0u64);
    while p.step() {
        assert!(p.now < limit, "no end in sight at {:.1} s", p.now);
        same = if p.now == at { same + 1 } else { 0 };
        at = p.now;
        assert!(same < 10_000_000, "stuck at {:.1} s", p.now);
    }
    p.report()
}

impl Party<'_> {
    fn at(&self) -> Instant {
        self.base + Duration::from_secs_f64(self.now)
    }

    fn active(&self, c: usize) -> bool {
        let n = &self.nodes[c];
        c > 0 && n.started && !n.dead && n.done_at.is_none() && !n.failed
    }

    /// Whether client `c` has yet to start and starts now.
    fn due(&self, c: usize) -> bool {
        let n = &self.nodes[c];
        c > 0 && !n.started && n.start <= self.now + EPS
    }

    /// One event; false when the party is over (everyone done or failed, or nothing moves).
    fn step(&mut self) -> bool {
        for c in 1..=self.lab.clients {
            if self.due(c) {
                self.begin(c);
            }
        }
        for c in 1..=self.lab.clients {
            let due = self.nodes[c].engine.as_ref().and_then(Engine::poll_timeout);
            if self.active(c) && due.is_some_and(|t| t <= self.at()) {
                let now = self.at();
                if let Some(e) = self.nodes[c].engine.as_mut() {
                    e.handle_timeout(now);
                }
                self.drive(c);
            }
        }
        self.flush();
        if (1..=self.lab.clients).all(|c| !self.active(c) && self.nodes[c].started) {
            return false;
        }
        self.jitter();
        rates(&self.nodes, &mut self.flows);
        let serving = self.flows.iter().filter(|f| f.src == 0).count();
        self.server_flows_max = self.server_flows_max.max(serving);
        let mut dt = relay::cap(&mut self.flows);
        for f in &self.flows {
            dt = dt.min(f.left / f.rate);
        }
        for (c, node) in self.nodes.iter().enumerate().skip(1) {
            if !node.started {
                dt = dt.min(node.start - self.now);
            }
            if let Some(t) = node.engine.as_ref().and_then(Engine::poll_timeout) {
                if self.active(c) {
                    dt = dt.min(t.saturating_duration_since(self.at()).as_secs_f64());
                }
            }
        }
        if let Kill::At(_, t) = self.lab.kill {
            if t > self.now {
                dt = dt.min(t - self.now);
            }
        }
        if self.lab.jitter.0 > 0.0 && dt.is_finite() {
            let every = self.lab.jitter.1;
            let next = ((self.now / every).floor() + 1.0) * every;
            dt = dt.min(next - self.now);
        }
        if !dt.is_finite() {
            return false; // nothing moves: the report says who is left
        }
        // Engine timers have microsecond resolution: step at least that far.
        let dt = dt.max(1e-6);
        self.record(dt);
        self.now += dt;
        for f in &mut self.flows {
            f.left -= f.rate * dt;
        }
        let (finished, running): (Vec<Flow>, Vec<Flow>) = self
            .flows
            .drain(..)
            .partition(|f| f.left <= EPS * CHUNK_SIZE as f64);
        self.flows = running;
        for f in finished {
            if f.turn {
                let dst = self.nodes[f.dst].id.clone();
                self.nodes[f.src].turns.release(&dst);
            }
            if f.up.is_some_and(|u| self.bad.contains(&u)) {
                // It relayed what its source found bad at the same instant.
                self.cut_relays(&[f.id]);
                self.announce(f.dst);
                self.answer(&f, Err((FailKind::SourceGone, "relay cut".to_owned())));
                continue;
            }
            self.delivered(f);
        }
        self.kills();
        self.flush();
        true
    }

    /// Client `c` starts its download: the manifest from the server, then the engine runs.
    fn begin(&mut self, c: usize) {
        let lab = self.lab;
        self.nodes[c].started = true;
        let mut config = EngineConfig::new(1);
        config.shuffle = Some(lab.seed ^ ((c as u64) << 8));
        config.offer = OFFER_CHUNKS;
        config.offer_rest = lab.offer_rest;
        config.unit = lab.unit;
        let game = GameId::new("game").expect("a game id");
        let server = self.nodes[0].id.clone();
        let now = self.at();
        let mut engine = Engine::new(game, std::slice::from_ref(&server), config, now);
        while engine.poll().is_some() {}
        let file = |path: &str, size: u64| {
            let pieces = (0..lanspread_catalog::piece_count(size))
                .map(|i| [i as u8; 32])
                .collect();
            FileManifest::from_pieces(RelPath::new(path).expect("a path"), size, 0o644, pieces)
        };
        let files = vec![
            file("game.eti", lab.file_bytes() as u64),
            file("version.ini", 8),
        ];
        engine.on_manifest(server.clone(), Ok(files.into()), now);
        assert_eq!(engine.poll(), Some(Action::Prepare));
        engine.set_partials(self.holders(c), now);
        engine.on_prepared(&[], &[(server, vec![])]);
        self.nodes[c].engine = Some(engine);
        self.drive(c);
        // Its links learn it holds a (still empty) partial copy.
        self.announce(c);
    }

    /// What client `c`'s links hold in part now (the daemon's `partial_holders`).
    fn holders(&self, c: usize) -> Vec<(PeerId, ChunkSet)> {
        self.nodes[c]
            .links
            .iter()
            .filter(|&&l| self.active(l))
            .map(|&l| (self.nodes[l].id.clone(), self.servable(l)))
            .collect()
    }

    /// Client `c`'s holdings changed: its links learn it before time moves on.
    fn announce(&mut self, c: usize) {
        if !self.dirty.contains(&c) {
            self.dirty.push(c);
        }
    }

    /// Every linked client's engine learns the changed holdings (what they then start
    /// may change more: until nothing is left).
    fn flush(&mut self) {
        while !self.dirty.is_empty() {
            let c = self.dirty.remove(0);
            self.tell_links(c);
        }
    }

    fn tell_links(&mut self, c: usize) {
        let now = self.at();
        for e in self.nodes[c].links.clone() {
            if !self.active(e) {
                continue;
            }
            let holders = self.holders(e);
            let ready: Vec<PeerId> = self.nodes[e]
                .links
                .iter()
                .filter(|&&l| l > 0 && !self.nodes[l].dead && self.nodes[l].done_at.is_some())
                .map(|&l| self.nodes[l].id.clone())
                .collect();
            let growing: Vec<(PeerId, Vec<usize>)> = self.nodes[e]
                .links
                .iter()
                .filter(|&&l| self.active(l))
                .map(|&l| (self.nodes[l].id.clone(), self.growing(l)))
                .collect();
            if let Some(engine) = self.nodes[e].engine.as_mut() {
                engine.set_partials(holders, now);
                engine.set_growing(&growing);
                engine.add_ready(&ready);
            }
            self.drive(e);
        }
    }

    /// Performs what client `c`'s engine asks.
    fn drive(&mut self, c: usize) {
        loop {
            let Some(action) = self.nodes[c].engine.as_mut().and_then(Engine::poll) else {
                return;
            };
            match action {
                Action::Fetch(f) => self.fetch(c, f),
                Action::Verified { chunk, peer } => {
                    self.nodes[c].have.insert(chunk);
                    if peer != self.nodes[0].id {
                        let len = self.nodes[c]
                            .engine
                            .as_ref()
                            .map_or(0, |e| e.chunks()[chunk].len);
                        self.nodes[c].from_clients += len as f64;
                    }
                    if self.one_copy_at.is_none() && self.swarm_has_every_chunk() {
                        self.one_copy_at = Some(self.now);
                    }
                    self.announce(c);
                }
                Action::Cancel(id) => self.cancel(c, id),
                Action::Commit => {
                    self.nodes[c].done_at = Some(self.now);
                    self.announce(c);
                }
                Action::Fail(e) => {
                    self.nodes[c].why = e.to_string();
                    self.nodes[c].failed = true;
                    self.announce(c);
                }
                Action::AskManifest(_) | Action::Prepare => {}
            }
        }
    }

    /// Each flow's weight for the current period of `Lab::jitter`: drawn from the seed,
    /// the flow and the period, so a run is deterministic.
    fn jitter(&mut self) {
        let (amp, every) = self.lab.jitter;
        if amp <= 0.0 {
            return;
        }
        let period = (self.now / every + EPS).floor() as u64;
        for f in &mut self.flows {
            let mut x = (self.lab.seed
                ^ f.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ period.wrapping_mul(0xD1B5_4A32_D192_ED03))
                | 1;
            next(&mut x);
            let u = (next(&mut x) >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
            f.weight = 1.0 + amp * (2.0 * u - 1.0);
        }
    }

    fn swarm_has_every_chunk(&self) -> bool {
        (0..=self.lab.units()).all(|c| {
            self.nodes[1..]
                .iter()
                .any(|n| !n.dead && n.have.contains(c))
        })
    }

    fn kills(&mut self) {
        let victim = match self.lab.kill {
            Kill::At(k, t) if t <= self.now + EPS => Some(k),
            Kill::ServerAfterOneCopy if self.one_copy_at.is_some() => Some(0),
            _ => None,
        };
        if let Some(k) = victim.filter(|&k| !self.nodes[k].dead) {
            self.kill(k);
        }
    }
}
