//! Start-up recovery: what a daemon killed mid-operation left in the games dir is removed
//! before the first scan, while no operation can run. The resume journal
//! (`.lanspread/partial`) stays: the next download of the same version continues from it.

use std::fs;
use std::path::Path;

use tracing::info;

/// Cleans every root folder of `games` (symlinked roots are left alone).
pub fn sweep(games: &Path) {
    let Ok(entries) = fs::read_dir(games) else {
        return;
    };
    let leftovers = lanspread_install::LEFTOVERS
        .iter()
        .chain(&crate::download::LEFTOVERS);
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // A game folder whose `remove` was interrupted: finish the job.
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(crate::install::REMOVING_PREFIX))
        {
            if lanspread_install::remove_tree(&e.path()).is_ok() {
                info!(path = %e.path().display(), "removed what an interrupted `remove` left");
            }
            continue;
        }
        // Beneath the root's descriptor: a `.lanspread` that is a symlink to a folder
        // elsewhere loses nothing there.
        let Ok(game) = lanspread_catalog::GameDir::open(&e.path()) else {
            continue;
        };
        // Old installs an operation could not remove and moved aside: tried again.
        let aside: Vec<String> = game
            .dir()
            .entries()
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(lanspread_install::TRASH_ASIDE))
            .collect();
        for l in leftovers
            .clone()
            .copied()
            .chain(aside.iter().map(String::as_str))
        {
            let removed = match game.dir().symlink_metadata(l) {
                Ok(_) => lanspread_catalog::remove_all_in(game.dir(), Path::new(l), true).is_ok(),
                Err(_) => false,
            };
            if removed {
                let path = game.shown(Path::new(l));
                info!(path = %path.display(), "removed what an interrupted operation left");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_go_journal_and_data_stay() {
        let g = tempfile::tempdir().unwrap();
        let root = g.path().join("cod5");
        for d in [
            ".lanspread/incoming",
            ".lanspread-staging/x",
            ".lanspread-trash",
            ".lanspread-trash-1700000000-0/old/deep",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join(".lanspread/incoming/version.ini"), "20250101").unwrap();
        fs::write(root.join(".lanspread/partial"), "journal").unwrap();
        fs::write(root.join("cod5.eti"), "data").unwrap();
        sweep(g.path());
        assert!(!root.join(".lanspread/incoming").exists());
        assert!(!root.join(".lanspread-staging").exists());
        assert!(!root.join(".lanspread-trash").exists());
        assert!(!root.join(".lanspread-trash-1700000000-0").exists());
        assert!(root.join(".lanspread/partial").exists());
        assert!(root.join("cod5.eti").exists());
    }
}
