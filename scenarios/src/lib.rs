//! The scenario harness: locates the built binaries, starts real `lanspreadd` processes
//! in temp dirs on `127.0.0.1:0` with `--no-mdns` and an events file, runs `lanspread`
//! commands, waits on events with timeouts and compares SHA-256 manifests with a
//! readable diff. It kills only what it started (on drop as well).

pub mod chart;
mod manifest;
mod netns;
mod nobody;
mod node;
mod privileged;
mod process;
pub mod swarm_lab;

pub use lanspread_control::chunk_sources;
pub use manifest::{assert_matches_manifest, assert_same_tree, manifest, Manifest};
pub use netns::NetLab;
pub use nobody::{nobody_part, spawn_copy, NobodyCopy, NOBODY};
pub use node::{bin, lab, linked_copy, CliOutput, Node, NodeOptions};
pub use privileged::{skip_privileged, BindMount, Tmpfs};
pub use process::{collect_within, output_within, wait_within, OutputWithin, CLI_LIMIT};

use std::time::{Duration, Instant};

/// How long any wait in a scenario may take before the scenario fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `f` until it returns `Some`, failing the test with `what` after [`WAIT`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
