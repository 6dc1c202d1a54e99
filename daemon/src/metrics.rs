//! Prometheus metrics (`--metrics-listen`): counters the daemon bumps as work happens —
//! most of them read off the events it emits (events are data), the bytes sent as
//! answers go out — and gauges filled at scrape time from a [`Snapshot`] of the shared
//! state and the process. The text format is `prometheus-client`'s, never written by hand.
//! The HTTP side is `metrics_http.rs`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lanspread_control::api::EventKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Peers with series of their own; bytes of further peers count under `peer="other"`
/// (peer ids are keys peers make themselves: a hostile peer could mint series without end).
pub const MAX_PEER_SERIES: usize = 256;

/// How far back the transfer-rate gauges look.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Peer {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Game {
    game: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    kind: String,
    outcome: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cache {
    cache: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// What the gauges show, read from the daemon's state at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Running operations by kind (`download`, `install`, `uninstall`).
    pub operations: Vec<(&'static str, usize)>,
    /// Linked peers.
    pub peers: usize,
    /// Local games ready to serve.
    pub games_ready: usize,
    /// The bandwidth limits, MiB/s (`None`: unlimited).
    pub limits: (Option<f64>, Option<f64>),
    /// Pieces that waited for the upload and the download limit, and for how long in
    /// all (seconds), since the start.
    pub waited: [(u64, f64); 2],
}

/// Every metric of the daemon, registered once.
pub struct Metrics {
    registry: Registry,
    sent_by_peer: Family<Peer, Counter>,
    sent_by_game: Family<Game, Counter>,
    received_by_peer: Family<Peer, Counter>,
    received_by_game: Family<Game, Counter>,
    chunks_verified: Counter,
    chunks_relayed: Counter,
    chunks_failed: Family<Reason, Counter>,
    started: Family<Kind, Counter>,
    ended: Family<Outcome, Counter>,
    manifests: Family<Cache, Counter>,
    indexed_bytes: Counter,
    reloads: Family<Reason, Counter>,
    operations: Family<Kind, Gauge>,
    peers: Gauge,
    games_ready: Gauge,
    rate: Family<Direction, FloatGauge>,
    limit: Family<Direction, FloatGauge>,
    limit_waits: Family<Direction, Counter>,
    limit_waited: Family<Direction, Counter<f64, AtomicU64>>,
    cpu: Counter<f64, AtomicU64>,
    rss: Gauge,
    fds: Gauge,
    sent_total: AtomicU64,
    received_total: AtomicU64,
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
    /// The peers that have series now (removed when a peer is lost).
    peer_series: Mutex<std::collections::BTreeSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            registry: Registry::default(),
            sent_by_peer: Family::default(),
            sent_by_game: Family::default(),
            received_by_peer: Family::default(),
            received_by_game: Family::default(),
            chunks_verified: Counter::default(),
            chunks_relayed: Counter::default(),
            chunks_failed: Family::default(),
            started: Family::default(),
            ended: Family::default(),
            manifests: Family::default(),
            indexed_bytes: Counter::default(),
            reloads: Family::default(),
            operations: Family::default(),
            peers: Gauge::default(),
            games_ready: Gauge::default(),
            rate: Family::default(),
            limit: Family::default(),
            limit_waits: Family::default(),
            limit_waited: Family::default(),
            cpu: Counter::default(),
            rss: Gauge::default(),
            fds: Gauge::default(),
            sent_total: AtomicU64::new(0),
            received_total: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::new()),
            peer_series: Mutex::default(),
        };
        let b = Unit::Bytes;
        let r = registry.sub_registry_with_prefix("lanspread");
        r.register_with_unit(
            "peer_sent",
            "Game bytes sent to each peer",
            b.clone(),
            m.sent_by_peer.clone(),
        );
        r.register_with_unit(
            "game_sent",
            "Bytes of each game sent to peers",
            b.clone(),
            m.sent_by_game.clone(),
        );
        r.register_with_unit(
            "peer_received",
            "Verified game bytes received from each peer",
            b.clone(),
            m.received_by_peer.clone(),
        );
        r.register_with_unit(
            "game_received",
            "Verified bytes of each game received",
            b.clone(),
            m.received_by_game.clone(),
        );
        r.register(
            "chunks_verified",
            "Chunks received and verified (BLAKE3 per piece)",
            m.chunks_verified.clone(),
        );
        r.register(
            "chunks_relayed",
            "Chunk requests answered while the chunk was still arriving here (cut-through)",
            m.chunks_relayed.clone(),
        );
        r.register(
            "chunks_failed",
            "Chunk fetches that failed, by reason",
            m.chunks_failed.clone(),
        );
        r.register(
            "operations_started",
            "Downloads, installs and uninstalls started",
            m.started.clone(),
        );
        r.register(
            "operations_ended",
            "Operations ended, by outcome and error kind",
            m.ended.clone(),
        );
        r.register(
            "manifest_requests",
            "Manifest requests answered, from the hash cache (hit) or after hashing (miss)",
            m.manifests.clone(),
        );
        r.register_with_unit(
            "indexed",
            "Bytes hashed by the background indexer",
            b.clone(),
            m.indexed_bytes.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads, by result",
            m.reloads.clone(),
        );
        r.register(
            "operations_active",
            "Operations running now, by kind",
            m.operations.clone(),
        );
        r.register("peers_linked", "Peers linked now", m.peers.clone());
        r.register(
            "games_ready",
            "Local games ready to serve",
            m.games_ready.clone(),
        );
        r.register_with_unit(
            "transfer_rate",
            "Game bytes per second over the last 5 s, by direction",
            Unit::Other("bytes_per_second".into()),
            m.rate.clone(),
        );
        r.register_with_unit(
            "limit",
            "Bandwidth limit by direction (absent: unlimited)",
            Unit::Other("bytes_per_second".into()),
            m.limit.clone(),
        );
        // The process metrics under their usual names (node_exporter's dashboards know them).
        r.register(
            "limit_waits",
            "Pieces that waited for a bandwidth limit, by direction",
            m.limit_waits.clone(),
        );
        r.register_with_unit(
            "limit_waited",
            "Time pieces waited for a bandwidth limit, by direction",
            Unit::Seconds,
            m.limit_waited.clone(),
        );
        let p = &mut registry;
        p.register_with_unit(
            "process_cpu",
            "User and system CPU time of the daemon",
            Unit::Seconds,
            m.cpu.clone(),
        );
        p.register_with_unit(
            "process_resident_memory",
            "Resident memory of the daemon",
            b,
            m.rss.clone(),
        );
        p.register(
            "process_open_fds",
            "Open file descriptors of the daemon",
            m.fds.clone(),
        );
        // Series that exist from the start read 0, not "no data", and `rate()` sees
        // their first increase.
        for reason in ["source-gone", "bad-data", "local", "stalled"] {
            m.chunks_failed
                .get_or_create(&Reason {
                    reason: reason.into(),
                })
                .inc_by(0);
        }
        for kind in ["download", "install", "uninstall"] {
            m.started
                .get_or_create(&Kind { kind: kind.into() })
                .inc_by(0);
            m.ended
                .get_or_create(&Outcome {
                    kind: kind.into(),
                    outcome: "finished".into(),
                    error: String::new(),
                })
                .inc_by(0);
        }
        for cache in ["hit", "miss"] {
            m.manifests
                .get_or_create(&Cache {
                    cache: cache.into(),
                })
                .inc_by(0);
        }
        for result in ["ok", "failed"] {
            m.reloads
                .get_or_create(&Reason {
                    reason: result.into(),
                })
                .inc_by(0);
        }
        Self { registry, ..m }
    }

    /// Counts what an event says happened.
    pub fn observe(&self, event: &EventKind) {
        match event {
            // The bytes are counted per unit as each verifies (`received`): a chunk
            // whose other units never verify in this attempt was still received in part.
            EventKind::DownloadChunkFinished { .. } => {
                self.chunks_verified.inc();
            }
            EventKind::PeerLost { peer_id, .. } => self.forget(peer_id.as_str()),
            EventKind::DownloadFinished { .. } => self.ended("download", "finished", ""),
            EventKind::DownloadFailed { kind, .. } => {
                self.ended("download", "failed", kind.as_str())
            }
            EventKind::InstallFinished { .. } => self.ended("install", "finished", ""),
            EventKind::InstallFailed { kind, .. } => self.ended("install", "failed", kind.as_str()),
            EventKind::UninstallFinished { .. } => self.ended("uninstall", "finished", ""),
            EventKind::LocalGameIndexed { hashed_bytes, .. } => {
                self.indexed_bytes.inc_by(*hashed_bytes);
            }
            EventKind::ConfigReloaded { .. } => self.reload("ok"),
            EventKind::ConfigReloadFailed { .. } => self.reload("failed"),
            _ => {}
        }
    }

    /// An operation (`download`, `uninstall`) was accepted and started.
    pub fn started(&self, kind: &str) {
        self.started
            .get_or_create(&Kind { kind: kind.into() })
            .inc();
    }

    /// An operation of `kind` failed with `error` where no event says so.
    pub fn failed(&self, kind: &str, error: lanspread_control::ErrorKind) {
        self.ended(kind, "failed", error.as_str());
    }

    fn ended(&self, kind: &str, outcome: &str, error: &str) {
        self.ended
            .get_or_create(&Outcome {
                kind: kind.into(),
                outcome: outcome.into(),
                error: error.into(),
            })
            .inc();
    }

    fn reload(&self, result: &str) {
        self.reloads
            .get_or_create(&Reason {
                reason: result.into(),
            })
            .inc();
    }

    /// `bytes` of `game` received from `peer` and verified (a unit, less what an earlier
    /// attempt had kept of it).
    pub fn received(&self, peer: &str, game: &str, bytes: u64) {
        let series = (&self.received_by_peer, &self.received_by_game);
        self.count_bytes(series, &self.received_total, (peer, game, bytes));
    }

    /// Bytes of `game` sent to `peer` in one answer.
    pub fn sent(&self, peer: &str, game: &str, bytes: u64) {
        let series = (&self.sent_by_peer, &self.sent_by_game);
        self.count_bytes(series, &self.sent_total, (peer, game, bytes));
    }

    /// Adds `bytes` to a direction's per-peer and per-game series and its total.
    fn count_bytes(
        &self,
        (by_peer, by_game): (&Family<Peer, Counter>, &Family<Game, Counter>),
        total: &AtomicU64,
        (peer, game, bytes): (&str, &str, u64),
    ) {
        if bytes == 0 {
            return;
        }
        by_peer.get_or_create(&self.peer(peer)).inc_by(bytes);
        by_game
            .get_or_create(&Game { game: game.into() })
            .inc_by(bytes);
        total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The label of `peer`'s series: its own while fewer than [`MAX_PEER_SERIES`] peers
    /// have one, else `other`.
    fn peer(&self, peer: &str) -> Peer {
        let mut seen = self.peer_series.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(peer) || seen.len() < MAX_PEER_SERIES {
            seen.insert(peer.to_owned());
            Peer { peer: peer.into() }
        } else {
            Peer {
                peer: "other".into(),
            }
        }
    }

    /// Drops a lost peer's series (its bytes stay in the per-game totals).
    fn forget(&self, peer: &str) {
        let removed = self
            .peer_series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
        if removed {
            let label = Peer { peer: peer.into() };
            self.sent_by_peer.remove(&label);
            self.received_by_peer.remove(&label);
        }
    }

    /// A chunk fetch failed for `reason` (the planner's kind: bad data, gone, stalled…).
    pub fn chunk_failed(&self, reason: &str) {
        self.chunks_failed
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }

    /// A partial copy's chunk was asked for while its fetch here still ran.
    pub fn chunk_relayed(&self) {
        self.chunks_relayed.inc();
    }

    /// A manifest request was answered from the cache (`hit`) or after hashing.
    pub fn manifest(&self, hit: bool) {
        let cache = if hit { "hit" } else { "miss" };
        self.manifests
            .get_or_create(&Cache {
                cache: cache.into(),
            })
            .inc();
    }

    /// Takes a sample of the byte totals for the rate gauges (about once a second).
    pub fn sample(&self, now: Instant) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s.push_back((
            now,
            self.sent_total.load(Ordering::Relaxed),
            self.received_total.load(Ordering::Relaxed),
        ));
        while s.len() > 2 && s.front().is_some_and(|f| now - f.0 > RATE_WINDOW) {
            s.pop_front();
        }
    }

    /// The registry's text exposition with the gauges set from `snap` and the process.
    pub fn render(&self, snap: &Snapshot) -> Result<String, std::fmt::Error> {
        self.sample(Instant::now());
        let (up, down) = {
            let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            match (s.front(), s.back()) {
                (Some(a), Some(b)) if b.0 > a.0 => {
                    let secs = (b.0 - a.0).as_secs_f64();
                    ((b.1 - a.1) as f64 / secs, (b.2 - a.2) as f64 / secs)
                }
                _ => (0.0, 0.0),
            }
        };
        let dir = |d: &str| Direction {
            direction: d.into(),
        };
        self.rate.get_or_create(&dir("upload")).set(up);
        self.rate.get_or_create(&dir("download")).set(down);
        for (name, limit) in [("upload", snap.limits.0), ("download", snap.limits.1)] {
            match limit {
                Some(mib) => {
                    self.limit.get_or_create(&dir(name)).set(mib * 1048576.0);
                }
                None => {
                    self.limit.remove(&dir(name));
                }
            }
        }
        for (name, (waits, secs)) in ["upload", "download"].into_iter().zip(snap.waited) {
            let counter = self.limit_waits.get_or_create(&dir(name));
            counter.inc_by(waits.saturating_sub(counter.get()));
            let counter = self.limit_waited.get_or_create(&dir(name));
            let before = counter.get();
            if secs > before {
                counter.inc_by(secs - before);
            }
        }
        for kind in ["download", "install", "uninstall"] {
            let n = snap
                .operations
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, n)| n)
                .sum::<usize>();
            self.operations
                .get_or_create(&Kind { kind: kind.into() })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.peers
            .set(i64::try_from(snap.peers).unwrap_or(i64::MAX));
        self.games_ready
            .set(i64::try_from(snap.games_ready).unwrap_or(i64::MAX));
        let p = process();
        // The counter only goes up: add what was used since the last scrape.
        let before = self.cpu.get();
        if p.cpu_seconds > before {
            self.cpu.inc_by(p.cpu_seconds - before);
        }
        self.rss.set(p.rss_bytes);
        self.fds.set(p.open_fds);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The process's own figures.
struct Process {
    cpu_seconds: f64,
    rss_bytes: i64,
    open_fds: i64,
}

fn process() -> Process {
    // SAFETY: rusage is plain data that getrusage fills; RUSAGE_SELF covers every thread.
    let cpu_seconds = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut u) == 0 {
            let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
            t(u.ru_utime) + t(u.ru_stime)
        } else {
            0.0
        }
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1);
    let rss_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .map_or(0, |pages| pages.saturating_mul(page));
    // Less the descriptor of the listing itself.
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1) as i64)
        .unwrap_or(0);
    Process {
        cpu_seconds,
        rss_bytes,
        open_fds,
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
