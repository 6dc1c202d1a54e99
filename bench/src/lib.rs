//! Throughput benches (S37 and friends) with same-run references live here; see
//! `bench/README.md`. The crate is part of the workspace layout from the start so that
//! benches land next to the code they measure.
