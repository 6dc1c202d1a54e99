//! Upstream references that no one here wrote, run beside our own cases in the same run:
//! quinn's own perf tool (`quinn-perf`, built from the quinn repository, `../shared/perf.md`)
//! with its defaults, on loopback.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cpu_secs;

/// What one quinn-perf run measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Download rate over the whole run (bytes of every interval / their time span).
    pub mib_s: f64,
    /// Client + server CPU time per GiB moved.
    pub cpu_s_per_gib: f64,
}

/// Runs `quinn-perf server` and `quinn-perf client --download-size BYTES --upload-size 0
/// --duration SECS` on loopback with the tool's defaults otherwise; the client's CPU from
/// its rusage, the server's from `/proc`.
pub fn quinn_perf(bin: &Path, bytes: u64, secs: u32) -> anyhow::Result<Measured> {
    let port = free_udp_port()?;
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(bin)
        .args(["server", "--listen", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let killed = |server: &mut std::process::Child| {
        let _ = server.kill();
        let _ = server.wait();
    };
    std::thread::sleep(Duration::from_millis(300));
    let server_cpu = cpu_secs(Some(server.id()));
    let json = tempfile::NamedTempFile::new()?;
    let children = children_cpu_secs();
    let status = Command::new(bin)
        .args(["client", "--upload-size", "0", "--download-size"])
        .arg(bytes.to_string())
        .args(["--duration", &secs.to_string(), "--json"])
        .arg(json.path())
        .arg(&addr)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let client_cpu = children_cpu_secs() - children;
    let server_cpu = cpu_secs(Some(server.id())) - server_cpu;
    killed(&mut server);
    if !status?.success() {
        bail!("quinn-perf client failed");
    }
    let (moved, span) = intervals(&std::fs::read(json.path())?)?;
    anyhow::ensure!(moved > 0 && span > 0.0, "quinn-perf moved nothing");
    let gib = moved as f64 / f64::from(1u32 << 30);
    Ok(Measured {
        mib_s: crate::mib_per_s(moved, span),
        cpu_s_per_gib: (client_cpu + server_cpu) / gib,
    })
}

/// Bytes and seconds of quinn-perf's JSON report: the sum of every interval's `sum.bytes`
/// and the time from the first interval's start to the last one's end.
fn intervals(json: &[u8]) -> anyhow::Result<(u64, f64)> {
    let doc: serde_json::Value = serde_json::from_slice(json).context("quinn-perf JSON")?;
    let list = doc["intervals"]
        .as_array()
        .context("no intervals in quinn-perf JSON")?;
    let bytes = list.iter().filter_map(|i| i["sum"]["bytes"].as_u64()).sum();
    let first = list.first().and_then(|i| i["sum"]["start"].as_f64());
    let last = list.last().and_then(|i| i["sum"]["end"].as_f64());
    let span = match (first, last) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    Ok((bytes, span))
}

/// CPU seconds of this process's waited-for children so far.
fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quinn_perf_intervals() {
        let json = br#"{"start":{"timesecs":1},"intervals":[
            {"streams":[],"sum":{"start":0.0,"end":1.0,"seconds":1.0,"bytes":100,"bits_per_second":800.0,"sender":false}},
            {"streams":[],"sum":{"start":1.0,"end":2.5,"seconds":1.5,"bytes":50,"bits_per_second":266.0,"sender":false}}]}"#;
        assert_eq!(intervals(json).unwrap(), (150, 2.5));
        assert!(intervals(b"{}").is_err());
    }
}
