//! The lab: nodes, links, flows (max-min fair), the event loop and its report.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::Duration;

use lanspread_peer::{Picker, PickerConfig, SeedChooser, UploadSlots};
use lanspread_proto::{ChunkSet, PeerId, CHUNK_SIZE};

const MBIT: f64 = 1e6 / 8.0;
const EPS: f64 = 1e-6;
/// Candidates a client offers the server.
const OFFER: usize = 64;

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
    pub chunks: usize,
    /// Bytes per chunk (the unit that is verified, announced and served).
    pub piece: f64,
    /// Server upload, bytes/s.
    pub server_up: f64,
    /// Every client's upload and download, bytes/s.
    pub client_up: f64,
    pub client_down: f64,
    /// Upload slots per peer and their rotation period.
    pub slots: usize,
    /// The server's upload slots.
    pub server_slots: usize,
    /// The picker's settings (chunks in flight per holder, random first, end game).
    pub picker: PickerConfig,
    pub period: Duration,
    /// Links per client to other clients (the server is linked to everyone).
    pub max_links: usize,
    /// Client i starts at i × stagger seconds.
    pub stagger: f64,
    /// A node that leaves (SIGKILL: its flows end unfinished).
    pub kill: Kill,
    /// A client whose every upload fails its hash.
    pub liar: Option<usize>,
    pub seed: u64,
}

impl Lab {
    pub fn party(clients: usize) -> Self {
        Self {
            clients,
            chunks: 32 * CHUNK_SIZE as usize / piece_bytes(),
            piece: piece_bytes() as f64,
            server_up: 100.0 * MBIT,
            client_up: 100.0 * MBIT,
            client_down: 100.0 * MBIT,
            slots: env_or("LANSPREAD_SWARM_SLOTS", 4),
            server_slots: env_or("LANSPREAD_SWARM_SERVER_SLOTS", 4),
            picker: PickerConfig {
                per_holder: env_or(
                    "LANSPREAD_SWARM_PER_HOLDER",
                    PickerConfig::default().per_holder,
                ),
                ..PickerConfig::default()
            },
            period: Duration::from_secs(env_or("LANSPREAD_SWARM_PERIOD", 10) as u64),
            max_links: 40,
            stagger: 0.0,
            kill: Kill::Never,
            liar: None,
            seed: 1,
        }
    }

    pub fn file_bytes(&self) -> f64 {
        self.chunks as f64 * self.piece
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
    src: usize,
    dst: usize,
    chunk: usize,
    left: f64,
    rate: f64,
}

struct Node {
    id: PeerId,
    up: f64,
    down: f64,
    /// `None` for the server (it holds everything).
    picker: Option<Picker>,
    /// The server's choice among the candidates it is offered.
    chooser: SeedChooser,
    slots: UploadSlots,
    /// Peers it is linked to (downloads from, announces to).
    links: Vec<usize>,
    start: f64,
    started: bool,
    done_at: Option<f64>,
    uploaded: f64,
    from_clients: f64,
    dead: bool,
}

#[derive(Debug)]
pub struct Report {
    pub t_min: f64,
    pub slowest: f64,
    pub median: f64,
    pub server_upload_f: f64,
    /// Share of all bytes the clients got from other clients.
    pub from_clients_share: f64,
    pub duplicates: usize,
    /// Clients that finished / that stopped with chunks no living peer holds.
    pub finished: usize,
    pub starved: usize,
    /// Chunks from the liar that failed their hash (and were fetched again elsewhere).
    pub liar_rejected: usize,
    /// When every chunk first existed on some client (s).
    pub one_copy_at: Option<f64>,
}

/// The verified unit: 32 MiB chunks (`LANSPREAD_SWARM_PIECE_MIB` tries others).
fn piece_bytes() -> usize {
    env_or("LANSPREAD_SWARM_PIECE_MIB", CHUNK_SIZE as usize >> 20) << 20
}

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pid(i: usize) -> PeerId {
    PeerId::from_spki(&(i as u64).to_le_bytes())
}

/// xorshift64*: the lab's own link choice (the picker has its own seeded generator).
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
            up: if i == 0 { lab.server_up } else { lab.client_up },
            down: if i == 0 { 0.0 } else { lab.client_down },
            picker: (i > 0).then(|| {
                Picker::new(
                    ChunkSet::empty(lab.chunks),
                    lab.picker,
                    lab.seed ^ (i as u64) << 8,
                )
            }),
            chooser: SeedChooser::new(lab.chunks),
            slots: UploadSlots::new(
                if i == 0 { lab.server_slots } else { lab.slots },
                lab.period,
            ),
            links: Vec::new(),
            start: (i.saturating_sub(1)) as f64 * lab.stagger,
            started: false,
            done_at: None,
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
    // The server is asked last: partial holders first for what they have.
    for node in &mut nodes {
        node.links.sort_by_key(|&p| (p == 0, p));
    }
    nodes
}

