//! The swarm lab (issue 21): one server and N clients, each a real `lanspreadd` in its own
//! network namespace on one bridge, every link rate-limited with `tc` in both directions,
//! the clients told only the server's address (peer exchange links them), every client
//! downloading one game at once or one after another (staggered), optionally with the
//! server SIGKILLed as soon as one copy of every chunk is verified on some client (then
//! every client must still finish from the others). What a run measured
//! comes back as a [`LabReport`]: each client's time against the lower bound of
//! peer-assisted distribution, the server's upload against one copy, the bytes clients
//! got from each other, and the curves [`crate::chart`] draws.
//!
//! Needs root and iproute2 (`ip`, `tc`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lanspread_fixtures::{Content, GameSpec};
use serde_json::{json, Value};

use crate::{assert_matches_manifest, wait_for, NetLab, Node, NodeOptions};

/// The game every lab run distributes.
pub const GAME: &str = "cod5";
/// Size of one archive volume (a split RAR set's parts).
const VOLUME: u64 = 256 << 20;

/// What one run looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabShape {
    /// Downloading clients.
    pub clients: usize,
    /// Game size in MiB (volumes of 256 MiB and a rest).
    pub mib: u64,
    /// Every link's rate, both directions, in Mbit/s.
    pub mbit: u64,
    /// Delay between one client's start and the next (0: all at once).
    pub stagger_ms: u64,
    /// SIGKILL the server once every chunk is verified on some client.
    pub kill: bool,
}

impl LabShape {
    /// Parses `CLIENTS:MIB:MBIT[:STAGGER_MS][:kill]`, e.g. `16:1024:100`,
    /// `8:1024:100:5000` or `16:1024:100:0:kill`.
    pub fn parse(s: &str) -> Result<LabShape, String> {
        let bad =
            || format!("{s}: expected CLIENTS:MIB:MBIT[:STAGGER_MS][:kill], e.g. 16:1024:100");
        let (s, kill) = match s.strip_suffix(":kill") {
            Some(rest) => (rest, true),
            None => (s, false),
        };
        let n: Vec<u64> = s
            .split(':')
            .map(|p| p.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let (clients, mib, mbit, stagger_ms) = match n[..] {
            [c, m, r] => (c, m, r, 0),
            [c, m, r, st] => (c, m, r, st),
            _ => return Err(bad()),
        };
        if clients == 0 || mib == 0 || mbit == 0 || clients > 200 {
            return Err(format!("{s}: 1 to 200 clients, a size and a rate above 0"));
        }
        Ok(LabShape {
            clients: clients as usize,
            mib,
            mbit,
            stagger_ms,
            kill,
        })
    }

    /// The lower bound of peer-assisted distribution (Kumar & Ross 2006) for this lab:
    /// `max(F/U, N·F/(U + Σu), F/d)`, every rate the link rate.
    pub fn t_min(&self) -> Duration {
        let f = (self.mib << 20) as f64 * 8.0;
        let r = self.mbit as f64 * 1e6;
        let n = self.clients as f64;
        Duration::from_secs_f64((f / r).max(n * f / (r + n * r)))
    }
}

/// One client's run.
#[derive(Debug, Clone)]
pub struct ClientRun {
    /// Its name (`c0`, `c1`, …).
    pub name: String,
    /// When its download was started, from the run's start.
    pub started: Duration,
    /// How long its download took.
    pub took: Duration,
    /// When its transfer began (`download-begin`: the manifest validated), from the
    /// run's start.
    pub began_s: f64,
    /// Bytes it received from the server.
    pub from_server: u64,
    /// Bytes it received from other clients.
    pub from_peers: u64,
    /// `(seconds since the run's start, bytes received so far)` at every verified chunk.
    pub curve: Vec<(f64, u64)>,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct LabReport {
    /// The run's shape.
    pub shape: LabShape,
    /// Bytes of the game's files, `version.ini` included (F).
    pub game_bytes: u64,
    /// Every client, in start order.
    pub clients: Vec<ClientRun>,
    /// The server's upload rate, `(seconds since the start, Mbit/s)`, from the chunks it
    /// served, each spread over the time since its client's previous chunk from it.
    pub server_rate: Vec<(f64, f64)>,
    /// When the server was killed (one copy of every chunk in the swarm), seconds since
    /// the start.
    pub killed_s: Option<f64>,
}

impl LabReport {
    fn ratios(&self) -> Vec<f64> {
        let t_min = self.shape.t_min().as_secs_f64();
        let mut r: Vec<f64> = self
            .clients
            .iter()
            .map(|c| c.took.as_secs_f64() / t_min)
            .collect();
        r.sort_by(f64::total_cmp);
        r
    }

