//! The file reader of an answer: opens each range's file inside the root (checking it is
//! still the file whose hashes were given out, or that the partial copy still runs) and
//! reads its pieces on a blocking thread, up to `READ_AHEAD` ahead of the sender; a chunk
//! still arriving here (cut-through) is read as its pieces are written.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::partial::Growing;

/// Size of one read from disk while serving.
pub(super) const READ_SIZE: usize = 2 << 20;

/// Why the file reader stopped a range.
pub(super) enum Stop {
    /// The range is not served (its file is gone, changed or unreadable).
    Refused(String),
    /// Nothing wrong with the source nor the asker: a relayed chunk stopped arriving here
    /// (its fetch failed, or no progress), or the partial copy ended (committed, stopped).
    Cut(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Refused(why) | Stop::Cut(why) => f.write_str(why),
        }
    }
}

/// Most idle read buffers kept for reuse.
const POOL_KEEP: usize = 32;

/// Read buffers are recycled: quinn holds each piece until the peer acknowledged it, then
/// drops it, and the buffer comes back here instead of being freed and faulted in again.
static READ_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

struct Pooled {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut pool = READ_POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_KEEP {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Reads below this size get a buffer of their own size, never a recycled 2 MiB one: a
/// reader ahead by many small files (`read_ahead`) must not hold a 2 MiB buffer for each.
const POOLED_FROM: usize = READ_SIZE / 2;

fn read_piece(file: &std::fs::File, pos: u64, n: usize) -> std::io::Result<Bytes> {
    if n < POOLED_FROM {
        let mut buf = vec![0; n];
        file.read_exact_at(&mut buf, pos)?;
        return Ok(Bytes::from(buf));
    }
    let popped = READ_POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
    // A recycled buffer is full size; a fresh one grows to it once and is kept.
    let mut buf = popped.unwrap_or_default();
    if buf.len() < n {
        buf.resize(n, 0);
    }
    file.read_exact_at(&mut buf[..n], pos)?;
    Ok(Bytes::from_owner(Pooled { buf, len: n }))
}

/// The pieces of the ranges of one request, read ahead by a blocking task.
pub(super) struct Pieces {
    pub(super) rx: mpsc::Receiver<Result<Bytes, Stop>>,
    pub(super) reader: tokio::task::JoinHandle<()>,
}

/// Opens each file inside `root` and reads its `(offset, len)` range on one blocking
/// thread in large pieces, up to `READ_AHEAD` ahead of the sender (`read_ahead`). Per range the first message is
/// its first piece or why the file could not be opened or read, or why it is no longer
/// the file whose hashes the peer holds; an error ends the reader.
/// What a range's file must still be when it is read.
pub(super) enum Check {
    /// A ready copy: unchanged since it was hashed (the manifest's hashes hold).
    Unchanged(Arc<lanspread_catalog::HashCache>),
    /// A partial copy: its download still running (`None`: refused already), and per
    /// range the progress of a chunk still being fetched.
    Live(
        Option<Arc<std::sync::atomic::AtomicBool>>,
        Vec<Option<Arc<Growing>>>,
    ),
}

impl Check {
    /// Whether the file opened still holds what was given out; `go_on` says whether
    /// its asker still waits (a re-hash by another request is waited for meanwhile).
    fn holds(
        &self,
        path: &std::path::Path,
        file: &std::fs::File,
        meta: &std::fs::Metadata,
        go_on: &dyn Fn() -> bool,
    ) -> bool {
        match self {
            Check::Unchanged(hashes) => hashes.still_holds(path, file, meta, go_on),
            Check::Live(live, _) => live
                .as_ref()
                .is_some_and(|l| l.load(std::sync::atomic::Ordering::SeqCst)),
        }
    }

    /// Whether a partial copy ended since its range was gated (ready copies: never).
    fn ended(&self) -> bool {
        matches!(self, Check::Live(l, _) if !l.as_ref().is_some_and(|l| l.load(std::sync::atomic::Ordering::SeqCst)))
    }

