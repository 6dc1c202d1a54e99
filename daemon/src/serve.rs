//! Serving peers: manifests and chunks on request streams, behind the serve gates (S12).

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lanspread_catalog::GameRoot;
use lanspread_peer::{gate_chunk, gate_files};
use lanspread_transfer::{close_code, read_frame, write_frame, PeerId, PeerRequest, PeerResponse};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::state::Shared;

/// Size of one read from disk while serving.
const READ_SIZE: usize = 2 << 20;
/// How long a peer has to send its request after opening a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts request streams on a connection until it closes.
pub async fn serve_requests(shared: Arc<Shared>, conn: Connection, remote: PeerId) {
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer = %remote.short(), "request loop ended: {e}");
                return;
            }
        };
        let (shared, conn, remote) = (shared.clone(), conn.clone(), remote.clone());
        tokio::spawn(
            async move {
                if let Err(e) = handle(&shared, send, recv).await {
                    warn!(peer = %remote.short(), "protocol error on a request stream, disconnecting: {e}");
                    conn.close(VarInt::from_u32(close_code::PROTOCOL_ERROR), b"bad request");
                }
            }
            .in_current_span(),
        );
    }
}

/// Answers one request. An `Err` is a protocol violation that ends the connection; a
/// refused or failed request is answered and the connection stays.
async fn handle(shared: &Shared, mut send: SendStream, mut recv: RecvStream) -> Result<(), String> {
    let request = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_frame::<_, PeerRequest>(&mut recv),
    )
    .await
    {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Err("empty request stream".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no request in time".into()),
    };
    match request {
        PeerRequest::Files { game, version } => {
            let root = gated(shared, &game, version, |r| Ok(r.clone()));
            let answer = match root {
                Err(reason) => PeerResponse::Refused { reason },
                Ok(root) => {
                    let hashes = shared_hashes(shared, root).await;
                    match hashes {
                        Ok(files) => PeerResponse::Files(files),
                        Err(reason) => PeerResponse::Refused { reason },
                    }
                }
            };
            let _ = write_frame(&mut send, &answer).await;
            let _ = send.finish();
        }
        PeerRequest::Chunk {
            game,
            version,
            path,
            offset,
            len,
        } => {
            let file = gated(shared, &game, version, |root| {
                gate_chunk(root, &path, offset, len).map_err(|e| e.to_string())?;
                Ok((root.dir.clone(), path.to_path(&root.dir)))
            });
            let file = match file {
                Ok(p) => p,
                Err(reason) => {
                    let _ = write_frame(&mut send, &PeerResponse::Refused { reason }).await;
                    let _ = send.finish();
                    return Ok(());
                }
            };
            // One blocking task opens the file (before we answer, so a file that now
            // leaves the root is refused) and reads it piece by piece, one piece ahead.
            let (root, file) = file;
            let mut pieces = read_range(root, file, offset, len);
            // The reader always sends one message for a non-empty range; none means it
            // died, a local failure the peer is not to blame for.
            let first = pieces.rx.recv().await;
            let first = match first.unwrap_or_else(|| Err("the file reader stopped".into())) {
                Ok(first) => first,
                Err(reason) => {
                    warn!("refused a chunk: {reason}");
                    let _ = write_frame(&mut send, &PeerResponse::Refused { reason }).await;
                    let _ = send.finish();
                    return Ok(());
                }
            };
            let _ = write_frame(&mut send, &PeerResponse::Chunk { len }).await;
            let limit = shared.upload_limit.as_ref();
            if let Err(e) = stream_pieces(&mut send, first, &mut pieces, limit).await {
                debug!("chunk stream ended early: {e}");
                let _ = send.reset(VarInt::from_u32(1));
                return Ok(());
            }
            let _ = send.finish();
        }
    }
    Ok(())
}

/// Runs `f` on the root behind the serve gates, under the lock (never a copy of the
/// root's file list per request: that made S34 quadratic).
fn gated<T>(
    shared: &Shared,
    game: &lanspread_catalog::GameId,
    version: lanspread_catalog::Version,
    f: impl FnOnce(&GameRoot) -> Result<T, String>,
) -> Result<T, String> {
    let inner = shared.lock();
    let active = inner.operations.get(game).is_some();
    let root = gate_files(
        &shared.catalog,
        game,
        inner.library.get(game),
        active,
        version,
    )
    .map_err(|e| e.to_string())?;
    f(root)
}

async fn shared_hashes(
    shared: &Shared,
    root: GameRoot,
) -> Result<Vec<lanspread_catalog::FileManifest>, String> {
    let cache = shared.hashes.clone();
    tokio::task::spawn_blocking(move || cache.manifest(&root))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
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

fn read_piece(file: &std::fs::File, pos: u64, n: usize) -> std::io::Result<Bytes> {
    let popped = READ_POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
    // A fresh buffer is sized to the read (small files need no 2 MiB buffer); a
    // recycled one grows to full size once and is kept.
    let mut buf = popped.unwrap_or_default();
    if buf.len() < n {
        buf.resize(n, 0);
    }
    file.read_exact_at(&mut buf[..n], pos)?;
    Ok(Bytes::from_owner(Pooled { buf, len: n }))
}

/// The pieces of one range, read ahead by a blocking task.
struct Pieces {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    reader: tokio::task::JoinHandle<()>,
}

/// Opens `file` inside `root` and reads `[offset, offset+len)` on one blocking thread in
/// large pieces, one piece ahead of the sender. The first message is the first piece or
/// why the file could not be opened or read.
fn read_range(root: PathBuf, file: PathBuf, offset: u64, len: u64) -> Pieces {
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        let file = match lanspread_catalog::open_inside(&root, &file) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e.to_string()));
                return;
            }
        };
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = READ_SIZE.min((end - pos) as usize);
            let res = read_piece(&file, pos, n).map_err(|e| e.to_string());
            let failed = res.is_err();
            if tx.blocking_send(res).is_err() || failed {
                return;
            }
            pos += n as u64;
        }
    });
    Pieces { rx, reader }
}

/// Writes `first` and the rest of the pieces to the stream.
async fn stream_pieces(
    send: &mut SendStream,
    first: Bytes,
    pieces: &mut Pieces,
    limit: Option<&crate::limit::RateLimit>,
) -> Result<(), String> {
    let mut next = Some(Ok(first));
    while let Some(piece) = next {
        let piece = piece?;
        crate::limit::take(limit, piece.len() as u64).await;
        send.write_chunk(piece).await.map_err(|e| e.to_string())?;
        next = pieces.rx.recv().await;
    }
    pieces.rx.close();
    let _ = (&mut pieces.reader).await;
    Ok(())
}
