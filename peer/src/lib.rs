//! Peers and what they offer: the peer table keyed by peer id, aggregation of remote
//! libraries into one row per game, latest-version source selection and the rules for
//! which connection to a peer is kept; serve gates, metadata validation, the chunk
//! planner and the download engine around it, single-flight operations and when a source abandons an answer its peer does
//! not take.
//!
//! **Architecture invariant:** everything here is sans-IO: no sockets, files or clock.
//! The daemon feeds events in and reads decisions out.
#![warn(missing_docs)]

mod admission;
mod aggregate;
mod engine;
mod error;
mod gates;
mod links;
mod ops;
mod pace;
mod pex;
mod planner;
mod resume;
mod send_watch;
mod swarm;
mod table;
mod tally;
mod validate;
mod vote;

pub use admission::{Admit, Crowded, Handshakes, MAX_HANDSHAKES, MAX_HANDSHAKES_PER_ADDRESS};
pub use aggregate::{aggregate, latest_sources, RemoteRow, Sources};
pub use engine::{
    credible_total, max_in_flight_bytes, Action, BatchId, ChunkResult, Engine, EngineConfig, Fetch,
    Lane, LaneBook, LaneDials, BATCH_BYTES, BATCH_CHUNKS, BATCH_CHUNK_LEN, LANE_LASTED,
    LANE_REDIAL_FIRST, LANE_REDIAL_MAX, MANIFEST_GRACE, MANIFEST_TIMEOUT, MAX_IN_FLIGHT,
    OFFER_CHUNKS, OFFER_REST, SWARM_WAIT,
};
pub use error::PeerError;
pub use gates::{gate_chunk, gate_files, gate_partial_chunk, ChunkIndex};
pub use links::{
    check_not_self, over_address_cap, prefer_new_link, Direction, DEFAULT_MAX_LINKS_PER_ADDRESS,
};
pub use ops::{OpKind, Operation, Operations, Progress};
pub use pace::Pacer;
pub use pex::{holds_wanted, pex_dials, pex_list, PexRoom, DEFAULT_MAX_LINKS, HOLDER_LINKS};
pub use planner::{
    Assignment, Batch, ChunkSpec, FailKind, Planner, PlannerStatus, Settled, RACE_LAST_CHUNKS,
};
pub use resume::{
    journal_entry, journal_header, journal_kept, judge_journal, ResumeDecision, Verified,
};
pub use send_watch::{Blocked, Stalled, Verdict, MIN_PROGRESS, STUCK_WINDOWS};
pub use swarm::{
    holding_frames, offered_chunks, HeldCopy, HoldingBatcher, Plain, RecentAskers, SeedChooser,
    UploadTurns, ASKED_LATELY, HOLDING_BATCH, HOLDING_DELAY, SWARM_UPLOADS, TURN_HOLD,
};
pub use table::{PartialGame, PeerEntry, PeerTable, RemoteGame, Upsert};
pub use tally::{ChunkDone, ChunkTally};
pub use validate::{check_manifest, MAX_FILES_PER_GAME};
pub use vote::{Chosen, ManifestVote, VOTE_BUDGET};
