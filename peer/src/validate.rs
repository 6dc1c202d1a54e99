//! Metadata validation: among the sources of the newest version, the manifest with a
//! strict plurality of votes wins and only its voters become sources (S7, S8, S17).

use std::collections::{BTreeMap, BTreeSet};

use lanspread_catalog::{FileManifest, GameId, Manifest, RelPath, VERSION_FILE};
use lanspread_proto::PeerId;

use crate::PeerError;

/// Largest accepted `version.ini`.
const MAX_VERSION_FILE: u64 = 64;
/// Most files and empty folders together a game's manifest may list (a real game has a
/// few thousand; a longer list of either does not even decode).
pub const MAX_FILES_PER_GAME: usize = lanspread_catalog::MAX_MANIFEST_ENTRIES;

/// The validated manifest and the sources that vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// Files sorted by path.
    pub files: Vec<FileManifest>,
    /// Empty folders, sorted: the list named most among the sources (see
    /// [`ManifestVote`]).
    pub folders: Vec<RelPath>,
    /// The peers whose files are exactly these, sorted (whatever folders they listed).
    pub sources: Vec<PeerId>,
    /// Peers whose answer was unusable or outvoted, with why.
    pub rejected: Vec<(PeerId, String)>,
}

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

/// The folder list named most, on a tie the longest, then the first in order (every
/// voter's choice is the same whatever order the answers came in).
fn most_named<'a>(lists: impl Iterator<Item = &'a Vec<RelPath>>) -> Vec<RelPath> {
    let mut count: BTreeMap<&Vec<RelPath>, usize> = BTreeMap::new();
    for l in lists {
        *count.entry(l).or_default() += 1;
    }
    count
        .into_iter()
        .max_by(|(a, n), (b, m)| n.cmp(m).then(a.len().cmp(&b.len())).then(b.cmp(a)))
        .map(|(l, _)| l.clone())
        .unwrap_or_default()
}

/// "No usable metadata", with every refused answer's reason.
fn no_metadata(game: &GameId, rejected: &[(PeerId, String)]) -> PeerError {
    let why = if rejected.is_empty() {
        String::new()
    } else {
        let each: Vec<String> = rejected
            .iter()
            .map(|(p, why)| format!("{}: {why}", p.short()))
            .collect();
        format!(" ({})", each.join("; "))
    };
    PeerError::NoMetadata {
        game: game.clone(),
        why,
    }
}

/// The manifest vote of one download: answers come in one by one; [`ManifestVote::settled`]
/// says when the ones still missing can no longer change the outcome, and
/// [`ManifestVote::choose`] picks the files with a strict plurality. Invalid manifests
/// do not vote.
///
/// The files decide, not the empty folders: sources that send the same bytes are sources
/// whatever folders they list (a copy made before protocol 13, or by a tool that drops
/// empty folders, has none; a tie with the original would fail the download). Among the
/// chosen files' voters, the folder list named most wins, on a tie the longer one (a
/// missing folder may break a game, an extra empty one does not).
#[derive(Debug, Default)]
pub struct ManifestVote {
    /// Each list of files voted for, with its voters and the folders each listed.
    groups: BTreeMap<Vec<FileManifest>, Vec<(PeerId, Vec<RelPath>)>>,
    rejected: Vec<(PeerId, String)>,
}

impl ManifestVote {
    /// Counts one source's answer.
    pub fn add(&mut self, peer: PeerId, mut manifest: Manifest) {
        manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
        manifest.folders.sort();
        // Modes as they travel (`file_mode`: a copy never gets setuid, setgid or sticky
        // bits, and always owner read): a source that advertises others (an older build)
        // votes with those that do not.
        for f in &mut manifest.files {
            f.mode = lanspread_proto::file_mode(f.mode);
        }
        match check_manifest(&manifest) {
            Ok(()) => self
                .groups
                .entry(manifest.files)
                .or_default()
                .push((peer, manifest.folders)),
            Err(e) => self.rejected.push((peer, e.to_string())),
        }
    }

    /// The sources whose answer was refused or unusable so far, with why.
    pub fn rejected(&self) -> &[(PeerId, String)] {
        &self.rejected
    }

    /// Records a source that sent no manifest (refused, failed, timed out) and why, so a
    /// download that ends with no usable metadata says each source's reason.
    pub fn no_answer(&mut self, peer: PeerId, why: String) {
        self.rejected.push((peer, why));
    }

