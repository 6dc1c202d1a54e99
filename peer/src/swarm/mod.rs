//! Swarm distribution's decisions: which chunk to ask which holder for when holders may
//! hold only part of a game ([`Picker`]), which of the offered chunks a complete holder
//! sends ([`SeedChooser`]), and how a peer shares its uplink among the downloaders that
//! ask it ([`UploadSlots`]), and when a downloader tells its links what it verified
//! ([`HoldingBatcher`]). `tests/swarm.rs` runs both in a
//! discrete-event simulation of a LAN party (a file server and N clients) and reports the
//! slowest client's time against the lower bound of peer-assisted distribution.

mod announce;
mod picker;
mod seed;
mod slots;

pub use announce::{holding_frames, HoldingBatcher, HOLDING_BATCH, HOLDING_DELAY};
pub use picker::{Pick, Picker, PickerConfig};
pub use seed::{offered_chunks, SeedChooser};
pub use slots::UploadSlots;

#[cfg(test)]
mod tests;
