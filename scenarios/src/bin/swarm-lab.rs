//! The swarm lab as a bench (issue 21): runs each shape in network namespaces with `tc`
//! rate limits (as root), writes `<out>/swarm-<shape>.json` and `.svg` per run and prints
//! the table for `bench/README.md`. Minutes per run; not for CI.
//!
//! ```text
//! swarm-lab [--out DIR] [SHAPE...]     SHAPE = CLIENTS:MIB:MBIT[:STAGGER_MS][:kill]
//! ```
//! Without shapes: N = 4, 8, 16 with a 1 GiB game over 100 Mbit/s links, all started
//! together and one every 5 s.

use std::path::PathBuf;

use anyhow::{bail, Context};
use lanspread_scenarios::swarm_lab::{self, LabShape};

fn main() -> anyhow::Result<()> {
    let mut out = PathBuf::from("bench/results");
    let mut shapes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().context("--out needs a directory")?.into(),
            "-h" | "--help" => {
                println!("swarm-lab [--out DIR] [CLIENTS:MIB:MBIT[:STAGGER_MS][:kill]...]");
                return Ok(());
            }
            s => shapes.push(LabShape::parse(s).map_err(anyhow::Error::msg)?),
        }
    }
    if shapes.is_empty() {
        for n in [4, 8, 16] {
            for stagger_ms in [0, 5000] {
                shapes.push(LabShape {
                    clients: n,
                    mib: 1024,
                    mbit: 100,
                    stagger_ms,
                    kill: false,
                });
            }
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the swarm lab needs root (network namespaces, tc)");
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut rows = Vec::new();
    for shape in shapes {
        eprintln!(
            "swarm lab {shape:?} (T_min {:.1} s) …",
            shape.t_min().as_secs_f64()
        );
        let report = swarm_lab::run(shape);
        let stem = format!(
            "swarm-{}x{}mib-{}mbit-{}{}",
            shape.clients,
            shape.mib,
            shape.mbit,
            shape.stagger_ms,
            if shape.kill { "-kill" } else { "" }
        );
        let json = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(out.join(format!("{stem}.json")), json)?;
        let svg = lanspread_scenarios::chart::swarm_svg(&report).map_err(anyhow::Error::msg)?;
        std::fs::write(out.join(format!("{stem}.svg")), svg)?;
        eprintln!("{}", report.row());
        rows.push(report.row());
    }
    println!("| N | start | slowest / T_min | median / T_min | server upload / F | T_min s |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
