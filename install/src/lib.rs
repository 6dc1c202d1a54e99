//! Install, uninstall and reinstall of game roots, and the RAR5 store writer used by
//! `lanspread pack` and the fixture lab.
//!
//! **Architecture invariant:** only this crate writes under a game's `local/`.
#![warn(missing_docs)]

mod dll;
mod error;
mod extract;
mod links;
pub mod rar5;
mod tree;
mod volumes;

pub use error::InstallError;
pub use extract::{
    install_root, install_root_until, install_root_with, safe_entry_path, InstallProgress,
    InstallSummary, INSTALLED_MARKER,
};
pub use rar5::{pack_dir, LinkKind, PackSummary, Rar5Writer, WriterOptions};
pub use tree::{remove_tree, uninstall_root, LEFTOVERS, TRASH_ASIDE};
