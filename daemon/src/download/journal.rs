//! The resume journal on disk, `<root>/.lanspread/partial`: one line per chunk verified
//! by this download (see `lanspread_peer::judge_journal` for the format and decisions).
//!
//! A recorded chunk is re-hashed from the file before it is trusted again, so a journal
//! line that reached the disk before its data (power loss) costs a refetch, never a
//! wrong byte. Appends are not fsynced for the same reason: after SIGKILL the page cache
//! still holds them; after a power loss a lost line is a chunk fetched again.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use lanspread_catalog::{ChunkHash, Version};
use lanspread_peer::{journal_entry, journal_header, judge_journal, ChunkSpec, ResumeDecision};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use lanspread_control::Failure;

/// Journal path under a game root.
pub const JOURNAL: &str = ".lanspread/partial";
/// Where the journal is rewritten before it is renamed into place.
pub const JOURNAL_TMP: &str = ".lanspread/partial.tmp";

/// An open journal that verified chunks are appended to.
pub struct Journal {
    file: fs::File,
    path: PathBuf,
}

impl Journal {
    /// Records a verified chunk. A failure only costs a refetch after a crash, so it is
    /// logged, not fatal.
    pub fn record(&mut self, chunk: usize) {
        if let Err(e) = self.file.write_all(journal_entry(chunk).as_bytes()) {
            warn!(path = %self.path.display(), "cannot record chunk {chunk}: {e}");
        }
    }
}

/// Opens the journal for a download: returns the chunks an earlier attempt of the same
/// version and manifest verified whose bytes still match, and the journal (rewritten to
/// hold exactly those). Another version's journal is discarded.
pub async fn open(
    root: &Path,
    dests: &[PathBuf],
    chunks: &[ChunkSpec],
    version: Version,
    digest: ChunkHash,
) -> Result<(Journal, Vec<usize>), Failure> {
    let (root, dests, chunks) = (root.to_path_buf(), dests.to_vec(), chunks.to_vec());
    tokio::task::spawn_blocking(move || open_blocking(&root, &dests, &chunks, version, &digest))
        .await
        .map_err(Failure::internal)?
}

fn open_blocking(
    root: &Path,
    dests: &[PathBuf],
    chunks: &[ChunkSpec],
    version: Version,
    digest: &ChunkHash,
) -> Result<(Journal, Vec<usize>), Failure> {
    let path = root.join(JOURNAL);
    let text = match fs::read(&path) {
        Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Failure::io(path.display(), &e)),
    };
    let claimed = match judge_journal(text.as_deref(), version, digest, chunks.len()) {
        ResumeDecision::Fresh => Default::default(),
        ResumeDecision::Discard(why) => {
            info!(root = %root.display(), "starting over: {why}");
            Default::default()
        }
        ResumeDecision::Resume(set) => set,
    };
    let kept: Vec<usize> = claimed
        .into_iter()
        .filter(|&c| {
            let spec = &chunks[c];
            dests
                .get(spec.file)
                .is_some_and(|d| matches_on_disk(d, spec).unwrap_or(false))
        })
        .collect();
    // Rewrite it whole (temp + rename): header and the chunks still good.
    let mut text = journal_header(version, digest);
    for &c in &kept {
        text.push_str(&journal_entry(c));
    }
    let tmp = root.join(JOURNAL_TMP);
    fs::write(&tmp, text)
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(|e| Failure::io(path.display(), &e))?;
    let file = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| Failure::io(path.display(), &e))?;
    Ok((Journal { file, path }, kept))
}

/// Whether the bytes of `spec` in `file` hash to the expected value.
fn matches_on_disk(file: &Path, spec: &ChunkSpec) -> io::Result<bool> {
    let mut f = fs::File::open(file)?;
    if f.metadata()?.len() < spec.offset + spec.len {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(spec.offset))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = spec.len;
    while left > 0 {
        let n = f.read(&mut buf[..left.min(1 << 20) as usize])?;
        if n == 0 {
            return Ok(false);
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(<[u8; 32]>::from(h.finalize()) == spec.hash)
}

/// Removes the journal once the download is committed.
pub async fn remove(root: &Path) {
    let path = root.join(JOURNAL);
    let _ = tokio::task::spawn_blocking(move || fs::remove_file(path)).await;
}
