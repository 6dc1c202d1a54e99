//! Swarm distribution's decisions that are not the planner's (`planner/holders.rs` picks
//! chunks among partial and complete sources): which of the chunks a downloader offers a
//! complete holder sends ([`SeedChooser`], [`offered_chunks`]), how many swarm uploads a
//! peer serves at once ([`SWARM_UPLOADS`]), and when a downloader tells its links what it
//! verified ([`HoldingBatcher`]). `tests/swarm/` runs the download engine and these in a
//! discrete-event simulation of a LAN party (a file server and N clients) and reports the
//! slowest client's time against the lower bound of peer-assisted distribution.

mod announce;
mod askers;
mod seed;
mod turns;

pub use announce::{holding_frames, HeldCopy, HoldingBatcher, HOLDING_BATCH, HOLDING_DELAY};
pub use askers::{RecentAskers, ASKED_LATELY};
pub use seed::{offered_chunks, SeedChooser};
pub use turns::{Plain, UploadTurns, TURN_HOLD};

/// Swarm requests (`PartialChunks`, `Offer`) a peer answers at once; more are answered
/// `Later` and the downloader asks elsewhere, or again after a rest. Few uploads at a
/// time finish chunks sooner, and a chunk can be passed on only once it is whole and
/// verified (the swarm simulation, N = 16: 1.68 × T_min with 4, 1.91 × unbounded; with
/// cut-through and the simulation's start fixed, session 27: 1.07 × with 4, 1.20 × with 3,
/// 1.18 × with 5).
pub const SWARM_UPLOADS: usize = 4;
