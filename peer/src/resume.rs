//! Resume journal: the text a download appends to `<root>/.lanspread/partial` as chunks
//! are verified, and the decision of what an earlier attempt left that may be reused.
//! Sans-IO: the daemon reads and appends the file; this module only builds and judges text.
//!
//! Format: a header line `lanspread-partial 2 <version> <manifest digest hex>`, then one
//! line per verified chunk: its index in the planner's chunk list; or `<index>+<bytes>`
//! for a chunk whose first `bytes` (whole 1 MiB pieces) were verified and written before
//! its source went (the rest is fetched alone). A torn last line (a crash mid-append) is
//! ignored. Format 1 (protocol 7's chunk hashes) is discarded.

use std::collections::{BTreeMap, BTreeSet};

use lanspread_catalog::{ChunkHash, Version, PIECE_SIZE};

const MAGIC: &str = "lanspread-partial";
const FORMAT: &str = "2";

/// The header line (with its newline) for a download of `version` with this manifest.
pub fn journal_header(version: Version, digest: &ChunkHash) -> String {
    format!("{MAGIC} {FORMAT} {version} {}\n", hex::encode(digest))
}

/// The line recording a verified chunk.
pub fn journal_entry(chunk: usize) -> String {
    format!("{chunk}\n")
}

/// The line recording that the first `bytes` of a chunk are verified.
pub fn journal_kept(chunk: usize, bytes: u64) -> String {
    format!("{chunk}+{bytes}\n")
}

/// What an earlier attempt verified: whole chunks, and the first bytes of others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Whole chunks.
    pub chunks: BTreeSet<usize>,
    /// Chunk → bytes verified from its start (whole pieces, less than the chunk; the
    /// latest line wins; none for a chunk in `chunks`).
    pub kept: BTreeMap<usize, u64>,
}

/// What to do with an existing journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeDecision {
    /// No journal: start fresh.
    Fresh,
    /// Same version and manifest: these chunks (and first pieces) were verified before
    /// (the caller still re-checks their bytes, since the data may not have reached the
    /// disk).
    Resume(Verified),
    /// Another version or manifest, or an unreadable header: start over.
    Discard(String),
}

/// Judges a journal's text against the download about to start, whose chunks are
/// `(offset, len)` in the planner's order.
pub fn judge_journal(
    text: Option<&str>,
    version: Version,
    digest: &ChunkHash,
    chunks: &[(u64, u64)],
) -> ResumeDecision {
    let Some(text) = text else {
        return ResumeDecision::Fresh;
    };
    let mut lines = text.split_inclusive('\n');
    let header = lines.next().unwrap_or("");
    if header != journal_header(version, digest) {
        let old = header.trim_end();
        return ResumeDecision::Discard(if old.starts_with(MAGIC) {
            format!("partial download of another version or manifest ({old})")
        } else {
            "unreadable partial-download journal".into()
        });
    }
    // Digits only (`parse` also takes a leading `+`).
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let mut done = Verified::default();
    // A line without its newline was torn by a crash.
    for line in lines.filter_map(|l| l.strip_suffix('\n')) {
        match line.split_once('+') {
            None => {
                let c = number(line).and_then(|c| usize::try_from(c).ok());
                if let Some(c) = c.filter(|&c| c < chunks.len()) {
                    done.chunks.insert(c);
                }
            }
            Some((c, bytes)) => {
                let (Some(c), Some(bytes)) = (number(c), number(bytes)) else {
                    continue;
                };
                let Ok(c) = usize::try_from(c) else {
                    continue;
                };
                let Some(&(_, len)) = chunks.get(c) else {
                    continue;
                };
                if bytes > 0 && bytes < len && bytes.is_multiple_of(PIECE_SIZE) {
                    done.kept.insert(c, bytes);
                }
            }
        }
    }
    done.kept.retain(|c, _| !done.chunks.contains(c));
    ResumeDecision::Resume(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    /// Four chunks: three whole ones of a file and a short last one.
    fn four() -> Vec<(u64, u64)> {
        let c = lanspread_catalog::CHUNK_SIZE;
        vec![(0, c), (c, c), (2 * c, c), (3 * c, 5)]
    }

    fn resume(chunks: &[usize], kept: &[(usize, u64)]) -> ResumeDecision {
        ResumeDecision::Resume(Verified {
            chunks: chunks.iter().copied().collect(),
            kept: kept.iter().copied().collect(),
        })
    }

    #[test]
    fn the_first_pieces_of_a_chunk_are_kept_until_it_is_whole() {
        let d = [9u8; 32];
        let m = PIECE_SIZE;
        let mut text = journal_header(v("20250101"), &d);
        for line in [
            journal_kept(1, 3 * m),
            journal_kept(1, 5 * m), // the latest wins
            journal_kept(2, 2 * m),
            journal_entry(2),        // then whole
            journal_kept(0, m + 1),  // not whole pieces
            journal_kept(3, m),      // the whole (short) chunk or more
            journal_kept(0, 32 * m), // the whole chunk
            journal_kept(9, m),      // no such chunk
            "0+x\n".into(),
            "+3\n".into(),
            format!("1++{}\n", 9 * m),
            journal_kept(0, 0),
        ] {
            text.push_str(&line);
        }
        assert_eq!(
            judge_journal(Some(&text), v("20250101"), &d, &four()),
            resume(&[2], &[(1, 5 * m)])
        );
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let d = [9u8; 32];
        let mut text = journal_header(v("20250101"), &d);
        for c in [0, 3, 2, 3] {
            text.push_str(&journal_entry(c));
        }
        text.push('1'); // torn
        assert_eq!(
            judge_journal(Some(&text), v("20250101"), &d, &four()),
            resume(&[0, 2, 3], &[])
        );
    }

    #[test]
    fn other_version_or_manifest_is_discarded() {
        let d = [9u8; 32];
        let text = journal_header(v("20250101"), &d) + "0\n";
        assert!(matches!(
            judge_journal(Some(&text), v("20250102"), &d, &four()),
            ResumeDecision::Discard(_)
        ));
        assert!(matches!(
            judge_journal(Some(&text), v("20250101"), &[8u8; 32], &four()),
            ResumeDecision::Discard(_)
        ));
        assert!(matches!(
            judge_journal(Some("garbage\n0\n"), v("20250101"), &d, &four()),
            ResumeDecision::Discard(_)
        ));
        // Format 1: chunk hashes over bytes, not pieces.
        let old = format!("lanspread-partial 1 20250101 {}\n0\n", hex::encode(d));
        assert!(matches!(
            judge_journal(Some(&old), v("20250101"), &d, &four()),
            ResumeDecision::Discard(_)
        ));
        // A torn header is unreadable, not a resume.
        let torn = journal_header(v("20250101"), &d);
        assert!(matches!(
            judge_journal(Some(torn.trim_end()), v("20250101"), &d, &four()),
            ResumeDecision::Discard(_)
        ));
        assert_eq!(
            judge_journal(None, v("20250101"), &d, &four()),
            ResumeDecision::Fresh
        );
    }

    #[test]
    fn out_of_range_and_junk_entries_are_ignored() {
        let d = [1u8; 32];
        let text = journal_header(v("20250101"), &d) + "7\n-1\nx\n1\n";
        assert_eq!(
            judge_journal(Some(&text), v("20250101"), &d, &four()),
            resume(&[1], &[])
        );
    }
}
