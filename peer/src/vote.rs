//! The manifest vote of one download: among the sources of the newest version, the
//! files with a strict plurality of votes win and only their voters become sources (S7,
//! S8, S17), with the empty folders their voters name most.
//!
//! What it holds is bounded: answers are tallied by digest, and past a byte budget the
//! bodies (file lists, folder lists) that cannot win without another vote are let go.
//! A source that sends a 16 MiB manifest of its own costs the vote 16 MiB only while that
//! manifest can still win; a hundred of them cost the budget, not 1.6 GiB.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use lanspread_catalog::{ChunkHash, FileManifest, GameId, Manifest, RelPath};
use lanspread_proto::{folders_digest, manifest_digest, PeerId};

use tracing::warn;

use crate::validate::check_manifest;
use crate::PeerError;

/// Bytes of manifests (file and folder lists, as held in memory) one vote keeps past
/// what it must: a real game's manifest is a few MiB (32 bytes per MiB of data and a
/// path per file), so every honest answer fits many times over.
pub const VOTE_BUDGET: usize = 64 << 20;

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

/// The bytes a file list holds in memory, about.
fn files_weight(files: &[FileManifest]) -> usize {
    files
        .iter()
        .map(|f| {
            std::mem::size_of::<FileManifest>()
                + f.path.as_str().len()
                + 32 * (f.pieces.len() + f.chunks.len())
        })
        .sum()
}

/// The bytes a folder list holds in memory, about.
fn folders_weight(folders: &[RelPath]) -> usize {
    folders
        .iter()
        .map(|d| std::mem::size_of::<RelPath>() + d.as_str().len())
        .sum()
}

/// One list of files voted for.
#[derive(Debug)]
struct Group {
    /// The files, until let go (see [`ManifestVote`]).
    files: Option<Vec<FileManifest>>,
    weight: usize,
    /// Each voter, with the digest of the folders it listed.
    voters: Vec<(PeerId, ChunkHash)>,
}

/// One list of empty folders named by some voter.
#[derive(Debug)]
struct Folders {
    body: Option<Vec<RelPath>>,
    len: usize,
    weight: usize,
}

/// Answers come in one by one; [`ManifestVote::settled`] says when the ones still missing
/// can no longer change the outcome, and [`ManifestVote::choose`] picks the files with a
/// strict plurality. Invalid manifests do not vote.
///
/// The files decide, not the empty folders: sources that send the same bytes are sources
/// whatever folders they list (a copy made before protocol 13, or by a tool that drops
/// empty folders, has none; a tie with the original would fail the download). Among the
/// chosen files' voters, the folder list named most wins, on a tie the longer one (a
/// missing folder may break a game, an extra empty one does not), then the one of the
/// smaller digest: the same choice whatever order the answers came in.
///
/// **Memory.** Lists are tallied by digest. While the bodies held pass the budget, one
/// is let go, never the leading files (most votes, then the larger digest) nor the
/// leading folder list of those. Files let go can win only with another vote, which
/// brings them back: votes only grow, so a list that trailed another when it was let
/// go must pass it, and the list that wins leads from its last vote on. The folder list
/// of the winner is the leading one still held — the one named most unless lists of the
/// winner's voters were let go while it trailed (a vote flooded past the budget).
#[derive(Debug)]
pub struct ManifestVote {
    groups: BTreeMap<ChunkHash, Group>,
    folders: BTreeMap<ChunkHash, Folders>,
    rejected: Vec<(PeerId, String)>,
    /// Bytes of bodies held now.
    held: usize,
    budget: usize,
}

impl Default for ManifestVote {
    fn default() -> Self {
        Self::with_budget(VOTE_BUDGET)
    }
}

impl ManifestVote {
    /// A vote that keeps about `budget` bytes of manifests besides the leading ones.
    pub fn with_budget(budget: usize) -> Self {
        Self {
            groups: BTreeMap::new(),
            folders: BTreeMap::new(),
            rejected: Vec::new(),
            held: 0,
            budget,
        }
    }

    /// Counts one source's answer. One answer per source: the engine takes only the
    /// answer of a source it waits for (`Engine::on_manifest`).
    pub fn add(&mut self, peer: PeerId, mut manifest: Manifest) {
        manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
        manifest.folders.sort();
        // Modes as they travel (`file_mode`: a copy never gets setuid, setgid or sticky
        // bits, and always owner read): a source that advertises others (an older build)
        // votes with those that do not.
        for f in &mut manifest.files {
            f.mode = lanspread_proto::file_mode(f.mode);
        }
        if let Err(e) = check_manifest(&manifest) {
            self.rejected.push((peer, e.to_string()));
            return;
        }
        let Manifest { files, folders } = manifest;
        let dirs = folders_digest(&folders);
        let list = self.folders.entry(dirs).or_insert(Folders {
            body: None,
            len: folders.len(),
            weight: folders_weight(&folders),
        });
        if list.body.is_none() {
            self.held += list.weight;
            list.body = Some(folders);
        }
        let group = self.groups.entry(manifest_digest(&files)).or_insert(Group {
            files: None,
            weight: files_weight(&files),
            voters: Vec::new(),
        });
        if group.files.is_none() {
            self.held += group.weight;
            group.files = Some(files);
        }
        group.voters.push((peer, dirs));
        self.keep_to_budget();
    }

