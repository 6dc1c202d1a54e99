//! The resume journal on disk, `<root>/.lanspread/partial`: one line per chunk verified
//! by this download, and one per chunk whose first pieces were kept when its source went
//! (see `lanspread_peer::judge_journal` for the format and decisions).
//!
//! A recorded chunk or piece is re-hashed from the file, piece by piece, before it is
//! trusted again, so a journal
//! line that reached the disk before its data (power loss) costs a refetch, never a
//! wrong byte. Appends are not fsynced for the same reason: after SIGKILL the page cache
//! still holds them; after a power loss a lost line is a chunk fetched again.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lanspread_catalog::{piece_hash, Access, ChunkHash, GameDir, Version, PIECE_SIZE};
use lanspread_peer::{
    journal_entry, journal_header, journal_kept, judge_journal, ChunkSpec, ResumeDecision, Verified,
};
use tracing::{info, warn};

use lanspread_control::Failure;

/// Journal path under a game root.
pub const JOURNAL: &str = ".lanspread/partial";
/// Where the journal is rewritten before it is renamed into place.
pub const JOURNAL_TMP: &str = ".lanspread/partial.tmp";

/// An open journal that verified chunks are appended to: lines are buffered and written
/// by [`Journal::flush`], which the transfer loop calls before it waits (a run of small
/// files verified at once costs one write, not one each; a crash between loses lines, so
/// chunks are fetched again, never trusted wrongly).
pub struct Journal {
    file: io::BufWriter<fs::File>,
    path: PathBuf,
}

impl Journal {
    /// Records a verified chunk. A failure only costs a refetch after a crash, so it is
    /// logged, not fatal.
    pub fn record(&mut self, chunk: usize) {
        self.append(&journal_entry(chunk));
    }

    /// Records that the first `bytes` of a chunk (whole pieces) are verified and written.
    pub fn record_kept(&mut self, chunk: usize, bytes: u64) {
        self.append(&journal_kept(chunk, bytes));
    }

    fn append(&mut self, line: &str) {
        if let Err(e) = self.file.write_all(line.as_bytes()) {
            warn!(path = %self.path.display(), "cannot record {}: {e}", line.trim_end());
        }
    }

    /// Writes the buffered lines.
    pub fn flush(&mut self) {
        if let Err(e) = self.file.flush() {
            warn!(path = %self.path.display(), "cannot record verified chunks: {e}");
        }
    }
}

/// Opens the journal for a download: returns the chunks (and first pieces of chunks) an
/// earlier attempt of the same version and manifest verified whose bytes still match,
/// and the journal (rewritten to hold exactly those). Another version's journal is
/// discarded.
pub async fn open(
    game: &Arc<GameDir>,
    dests: &[PathBuf],
    chunks: &[ChunkSpec],
    version: Version,
    digest: ChunkHash,
    stop: &Arc<AtomicBool>,
) -> Result<(Journal, Verified), Failure> {
    let (game, dests, chunks) = (game.clone(), dests.to_vec(), chunks.to_vec());
    let stop = stop.clone();
    tokio::task::spawn_blocking(move || {
        open_blocking(&game, &dests, &chunks, (version, &digest), &stop)
    })
    .await
    .map_err(Failure::internal)?
}

/// What [`open`] returns when `stop` was set while it re-hashed what the journal claims
/// (the journal is left as it was: a later attempt resumes from it).
fn stopped() -> Failure {
    Failure::new(
        lanspread_control::ErrorKind::Cancelled,
        "stopped while the journal's units were checked",
    )
}

