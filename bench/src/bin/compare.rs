//! `cargo run --release -p lanspread-bench --bin compare -- [--bytes N] [--samples K]
//! [--s34-files F] [--only s37|s34] [--guard R] [--threads T] [--scaling 1,2,4,8]
//! [--veth MTU [--rate R]]`: S37
//! through two real daemons (client on tmpfs and on the disk) next to a raw quinn
//! memory-to-memory transfer and a TCP sendfile copy of the same size, all in this run;
//! then S34 (F small files vs one file of the same total). Prints a table and one JSON
//! line with medians, ratios and the client's peak RSS. With `--guard R` it exits 1 when
//! the tmpfs ratio app / raw quinn is below R or the client's peak RSS is above 256 MiB
//! (the CI guard). `--threads T` gives both daemons T transfer threads in S37 and S34
//! (default: theirs).
//! `--scaling LIST` runs only the scaling table: per thread count N, S37 → tmpfs with N
//! transfer threads per daemon next to N raw quinn pairs side by side.
//! `--veth MTU` runs every case between two network namespaces joined by a veth pair with
//! that MTU instead of on loopback (root and iproute2; `../shared/perf.md`); `--rate R`
//! limits both directions with the swarm lab's `tc tbf` (R such as `100mbit`).
//! `--quinn-perf BIN` also runs upstream quinn's perf tool (its defaults, loopback, the
//! same byte count per request, 10 s) in every S37 sample and reports its MiB/s and CPU
//! s/GiB (client + server) beside ours.
//! `--out DIR` also writes the JSON line to `DIR/compare.json` and SVG charts beside it:
//! `throughput.svg` (every case's median MiB/s beside its references) and
//! `download.svg` (the last S37 → tmpfs download's verified bytes over time per source).

use anyhow::{bail, Context};
use lanspread_bench::{
    app, cpu_secs, median, mib_per_s, raw_quinn, raw_quinn_pairs, tcp::tcp_copy,
    upstream::quinn_perf, Fs, Net,
};

const USAGE: &str = "usage: compare [--bytes N] [--samples K] [--s34-files F] [--only s37|s34] \
[--guard R] [--threads T] [--scaling 1,2,4,8] [--veth MTU [--rate R]] [--quinn-perf BIN] \
[--out DIR]\n(each is described in the doc comment of bench/src/bin/compare.rs and in \
bench/README.md)";

/// The client's peak RSS during S37 must stay below this (perf.md).
const MAX_CLIENT_RSS_MIB: u64 = 256;

struct Args {
    bytes: u64,
    samples: usize,
    s34_files: usize,
    guard: Option<f64>,
    s37: bool,
    s34: bool,
    threads: Option<usize>,
    scaling: Vec<usize>,
    veth: Option<u32>,
    rate: Option<String>,
    quinn_perf: Option<std::path::PathBuf>,
    out: Option<std::path::PathBuf>,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        bytes: 2 << 30,
        samples: 3,
        s34_files: 2000,
        guard: None,
        s37: true,
        s34: true,
        threads: None,
        scaling: Vec::new(),
        veth: None,
        rate: None,
        quinn_perf: None,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bytes" => a.bytes = value()?.parse().context("--bytes")?,
            "--samples" => a.samples = value()?.parse().context("--samples")?,
            "--s34-files" => a.s34_files = value()?.parse().context("--s34-files")?,
            "--guard" => a.guard = Some(value()?.parse().context("--guard")?),
            "--threads" => a.threads = Some(value()?.parse().context("--threads")?),
            "--veth" => a.veth = Some(value()?.parse().context("--veth takes an MTU")?),
            "--rate" => a.rate = Some(value()?),
            "--quinn-perf" => a.quinn_perf = Some(value()?.into()),
            "--out" => a.out = Some(value()?.into()),
            "--scaling" => {
                a.scaling = value()?
                    .split(',')
                    .map(|n| n.trim().parse().context("--scaling takes e.g. 1,2,4,8"))
                    .collect::<anyhow::Result<_>>()?
            }
            "--only" => match value()?.as_str() {
                "s37" => a.s34 = false,
                "s34" => a.s37 = false,
                other => bail!("--only takes s37 or s34, not {other}"),
            },
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    anyhow::ensure!(
        a.samples > 0 && a.bytes >= 1 << 20,
        "need ≥1 sample and ≥1 MiB"
    );
    anyhow::ensure!(a.s34_files > 0, "--s34-files must be > 0");
    anyhow::ensure!(
        a.scaling
            .iter()
            .chain(&a.threads)
            .all(|&n| (1..=64).contains(&n)),
        "thread counts are 1..=64"
    );
    Ok(a)
}

