//! The TCP reference: what a plain file server does. The sender `sendfile`s the source
//! file into a TCP socket (loopback or veth, `Net`); the receiver reads it in 1 MiB
//! pieces, writes them into a file on the filesystem under test and ends with
//! `fdatasync`, like the app's commit.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::net::Net;
use crate::Fs;
use crate::{joined, ACCEPT_TIMEOUT};

/// Copies a sparse file of `bytes` over TCP on `net` into `fs`; returns the receiver's
/// time from connect to the end of `fdatasync`.
pub fn tcp_copy(bytes: u64, fs: Fs, net: &Net) -> anyhow::Result<Duration> {
    let dir = tempfile::Builder::new()
        .prefix("lanspread-bench-tcp-")
        .tempdir_in(fs.dir())?;
    let src = dir.path().join("src.eti");
    File::create(&src)?.set_len(bytes)?;
    let dst = dir.path().join("dst.eti");
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let sender = s.spawn(move || -> anyhow::Result<()> {
            net.enter(1)?;
            let listener = TcpListener::bind(net.bind_addr(1))?;
            addr_tx.send(listener.local_addr()?)?;
            let sock = accept(&listener)?;
            let file = File::open(&src)?;
            let mut off: libc::off_t = 0;
            let mut left = bytes;
            while left > 0 {
                let n = left.min(1 << 30) as usize;
                // SAFETY: two open descriptors and a valid offset pointer.
                let sent =
                    unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, n) };
                if sent < 0 {
                    return Err(std::io::Error::last_os_error()).context("sendfile");
                }
                anyhow::ensure!(sent > 0, "sendfile: source ended early");
                left -= sent as u64;
            }
            Ok(())
        });
        let receiver = s.spawn(move || -> anyhow::Result<Duration> {
            let addr = addr_rx.recv()?;
            net.enter(0)?;
            let start = Instant::now();
            let mut sock = TcpStream::connect(addr)?;
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
            Ok(start.elapsed())
        });
        let elapsed = joined(receiver, "TCP receiver");
        joined(sender, "TCP sender")?;
        elapsed
    })
}

/// Accepts one connection, or fails after [`ACCEPT_TIMEOUT`] (a receiver that failed
/// before connecting must not leave the sender waiting forever).
fn accept(listener: &TcpListener) -> anyhow::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((sock, _)) => {
                sock.set_nonblocking(false)?;
                return Ok(sock);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                anyhow::ensure!(
                    start.elapsed() < ACCEPT_TIMEOUT,
                    "the TCP receiver never connected"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
