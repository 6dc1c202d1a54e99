//! Resume journal: the text a download appends to `<root>/.lanspread/partial` as chunks
//! are verified, and the decision of what an earlier attempt left that may be reused.
//! Sans-IO: the daemon reads and appends the file; this module only builds and judges text.
//!
//! Format: a header line `lanspread-partial 1 <version> <manifest digest hex>`, then one
//! line per verified chunk: its index in the planner's chunk list. A torn last line (a
//! crash mid-append) is ignored.

use std::collections::BTreeSet;

use lanspread_catalog::{ChunkHash, Version};

const MAGIC: &str = "lanspread-partial";
const FORMAT: &str = "1";

/// The header line (with its newline) for a download of `version` with this manifest.
pub fn journal_header(version: Version, digest: &ChunkHash) -> String {
    format!("{MAGIC} {FORMAT} {version} {}\n", hex::encode(digest))
}

/// The line recording a verified chunk.
pub fn journal_entry(chunk: usize) -> String {
    format!("{chunk}\n")
}

/// What to do with an existing journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeDecision {
    /// No journal: start fresh.
    Fresh,
    /// Same version and manifest: these chunks were verified before (the caller still
    /// re-checks their bytes, since the data may not have reached the disk).
    Resume(BTreeSet<usize>),
    /// Another version or manifest, or an unreadable header: start over.
    Discard(String),
}

/// Judges a journal's text against the download about to start.
pub fn judge_journal(
    text: Option<&str>,
    version: Version,
    digest: &ChunkHash,
    chunks: usize,
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
    let done = lines
        // A line without its newline was torn by a crash.
        .filter_map(|l| l.strip_suffix('\n'))
        .filter_map(|l| l.parse::<usize>().ok())
        .filter(|&c| c < chunks)
        .collect();
    ResumeDecision::Resume(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
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
            judge_journal(Some(&text), v("20250101"), &d, 4),
            ResumeDecision::Resume([0, 2, 3].into())
        );
    }

    #[test]
    fn other_version_or_manifest_is_discarded() {
        let d = [9u8; 32];
        let text = journal_header(v("20250101"), &d) + "0\n";
        assert!(matches!(
            judge_journal(Some(&text), v("20250102"), &d, 4),
            ResumeDecision::Discard(_)
        ));
        assert!(matches!(
            judge_journal(Some(&text), v("20250101"), &[8u8; 32], 4),
            ResumeDecision::Discard(_)
        ));
        assert!(matches!(
            judge_journal(Some("garbage\n0\n"), v("20250101"), &d, 4),
            ResumeDecision::Discard(_)
        ));
        // A torn header is unreadable, not a resume.
        let torn = journal_header(v("20250101"), &d);
        assert!(matches!(
            judge_journal(Some(torn.trim_end()), v("20250101"), &d, 4),
            ResumeDecision::Discard(_)
        ));
        assert_eq!(
            judge_journal(None, v("20250101"), &d, 4),
            ResumeDecision::Fresh
        );
    }

    #[test]
    fn out_of_range_and_junk_entries_are_ignored() {
        let d = [1u8; 32];
        let text = journal_header(v("20250101"), &d) + "7\n-1\nx\n1\n";
        assert_eq!(
            judge_journal(Some(&text), v("20250101"), &d, 4),
            ResumeDecision::Resume([1].into())
        );
    }
}
