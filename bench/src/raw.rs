//! The raw quinn reference: memory to memory over one connection with lanspread's own
//! transport and TLS settings (`lanspread_transfer::make_endpoint`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lanspread_transfer::{connect, make_endpoint, Identity};

use crate::net::Net;
use crate::{joined, ACCEPT_TIMEOUT};

/// Streams used in parallel by the raw reference, like the app's chunks in flight.
pub const STREAMS: usize = 4;

/// Sends `bytes` from memory to memory over one quinn connection on `net`, split over
/// [`STREAMS`] unidirectional streams, and returns the elapsed time at the receiver. Each
/// endpoint runs on a current-thread runtime of its own thread, like each daemon of S37
/// (a shared work-stealing runtime made this reference swing ±20 % between runs).
pub fn raw_quinn(bytes: u64, net: &Net) -> anyhow::Result<Duration> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let receiver = s.spawn(move || {
            net.enter(0)?;
            current_thread()?.block_on(async move {
                let tuning = crate::tuning();
                let server = make_endpoint(&Identity::ephemeral()?, net.bind_addr(0), &tuning)?;
                addr_tx.send(server.local_addr()?)?;
                receive(server, bytes).await
            })
        });
        let sender = s.spawn(move || {
            let addr = addr_rx.recv()?;
            net.enter(1)?;
            current_thread()?.block_on(send(addr, net.bind_addr(1), bytes))
        });
        let sent = joined(sender, "raw quinn sender");
        let received = joined(receiver, "raw quinn receiver");
        sent?;
        received
    })
}

/// `pairs` raw transfers side by side, each between its own two endpoints on their own
/// threads and moving `bytes / pairs`: the reference for `pairs` transfer threads per
/// daemon (quinn-perf scaled this way on 16 cores, `../shared/perf.md`). Returns the wall
/// time from the first handshake to the last byte.
pub fn raw_quinn_pairs(bytes: u64, pairs: usize, net: &Net) -> anyhow::Result<Duration> {
    let pairs = pairs.max(1) as u64;
    let start = Instant::now();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..pairs)
            .map(|i| {
                let share = bytes / pairs + if i == 0 { bytes % pairs } else { 0 };
                s.spawn(move || raw_quinn(share, net))
            })
            .collect();
        for r in runs {
            joined(r, "raw quinn pair")?;
        }
        anyhow::Ok(())
    })?;
    Ok(start.elapsed())
}

fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn receive(server: quinn::Endpoint, bytes: u64) -> anyhow::Result<Duration> {
    // A sender that failed before dialling must not leave this side waiting forever.
    let incoming = tokio::time::timeout(ACCEPT_TIMEOUT, server.accept())
        .await
        .map_err(|_| anyhow::anyhow!("the raw quinn sender never connected"))?;
    let conn = incoming
        .ok_or_else(|| anyhow::anyhow!("no connection"))?
        .await?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..STREAMS {
        let mut recv = conn.accept_uni().await?;
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            while let Some(c) = recv.read_chunk(1 << 20, false).await? {
                got += c.bytes.len() as u64;
            }
            anyhow::Ok(got)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(
        total == bytes,
        "raw quinn received {total} of {bytes} bytes"
    );
    // Wait for the sender's close so neither side drops the connection early.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    Ok(elapsed)
}

async fn send(addr: SocketAddr, bind: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let tuning = crate::tuning();
    let client = make_endpoint(&Identity::ephemeral()?, bind, &tuning)?;
    let (conn, _) = connect(&client, addr, Duration::from_secs(5)).await?;
    let piece = Bytes::from(vec![0x5au8; 1 << 20]);
    let per_stream = bytes / STREAMS as u64;
    let mut senders = Vec::new();
    for i in 0..STREAMS {
        let mut send = conn.open_uni().await?;
        let piece = piece.clone();
        let n = if i == STREAMS - 1 {
            bytes - per_stream * (STREAMS as u64 - 1)
        } else {
            per_stream
        };
        senders.push(tokio::spawn(async move {
            let mut left = n;
            while left > 0 {
                let k = left.min(piece.len() as u64) as usize;
                send.write_chunk(piece.slice(..k)).await?;
                left -= k as u64;
            }
            send.finish()?;
            let _ = send.stopped().await;
            anyhow::Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    if std::env::var_os("LANSPREAD_BENCH_LOG").is_some() {
        // What the path did: MTU reached, losses, quinn's black-hole resets.
        let p = conn.stats().path;
        eprintln!(
            "raw quinn sender: mtu {}, lost {} packets, {} congestion events, {} black holes",
            p.current_mtu, p.lost_packets, p.congestion_events, p.black_holes_detected
        );
    }
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    Ok(())
}
