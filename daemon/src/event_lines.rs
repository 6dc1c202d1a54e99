//! Event lines to a control client (a waiting `download`, `events`): what the channel
//! holds when a client is written to goes out in one write, up to [`EVENTS_WRITE_AT`]
//! bytes — a download of 2,000 small files emits 2,000 `download-chunk-finished` events
//! within a fraction of a second, which were 2,000 writes and as many wake-ups of the CLI.

use lanspread_control::api::{Event, Reply};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tracing::warn;

use crate::state::Shared;

/// Event lines gathered for a client are written at the latest once this many bytes.
const EVENTS_WRITE_AT: usize = 64 << 10;

/// Appends a reply's line to `lines`.
pub(crate) fn push_line(lines: &mut Vec<u8>, reply: &Reply) -> std::io::Result<()> {
    serde_json::to_writer(&mut *lines, reply).map_err(std::io::Error::other)?;
    lines.push(b'\n');
    Ok(())
}

type EventRx = tokio::sync::broadcast::Receiver<Event>;
type Next = Result<Event, RecvError>;

/// An event the channel holds already, while the lines gathered stay under
/// [`EVENTS_WRITE_AT`]; `None`: write them first, then wait.
fn gathered(rx: &mut EventRx, lines: &[u8]) -> Option<Next> {
    if lines.len() >= EVENTS_WRITE_AT {
        return None;
    }
    match rx.try_recv() {
        Ok(e) => Some(Ok(e)),
        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
        Err(TryRecvError::Empty) => None,
    }
}

/// Writes the lines gathered (whole lines, never cut by a cancellation: not called
/// inside a `select!`).
pub(crate) async fn flush(write: &mut OwnedWriteHalf, lines: &mut Vec<u8>) -> std::io::Result<()> {
    if !lines.is_empty() {
        write.write_all(lines).await?;
        lines.clear();
    }
    Ok(())
}

/// The next event: one the channel holds already, or else — once the lines gathered so
/// far are written — the next to come.
pub(crate) async fn next_now(
    rx: &mut EventRx,
    lines: &mut Vec<u8>,
    write: &mut OwnedWriteHalf,
) -> Next {
    if let Some(next) = gathered(rx, lines) {
        return next;
    }
    if flush(write, lines).await.is_err() {
        return Err(RecvError::Closed);
    }
    rx.recv().await
}

/// Streams every event to an `events` client until it leaves or the daemon stops.
pub(crate) async fn stream_events(shared: &Shared, write: &mut OwnedWriteHalf) {
    let mut rx = shared.events.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let mut lines = Vec::new();
    loop {
        let event = match gathered(&mut rx, &lines) {
            Some(e) => e,
            None => {
                if flush(write, &mut lines).await.is_err() {
                    return;
                }
                tokio::select! {
                    e = rx.recv() => e,
                    _ = crate::state::until_shutdown(&mut shutdown) => return,
                }
            }
        };
        match event {
            Ok(e) => {
                if push_line(&mut lines, &Reply::Event(e)).is_err() {
                    return;
                }
            }
            Err(RecvError::Lagged(n)) => {
                warn!("events client lagged; {n} events dropped");
            }
            Err(_) => return,
        }
    }
}

/// Starts a download; unless detached, streams the game's events until the terminal one.
pub(crate) async fn download(
    shared: &std::sync::Arc<Shared>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    game: &str,
    install: bool,
    detach: bool,
) {
    // Subscribe before starting, so no event of this download is missed.
    let mut rx = shared.events.subscribe();
    let (id, sources) = match crate::download::begin(shared, game) {
        Ok(x) => x,
        Err(e) => {
            let _ = send(
                write,
                &Reply::Error {
                    message: e.message,
                    kind: e.kind,
                },
            )
            .await;
            return;
        }
    };
    let mut task = tokio::spawn(crate::download::run_with_install(
        shared.clone(),
        id.clone(),
        sources,
        install,
    ));
    if detach {
        let _ = send(write, &Reply::Started { game_id: id }).await;
        return;
    }
    // A burst of events (a chunk verified per small file) goes out in one write: what
    // the channel holds now is sent with the event that woke us. A write that fails:
    // the client left; the download goes on.
    // Once events were dropped for this client, the one that ends the download may be
    // among them: from then on the download's own outcome ends the wait too (else the
    // client waited for good).
    let mut lines = Vec::new();
    let mut lagged = false;
    let mut next = rx.recv().await;
    loop {
        match next {
            Ok(event) => {
                let ours = event.kind.game_id() == Some(&id);
                let terminal = ours && event.kind.ends_download(install);
                if ours && push_line(&mut lines, &Reply::Event(event)).is_err() {
                    return;
                }
                if terminal {
                    if flush(write, &mut lines).await.is_err() {
                        return;
                    }
                    break;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                warn!("download client lagged; {n} events dropped");
                lagged = true;
            }
            Err(_) => return,
        }
        if !lagged {
            next = next_now(&mut rx, &mut lines, write).await;
            continue;
        }
        // Whole lines out first: the wait below may end either way.
        if flush(write, &mut lines).await.is_err() {
            return;
        }
        tokio::select! {
            biased;
            n = rx.recv() => next = n,
            ended = &mut task => {
                if let Ok(ended) = ended {
                    if push_line(&mut lines, &Reply::Event(ended)).is_ok() {
                        let _ = flush(write, &mut lines).await;
                    }
                }
                return;
            }
        }
    }
    let _ = task.await;
}

/// Writes one reply line.
pub(crate) async fn send(write: &mut OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut line = Vec::new();
    push_line(&mut line, reply)?;
    flush(write, &mut line).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanspread_control::api::EventKind;
    use tokio::io::AsyncReadExt;

    fn event(i: u64) -> Event {
        Event {
            ts_ms: i,
            kind: EventKind::LocalLibraryChanged { games: Vec::new() },
        }
    }

    /// A burst already in the channel is gathered up to the write bound, every event once
    /// and in order, and what was gathered is written before the next wait.
    #[test]
    fn a_burst_goes_out_whole_in_order_and_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = tokio::sync::broadcast::channel(8192);
            let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
            let (read_half, mut write) = ours.into_split();
            let reader = tokio::spawn(async move {
                let mut text = String::new();
                let mut theirs = theirs;
                theirs.read_to_string(&mut text).await.map(|_| text)
            });
            let n = 3000u64;
            for i in 0..n {
                tx.send(event(i)).unwrap();
            }
            let mut lines = Vec::new();
            let mut bursts = 0;
            for _ in 0..n {
                // While events wait in the channel, only the bound makes a write.
                let before = lines.len();
                let full = before >= EVENTS_WRITE_AT;
                bursts += usize::from(full);
                let e = next_now(&mut rx, &mut lines, &mut write).await.unwrap();
                assert_eq!(lines.len(), if full { 0 } else { before });
                push_line(&mut lines, &Reply::Event(e)).unwrap();
                assert!(lines.len() < EVENTS_WRITE_AT + 4096);
            }
            flush(&mut write, &mut lines).await.unwrap();
            drop((write, read_half));
            let text = reader.await.unwrap().unwrap();
            let got: Vec<u64> = text
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["event"]["ts_ms"].as_u64().unwrap()
                })
                .collect();
            assert_eq!(got, (0..n).collect::<Vec<_>>());
            // 3,000 lines of ≈ 60 bytes: a few bounded writes, not 3,000.
            assert!((1..10).contains(&bursts), "{bursts}");
        });
    }
}
