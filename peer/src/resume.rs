//! Resume journal: the text a download appends to `<root>/.lanspread/partial` as chunks
//! are verified, and the decision of what an earlier attempt left that may be reused.
//! Sans-IO: the daemon reads and appends the file; this module only builds and judges text.
//!
//! Format: a header line `lanspread-partial 3 <version> <manifest digest hex>`, then one
//! line per verified unit: its index in the planner's unit list; or `<index>+<bytes>` for
//! a unit whose first `bytes` (whole 1 MiB pieces) were verified and written before its
//! source went (the rest is fetched alone). A torn last line (a crash mid-append) is
//! ignored. Format 2 (the same lines in 32 MiB chunks, before units) is read as the
//! units of those chunks; format 1 (protocol 7's chunk hashes) is discarded.

use std::collections::{BTreeMap, BTreeSet};

use lanspread_catalog::{ChunkHash, Version, CHUNK_SIZE, PIECE_SIZE};

const MAGIC: &str = "lanspread-partial";
const FORMAT: &str = "3";
/// The format whose lines count whole chunks.
const CHUNK_FORMAT: &str = "2";

/// The header line (with its newline) for a download of `version` with this manifest.
pub fn journal_header(version: Version, digest: &ChunkHash) -> String {
    header(FORMAT, version, digest)
}

fn header(format: &str, version: Version, digest: &ChunkHash) -> String {
    format!("{MAGIC} {format} {version} {}\n", hex::encode(digest))
}

/// The line recording a verified unit.
pub fn journal_entry(unit: usize) -> String {
    format!("{unit}\n")
}

/// The line recording that the first `bytes` of a unit are verified.
pub fn journal_kept(unit: usize, bytes: u64) -> String {
    format!("{unit}+{bytes}\n")
}

/// What an earlier attempt verified: whole units, and the first bytes of others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Whole units.
    pub chunks: BTreeSet<usize>,
    /// Unit → bytes verified from its start (whole pieces, less than the unit; the
    /// latest line wins; none for a unit in `chunks`).
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

/// Judges a journal's text against the download about to start, whose units are
/// `(file, offset, len)` in the planner's order (a chunk's units consecutive).
pub fn judge_journal(
    text: Option<&str>,
    version: Version,
    digest: &ChunkHash,
    units: &[(usize, u64, u64)],
) -> ResumeDecision {
    let Some(text) = text else {
        return ResumeDecision::Fresh;
    };
    let mut lines = text.split_inclusive('\n');
    let head = lines.next().unwrap_or("");
    let mut done = Verified::default();
    if head == journal_header(version, digest) {
        for (u, bytes) in entries(lines) {
            let Some(&(_, _, len)) = units.get(u) else {
                continue;
            };
            match bytes {
                None => {
                    done.chunks.insert(u);
                }
                Some(b) if b > 0 && b < len && b.is_multiple_of(PIECE_SIZE) => {
                    done.kept.insert(u, b);
                }
                Some(_) => {}
            }
        }
    } else if head == header(CHUNK_FORMAT, version, digest) {
        let chunks = chunks_of(units);
        for (c, bytes) in entries(lines) {
            let Some(&(first, n, len)) = chunks.get(c) else {
                continue;
            };
            let b = match bytes {
                None => len,
                Some(b) if b > 0 && b < len && b.is_multiple_of(PIECE_SIZE) => b,
                Some(_) => continue,
            };
            // The chunk's units wholly below `b` are whole; the one `b` falls in keeps
            // its first pieces.
            let start = units[first].1;
            for (u, &(_, offset, len)) in units.iter().enumerate().skip(first).take(n) {
                let at = offset - start;
                if at + len <= b {
                    done.chunks.insert(u);
                } else if b > at {
                    done.kept.insert(u, b - at);
                }
            }
        }
    } else {
        let old = head.trim_end();
        return ResumeDecision::Discard(if old.starts_with(MAGIC) {
            format!("partial download of another version or manifest ({old})")
        } else {
            "unreadable partial-download journal".into()
        });
    }
    done.kept.retain(|c, _| !done.chunks.contains(c));
    ResumeDecision::Resume(done)
}

/// The entries of a journal's lines: `(index, None)` for a whole one, `(index,
/// Some(bytes))` for first pieces; a torn line (no newline) and junk are skipped.
fn entries<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(usize, Option<u64>)> {
    // Digits only (`parse` also takes a leading `+`).
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let index = |s: &str| number(s).and_then(|n| usize::try_from(n).ok());
    lines
        .filter_map(|l| l.strip_suffix('\n'))
        .filter_map(|line| match line.split_once('+') {
            None => Some((index(line)?, None)),
            Some((c, bytes)) => Some((index(c)?, Some(number(bytes)?))),
        })
        .collect()
}

/// The 32 MiB chunks of `units`: `(first unit, units, bytes)` each, in order.
fn chunks_of(units: &[(usize, u64, u64)]) -> Vec<(usize, usize, u64)> {
    let mut chunks: Vec<(usize, usize, u64)> = Vec::new();
    let mut at = None;
    for (u, &(file, offset, len)) in units.iter().enumerate() {
        let key = (file, offset / CHUNK_SIZE);
        match chunks.last_mut() {
            Some(c) if at == Some(key) => {
                c.1 += 1;
                c.2 += len;
            }
            _ => chunks.push((u, 1, len)),
        }
        at = Some(key);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    /// Four units of one file: three whole chunks and a short last one.
    fn four() -> Vec<(usize, u64, u64)> {
        let c = CHUNK_SIZE;
        vec![(0, 0, c), (0, c, c), (0, 2 * c, c), (0, 3 * c, 5)]
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

    #[test]
    fn a_journal_of_whole_chunks_is_read_as_their_units() {
        let d = [3u8; 32];
        let m = PIECE_SIZE;
        // File 0: a chunk of four 8 MiB units, then a 9 MiB chunk of two; file 1: 5 bytes.
        let units = [
            (0, 0, 8 * m),
            (0, 8 * m, 8 * m),
            (0, 16 * m, 8 * m),
            (0, 24 * m, 8 * m),
            (0, CHUNK_SIZE, 8 * m),
            (0, CHUNK_SIZE + 8 * m, m),
            (1, 0, 5),
        ];
        let old = |lines: &str| header(CHUNK_FORMAT, v("20250101"), &d) + lines;
        let judge = |text: String| judge_journal(Some(&text), v("20250101"), &d, &units);
        assert_eq!(
            judge(old("0\n2\n1+3145728\n")),
            resume(&[0, 1, 2, 3, 6], &[(4, 3 * m)])
        );
        assert_eq!(
            judge(old("0+20971520\n1+8388608\n9\n2+1\n")),
            resume(&[0, 1, 4], &[(2, 4 * m)])
        );
        // Another version's old journal is still discarded.
        let other = header(CHUNK_FORMAT, v("20250102"), &d) + "0\n";
        assert!(matches!(judge(other), ResumeDecision::Discard(_)));
    }
}
