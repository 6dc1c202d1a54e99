//! Known game ids, the library scan of a games directory, `version.ini` parsing and
//! relative file descriptors.
//!
//! Everything here is either a pure function (parsing, path checks), a read-only walk of
//! the local filesystem, or piece hashing with its cache. This crate never does network IO;
//! the only thing it writes is its own hash cache under a root's `.lanspread/`, through
//! [`GameDir`], which the daemon also writes every downloaded file through.
#![warn(missing_docs)]

mod catalog;
mod confine;
mod error;
mod game_dir;
mod hash_store;
mod hashes;
mod inflight;
mod scan;

pub use catalog::{Catalog, CatalogEntry, BUILTIN_IDS};
pub use confine::{in_served_part, open_inside, set_blocking, Confined};
pub use error::CatalogError;
pub use game_dir::{
    dev_of, is_folder, lstat_in, raise_open_files_limit, remove_all_in, sync_dir, Access, GameDir,
    Inode,
};
pub use hashes::{hash_file, HashCache, Indexed};
pub use inflight::HashProgress;
// The protocol's value types, re-exported: the catalog speaks in them.
pub use lanspread_proto::{
    case_clash, chunk_count, chunk_hash, chunk_ranges, folds_to_reserved, is_reserved_top_level,
    manifest_digest, piece_count, piece_hash, Availability, ChunkHash, FileManifest, GameId,
    Manifest, RelPath, Version, CHUNK_SIZE, LOCAL_DIR, MAX_MANIFEST_ENTRIES, METADATA_PREFIX,
    PIECES_PER_CHUNK, PIECE_SIZE, VERSION_FILE,
};
pub use scan::{
    folder_id, free_space, open_folder, scan_games_dir, scan_root, FileDescriptor, FolderId,
    GameRoot, Library, OpenFolder, INSTALLED_MARKER,
};