    /// The slowest client's time over `T_min`.
    pub fn slowest_ratio(&self) -> f64 {
        self.ratios().last().copied().unwrap_or(0.0)
    }

    /// The median client's time over `T_min`.
    pub fn median_ratio(&self) -> f64 {
        let r = self.ratios();
        match r.len() {
            0 => 0.0,
            n if n % 2 == 1 => r[n / 2],
            n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
        }
    }

    /// What the server uploaded, in copies of the game.
    pub fn server_copies(&self) -> f64 {
        let sent: u64 = self.clients.iter().map(|c| c.from_server).sum();
        sent as f64 / self.game_bytes as f64
    }

    /// The report as JSON (the bench's record).
    pub fn to_json(&self) -> Value {
        let s = self.shape;
        json!({
            "clients": s.clients,
            "mib": s.mib,
            "mbit": s.mbit,
            "stagger_ms": s.stagger_ms,
            "server_killed_s": self.killed_s,
            "t_min_s": s.t_min().as_secs_f64(),
            "slowest_over_t_min": self.slowest_ratio(),
            "median_over_t_min": self.median_ratio(),
            "server_upload_over_f": self.server_copies(),
            "per_client": self.clients.iter().map(|c| json!({
                "name": c.name,
                "started_s": c.started.as_secs_f64(),
                "took_s": c.took.as_secs_f64(),
                "began_s": c.began_s,
                "from_server": c.from_server,
                "from_peers": c.from_peers,
                "curve": c.curve,
            })).collect::<Vec<_>>(),
            "server_rate_mbit": self.server_rate,
        })
    }

