//! Throughput measurements with references taken in the same run (see `README.md`):
//! S37 and S34 through two real `lanspreadd` processes (`app`), a raw quinn
//! memory-to-memory transfer with lanspread's own transport and TLS settings (`raw`), and a
//! plain TCP copy, sendfile → socket → write into the same filesystem (`tcp`). Shared by
//! the `compare` tool and the criterion benches.

pub mod app;
pub mod chart;
pub mod net;
pub mod raw;
pub mod tcp;
pub mod upstream;

pub use net::Net;
pub use raw::{raw_quinn, raw_quinn_pairs, STREAMS};

/// How long a receiving side of a reference waits for its sender to connect (a side
/// whose peer failed before connecting must not wait forever).
pub(crate) const ACCEPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Joins a scoped thread of a reference; a panic becomes an error naming `what`.
pub(crate) fn joined<T>(
    thread: std::thread::ScopedJoinHandle<'_, anyhow::Result<T>>,
    what: &str,
) -> anyhow::Result<T> {
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("{what} panicked"))?
}

/// The transport settings of the raw references and, through `--max-udp-payload`, of the
/// daemons: `LANSPREAD_BENCH_MAX_UDP_PAYLOAD` raises the bound of MTU discovery on both
/// (8952 for a jumbo-frame link, `--veth 9000`).
pub fn tuning() -> lanspread_transfer::TransportTuning {
    let mut t = lanspread_transfer::TransportTuning::default();
    if let Some(n) = max_udp_payload() {
        t.max_udp_payload = n;
    }
    t
}

/// `LANSPREAD_BENCH_MAX_UDP_PAYLOAD`, if set to a number.
pub fn max_udp_payload() -> Option<u16> {
    let v = std::env::var("LANSPREAD_BENCH_MAX_UDP_PAYLOAD").ok()?;
    let n = v.parse().ok();
    if n.is_none() {
        eprintln!("LANSPREAD_BENCH_MAX_UDP_PAYLOAD={v:?} is not a number of bytes: ignored");
    }
    n
}

/// MiB/s for `bytes` moved in `secs`.
pub fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / secs.max(1e-9)
}

/// CPU time (user + system, all threads) a process used so far, in seconds: `pid`, or
/// this process with `None`. 0 when it cannot be read (the process is gone).
pub fn cpu_secs(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses: state is the
    // 3rd field, utime and stime the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / hz as f64
}

/// Median of a non-empty sample (the upper middle for an even count); 0 when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Where a case writes: `LANSPREAD_BENCH_TMPFS` (default `/dev/shm`) for the tmpfs
/// variant, `LANSPREAD_BENCH_DISK` (default the temp dir) for the disk variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    /// A RAM filesystem: the network path alone.
    Tmpfs,
    /// The normal disk: includes writeback and the final fdatasync.
    Disk,
}

impl Fs {
    /// The base directory for this variant.
    pub fn dir(self) -> std::path::PathBuf {
        let (var, default) = match self {
            Fs::Tmpfs => (
                "LANSPREAD_BENCH_TMPFS",
                std::path::PathBuf::from("/dev/shm"),
            ),
            Fs::Disk => ("LANSPREAD_BENCH_DISK", std::env::temp_dir()),
        };
        std::env::var_os(var).map_or(default, std::path::PathBuf::from)
    }

    /// `tmpfs` or `disk`.
    pub fn name(self) -> &'static str {
        match self {
            Fs::Tmpfs => "tmpfs",
            Fs::Disk => "disk",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_rate() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(mib_per_s(4 << 20, 2.0), 2.0);
    }

    #[test]
    fn cpu_time_of_this_process_grows_with_work() {
        let before = cpu_secs(None);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let used = cpu_secs(None) - before;
        assert!(used >= 0.1, "{used}");
        assert_eq!(cpu_secs(Some(u32::MAX)), 0.0);
    }
}