/// Everything through the open root: a `.lanspread` or journal that is a symlink takes
/// no write outside it, a file swapped for a FIFO blocks no re-hash.
fn open_blocking(
    game: &GameDir,
    dests: &[PathBuf],
    chunks: &[ChunkSpec],
    (version, digest): (Version, &ChunkHash),
    stop: &AtomicBool,
) -> Result<(Journal, Verified), Failure> {
    let root = game.path();
    let path = root.join(JOURNAL);
    let ranges: Vec<_> = chunks.iter().map(|c| (c.file, c.offset, c.len)).collect();
    let claimed = match read_journal(game, chunks.len()) {
        Ok(text) => judge_journal(text.as_deref(), version, digest, &ranges),
        // It only saves work: one that can never be read is started over, never a
        // download that fails on every retry.
        Err(Ok(why)) => ResumeDecision::Discard(why),
        Err(Err(e)) => return Err(Failure::io(path.display(), &e)),
    };
    let claimed = match claimed {
        ResumeDecision::Fresh => Default::default(),
        ResumeDecision::Discard(why) => {
            info!(root = %root.display(), "starting over: {why}");
            Default::default()
        }
        ResumeDecision::Resume(set) => set,
    };
    // How many of a chunk's first `pieces` pieces still hash as verified, in a row.
    let good = |c: usize, pieces: usize| {
        let spec = &chunks[c];
        dests.get(spec.file).map_or(0, |d| {
            good_pieces(game, d, spec, pieces.min(spec.pieces.len())).unwrap_or(0)
        })
    };
    // (A resume of a large game re-reads gigabytes here: a cancel or shutdown stops it
    // between units.)
    let mut kept = Verified::default();
    for c in claimed.chunks {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let n = good(c, usize::MAX);
        if n == chunks[c].pieces.len() {
            kept.chunks.insert(c);
        } else if n > 0 {
            kept.kept.insert(c, n as u64 * PIECE_SIZE);
        }
    }
    for (c, bytes) in claimed.kept {
        if stop.load(Ordering::Relaxed) {
            return Err(stopped());
        }
        let n = good(c, (bytes / PIECE_SIZE) as usize);
        if n > 0 {
            kept.kept.insert(c, n as u64 * PIECE_SIZE);
        }
    }
    // Rewrite it whole (temp + rename): header and what is still good.
    let mut text = journal_header(version, digest);
    for &c in &kept.chunks {
        text.push_str(&journal_entry(c));
    }
    for (&c, &bytes) in &kept.kept {
        text.push_str(&journal_kept(c, bytes));
    }
    // Appends go on through the descriptor written (at its end), whatever is at the
    // name by then. A folder at the journal's name (no rename goes over it) is removed
    // first, never followed.
    let (at, tmp) = (Path::new(JOURNAL), Path::new(JOURNAL_TMP));
    let file = match game.replace(at, tmp, text.as_bytes()) {
        Err(_) if game.dir().symlink_metadata(at).is_ok_and(|m| m.is_dir()) => {
            lanspread_catalog::remove_all_in(game.dir(), at, false)
                .and_then(|()| game.replace(at, tmp, text.as_bytes()))
        }
        other => other,
    }
    .map_err(|e| Failure::io(path.display(), &e))?;
    let file = io::BufWriter::with_capacity(16 << 10, file);
    Ok((Journal { file, path }, kept))
}

/// The journal's text (`None`: there is none); or why it can never be used (`Err(Ok)`:
/// not a regular file, not ours to read, or larger than a journal of `units` units can
/// be — a corrupt one is not read whole into memory); or an error that may pass
/// (`Err(Err)`).
fn read_journal(game: &GameDir, units: usize) -> Result<Option<String>, Result<String, io::Error>> {
    // A header, and per unit at most a line per piece kept by the running fetches (the
    // transfer's own record of a failed fetch's pieces counts apart: twice that) and its
    // own line once whole; each under 48 bytes (index and kept bytes).
    let lines = 2 * (lanspread_proto::UNIT_SIZE / PIECE_SIZE) + 1;
    let limit = 4096 + 48 * lines * units as u64;
    let (f, meta) = match game.open_file(Path::new(JOURNAL), Access::Read) {
        Ok(opened) => opened,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // Something that can never be read as a journal (a folder, FIFO, device or link
        // at its name; not ours to read): started over. A passing error (EIO, out of
        // descriptors) fails this attempt and keeps the journal for the next.
        Err(e) if !passing(&e) => return Err(Ok(format!("the journal cannot be opened: {e}"))),
        Err(e) => return Err(Err(e)),
    };
    if meta.len() > limit {
        return Err(Ok(format!(
            "the journal is {} bytes, more than {limit} for {units} units",
            meta.len()
        )));
    }
    let mut b = Vec::new();
    f.take(limit).read_to_end(&mut b).map_err(Err)?;
    Ok(Some(String::from_utf8_lossy(&b).into_owned()))
}