    /// One line for a table: `N  start  slowest  median  server`.
    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |",
            self.shape.clients,
            match (self.shape.stagger_ms, self.killed_s) {
                (0, None) => "together".to_owned(),
                (0, Some(k)) => format!("together, server killed at {k:.0} s"),
                (ms, None) => format!("every {:.1} s", ms as f64 / 1000.0),
                (ms, Some(k)) => format!(
                    "every {:.1} s, server killed at {k:.0} s",
                    ms as f64 / 1000.0
                ),
            },
            self.slowest_ratio(),
            self.median_ratio(),
            self.server_copies(),
            self.shape.t_min().as_secs_f64(),
        )
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Writes the lab's game under `dir`: volumes of 256 MiB of random bytes.
fn write_game(dir: &std::path::Path, mib: u64) {
    let mut spec = GameSpec::new(GAME, "20250101");
    let mut left = mib << 20;
    for i in 0.. {
        if left == 0 {
            break;
        }
        let size = left.min(VOLUME);
        let name = format!("{GAME}.part{:02}.eti", i + 1);
        spec = spec.file(
            &name,
            0o644,
            Content::Random {
                seed: 2100 + i,
                size,
            },
        );
        left -= size;
    }
    spec.write(dir).expect("write the lab's game");
}

/// Runs one lab: builds the namespaces, starts the daemons, starts every download, waits
/// for all, checks every tree against the server's and returns what was measured.
/// Panics (a test failure) when a client fails or a tree differs.
pub fn run(shape: LabShape) -> LabReport {
    let net = NetLab::new(shape.clients + 1);
    let rate = format!("{}mbit", shape.mbit);
    for i in 0..=shape.clients {
        net.limit(i, &rate);
    }
    let sdir = tempfile::tempdir().expect("server dir");
    write_game(sdir.path(), shape.mib);
    // For a study of a run: `LANSPREAD_LAB_LOG` is every daemon's log filter,
    // `LANSPREAD_LAB_ARGS` more daemon flags (split at spaces), and
    // `LANSPREAD_LAB_KEEP=DIR` keeps every daemon's log and events there.
    let env = std::env::var("LANSPREAD_LAB_LOG")
        .map(|f| vec![("LANSPREAD_LOG".to_owned(), f)])
        .unwrap_or_default();
    let mut args = vec!["--max-links".into(), (shape.clients + 8).to_string()];
    if let Ok(more) = std::env::var("LANSPREAD_LAB_ARGS") {
        args.extend(more.split_whitespace().map(str::to_owned));
    }
    let opts = NodeOptions {
        args,
        env,
        ..Default::default()
    };
    let (server, clients) = net.star(sdir.path(), shape.clients, &opts);
    let (clients, dirs): (Vec<Node>, Vec<_>) = clients.into_iter().unzip();
    // Told only the server's address, the clients link to each other by peer exchange.
    wait_for("clients linked to each other", || {
        clients
            .iter()
            .all(|c| c.peer_ids().len() == shape.clients)
            .then_some(())
    });
    let t0 = Instant::now();
    let t0_ms = unix_ms();
    let chunks = chunk_count(&crate::manifest(&sdir.path().join(GAME)));
    let mut killed_s = None;
    let timed: Vec<(Duration, Duration)> = std::thread::scope(|s| {
        if shape.kill {
            let (server, clients, killed_s) = (&server, &clients, &mut killed_s);
            let limit = 20 * shape.t_min() + Duration::from_millis(shape.stagger_ms) * 20;
            s.spawn(move || {
                // One copy of every chunk verified somewhere: the server may go.
                loop {
                    let mut held = std::collections::BTreeSet::new();
                    for c in clients {
                        for e in c.events_named("download-chunk-finished") {
                            held.insert((e["path"].to_string(), e["offset"].as_u64()));
                        }
                    }
                    if held.len() >= chunks {
                        break;
                    }
                    assert!(
                        t0.elapsed() < limit,
                        "no copy of every chunk after {limit:?}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                server.signal(libc::SIGKILL);
                *killed_s = Some(t0.elapsed().as_secs_f64());
            });
        }
        let hs: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(shape.stagger_ms * i as u64));
                    let started = t0.elapsed();
                    let out = c.download(GAME, &["--no-install"]);
                    assert_eq!(out.code, 0, "{}: {out:?}{}", c.name, c.log_tail());
                    (started, t0.elapsed() - started)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("a client's thread"))
            .collect()
    });
    if let Some(keep) = std::env::var_os("LANSPREAD_LAB_KEEP") {
        keep_logs(std::path::Path::new(&keep), &server, &clients);
    }
    let root = sdir.path().join(GAME);
    let want = crate::manifest(&root);
    for d in &dirs {
        assert_matches_manifest(&want, &root, &d.path().join(GAME));
    }
    let mut served: Vec<(f64, f64, u64)> = Vec::new();
    let runs = clients
        .iter()
        .zip(timed)
        .map(|(c, (started, took))| {
            let (run, from_server) = client_run(c, &server.peer_id, t0_ms, started, took);
            served.extend(from_server);
            run
        })
        .collect();
    let game_bytes = want.values().map(|f| f.0).sum();
    LabReport {
        shape,
        game_bytes,
        clients: runs,
        server_rate: rate_curve(&served, shape.t_min().as_secs_f64() / 50.0),
        killed_s,
    }
}

/// Copies every node's daemon log and events into `dir` (`<name>.log`, `<name>.jsonl`).
fn keep_logs(dir: &std::path::Path, server: &Node, clients: &[Node]) {
    let _ = std::fs::create_dir_all(dir);
    for n in std::iter::once(server).chain(clients) {
        let _ = std::fs::write(dir.join(format!("{}.log", n.name)), n.log());
        let events: String = n.events().iter().map(|e| format!("{e}\n")).collect();
        let _ = std::fs::write(dir.join(format!("{}.jsonl", n.name)), events);
    }
}

/// Chunks of a game: each file's 32 MiB ranges, an empty or small file one.
fn chunk_count(files: &crate::Manifest) -> usize {
    files
        .iter()
        .filter(|(path, _)| !path.ends_with('/'))
        .map(|(_, (size, _))| size.div_ceil(lanspread_proto::CHUNK_SIZE).max(1) as usize)
        .sum()
}

/// A client's figures from its events, and the `(from, to, bytes)` spans of the chunks
/// the server sent it.
fn client_run(
    c: &Node,
    server: &str,
    t0_ms: i64,
    started: Duration,
    took: Duration,
) -> (ClientRun, Vec<(f64, f64, u64)>) {
    let secs = |e: &Value| (e["ts_ms"].as_i64().unwrap_or(t0_ms) - t0_ms) as f64 / 1000.0;
    let mut run = ClientRun {
        name: c.name.clone(),
        started,
        took,
        began_s: c
            .events_named("download-begin")
            .first()
            .map_or(f64::NAN, secs),
        from_server: 0,
        from_peers: 0,
        curve: vec![(started.as_secs_f64(), 0)],
    };
    let mut spans = Vec::new();
    let mut last_from_server = started.as_secs_f64();
    let mut got = 0;
    for e in c.events_named("download-chunk-finished") {
        let len = e["len"].as_u64().unwrap_or(0);
        let at = secs(&e);
        got += len;
        run.curve.push((at, got));
        let (mut ours, mut theirs) = (0, 0);
        for (peer, bytes) in lanspread_control::chunk_sources(&e) {
            match peer == server {
                true => ours += bytes,
                false => theirs += bytes,
            }
        }
        run.from_peers += theirs;
        if ours > 0 {
            run.from_server += ours;
            spans.push((last_from_server, at, ours));
            last_from_server = at;
        }
    }
    (run, spans)
}

/// Mbit/s in buckets of `width` seconds from `(from, to, bytes)` spans, each span's bytes
/// spread evenly over it.
fn rate_curve(spans: &[(f64, f64, u64)], width: f64) -> Vec<(f64, f64)> {
    let width = width.max(0.1);
    let end = spans.iter().map(|s| s.1).fold(0.0, f64::max);
    let buckets = (end / width).ceil() as usize + 1;
    let mut bytes = vec![0.0; buckets];
    for &(from, to, len) in spans {
        let (from, to) = (from.min(to), to.max(from + 1e-3));
        let per_s = len as f64 / (to - from);
        for (b, slot) in bytes.iter_mut().enumerate() {
            let (lo, hi) = (b as f64 * width, (b + 1) as f64 * width);
            let overlap = hi.min(to) - lo.max(from);
            if overlap > 0.0 {
                *slot += per_s * overlap;
            }
        }
    }
    bytes
        .iter()
        .enumerate()
        .map(|(b, by)| ((b as f64 + 0.5) * width, by * 8.0 / 1e6 / width))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_the_bound_is_one_copy_over_a_link() {
        let s = LabShape::parse("16:1024:100").unwrap();
        assert_eq!((s.clients, s.mib, s.mbit, s.stagger_ms), (16, 1024, 100, 0));
        // Equal links: N·F/(U + N·u) < F/u, so T_min = F/u (1 GiB over 100 Mbit/s).
        let t = s.t_min().as_secs_f64();
        assert!((t - 1024.0 * 1048576.0 * 8.0 / 1e8).abs() < 1e-6, "{t}");
        assert_eq!(LabShape::parse("4:64:40:500").unwrap().stagger_ms, 500);
        let k = LabShape::parse("16:1024:100:0:kill").unwrap();
        assert!(k.kill && !s.kill && k.stagger_ms == 0);
        assert!(LabShape::parse("4:64:40:kill").unwrap().kill);
        for bad in [
            "",
            "4",
            "4:64",
            "0:64:40",
            "4:64:x",
            "4:64:40:1:2",
            "500:1:1",
            "kill",
            "4:64:40:1:kill:kill",
        ] {
            assert!(LabShape::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_rate_curve_spreads_each_span_over_its_time() {
        // 1 MB over [0, 2) s: 4 Mbit/s in both 1 s buckets; nothing after.
        let c = rate_curve(&[(0.0, 2.0, 1_000_000)], 1.0);
        assert_eq!(c.len(), 3);
        assert!(
            (c[0].1 - 4.0).abs() < 1e-9 && (c[1].1 - 4.0).abs() < 1e-9,
            "{c:?}"
        );
        assert_eq!(c[2].1, 0.0);
        // Two overlapping spans add up.
        let c = rate_curve(&[(0.0, 1.0, 1_000_000), (0.0, 1.0, 1_000_000)], 1.0);
        assert!((c[0].1 - 16.0).abs() < 1e-9, "{c:?}");
    }
}
