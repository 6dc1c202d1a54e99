//! The app side: two real `lanspreadd` processes (the release binaries next to the running
//! one) on loopback or a veth pair (`Net`), driven through `lanspread --json`; figures
//! come from the client's `download-finished` event (payload bytes / time from
//! `download-begin` to commit).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lanspread_fixtures::{Content, GameSpec};

use crate::net::Net;
use crate::Fs;

/// Game id of the S37 case (one sparse `.eti`).
pub const S37_GAME: &str = "cod5";
/// Game ids of the S34 case: many small files, and one file of the same total size.
pub const S34_MANY: &str = "ggoo";
/// See [`S34_MANY`].
pub const S34_ONE: &str = "cnc4";

/// A release binary next to the running executable (benches run from `target/release/deps`,
/// so its parent is tried too).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("bin dir")?;
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found next to {}: cargo build --release --bins first",
        exe.display()
    )
}

/// A running daemon.
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    events: PathBuf,
    /// Its QUIC address.
    pub addr: String,
}

impl Daemon {
    /// Starts `lanspreadd` on `games` with its state, socket and events under `dir`, with
    /// `threads` transfer threads (`None`: the daemon's default), listening on `side` of
    /// `net` (in its namespace when that is a veth pair).
    pub fn start(
        dir: &Path,
        name: &str,
        games: &Path,
        threads: Option<usize>,
        (net, side): (&Net, usize),
    ) -> anyhow::Result<Self> {
        let socket = dir.join(format!("{name}.sock"));
        let events = dir.join(format!("{name}.events"));
        let mut cmd = Command::new(bin("lanspreadd")?);
        net.command(side, &mut cmd);
        if let Some(n) = threads {
            cmd.args(["--transfer-threads", &n.to_string()]);
        }
        if let Some(n) = crate::max_udp_payload() {
            cmd.args(["--max-udp-payload", &n.to_string()]);
        }
        let child = cmd
            .arg("--games")
            .arg(games)
            .arg("--state")
            .arg(dir.join(format!("{name}-state")))
            .arg("--socket")
            .arg(&socket)
            .arg("--events")
            .arg(&events)
            .arg("--listen")
            .arg(net.bind_addr(side).to_string())
            .arg("--no-mdns")
            .env(
                "LANSPREAD_LOG",
                std::env::var("LANSPREAD_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stderr(if std::env::var_os("LANSPREAD_BENCH_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()?;
        let mut daemon = Self {
            child,
            socket,
            events,
            addr: String::new(),
        };
        // From here on a failure drops `daemon`, which kills the process (a daemon that
        // never said it is ready must not outlive the bench).
        let start = Instant::now();
        daemon.addr = loop {
            let text = std::fs::read_to_string(&daemon.events).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("local-peer-ready")) {
                let v: serde_json::Value = serde_json::from_str(line)?;
                break v["addr"].as_str().unwrap_or_default().to_owned();
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(20),
                "{name} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(daemon)
    }

    /// Runs `lanspread --json args...` against this daemon.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        self.cli_output(self.cli_command(args)?.output()?, args)
    }

    fn cli_command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(bin("lanspread")?);
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .args(args);
        Ok(cmd)
    }

    fn cli_output(
        &self,
        out: std::process::Output,
        args: &[&str],
    ) -> anyhow::Result<serde_json::Value> {
        if !out.status.success() {
            bail!(
                "lanspread {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The verified chunks of `game`'s download as its events tell them: seconds since
    /// `download-begin`, source, bytes.
    fn curve(&self, game: &str) -> crate::chart::Curve {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        let events: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|e: &serde_json::Value| e["game_id"] == game)
            .collect();
        let Some(begin) = events
            .iter()
            .find(|e| e["event"] == "download-begin")
            .and_then(|e| e["ts_ms"].as_f64())
        else {
            return Vec::new();
        };
        // A chunk's bytes per source that sent part of it.
        events
            .iter()
            .filter(|e| e["event"] == "download-chunk-finished")
            .filter_map(|e| {
                let at = (e["ts_ms"].as_f64()? - begin) / 1000.0;
                Some((at, lanspread_control::chunk_sources(e)))
            })
            .flat_map(|(at, sources)| sources.into_iter().map(move |(p, b)| (at, p, b)))
            .collect()
    }

    /// Polls this daemon's events file until `seen` holds (or the CLI process `cli` is
    /// gone, or 60 s passed).
    fn wait_events(&self, seen: impl Fn(&str) -> bool, cli: u32) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.events).unwrap_or_default();
            if seen(&text) {
                return Ok(());
            }
            // Running, not a zombie (it is reaped only after this wait).
            let stat = std::fs::read_to_string(format!("/proc/{cli}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            let cli_alive = state.is_some_and(|c| c != 'Z');
            anyhow::ensure!(
                cli_alive && start.elapsed() < Duration::from_secs(60),
                "the download did not begin"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// CPU seconds this daemon used so far.
    pub fn cpu_secs(&self) -> f64 {
        crate::cpu_secs(Some(self.child.id()))
    }

    /// Peak resident set size in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One download's figures.
#[derive(Debug, Clone)]
pub struct Download {
    /// Seconds from `download-begin` to commit.
    pub secs: f64,
    /// `mib_per_s` as the daemon reported it.
    pub mib_s: f64,
    /// Client peak RSS after the download, KiB.
    pub client_peak_rss_kib: u64,
    /// CPU seconds both daemons used during the download.
    pub cpu_s: f64,
    /// The source's share of `cpu_s`.
    pub source_cpu_s: f64,
    /// Verified bytes over time per source, from the client's events.
    pub curve: crate::chart::Curve,
}

/// A source with `specs` and an empty client, both in a fresh dir under `fs`, linked.
pub struct Pair {
    /// The serving daemon.
    pub source: Daemon,
    /// The downloading daemon.
    pub client: Daemon,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Writes the games, starts both daemons (with `threads` transfer threads each, `None`:
    /// their default; the client on side 0 of `net`, the source on side 1) and connects
    /// the client to the source.
    pub fn new(
        fs: Fs,
        specs: &[GameSpec],
        threads: Option<usize>,
        net: &Net,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("lanspread-bench-")
            .tempdir_in(fs.dir())
            .with_context(|| format!("temp dir under {}", fs.dir().display()))?;
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&dst)?;
        for s in specs {
            s.write(&src)?;
        }
        let source = Daemon::start(dir.path(), "source", &src, threads, (net, 1))?;
        let client = Daemon::start(dir.path(), "client", &dst, threads, (net, 0))?;
        client.cli(&["connect", &source.addr])?;
        Ok(Self {
            source,
            client,
            _dir: dir,
        })
    }

    /// Downloads `game` (`--no-install`) and returns the client's figures.
    pub fn download(&self, game: &str) -> anyhow::Result<Download> {
        // CPU is counted over the same window as the rate: from `download-begin` (after
        // the manifests, which a source hashes on first request) to the end.
        let cpu = || (self.client.cpu_secs(), self.source.cpu_secs());
        let args = ["download", game, "--no-install"];
        let waiting = self
            .client
            .cli_command(&args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let seen = |text: &str| {
            text.lines()
                .any(|l| l.contains("\"download-begin\"") && l.contains(game))
        };
        let begun = self.client.wait_events(seen, waiting.id());
        let before = cpu();
        let out = waiting.wait_with_output()?;
        let after = cpu();
        let source_cpu_s = after.1 - before.1;
        let cpu_s = after.0 - before.0 + source_cpu_s;
        begun?;
        let done = self.client.cli_output(out, &args)?;
        let ms = done["duration_ms"].as_f64().context("duration_ms")?;
        Ok(Download {
            secs: ms / 1000.0,
            mib_s: done["mib_per_s"].as_f64().context("mib_per_s")?,
            client_peak_rss_kib: self.client.peak_rss_kib(),
            cpu_s,
            source_cpu_s,
            curve: self.client.curve(game),
        })
    }
}

/// S37: one sparse `.eti` of `bytes` from one source to one client writing into `fs`,
/// both daemons with `threads` transfer threads (`None`: their default), over `net`.
pub fn s37(bytes: u64, fs: Fs, threads: Option<usize>, net: &Net) -> anyhow::Result<Download> {
    let spec = GameSpec::new(S37_GAME, "20250101").file(
        &format!("{S37_GAME}.eti"),
        0o644,
        Content::Sparse { size: bytes },
    );
    Pair::new(fs, &[spec], threads, net)?.download(S37_GAME)
}

/// S34: `files` small files totalling `bytes`, then one file of `bytes`, through the same
/// pair of daemons (`threads` transfer threads each, `None`: their default); returns
/// (many, one).
pub fn s34(
    bytes: u64,
    files: usize,
    fs: Fs,
    threads: Option<usize>,
    net: &Net,
) -> anyhow::Result<(Download, Download)> {
    let each = bytes / files as u64;
    let many = GameSpec::new(S34_MANY, "20250101").with_small_files(7, files, each);
    let one = GameSpec::new(S34_ONE, "20250101").file(
        "data.bin",
        0o644,
        Content::Random {
            seed: 7,
            size: each * files as u64,
        },
    );
    let pair = Pair::new(fs, &[many, one], threads, net)?;
    Ok((pair.download(S34_MANY)?, pair.download(S34_ONE)?))
}