/// Starts what client `d` may start now: for each linked source that holds something it
/// needs (for the server: something no partial holder has, and it is not sending that to
/// someone else right now), a slot or a place in line, then requests up to the picker's
/// per-holder cap. A slot it cannot use any more is given back.
fn request(
    nodes: &mut [Node],
    flows: &mut Vec<Flow>,
    (d, piece): (usize, f64),
    now: f64,
    dirty: &mut BTreeSet<usize>,
) {
    let t = Duration::from_secs_f64(now);
    let me = nodes[d].id.clone();
    for s in nodes[d].links.clone() {
        if nodes[s].dead || (s != 0 && !nodes[s].started) {
            continue;
        }
        let src = nodes[s].id.clone();
        let picker = nodes[d].picker.as_mut().expect("a client");
        let wants = if s == 0 {
            !picker.offer(&src, 1).is_empty()
        } else {
            picker.wants_from(&src) || (picker.unrequested() == 0 && !picker.done())
        };
        if wants && nodes[s].slots.want(&me, t) {
            start(nodes, flows, d, s, piece);
        }
        let picker = nodes[d].picker.as_ref().expect("a client");
        if picker.in_flight(&src) == 0 && nodes[s].slots.holds(&me) {
            for got in nodes[s].slots.done(&me, t) {
                dirty.insert(index_of(nodes, &got));
            }
        }
    }
}

/// Requests from `s` what `d`'s picker (and for the server, its chooser) gives.
fn start(nodes: &mut [Node], flows: &mut Vec<Flow>, d: usize, s: usize, piece: f64) {
    let src = nodes[s].id.clone();
    loop {
        let picker = nodes[d].picker.as_mut().expect("a client");
        let chunk = if s == 0 {
            let offer = picker.offer(&src, OFFER);
            let Some(c) = nodes[0].chooser.choose(&offer) else {
                return;
            };
            let picker = nodes[d].picker.as_mut().expect("a client");
            picker.take(&src, c);
            if picker.in_flight(&src) == 0 {
                nodes[0].chooser.finished(c); // over the per-holder cap: not taken
                return;
            }
            c
        } else {
            match picker.pick(&src) {
                Some(p) => p.chunk,
                None => return,
            }
        };
        flows.push(Flow {
            src: s,
            dst: d,
            chunk,
            left: piece,
            rate: 0.0,
        });
    }
}

fn index_of(nodes: &[Node], id: &PeerId) -> usize {
    nodes
        .iter()
        .position(|n| &n.id == id)
        .expect("a known peer")
}

/// Max-min fair rates (progressive filling): the most constrained uplink or downlink
/// fixes the rate of its flows first, what they leave elsewhere goes to the others — what
/// congestion control converges to on a LAN.
fn rates(nodes: &[Node], flows: &mut [Flow]) {
    // Resource 2i: node i's uplink, 2i + 1: its downlink.
    let mut cap: Vec<f64> = nodes.iter().flat_map(|n| [n.up, n.down]).collect();
    let mut count = vec![0usize; cap.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); cap.len()];
    for (i, f) in flows.iter().enumerate() {
        for r in [2 * f.src, 2 * f.dst + 1] {
            count[r] += 1;
            users[r].push(i);
        }
    }
    let share = |cap: &[f64], count: &[usize], r: usize| (cap[r] / count[r] as f64).max(0.0);
    let mut heap = BinaryHeap::new();
    for r in 0..cap.len() {
        if count[r] > 0 {
            heap.push(Reverse((share(&cap, &count, r).to_bits(), r)));
        }
    }
    let mut fixed = vec![false; flows.len()];
    while let Some(Reverse((bits, r))) = heap.pop() {
        if count[r] == 0 || share(&cap, &count, r).to_bits() != bits {
            continue; // stale
        }
        let rate = f64::from_bits(bits);
        for &i in &users[r] {
            if fixed[i] {
                continue;
            }
            fixed[i] = true;
            flows[i].rate = rate;
            let other = if r % 2 == 0 {
                2 * flows[i].dst + 1
            } else {
                2 * flows[i].src
            };
            cap[other] -= rate;
            count[other] -= 1;
            if count[other] > 0 {
                heap.push(Reverse((share(&cap, &count, other).to_bits(), other)));
            }
        }
        count[r] = 0;
    }
}