    /// The progress of range `i`'s chunk, if it is still being fetched here.
    fn growing(&self, i: usize) -> Option<&Arc<Growing>> {
        match self {
            Check::Live(_, growing) => growing.get(i)?.as_ref(),
            Check::Unchanged(_) => None,
        }
    }

    /// How many bytes from `pos` (at most `want`) may be read now: for a chunk still being
    /// fetched, waits until some are verified and written there; an error ends the
    /// answer (the fetch failed, the copy ended, the asker left, or no progress for
    /// [`relay_stall`]).
    fn readable(
        &self,
        i: usize,
        pos: u64,
        want: u64,
        tx: &mpsc::Sender<Result<Bytes, Stop>>,
    ) -> Result<u64, String> {
        let Some(g) = self.growing(i) else {
            return Ok(want);
        };
        let mut seen = (0, Instant::now());
        loop {
            // Woken as soon as the fetch writes more; the rest (a copy ended, an asker
            // gone) is looked at every `RELAY_CHECK`.
            let Some(to) = g.wait_past(pos, RELAY_CHECK) else {
                return Err("the chunk's fetch here failed".into());
            };
            if to > pos {
                return Ok(want.min(to - pos));
            }
            if self.ended() {
                return Err("the partial copy ended".into());
            }
            if tx.is_closed() {
                return Err("the asker left".into());
            }
            if to != seen.0 {
                seen = (to, Instant::now());
            } else if seen.1.elapsed() > relay_stall() {
                return Err("the chunk stopped arriving here".into());
            }
        }
    }
}

/// Bytes an answer's reader may read ahead of its sender.
const READ_AHEAD: u64 = 4 << 20;

/// How many pieces the reader of `files` may read ahead: [`READ_AHEAD`] bytes of its
/// largest piece, at least two (small files are read many at a time instead of waking
/// the reader per file).
fn read_ahead(files: &[(PathBuf, u64, u64)]) -> usize {
    let largest = files.iter().map(|f| f.2).max().unwrap_or(0);
    let piece = largest.clamp(1, READ_SIZE as u64);
    usize::try_from(READ_AHEAD / piece)
        .unwrap_or(usize::MAX)
        .clamp(2, 128)
}

/// How often an answer relaying a chunk still arriving, and waiting for more of it,
/// looks whether its copy ended or its asker left (more of the chunk wakes it at once).
const RELAY_CHECK: Duration = Duration::from_millis(100);

/// How long such an answer waits for its next piece before it ends: two thirds of the
/// stall timeout, which askers share by default (`LANSPREAD_STALL_TIMEOUT_MS` too), so
/// the answer ends (`RELAY_CUT`: the asker rests this source and keeps its good pieces)
/// before its asker would find it stalled and drop it.
fn relay_stall() -> Duration {
    crate::config::stall_timeout() * 2 / 3
}

pub(super) fn read_ranges(root: PathBuf, files: Vec<(PathBuf, u64, u64)>, check: Check) -> Pieces {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Stop>>(read_ahead(&files));
    let refused = Stop::Refused;
    let reader = tokio::task::spawn_blocking(move || {
        // The root is resolved once per request, not per file.
        let confined = lanspread_catalog::Confined::new(&root);
        for (i, (path, offset, len)) in files.into_iter().enumerate() {
            // Named in a refusal only: no string per file served.
            let name = || path.strip_prefix(&root).unwrap_or(&path).display();
            if check.ended() {
                let _ = tx.blocking_send(Err(Stop::Cut("the partial copy ended".into())));
                return;
            }
            let opened = match &confined {
                Ok(c) => c.open(&path),
                Err(e) => Err(std::io::Error::new(e.kind(), format!("the game root: {e}"))),
            };
            let file = match opened {
                Ok((f, meta)) if check.holds(&path, &f, &meta, &|| !tx.is_closed()) => f,
                Ok(_) => {
                    let _ = tx.blocking_send(Err(refused(format!(
                        "{} changed since its hashes were given out; ask for the manifest again",
                        name()
                    ))));
                    return;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(refused(format!("{}: {e}", name()))));
                    return;
                }
            };
            let mut pos = offset;
            let end = offset + len;
            while pos < end {
                if check.ended() {
                    // Committed (soon a ready copy) or stopped: the asker keeps what
                    // it got and asks again later.
                    let _ = tx.blocking_send(Err(Stop::Cut("the partial copy ended".into())));
                    return;
                }
                let n =
                    match check.readable(i, pos, READ_SIZE.min((end - pos) as usize) as u64, &tx) {
                        Ok(n) => n as usize,
                        Err(why) => {
                            let _ = tx.blocking_send(Err(Stop::Cut(why)));
                            return;
                        }
                    };
                let res = read_piece(&file, pos, n).map_err(|e| refused(e.to_string()));
                let failed = res.is_err();
                if tx.blocking_send(res).is_err() || failed {
                    return;
                }
                pos += n as u64;
            }
        }
    });
    Pieces { rx, reader }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_files_are_read_further_ahead_within_the_same_bytes() {
        let files = |lens: &[u64]| -> Vec<(PathBuf, u64, u64)> {
            lens.iter().map(|&l| (PathBuf::from("f"), 0, l)).collect()
        };
        let bytes = |f: &[(PathBuf, u64, u64)]| {
            let piece = f
                .iter()
                .map(|f| f.2)
                .max()
                .unwrap_or(0)
                .min(READ_SIZE as u64);
            read_ahead(f) as u64 * piece
        };
        // 32 KiB files: 128 of them ahead (4 MiB), not two.
        let small = files(&[32 << 10; 64]);
        assert_eq!(read_ahead(&small), 128);
        // A batch's largest file decides: 1 MiB pieces, four ahead.
        let mixed = files(&[32 << 10, MIB, 4 << 10]);
        assert_eq!(read_ahead(&mixed), 4);
        // Big files: two 2 MiB pieces, as before.
        assert_eq!(read_ahead(&files(&[32 * MIB])), 2);
        for f in [small, mixed, files(&[32 * MIB]), files(&[1]), files(&[])] {
            assert!(read_ahead(&f) >= 2);
            assert!(bytes(&f) <= READ_AHEAD.max(2 * READ_SIZE as u64), "{f:?}");
        }
    }

