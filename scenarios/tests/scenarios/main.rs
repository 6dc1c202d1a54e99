//! End-to-end scenarios (see `shared/scenarios.md`), one test binary split by topic.
//! Run one with `cargo test -p lanspread-scenarios s03`.

mod aliases;
mod busy;
mod control;
mod control_limits;
mod crash;
mod downloads;
mod failures;
mod gates;
mod hostile;
mod hostile_source;
mod indexing;
mod install;
mod lanes;
mod library;
mod limit_live;
mod limits;
mod live;
mod local_user;
mod manage;
mod mdns;
mod metrics;
mod non_root;
mod pieces;
mod progress;
mod reload;
mod resume;
mod robust;
mod swarm;
mod swarm_download;
mod swarm_lab;
mod trust;
mod util;
