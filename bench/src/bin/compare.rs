//! `cargo run --release -p lanspread-bench --bin compare [BYTES] [SAMPLES]`: S37 through two
//! real daemons next to a raw quinn memory-to-memory transfer of the same size, measured
//! in the same run; prints a table and one JSON line with medians, the ratio and the
//! client's peak RSS. The daemons are the release binaries next to this one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lanspread_fixtures::{Content, GameSpec};

fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("bin dir")?.join(name);
    anyhow::ensure!(
        p.is_file(),
        "{} missing: cargo build --release --bins first",
        p.display()
    );
    Ok(p)
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    addr: String,
}

impl Daemon {
    fn start(dir: &Path, name: &str, games: &Path) -> anyhow::Result<Self> {
        let socket = dir.join(format!("{name}.sock"));
        let events = dir.join(format!("{name}.events"));
        let child = Command::new(bin("lanspreadd")?)
            .arg("--games")
            .arg(games)
            .arg("--state")
            .arg(dir.join(format!("{name}-state")))
            .arg("--socket")
            .arg(&socket)
            .arg("--events")
            .arg(&events)
            .args(["--listen", "127.0.0.1:0", "--no-mdns"])
            .env("LANSPREAD_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()?;
        let start = Instant::now();
        let addr = loop {
            let text = std::fs::read_to_string(&events).unwrap_or_default();
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
        Ok(Self {
            child,
            socket,
            addr,
        })
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let out = Command::new(bin("lanspread")?)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "lanspread {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Peak resident set size in KiB (VmHWM).
    fn peak_rss_kib(&self) -> u64 {
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

/// One S37 sample: MiB/s from `download-finished` and the client's peak RSS.
fn s37(bytes: u64) -> anyhow::Result<(f64, u64)> {
    // LANSPREAD_BENCH_DIR puts the games dirs elsewhere, e.g. on a tmpfs (/dev/shm).
    let base = std::env::var_os("LANSPREAD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("lanspread-s37-")
        .tempdir_in(base)?;
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    std::fs::create_dir_all(&dst)?;
    GameSpec::new("cod5", "20250101")
        .file("cod5.eti", 0o644, Content::Sparse { size: bytes })
        .write(&src)?;
    let source = Daemon::start(dir.path(), "source", &src)?;
    let client = Daemon::start(dir.path(), "client", &dst)?;
    client.cli(&["connect", &source.addr])?;
    let done = client.cli(&["download", "cod5", "--no-install"])?;
    let mib_s = done["mib_per_s"].as_f64().context("mib_per_s")?;
    Ok((mib_s, client.peak_rss_kib()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bytes: u64 = args
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2 << 30);
    let samples: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (mut app, mut raw, mut rss) = (Vec::new(), Vec::new(), 0u64);
    for i in 0..samples {
        let d = rt.block_on(lanspread_bench::raw_quinn(bytes))?;
        raw.push(bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64());
        let (mib_s, peak) = s37(bytes)?;
        app.push(mib_s);
        rss = rss.max(peak);
        eprintln!(
            "sample {}: raw quinn {:.1} MiB/s, S37 {:.1} MiB/s, client peak RSS {} MiB",
            i + 1,
            raw[i],
            app[i],
            peak / 1024
        );
    }
    let (m_app, m_raw) = (median(app), median(raw));
    println!("| case | MiB/s (median of {samples}) |");
    println!("|---|---|");
    println!(
        "| raw quinn memory→memory, {} MiB | {m_raw:.1} |",
        bytes >> 20
    );
    println!(
        "| S37 lanspread download, {} MiB | {m_app:.1} |",
        bytes >> 20
    );
    println!("| ratio app / raw quinn | {:.2} |", m_app / m_raw);
    println!("| client peak RSS | {} MiB |", rss / 1024);
    println!(
        "{}",
        serde_json::json!({"bytes": bytes, "samples": samples, "s37_mib_s": m_app, "raw_quinn_mib_s": m_raw,
            "ratio_app_raw_quinn": m_app / m_raw, "client_peak_rss_mib": rss / 1024})
    );
    Ok(())
}
