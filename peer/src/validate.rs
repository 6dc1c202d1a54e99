//! Metadata validation: whether one source's manifest is usable at all (the vote
//! among them is `vote.rs`).

use std::collections::BTreeSet;

use lanspread_catalog::{Manifest, RelPath, VERSION_FILE};

use crate::PeerError;

/// Largest accepted `version.ini`.
const MAX_VERSION_FILE: u64 = 64;
/// Most files and empty folders together a game's manifest may list (a real game has a
/// few thousand; a longer list of either does not even decode).
pub const MAX_FILES_PER_GAME: usize = lanspread_catalog::MAX_MANIFEST_ENTRIES;

/// Checks a manifest on its own: unique paths, no file where another needs a folder,
/// piece and chunk hashes matching sizes and each other (every chunk hash over its
/// pieces'), a small `version.ini`, and empty folders that are empty (nothing listed
/// in or under them, no file on their path) and listed once.
pub fn check_manifest(manifest: &Manifest) -> Result<(), PeerError> {
    let Manifest { files, folders } = manifest;
    let bad = |why: String| Err(PeerError::InvalidManifest(why));
    if files.len().saturating_add(folders.len()) > MAX_FILES_PER_GAME {
        return bad(format!(
            "{} files and {} empty folders (at most {MAX_FILES_PER_GAME} in all)",
            files.len(),
            folders.len()
        ));
    }
    if files
        .iter()
        .try_fold(0u64, |sum, f| sum.checked_add(f.size))
        .is_none()
    {
        return bad("file sizes add up past 2^64 bytes".into());
    }
    let mut paths = BTreeSet::new();
    for f in files {
        if !paths.insert(f.path.as_str()) {
            return bad(format!("{} listed twice", f.path));
        }
        if !f.consistent() {
            return bad(format!(
                "{}: {} chunk and {} piece hashes for {} bytes that do not fit together",
                f.path,
                f.chunks.len(),
                f.pieces.len(),
                f.size
            ));
        }
    }
    // Every path, sorted. Whether anything lies under a path is one binary search for
    // its first entry after `path/`: not a lookup of each of its ancestors, which a
    // manifest of deep paths (2,000 components of a 4 KiB path, thousands of them)
    // made seconds of string comparisons on the daemon's only runtime thread.
    let mut all: Vec<&str> = files
        .iter()
        .map(|f| f.path.as_str())
        .chain(folders.iter().map(RelPath::as_str))
        .collect();
    all.sort_unstable();
    // (How deep, and how many folders it makes: `all` is sorted, and an empty folder
    // is one that is no file's path: `paths` holds the files'.)
    if let Err(why) = lanspread_proto::check_tree(all.iter().map(|&p| (p, !paths.contains(p)))) {
        return bad(why);
    }
    let holds_something = |path: &str| {
        let under = format!("{path}/");
        let first = all.partition_point(|p| *p < under.as_str());
        all.get(first).is_some_and(|p| p.starts_with(&under))
    };
    for f in files {
        // "a/b" needs "a" to be a folder, so a file named "a" cannot coexist (nor can an
        // empty folder under it).
        if holds_something(f.path.as_str()) {
            return bad(format!("{} is both a file and a folder", f.path));
        }
    }
    // A folder listed as empty must have nothing under it (else it would be a second
    // name for what the files already make, and two sources of one tree could differ).
    let mut empty = BTreeSet::new();
    for d in folders {
        let d = d.as_str();
        if paths.contains(d) {
            return bad(format!("{d} is both a file and a folder"));
        }
        if !empty.insert(d) {
            return bad(format!("{d} listed twice"));
        }
        if holds_something(d) {
            return bad(format!("{d} is listed as empty but holds something"));
        }
    }
    match files.iter().find(|f| f.path.as_str() == VERSION_FILE) {
        None => bad("no version.ini".into()),
        Some(v) if v.size == 0 || v.size > MAX_VERSION_FILE => {
            bad(format!("version.ini of {} bytes", v.size))
        }
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::table::tests::pid;
    use crate::{Chosen, ManifestVote};
    use lanspread_catalog::{FileManifest, GameId, RelPath};
    use lanspread_proto::PeerId;

    pub(crate) fn f(path: &str, size: u64, seed: u8) -> FileManifest {
        let pieces = (0..lanspread_catalog::piece_count(size))
            .map(|i| [seed.wrapping_add(i as u8); 32])
            .collect();
        FileManifest::from_pieces(RelPath::new(path).unwrap(), size, 0o644, pieces)
    }

    pub(crate) fn game(eti: u64, seed: u8) -> Vec<FileManifest> {
        vec![f("version.ini", 9, 1), f("g.eti", eti, seed)]
    }

    pub(crate) fn m(files: Vec<FileManifest>) -> Manifest {
        Manifest {
            files,
            folders: vec![],
        }
    }

    pub(crate) fn dirs(files: Vec<FileManifest>, folders: &[&str]) -> Manifest {
        Manifest {
            files,
            folders: folders.iter().map(|d| RelPath::new(d).unwrap()).collect(),
        }
    }

    /// Every answer at once.
    pub(crate) fn choose_manifest(
        game: &GameId,
        answers: Vec<(PeerId, Vec<FileManifest>)>,
    ) -> Result<Chosen, PeerError> {
        let mut vote = ManifestVote::default();
        for (peer, files) in answers {
            vote.add(peer, m(files));
        }
        vote.choose(game)
    }

    pub(crate) fn id() -> GameId {
        GameId::new("ggoo").unwrap()
    }

    #[test]
    fn s40_too_many_files_and_overflowing_sizes_are_refused() {
        let mut many = game(1, 1);
        many.extend((0..MAX_FILES_PER_GAME).map(|i| f(&format!("f{i}"), 0, 0)));
        let err = check_manifest(&m(many)).unwrap_err();
        assert!(err.to_string().contains("files"), "{err}");
        let mut huge = game(1, 1);
        let mut a = f("a", 1, 0);
        a.size = u64::MAX;
        a.chunks.clear();
        huge.push(a);
        let err = check_manifest(&m(huge)).unwrap_err();
        assert!(err.to_string().contains("2^64"), "{err}");
    }

    #[test]
    fn invalid_manifests_do_not_vote() {
        let mut dup = game(100, 7);
        dup.push(f("g.eti", 100, 7));
        let mut wrong_chunks = game(100, 7);
        wrong_chunks[1].chunks.clear();
        let no_version = vec![f("g.eti", 100, 7)];
        let clash = vec![f("version.ini", 9, 1), f("a", 1, 1), f("a/b", 1, 1)];
        for bad in [
            dup.clone(),
            wrong_chunks.clone(),
            no_version.clone(),
            clash.clone(),
        ] {
            assert!(check_manifest(&m(bad.clone())).is_err(), "{bad:?}");
        }
        let c = choose_manifest(
            &id(),
            vec![
                (pid(1), dup),
                (pid(2), wrong_chunks),
                (pid(3), game(100, 7)),
            ],
        )
        .unwrap();
        assert_eq!(c.sources, [pid(3)]);
        assert_eq!(c.rejected.len(), 2);
        let err = choose_manifest(&id(), vec![(pid(1), no_version)]).unwrap_err();
        assert!(
            matches!(&err, PeerError::NoMetadata { why, .. } if why.contains("no version.ini")),
            "{err}"
        );
        assert!(
            check_manifest(&m(game(0, 1))).is_ok(),
            "empty payload files are fine"
        );
    }

    #[test]
    fn empty_folders_must_be_empty() {
        let ok = dirs(game(100, 7), &["saves", "a/b/c"]);
        assert!(check_manifest(&ok).is_ok());
        // Names that sort between a folder and what would be under it ('-' and '.' come
        // before '/') are no content of it.
        let beside = dirs(
            vec![f("version.ini", 9, 1), f("a-b.eti", 1, 1), f("a.c/d", 1, 1)],
            &["a", "a-b2", "a.c/e"],
        );
        assert!(check_manifest(&beside).is_ok());
        for (bad, why) in [
            (dirs(game(100, 7), &["g.eti"]), "both a file and a folder"),
            (dirs(game(100, 7), &["g.eti/x"]), "both a file and a folder"),
            (
                dirs(game(100, 7), &["version.ini"]),
                "both a file and a folder",
            ),
            (
                dirs(game(100, 7), &["a", "a/b"]),
                "a is listed as empty but holds",
            ),
            (
                dirs(game(100, 7), &["a", "a-b", "a.c/d", "a/b"]),
                "holds something",
            ),
            (dirs(game(100, 7), &["saves", "saves"]), "listed twice"),
            (
                dirs(vec![f("version.ini", 9, 1), f("d/g.eti", 1, 1)], &["d"]),
                "holds something",
            ),
        ] {
            let err = check_manifest(&bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        // Deep paths (2,000 components, near the 4 KiB limit), thousands of them: refused
        // at once as deeper than any tree a source offers (each would be 2,000 folders
        // made, opened and fsynced), before anything is compared per ancestor.
        let deep = vec!["a"; 2000].join("/");
        let mut files = vec![f("version.ini", 9, 1)];
        files.extend((0..2000).map(|i| f(&format!("{deep}/f{i}"), 1, 1)));
        let err = check_manifest(&dirs(files, &[])).unwrap_err();
        assert!(err.to_string().contains("2001 levels deep"), "{err}");
        // As deep as allowed, thousands of them: each path is checked by one search, not
        // one per ancestor.
        let deep = vec!["a"; lanspread_proto::MAX_DEPTH - 1].join("/");
        let mut files = vec![f("version.ini", 9, 1)];
        files.extend((0..2000).map(|i| f(&format!("{deep}/f{i}"), 1, 1)));
        let folders: Vec<String> = (0..2000).map(|i| format!("{deep}/d{i}")).collect();
        let folders: Vec<&str> = folders.iter().map(String::as_str).collect();
        assert!(check_manifest(&dirs(files.clone(), &folders)).is_ok());
        files.push(f(&vec!["a"; 30].join("/"), 1, 1));
        let err = check_manifest(&dirs(files, &folders)).unwrap_err();
        assert!(
            err.to_string().contains("both a file and a folder"),
            "{err}"
        );
        // Many folders made by deep paths: refused.
        let many: Vec<String> = (0..2000)
            .map(|i| format!("{i:04}/{}/f", vec!["d"; 60].join("/")))
            .collect();
        let mut files = vec![f("version.ini", 9, 1)];
        files.extend(many.iter().map(|p| f(p, 1, 1)));
        let err = check_manifest(&dirs(files, &[])).unwrap_err();
        assert!(err.to_string().contains("folders"), "{err}");
        let many: Vec<String> = (0..MAX_FILES_PER_GAME).map(|i| format!("d{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let err = check_manifest(&dirs(game(1, 1), &many)).unwrap_err();
        assert!(err.to_string().contains("empty folders"), "{err}");
    }
}
