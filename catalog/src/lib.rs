//! Known game ids, the library scan of a games directory, `version.ini` parsing and
//! relative file descriptors.
//!
//! Everything here is either a pure function (parsing, path checks), a read-only walk of
//! the local filesystem, or chunk hashing with its cache. This crate never does network IO;
//! the only thing it writes is its own hash cache under a root's `.lanspread/`.
#![warn(missing_docs)]

mod catalog;
mod confine;
mod error;
mod hashes;
mod ids;
mod relpath;
mod scan;

pub use catalog::{Catalog, CatalogEntry, BUILTIN_IDS};
pub use confine::open_inside;
pub use error::CatalogError;
pub use hashes::{
    chunk_count, chunk_ranges, hash_chunks, manifest_digest, ChunkHash, FileManifest, HashCache,
    CHUNK_SIZE,
};
pub use ids::{GameId, Version};
pub use relpath::{is_reserved_top_level, RelPath};
pub use scan::{
    free_space, scan_games_dir, scan_root, Availability, FileDescriptor, GameRoot, Library,
    INSTALLED_MARKER,
};

/// Name of the commit sentinel inside a game root.
pub const VERSION_FILE: &str = "version.ini";
/// Name of the install target inside a game root.
pub const LOCAL_DIR: &str = "local";
/// Prefix of daemon metadata entries inside a game root.
pub const METADATA_PREFIX: &str = ".lanspread";