    /// Whether the leading manifest keeps a strict plurality even if all `outstanding`
    /// sources still to answer vote for the runner-up (so they cannot change the result).
    pub fn settled(&self, outstanding: usize) -> bool {
        let mut counts: Vec<usize> = self.groups.values().map(Vec::len).collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let lead = counts.first().copied().unwrap_or(0);
        let second = counts.get(1).copied().unwrap_or(0);
        lead > second + outstanding
    }

    /// Picks the files with a strict plurality, and their voters' folder list named
    /// most. A tie for the top spot fails.
    pub fn choose(self, game: &GameId) -> Result<Chosen, PeerError> {
        let ManifestVote {
            groups,
            mut rejected,
        } = self;
        let voters: usize = groups.values().map(Vec::len).sum();
        let top = groups
            .values()
            .map(Vec::len)
            .max()
            .ok_or_else(|| no_metadata(game, &rejected))?;
        let leaders = groups.values().filter(|v| v.len() == top).count();
        if leaders > 1 {
            return Err(PeerError::MetadataConflict {
                game: game.clone(),
                groups: groups.len(),
                top,
                voters,
            });
        }
        let mut chosen = None;
        for (files, voters) in groups {
            if voters.len() == top {
                chosen = Some((files, voters));
            } else {
                rejected.extend(
                    voters
                        .into_iter()
                        .map(|(p, _)| (p, "outvoted manifest".to_owned())),
                );
            }
        }
        let (files, voters) = chosen.ok_or_else(|| no_metadata(game, &[]))?;
        let folders = most_named(voters.iter().map(|(_, f)| f));
        let mut sources: Vec<PeerId> = voters.into_iter().map(|(p, _)| p).collect();
        sources.sort();
        Ok(Chosen {
            files,
            folders,
            sources,
            rejected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::pid;
    use lanspread_catalog::RelPath;

    fn f(path: &str, size: u64, seed: u8) -> FileManifest {
        let pieces = (0..lanspread_catalog::piece_count(size))
            .map(|i| [seed.wrapping_add(i as u8); 32])
            .collect();
        FileManifest::from_pieces(RelPath::new(path).unwrap(), size, 0o644, pieces)
    }

    fn game(eti: u64, seed: u8) -> Vec<FileManifest> {
        vec![f("version.ini", 9, 1), f("g.eti", eti, seed)]
    }

    fn m(files: Vec<FileManifest>) -> Manifest {
        Manifest {
            files,
            folders: vec![],
        }
    }

    fn dirs(files: Vec<FileManifest>, folders: &[&str]) -> Manifest {
        Manifest {
            files,
            folders: folders.iter().map(|d| RelPath::new(d).unwrap()).collect(),
        }
    }

    /// Every answer at once.
    fn choose_manifest(
        game: &GameId,
        answers: Vec<(PeerId, Vec<FileManifest>)>,
    ) -> Result<Chosen, PeerError> {
        let mut vote = ManifestVote::default();
        for (peer, files) in answers {
            vote.add(peer, m(files));
        }
        vote.choose(game)
    }

    fn id() -> GameId {
        GameId::new("ggoo").unwrap()
    }

    #[test]
    fn agreement_and_majority() {
        let c =
            choose_manifest(&id(), vec![(pid(2), game(100, 7)), (pid(1), game(100, 7))]).unwrap();
        assert_eq!(c.sources, [pid(1), pid(2)]);
        assert_eq!(c.files[0].path.as_str(), "g.eti", "sorted by path");
        let c = choose_manifest(
            &id(),
            vec![
                (pid(1), game(100, 7)),
                (pid(2), game(100, 7)),
                (pid(3), game(101, 7)),
            ],
        )
        .unwrap();
        assert_eq!(c.sources, [pid(1), pid(2)]);
        assert_eq!(c.rejected, [(pid(3), "outvoted manifest".to_owned())]);
    }

    #[test]
    fn a_vote_is_settled_once_the_missing_answers_cannot_change_it() {
        let mut v = ManifestVote::default();
        assert!(!v.settled(0), "no answer yet");
        v.add(pid(1), m(game(100, 7)));
        assert!(v.settled(0), "everyone answered");
        assert!(!v.settled(1), "one more could tie");
        v.add(pid(2), m(game(100, 7)));
        assert!(v.settled(1), "2 against at most 1");
        assert!(!v.settled(2), "2 against at most 2");
        v.add(pid(3), m(game(200, 7)));
        assert!(!v.settled(1), "2 against at most 2");
        assert!(v.settled(0));
        // Invalid manifests do not count for the runner-up either.
        let mut w = ManifestVote::default();
        w.add(pid(1), m(game(100, 7)));
        w.add(pid(2), m(game(100, 7)));
        w.add(pid(3), m(vec![f("g.eti", 100, 7)]));
        assert!(w.settled(1));
        let c = w.choose(&id()).unwrap();
        assert_eq!(c.sources, [pid(1), pid(2)]);
        assert_eq!(c.rejected.len(), 1);
    }

    #[test]
    fn special_mode_bits_do_not_split_a_vote() {
        // An older source advertising a setuid bit and a newer one without it describe the
        // same files: one group, and the chosen manifest carries permission bits only.
        let mut suid = game(100, 7);
        for f in &mut suid {
            f.mode |= 0o4000;
        }
        let c = choose_manifest(&id(), vec![(pid(1), suid), (pid(2), game(100, 7))]).unwrap();
        assert_eq!(c.sources, [pid(1), pid(2)]);
        assert!(c.files.iter().all(|f| f.mode & !0o777 == 0));
    }

    #[test]
    fn s8_s17_tie_fails() {
        let err = choose_manifest(&id(), vec![(pid(1), game(100, 7)), (pid(2), game(200, 7))])
            .unwrap_err();
        assert!(
            matches!(
                err,
                PeerError::MetadataConflict {
                    groups: 2,
                    top: 1,
                    voters: 2,
                    ..
                }
            ),
            "{err}"
        );
        // Same sizes, different bytes: still a conflict.
        assert!(
            choose_manifest(&id(), vec![(pid(1), game(100, 7)), (pid(2), game(100, 8))]).is_err()
        );
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
    fn empty_folders_vote_and_must_be_empty() {
        let ok = dirs(game(100, 7), &["saves", "a/b/c"]);
        assert!(check_manifest(&ok).is_ok());
        // Names that sort between a folder and what would be under it ('-' and '.' come
        // before '/') are no content of it.
        let beside = dirs(
            vec![f("version.ini", 9, 1), f("a-b.eti", 1, 1), f("a.c/d", 1, 1)],
            &["a", "a-b2", "a.c/e"],
        );
        assert!(check_manifest(&beside).is_ok());
        // The files decide who is a source: one without the folders (a copy made before
        // protocol 13) sends the same bytes. The folders named most win; the order a
        // source lists them in is no difference.
        let folders_of = |c: &Chosen| -> Vec<String> {
            c.folders.iter().map(|d| d.as_str().to_owned()).collect()
        };
        let mut vote = ManifestVote::default();
        vote.add(pid(1), dirs(game(100, 7), &["saves", "a/b/c"]));
        vote.add(pid(2), dirs(game(100, 7), &["a/b/c", "saves"]));
        vote.add(pid(3), m(game(100, 7)));
        assert!(vote.settled(0));
        let c = vote.choose(&id()).unwrap();
        assert_eq!(c.sources, [pid(1), pid(2), pid(3)]);
        assert_eq!(folders_of(&c), ["a/b/c", "saves"]);
        assert!(c.rejected.is_empty());
        // Outnumbered, the folders go (as every copy had it before protocol 13); on a
        // tie the longer list wins, whatever order the answers came in.
        let mut vote = ManifestVote::default();
        vote.add(pid(1), dirs(game(100, 7), &["saves"]));
        vote.add(pid(2), m(game(100, 7)));
        vote.add(pid(3), m(game(100, 7)));
        assert!(vote.choose(&id()).unwrap().folders.is_empty());
        for order in [[1, 2], [2, 1]] {
            let mut vote = ManifestVote::default();
            for p in order {
                let listed: &[&str] = if p == 1 { &["saves"] } else { &[] };
                vote.add(pid(p), dirs(game(100, 7), listed));
            }
            let c = vote.choose(&id()).unwrap();
            assert_eq!((c.sources.len(), folders_of(&c)), (2, vec!["saves".into()]));
        }
        let mut vote = ManifestVote::default();
        vote.add(pid(1), dirs(game(100, 7), &["b"]));
        vote.add(pid(2), dirs(game(100, 7), &["a"]));
        assert_eq!(folders_of(&vote.choose(&id()).unwrap()), ["a"]);
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