/// The party's state while it runs.
struct Party<'a> {
    lab: &'a Lab,
    nodes: Vec<Node>,
    flows: Vec<Flow>,
    dirty: BTreeSet<usize>,
    now: f64,
    duplicates: usize,
    liar_rejected: usize,
    one_copy_at: Option<f64>,
}

pub fn run(lab: &Lab) -> Report {
    let mut p = Party {
        lab,
        nodes: build(lab),
        flows: Vec::new(),
        dirty: BTreeSet::new(),
        now: 0.0,
        duplicates: 0,
        liar_rejected: 0,
        one_copy_at: None,
    };
    let n = lab.clients;
    for c in 1..=n {
        // Every client knows what its links hold (empty until they start).
        for s in p.nodes[c].links.clone() {
            let has = (s != 0).then(|| ChunkSet::empty(lab.chunks));
            let id = p.nodes[s].id.clone();
            if let Some(picker) = p.nodes[c].picker.as_mut() {
                picker.set_holder(id, has);
            }
        }
    }
    let limit = 1000.0 * lab.t_min() + lab.stagger * n as f64;
    while p.step() {
        assert!(p.now < limit, "no end in sight at {:.1} s", p.now);
    }
    p.report()
}

impl Party<'_> {
    /// One event; false when the party is over (everyone done, or nothing can move).
    fn step(&mut self) -> bool {
        let n = self.lab.clients;
        for c in 1..=n {
            if !self.nodes[c].started && self.nodes[c].start <= self.now + EPS {
                self.nodes[c].started = true;
                self.dirty.insert(c);
            }
        }
        while let Some(d) = self.dirty.pop_first() {
            let node = &self.nodes[d];
            if d > 0 && node.started && node.done_at.is_none() && !node.dead {
                let lab = (d, self.lab.piece);
                request(
                    &mut self.nodes,
                    &mut self.flows,
                    lab,
                    self.now,
                    &mut self.dirty,
                );
            }
        }
        if self.nodes[1..]
            .iter()
            .all(|c| c.done_at.is_some() || c.dead)
        {
            return false;
        }
        rates(&self.nodes, &mut self.flows);
        let mut dt = f64::INFINITY;
        for f in &self.flows {
            dt = dt.min(f.left / f.rate);
        }
        for c in &self.nodes[1..] {
            if !c.started {
                dt = dt.min(c.start - self.now);
            }
        }
        for node in self.nodes.iter().filter(|n| !n.dead) {
            if let Some(t) = node.slots.next_tick() {
                dt = dt.min((t.as_secs_f64() - self.now).max(0.0));
            }
        }
        if let Kill::At(_, t) = self.lab.kill {
            if t > self.now {
                dt = dt.min(t - self.now);
            }
        }
        if !dt.is_finite() {
            return false; // nothing moves: the report says who starved
        }
        self.now += dt.max(0.0);
        for f in &mut self.flows {
            f.left -= f.rate * dt;
        }
        let piece = self.lab.piece;
        let (finished, running): (Vec<Flow>, Vec<Flow>) =
            self.flows.drain(..).partition(|f| f.left <= EPS * piece);
        self.flows = running;
        for f in finished {
            self.delivered(f);
        }
        self.kills();
        let t = Duration::from_secs_f64(self.now);
        for s in 0..self.nodes.len() {
            for (lost, got) in self.nodes[s].slots.tick(t) {
                self.dirty.insert(index_of(&self.nodes, &lost));
                self.dirty.insert(index_of(&self.nodes, &got));
            }
        }
        true
    }

    /// A chunk arrived: checked (the liar's fail), verified, announced.
    fn delivered(&mut self, f: Flow) {
        if f.src == 0 {
            self.nodes[0].chooser.finished(f.chunk);
        }
        let src = self.nodes[f.src].id.clone();
        self.nodes[f.src].uploaded += self.lab.piece;
        self.dirty.insert(f.dst);
        self.dirty.insert(f.src);
        if self.lab.liar == Some(f.src) {
            // Bad bytes: the chunk is asked for again, the liar dropped for this download.
            self.liar_rejected += 1;
            let picker = self.nodes[f.dst].picker.as_mut().expect("a client");
            picker.released(f.chunk, &src);
            picker.remove_holder(&src);
            let me = self.nodes[f.dst].id.clone();
            let t = Duration::from_secs_f64(self.now);
            for got in self.nodes[f.src].slots.done(&me, t) {
                self.dirty.insert(index_of(&self.nodes, &got));
            }
            return;
        }
        let picker = self.nodes[f.dst].picker.as_mut().expect("a client");
        if picker.have().contains(f.chunk) {
            return; // a late end-game copy
        }
        let losers = picker.verified(f.chunk, &src);
        if f.src != 0 {
            self.nodes[f.dst].from_clients += self.lab.piece;
        }
        for loser in losers {
            let l = index_of(&self.nodes, &loser);
            self.flows
                .retain(|g| !(g.src == l && g.dst == f.dst && g.chunk == f.chunk));
            if l == 0 {
                self.nodes[0].chooser.finished(f.chunk);
            }
            self.duplicates += 1;
        }
        let done = self.nodes[f.dst].picker.as_ref().is_some_and(Picker::done);
        let me = self.nodes[f.dst].id.clone();
        let t = Duration::from_secs_f64(self.now);
        if done {
            self.nodes[f.dst].done_at = Some(self.now);
            for s in self.nodes[f.dst].links.clone() {
                for got in self.nodes[s].slots.done(&me, t) {
                    self.dirty.insert(index_of(&self.nodes, &got));
                }
            }
        }
        for e in self.nodes[f.dst].links.clone() {
            if let Some(p) = self.nodes[e].picker.as_mut() {
                p.holder_got(&me, f.chunk);
            }
            self.dirty.insert(e);
        }
        if self.one_copy_at.is_none() && self.swarm_has_every_chunk() {
            self.one_copy_at = Some(self.now);
        }
    }

    fn swarm_has_every_chunk(&self) -> bool {
        (0..self.lab.chunks).all(|c| {
            self.nodes[1..]
                .iter()
                .any(|n| !n.dead && n.picker.as_ref().is_some_and(|p| p.have().contains(c)))
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

    /// Node `k` is gone: its flows end unfinished, every peer forgets it.
    fn kill(&mut self, k: usize) {
        self.nodes[k].dead = true;
        let gone = self.nodes[k].id.clone();
        let t = Duration::from_secs_f64(self.now);
        let (cut, kept): (Vec<Flow>, Vec<Flow>) =
            self.flows.drain(..).partition(|f| f.src == k || f.dst == k);
        self.flows = kept;
        for f in cut {
            if f.src == 0 {
                self.nodes[0].chooser.finished(f.chunk);
            }
            if f.dst == k {
                for got in self.nodes[f.src].slots.done(&gone, t) {
                    self.dirty.insert(index_of(&self.nodes, &got));
                }
            }
        }
        for i in 0..self.nodes.len() {
            if let Some(p) = self.nodes[i].picker.as_mut() {
                p.remove_holder(&gone);
            }
            for got in self.nodes[i].slots.done(&gone, t) {
                self.dirty.insert(index_of(&self.nodes, &got));
            }
            self.dirty.insert(i);
        }
    }

    fn report(&self) -> Report {
        let lab = self.lab;
        let n = lab.clients;
        let living: Vec<&Node> = self.nodes[1..].iter().filter(|c| !c.dead).collect();
        let mut times: Vec<f64> = living
            .iter()
            .filter_map(|c| c.done_at.map(|t| t - c.start))
            .collect();
        times.sort_by(f64::total_cmp);
        let finished = times.len();
        // Whoever did not finish must lack only chunks no living peer holds: a clean
        // failure, not a stall.
        for c in living.iter().filter(|c| c.done_at.is_none()) {
            let have = c.picker.as_ref().expect("a client").have();
            for chunk in (0..lab.chunks).filter(|&x| !have.contains(x)) {
                let somewhere = self.nodes.iter().enumerate().any(|(i, o)| {
                    !o.dead
                        && (i == 0 || o.picker.as_ref().is_some_and(|p| p.have().contains(chunk)))
                });
                assert!(!somewhere, "a client stalled while chunk {chunk} exists");
            }
        }
        let f = lab.file_bytes();
        let t = |x: Option<&f64>| x.map_or(f64::INFINITY, |t| t / lab.t_min());
        Report {
            t_min: lab.t_min(),
            slowest: t(times.last()),
            median: t(times.get(times.len() / 2)),
            server_upload_f: self.nodes[0].uploaded / f,
            from_clients_share: self.nodes[1..].iter().map(|c| c.from_clients).sum::<f64>()
                / (f * n as f64),
            duplicates: self.duplicates,
            finished,
            starved: living.len() - finished,
            liar_rejected: self.liar_rejected,
            one_copy_at: self.one_copy_at,
        }
    }
}
