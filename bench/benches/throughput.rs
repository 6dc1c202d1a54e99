//! Criterion benches of S37 and S34 with their same-run references. Each iteration is one
//! whole transfer; criterion reports time and throughput per case, and the ratios are read
//! side by side from one run (`cargo run -p lanspread-bench --bin compare` prints them).
//!
//! `LANSPREAD_BENCH_BYTES` sets the S37 size (default 2 GiB); the daemons are the release
//! binaries (`cargo build --release --bins` first). Ten samples of 2 GiB per case take a
//! few minutes on 2 cores.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use lanspread_bench::{app, raw_quinn, tcp::tcp_copy, Fs, Net};

fn s37_bytes() -> u64 {
    std::env::var("LANSPREAD_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 30)
}

/// Sums the durations `one` reports over `iters` runs (setup such as starting daemons and
/// hashing the source is not part of them).
fn timed(iters: u64, mut one: impl FnMut() -> anyhow::Result<Duration>) -> Duration {
    (0..iters)
        .map(|_| one().unwrap_or_else(|e| panic!("bench case failed: {e:#}")))
        .sum()
}

fn s37(c: &mut Criterion) {
    let bytes = s37_bytes();
    let net = Net::loopback();
    let mut g = c.benchmark_group("s37");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(bytes));
    g.bench_function("raw_quinn_memory", |b| {
        b.iter_custom(|n| timed(n, || raw_quinn(bytes, &net)))
    });
    for fs in [Fs::Tmpfs, Fs::Disk] {
        g.bench_function(format!("tcp_sendfile_{}", fs.name()), |b| {
            b.iter_custom(|n| timed(n, || tcp_copy(bytes, fs, &net)))
        });
        g.bench_function(format!("lanspread_{}", fs.name()), |b| {
            b.iter_custom(|n| {
                timed(n, || {
                    app::s37(bytes, fs, None, &net).map(|d| Duration::from_secs_f64(d.secs))
                })
            })
        });
    }
    g.finish();
}

fn s34(c: &mut Criterion) {
    let (files, each) = (2000usize, 32u64 << 10);
    let net = Net::loopback();
    let mut g = c.benchmark_group("s34");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(files as u64 * each));
    // One pair of daemons serves both games; each iteration downloads one of them anew
    // into a fresh client.
    for many in [true, false] {
        let name = if many { "2000_files" } else { "one_file" };
        g.bench_function(name, |b| {
            b.iter_custom(|n| {
                timed(n, || {
                    let (m, o) = app::s34(files as u64 * each, files, Fs::Tmpfs, None, &net)?;
                    Ok(Duration::from_secs_f64(if many { m.secs } else { o.secs }))
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, s37, s34);
criterion_main!(benches);
