//! The raw quinn reference: memory to memory over one connection with lanspread's own
//! transport and TLS settings (`lanspread_transfer::make_endpoint`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use lanspread_transfer::{connect, make_endpoint, Identity, TransportTuning};

/// Streams used in parallel by the raw reference, like the app's chunks in flight.
pub const STREAMS: usize = 4;

/// Sends `bytes` from memory to memory over one quinn connection on loopback, split over
/// [`STREAMS`] unidirectional streams, and returns the elapsed time at the receiver.
pub async fn raw_quinn(bytes: u64) -> anyhow::Result<Duration> {
    let tuning = TransportTuning::default();
    let (a, b) = (Identity::ephemeral()?, Identity::ephemeral()?);
    let server = make_endpoint(&b, "127.0.0.1:0".parse()?, &tuning)?;
    let client = make_endpoint(&a, "127.0.0.1:0".parse()?, &tuning)?;
    let addr = server.local_addr()?;
    let receiver = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
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
        anyhow::Ok((start.elapsed(), total))
    });
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
    let (elapsed, total) = receiver.await??;
    anyhow::ensure!(
        total == bytes,
        "raw quinn received {total} of {bytes} bytes"
    );
    conn.close(0u32.into(), b"done");
    Ok(elapsed)
}
