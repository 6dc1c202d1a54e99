//! Install, uninstall and reinstall of game roots, and the RAR5 store writer used by
//! `lanspread pack` and the fixture lab.
//!
//! **Architecture invariant:** only this crate writes under a game's `local/`.
#![warn(missing_docs)]

mod error;
mod extract;
pub mod rar5;

pub use error::InstallError;
pub use extract::{
    install_root, install_root_with, remove_tree, safe_entry_path, uninstall_root, InstallProgress,
    InstallSummary, INSTALLED_MARKER, LEFTOVERS,
};
pub use rar5::{pack_dir, PackSummary, Rar5Writer, WriterOptions};
