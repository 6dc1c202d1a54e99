//! `cargo run --release -p lanspread-bench --bin extract [BYTES]`: install (UnRAR
//! extraction of a store archive into `local/`) next to a plain copy of the same bytes on
//! the same filesystem, in the same run. `LANSPREAD_BENCH_DIR` picks the filesystem.

use std::path::PathBuf;
use std::time::Instant;

use lanspread_fixtures::RandomReader;

fn main() -> anyhow::Result<()> {
    let bytes: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1 << 30);
    let base = std::env::var_os("LANSPREAD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("lanspread-extract-")
        .tempdir_in(base)?;
    let src = dir.path().join("src");
    let root = dir.path().join("game");
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&root)?;
    let data = src.join("data.bin");
    std::io::copy(
        &mut RandomReader::new(7, bytes),
        &mut std::fs::File::create(&data)?,
    )?;
    lanspread_install::pack_dir(&src, &root.join("game.eti"))?;
    let mib = bytes as f64 / (1024.0 * 1024.0);
    let mut rows = Vec::new();
    // Both steps start with no dirty pages left from the previous one.
    let settle = || {
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() }
    };
    for _ in 0..3 {
        settle();
        let t = Instant::now();
        std::fs::copy(&data, dir.path().join("copy.bin"))?;
        let cp = mib / t.elapsed().as_secs_f64();
        std::fs::remove_file(dir.path().join("copy.bin"))?;
        settle();
        let t = Instant::now();
        lanspread_install::install_root(&root)?;
        let ex = mib / t.elapsed().as_secs_f64();
        lanspread_install::uninstall_root(&root)?;
        rows.push((ex, cp));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ex, cp) = rows[1];
    println!(
        "| case ({} MiB) | MiB/s (median of 3) |\n|---|---|",
        bytes >> 20
    );
    println!("| install (UnRAR store extraction) | {ex:.1} |\n| copy of the same bytes | {cp:.1} |\n| ratio | {:.2} |", ex / cp);
    println!(
        "{}",
        serde_json::json!({"bytes": bytes, "extract_mib_s": ex, "copy_mib_s": cp, "ratio": ex / cp})
    );
    Ok(())
}