    #[test]
    fn a_relayed_range_is_read_as_its_pieces_are_written_and_ends_with_its_fetch() {
        let live = Arc::new(AtomicBool::new(true));
        let g = Arc::new(Growing::new(10 * MIB));
        let check = Check::Live(Some(live.clone()), vec![None, Some(g.clone())]);
        let (tx, _rx) = mpsc::channel(1);
        // A verified chunk's range: all of it at once.
        assert_eq!(check.readable(0, 0, 2 * MIB, &tx), Ok(2 * MIB));
        // Written up to 10 MiB: what is there, at most what was asked.
        assert_eq!(check.readable(1, 9 * MIB, 2 * MIB, &tx), Ok(MIB));
        assert_eq!(check.readable(1, 4 * MIB, 2 * MIB, &tx), Ok(2 * MIB));
        // Past it: waits for the next piece.
        let writer = {
            let g = g.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                g.wrote(11 * MIB);
            })
        };
        assert_eq!(check.readable(1, 10 * MIB, 2 * MIB, &tx), Ok(MIB));
        writer.join().unwrap();
        // The fetch fails, the copy ends, the asker leaves: the wait ends in an error.
        let failing = {
            let g = g.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                g.fail();
            })
        };
        assert!(check.readable(1, 11 * MIB, MIB, &tx).is_err());
        failing.join().unwrap();
        let g = Arc::new(Growing::new(0));
        let check = Check::Live(Some(live.clone()), vec![Some(g)]);
        live.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(check.readable(0, 0, MIB, &tx).is_err(), "the copy ended");
        live.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(_rx);
        assert!(check.readable(0, 0, MIB, &tx).is_err(), "nobody reads it");
    }
}
