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
        for p in leftovers.clone().map(|l| e.path().join(l)) {
            let removed = match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p).is_ok(),
                Ok(_) => fs::remove_file(&p).is_ok(),
                Err(_) => false,
            };
            if removed {
                info!(path = %p.display(), "removed what an interrupted operation left");
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
        assert!(root.join(".lanspread/partial").exists());
        assert!(root.join("cod5.eti").exists());
    }
}
