//! The TCP reference: what a plain file server does. The sender `sendfile`s the source file
//! into a loopback TCP socket; the receiver reads it in 1 MiB pieces, writes them into a
//! file on the filesystem under test and ends with `fdatasync`, like the app's commit.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Fs;

/// Copies a sparse file of `bytes` over TCP into `fs`; returns the receiver's time from
/// connect to the end of `fdatasync`.
pub fn tcp_copy(bytes: u64, fs: Fs) -> anyhow::Result<Duration> {
    let dir = tempfile::Builder::new()
        .prefix("lanspread-bench-tcp-")
        .tempdir_in(fs.dir())?;
    let src = dir.path().join("src.eti");
    File::create(&src)?.set_len(bytes)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> anyhow::Result<()> {
        let (sock, _) = listener.accept()?;
        let file = File::open(&src)?;
        let mut off: libc::off_t = 0;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(1 << 30) as usize;
            // SAFETY: two open descriptors and a valid offset pointer.
            let sent = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, n) };
            if sent < 0 {
                return Err(std::io::Error::last_os_error()).context("sendfile");
            }
            anyhow::ensure!(sent > 0, "sendfile: source ended early");
            left -= sent as u64;
        }
        Ok(())
    });
    let start = Instant::now();
    let mut sock = TcpStream::connect(addr)?;
    let dst = dir.path().join("dst.eti");
    let mut out = File::create(&dst)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < bytes {
        let n = sock.read(&mut buf)?;
        anyhow::ensure!(n > 0, "TCP copy ended after {got} of {bytes} bytes");
        out.write_all(&buf[..n])?;
        got += n as u64;
    }
    out.sync_data()?;
    let elapsed = start.elapsed();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    Ok(elapsed)
}