    /// Lets bodies go, those named least first, while more than the budget is held.
    fn keep_to_budget(&mut self) {
        if self.held <= self.budget {
            return;
        }
        let lead = self.leader();
        let lead_folders = lead.and_then(|g| self.leading_folders(g, |l| l.body.is_some()));
        // (votes, weight, which): bodies that may go, those named least and heaviest first.
        let mut named: BTreeMap<ChunkHash, usize> = BTreeMap::new();
        for g in self.groups.values() {
            for (_, d) in &g.voters {
                *named.entry(*d).or_default() += 1;
            }
        }
        let mut candidates: Vec<(usize, Reverse<usize>, bool, ChunkHash)> = Vec::new();
        for (digest, g) in &self.groups {
            if g.files.is_some() && Some(*digest) != lead {
                candidates.push((g.voters.len(), Reverse(g.weight), true, *digest));
            }
        }
        for (digest, l) in &self.folders {
            if l.body.is_some() && Some(*digest) != lead_folders {
                let votes = named.get(digest).copied().unwrap_or(0);
                candidates.push((votes, Reverse(l.weight), false, *digest));
            }
        }
        candidates.sort_unstable();
        for (_, Reverse(weight), files, digest) in candidates {
            if self.held <= self.budget {
                break;
            }
            let gone = if files {
                self.groups
                    .get_mut(&digest)
                    .and_then(|g| g.files.take())
                    .is_some()
            } else {
                self.folders
                    .get_mut(&digest)
                    .and_then(|l| l.body.take())
                    .is_some()
            };
            if gone {
                self.held -= weight;
            }
        }
    }

    /// The files with the most votes, on a tie the larger digest.
    fn leader(&self) -> Option<ChunkHash> {
        self.groups
            .iter()
            .max_by_key(|(digest, g)| (g.voters.len(), **digest))
            .map(|(digest, _)| *digest)
    }

    /// The folder list named most among the voters of `group`, on a tie the longest,
    /// then the smaller digest, among those `usable`.
    fn leading_folders(
        &self,
        group: ChunkHash,
        usable: impl Fn(&Folders) -> bool,
    ) -> Option<ChunkHash> {
        let mut count: BTreeMap<ChunkHash, usize> = BTreeMap::new();
        for (_, d) in &self.groups.get(&group)?.voters {
            *count.entry(*d).or_default() += 1;
        }
        count
            .into_iter()
            .filter_map(|(d, n)| {
                self.folders
                    .get(&d)
                    .filter(|l| usable(l))
                    .map(|l| (d, n, l.len))
            })
            .max_by_key(|&(d, n, len)| (n, len, Reverse(d)))
            .map(|(d, _, _)| d)
    }

    /// Bytes of manifests held now.
    pub fn held(&self) -> usize {
        self.held
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
        let mut counts: Vec<usize> = self.groups.values().map(|g| g.voters.len()).collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let lead = counts.first().copied().unwrap_or(0);
        let second = counts.get(1).copied().unwrap_or(0);
        lead > second + outstanding
    }

    /// Picks the files with a strict plurality, and their voters' folder list named
    /// most. A tie for the top spot fails.
    pub fn choose(mut self, game: &GameId) -> Result<Chosen, PeerError> {
        let voters: usize = self.groups.values().map(|g| g.voters.len()).sum();
        let top = self
            .groups
            .values()
            .map(|g| g.voters.len())
            .max()
            .ok_or_else(|| no_metadata(game, &self.rejected))?;
        let leaders = self
            .groups
            .values()
            .filter(|g| g.voters.len() == top)
            .count();
        if leaders > 1 {
            return Err(PeerError::MetadataConflict {
                game: game.clone(),
                groups: self.groups.len(),
                top,
                voters,
            });
        }
        let lead = self.leader().ok_or_else(|| no_metadata(game, &[]))?;
        let held = self.leading_folders(lead, |l| l.body.is_some());
        let named = self.leading_folders(lead, |_| true);
        if held != named {
            warn!(
                "{game}: the empty folders its sources name most were let go in a vote \
                 flooded past its budget; the folders named most of those kept are made"
            );
        }
        let folders = held
            .and_then(|d| self.folders.remove(&d))
            .and_then(|l| l.body)
            .unwrap_or_default();
        let mut rejected = std::mem::take(&mut self.rejected);
        let mut chosen = None;
        for (digest, g) in std::mem::take(&mut self.groups) {
            if digest == lead {
                chosen = Some(g);
            } else {
                rejected.extend(
                    g.voters
                        .into_iter()
                        .map(|(p, _)| (p, "outvoted manifest".to_owned())),
                );
            }
        }
        // The leader's files are always held (see the type's docs); were they not, the
        // download fails with that said rather than with files it cannot check.
        let Some(Group {
            files: Some(files),
            voters,
            ..
        }) = chosen
        else {
            return Err(PeerError::NoMetadata {
                game: game.clone(),
                why: " (the chosen manifest was not kept)".into(),
            });
        };
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
#[path = "vote_tests.rs"]
mod tests;