/// `bytes` in GiB.
fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// The scaling table: S37 → tmpfs with N transfer threads per daemon next to N raw quinn
/// pairs, interleaved per sample.
fn scaling(args: &Args, net: &Net) -> anyhow::Result<()> {
    let bytes = args.bytes;
    println!("{}, {} MiB", net.name(), bytes >> 20);
    println!(
        "| threads | raw quinn, N pairs (MiB/s) | S37 → tmpfs (MiB/s) | S37 / raw N pairs | S37 / S37 at {} | CPU s/GiB raw | CPU s/GiB S37 | client peak RSS |",
        args.scaling[0]
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut base = None;
    for &n in &args.scaling {
        let (mut raw, mut app) = (Vec::new(), Vec::new());
        let (mut raw_cpu, mut app_cpu) = (Vec::new(), Vec::new());
        let mut rss_kib = 0;
        for i in 0..args.samples {
            let cpu = cpu_secs(None);
            raw.push(mib_per_s(
                bytes,
                raw_quinn_pairs(bytes, n, net)?.as_secs_f64(),
            ));
            raw_cpu.push((cpu_secs(None) - cpu) / gib(bytes));
            let s = app::s37(bytes, Fs::Tmpfs, Some(n), net)?;
            app.push(s.mib_s);
            app_cpu.push(s.cpu_s / gib(bytes));
            rss_kib = rss_kib.max(s.client_peak_rss_kib);
            eprintln!(
                "threads {n} sample {}: raw {:.0}, S37 {:.0} MiB/s; CPU s/GiB raw {:.2}, S37 {:.2} (source {:.2})",
                i + 1,
                raw[i],
                app[i],
                raw_cpu[i],
                app_cpu[i],
                s.source_cpu_s / gib(bytes)
            );
        }
        let (raw, app) = (median(raw), median(app));
        let (raw_cpu, app_cpu) = (median(raw_cpu), median(app_cpu));
        let first = *base.get_or_insert(app);
        println!(
            "| {n} | {raw:.0} | {app:.0} | {:.2} | {:.2} | {raw_cpu:.2} | {app_cpu:.2} | {} MiB |",
            app / raw,
            app / first,
            rss_kib / 1024
        );
        rows.push(serde_json::json!({
            "threads": n, "raw_quinn_pairs_mib_s": raw, "s37_tmpfs_mib_s": app,
            "raw_cpu_s_per_gib": raw_cpu, "s37_cpu_s_per_gib": app_cpu,
            "client_peak_rss_mib": rss_kib / 1024,
        }));
    }
    let doc = serde_json::json!({
        "bytes": bytes, "samples": args.samples, "net": net.name(), "scaling": rows,
    });
    println!("{doc}");
    Ok(())
}

/// `compare.json` and the charts in `dir`.
fn write_out(
    dir: &std::path::Path,
    doc: &serde_json::Value,
    cases: &[(String, f64)],
    curve: &lanspread_bench::chart::Curve,
    what: &str,
) -> anyhow::Result<()> {
    use lanspread_bench::chart;
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| p.display().to_string())
    };
    write("compare.json", format!("{doc}\n"))?;
    let title = format!("throughput, median ({what})");
    write(
        "throughput.svg",
        chart::throughput_svg(&title, cases).map_err(anyhow::Error::msg)?,
    )?;
    if !curve.is_empty() {
        let title = format!("S37 → tmpfs: verified bytes per source ({what})");
        write(
            "download.svg",
            chart::download_svg(&title, curve).map_err(anyhow::Error::msg)?,
        )?;
    }
    eprintln!("wrote {}/compare.json and its charts", dir.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let mut net = match args.veth {
        Some(mtu) => Net::veth(mtu)?,
        None => Net::loopback(),
    };
    if let Some(rate) = &args.rate {
        net.limit(rate)?;
    }
    let net = &net;
    if !args.scaling.is_empty() {
        return scaling(&args, net);
    }
    let bytes = args.bytes;
    let mut raw = Vec::new();
    let (mut tcp_t, mut tcp_d) = (Vec::new(), Vec::new());
    let (mut app_t, mut app_d) = (Vec::new(), Vec::new());
    let mut rss = 0u64;
    let mut curve = Vec::new();
    let (mut raw_cpu, mut app_cpu) = (Vec::new(), Vec::new());
    let (mut up, mut up_cpu) = (Vec::new(), Vec::new());
    anyhow::ensure!(
        args.quinn_perf.is_none() || args.veth.is_none(),
        "--quinn-perf runs on loopback only"
    );
    // Interleaved, so drift in the machine's speed hits every case alike.
    for i in (0..args.samples).filter(|_| args.s37) {
        let cpu = cpu_secs(None);
        let d = raw_quinn(bytes, net)?;
        raw.push(mib_per_s(bytes, d.as_secs_f64()));
        raw_cpu.push((cpu_secs(None) - cpu) / gib(bytes));
        if let Some(bin) = &args.quinn_perf {
            let m = quinn_perf(bin, bytes, 10)?;
            eprintln!(
                "sample {}: quinn-perf {:.0} MiB/s at {:.2} CPU s/GiB",
                i + 1,
                m.mib_s,
                m.cpu_s_per_gib
            );
            up.push(m.mib_s);
            up_cpu.push(m.cpu_s_per_gib);
        }
        for (fs, tcp, s37) in [
            (Fs::Tmpfs, &mut tcp_t, &mut app_t),
            (Fs::Disk, &mut tcp_d, &mut app_d),
        ] {
            tcp.push(mib_per_s(bytes, tcp_copy(bytes, fs, net)?.as_secs_f64()));
            let s = app::s37(bytes, fs, args.threads, net)?;
            s37.push(s.mib_s);
            if fs == Fs::Tmpfs {
                app_cpu.push(s.cpu_s / gib(bytes));
                curve = s.curve;
            }
            rss = rss.max(s.client_peak_rss_kib);
        }
        eprintln!(
            "sample {}: raw quinn {:.0}, tcp tmpfs {:.0}, S37 tmpfs {:.0}, tcp disk {:.0}, S37 disk {:.0} MiB/s",
            i + 1,
            raw[i],
            tcp_t[i],
            app_t[i],
            tcp_d[i],
            app_d[i]
        );
    }
    // S34 at a size where per-file costs show: 2000 files of 32 KiB by default.
    let s34_bytes = (args.s34_files as u64 * (32 << 10)).min(bytes);
    let (mut many, mut one) = (Vec::new(), Vec::new());
    for _ in (0..args.samples).filter(|_| args.s34) {
        let (m, o) = app::s34(s34_bytes, args.s34_files, Fs::Tmpfs, args.threads, net)?;
        many.push(m.secs);
        one.push(o.secs);
    }
    let (raw, tcp_t, tcp_d) = (median(raw), median(tcp_t), median(tcp_d));
    let (app_t, app_d) = (median(app_t), median(app_d));
    let (many, one) = (median(many), median(one));
    let r_raw = app_t / raw;
    let (raw_cpu, app_cpu) = (median(raw_cpu), median(app_cpu));
    let mib = bytes >> 20;
    let rss_mib = rss / 1024;
    println!(
        "| case (median of {}, {}) | figure |",
        args.samples,
        net.name()
    );
    println!("|---|---|");
    if args.s37 {
        println!("| raw quinn memory→memory, {mib} MiB | {raw:.0} MiB/s |");
        println!("| TCP sendfile → tmpfs | {tcp_t:.0} MiB/s |");
        println!("| S37 lanspread → tmpfs | {app_t:.0} MiB/s |");
        println!("| TCP sendfile → disk | {tcp_d:.0} MiB/s |");
        println!("| S37 lanspread → disk | {app_d:.0} MiB/s |");
        println!("| ratio S37 / raw quinn (tmpfs) | {r_raw:.2} |");
        println!(
            "| ratio S37 / TCP (tmpfs, disk) | {:.2}, {:.2} |",
            app_t / tcp_t,
            app_d / tcp_d
        );
        println!("| client peak RSS during S37 | {rss_mib} MiB |");
        println!(
            "| CPU s per GiB: raw quinn, S37 → tmpfs (both daemons) | {raw_cpu:.2}, {app_cpu:.2} |"
        );
        if args.quinn_perf.is_some() {
            let (up, up_cpu) = (median(up.clone()), median(up_cpu.clone()));
            println!("| upstream quinn-perf (defaults) | {up:.0} MiB/s, {up_cpu:.2} CPU s/GiB |");
            println!(
                "| S37 → tmpfs / quinn-perf: rate, CPU per GiB | {:.2}, {:.2} |",
                app_t / up,
                app_cpu / up_cpu
            );
            println!(
                "| raw quinn / quinn-perf: rate, CPU per GiB | {:.2}, {:.2} |",
                raw / up,
                raw_cpu / up_cpu
            );
        }
    }
    if args.s34 {
        println!(
            "| S34 {} files vs 1 file, {} KiB | {many:.3} s vs {one:.3} s = {:.2}× |",
            args.s34_files,
            s34_bytes >> 10,
            many / one
        );
    }
    let mut doc = serde_json::json!({"bytes": bytes, "samples": args.samples, "net": net.name()});
    if args.s37 {
        doc["raw_quinn_mib_s"] = raw.into();
        doc["tcp_tmpfs_mib_s"] = tcp_t.into();
        doc["tcp_disk_mib_s"] = tcp_d.into();
        doc["s37_tmpfs_mib_s"] = app_t.into();
        doc["s37_disk_mib_s"] = app_d.into();
        doc["ratio_app_raw_quinn"] = r_raw.into();
        doc["ratio_app_tcp_tmpfs"] = (app_t / tcp_t).into();
        doc["ratio_app_tcp_disk"] = (app_d / tcp_d).into();
        doc["client_peak_rss_mib"] = rss_mib.into();
        doc["raw_quinn_cpu_s_per_gib"] = raw_cpu.into();
        doc["s37_tmpfs_cpu_s_per_gib"] = app_cpu.into();
        if args.quinn_perf.is_some() {
            doc["quinn_perf_mib_s"] = median(up).into();
            doc["quinn_perf_cpu_s_per_gib"] = median(up_cpu).into();
        }
    }
    if args.s34 {
        doc["s34_files"] = args.s34_files.into();
        doc["s34_bytes"] = s34_bytes.into();
        doc["s34_many_s"] = many.into();
        doc["s34_one_s"] = one.into();
        doc["s34_ratio"] = (many / one).into();
    }
    println!("{doc}");
    if let Some(dir) = &args.out {
        let mut cases = Vec::new();
        let mut case = |label: &str, key: &str| {
            if let Some(v) = doc[key].as_f64() {
                cases.push((label.to_owned(), v));
            }
        };
        case("raw quinn memory→memory", "raw_quinn_mib_s");
        case("upstream quinn-perf", "quinn_perf_mib_s");
        case("TCP sendfile → tmpfs", "tcp_tmpfs_mib_s");
        case("S37 lanspread → tmpfs", "s37_tmpfs_mib_s");
        case("TCP sendfile → disk", "tcp_disk_mib_s");
        case("S37 lanspread → disk", "s37_disk_mib_s");
        write_out(
            dir,
            &doc,
            &cases,
            &curve,
            &format!("{mib} MiB, {}", net.name()),
        )?;
    }
    if let Some(min) = args.guard {
        anyhow::ensure!(args.s37, "--guard needs the S37 case");
        let mut failed = false;
        if r_raw < min {
            eprintln!("GUARD FAILED: S37 / raw quinn = {r_raw:.2} < {min}");
            failed = true;
        }
        if rss_mib > MAX_CLIENT_RSS_MIB {
            eprintln!("GUARD FAILED: client peak RSS {rss_mib} MiB > {MAX_CLIENT_RSS_MIB} MiB");
            failed = true;
        }
        if failed {
            std::process::exit(1);
        }
        eprintln!(
            "guard ok: S37 / raw quinn = {r_raw:.2} ≥ {min}, client peak RSS {rss_mib} MiB ≤ {MAX_CLIENT_RSS_MIB} MiB"
        );
    }
    Ok(())
}