/// Whether an error opening the journal may pass (the disk, the process's limits), as
/// opposed to what is at its name.
fn passing(e: &io::Error) -> bool {
    !matches!(
        e.raw_os_error(),
        Some(libc::ELOOP | libc::EISDIR | libc::ENXIO | libc::ENODEV | libc::EACCES | libc::EPERM)
    ) && e.kind() != io::ErrorKind::Other
}

/// How many of the first `pieces` pieces of `spec` in `file` hash to their expected
/// values, in a row from the chunk's start (reading no further than the first bad one).
fn good_pieces(game: &GameDir, file: &Path, spec: &ChunkSpec, pieces: usize) -> io::Result<usize> {
    let (mut f, meta) = game.open_file(file, Access::Read)?;
    if meta.len() < spec.offset + spec.len {
        return Ok(0);
    }
    f.seek(SeekFrom::Start(spec.offset))?;
    let mut buf = vec![0u8; PIECE_SIZE as usize];
    for (i, want) in spec.pieces.iter().take(pieces).enumerate() {
        let len = (spec.len - i as u64 * PIECE_SIZE).min(PIECE_SIZE) as usize;
        f.read_exact(&mut buf[..len])?;
        if piece_hash(&buf[..len]) != *want {
            return Ok(i);
        }
    }
    Ok(pieces.min(spec.pieces.len()))
}

/// Removes the journal once the download is committed.
pub async fn remove(root: &Path) {
    let root = root.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        GameDir::open(&root).and_then(|g| g.dir().remove_file(JOURNAL))
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root holding one verified 3-byte file, its unit, and the journal's folder.
    fn root() -> (tempfile::TempDir, GameDir, Vec<PathBuf>, Vec<ChunkSpec>) {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join(".lanspread")).unwrap();
        fs::write(t.path().join("a.bin"), b"abc").unwrap();
        let piece = piece_hash(b"abc");
        let spec = ChunkSpec {
            file: 0,
            offset: 0,
            len: 3,
            hash: lanspread_catalog::chunk_hash(&[piece]),
            pieces: vec![piece],
        };
        let game = GameDir::open(t.path()).unwrap();
        (t, game, vec![PathBuf::from("a.bin")], vec![spec])
    }

    #[test]
    fn a_journal_that_cannot_be_used_starts_over_instead_of_failing() {
        let version = Version::parse("20250301").unwrap();
        let digest = [7u8; 32];
        let (t, game, dests, specs) = root();
        let journal = t.path().join(JOURNAL);
        let go = AtomicBool::new(false);
        let open = |game: &GameDir| open_blocking(game, &dests, &specs, (version, &digest), &go);
        // A good one first: the unit is resumed.
        let good = journal_header(version, &digest) + &journal_entry(0);
        fs::write(&journal, &good).unwrap();
        // (Stopped meanwhile: it ends without a verdict, the journal left as it was.)
        let stop = AtomicBool::new(true);
        let Err(err) = open_blocking(&game, &dests, &specs, (version, &digest), &stop) else {
            panic!("not stopped");
        };
        assert_eq!(err.kind, lanspread_control::ErrorKind::Cancelled);
        assert_eq!(fs::read_to_string(&journal).unwrap(), good);
        let (_, kept) = open(&game).unwrap();
        assert!(kept.chunks.contains(&0));
        // A folder at its name (no rename goes over it): removed, a fresh journal made.
        fs::remove_file(&journal).unwrap();
        fs::create_dir_all(journal.join("sub")).unwrap();
        let (_, kept) = open(&game).unwrap();
        assert!(kept.chunks.is_empty());
        assert!(fs::symlink_metadata(&journal).unwrap().is_file());
        // A FIFO: refused without blocking, replaced.
        fs::remove_file(&journal).unwrap();
        let c = std::ffi::CString::new(journal.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let (_, kept) = open(&game).unwrap();
        assert!(kept.chunks.is_empty());
        assert!(fs::symlink_metadata(&journal).unwrap().is_file());
        // Larger than any journal of one unit: not read, started over.
        let mut big = journal_header(version, &digest) + &journal_entry(0);
        big.push_str(&"x".repeat(1 << 20));
        fs::write(&journal, big).unwrap();
        let (_, kept) = open(&game).unwrap();
        assert!(kept.chunks.is_empty());
        assert!(fs::metadata(&journal).unwrap().len() < 1 << 10);
    }
}
