//! The control socket's connection slots: a cap for anyone who may open the socket, and
//! a reserve above it for admins, counted over admitted connections only; and when a
//! client that waits (`events`, a waiting `download`, `wait-peers`, an operation) has
//! hung up, so its slot is given back at once rather than at the next event or the
//! wait's end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lanspread_control::api::ErrorKind;
use lanspread_control::Failure;
use tokio::net::unix::OwnedReadHalf;
use tracing::warn;

use crate::access::{Caller, Policy};

/// Control connections served at once for anyone who may open the socket ...
const MAX_CLIENTS: usize = 128;
/// ... and this many more for root, the daemon's user and admins, so `status` and
/// `shutdown` still work while the socket is flooded.
const ADMIN_RESERVE: usize = 16;
/// One admitted control connection, counted while it lives.
pub(crate) struct Slot {
    open: Arc<AtomicUsize>,
}

impl Slot {
    /// A slot when fewer than `limit` connections are admitted, else how many are.
    /// Only admitted connections count: a flood of refused ones never pushes an admin's
    /// connection past the reserve.
    fn admit(open: &Arc<AtomicUsize>, limit: usize) -> Result<Self, usize> {
        open.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })?;
        Ok(Self { open: open.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Within the connection cap (an admin may use the reserve above it)? Else why not.
pub(crate) fn admit(
    policy: &Policy,
    caller: &Caller,
    open: &Arc<AtomicUsize>,
) -> Result<Slot, Failure> {
    let limit = if policy.is_admin(caller) {
        MAX_CLIENTS + ADMIN_RESERVE
    } else {
        MAX_CLIENTS
    };
    Slot::admit(open, limit).map_err(|n| {
        warn!(
            uid = caller.uid,
            "control socket: {n} connections open; refused one"
        );
        Failure::new(
            ErrorKind::Busy,
            format!("too many control connections ({n} open); try again later"),
        )
    })
}

/// How often a client that ended its requests (shut its socket for writing, as `socat`
/// does at the end of its input) is looked at again for having closed it.
const HALF_CLOSED_LOOK: std::time::Duration = std::time::Duration::from_secs(5);

/// Resolves once the client closed its socket (or it failed). Reads nothing away: bytes
/// the client sent after its request stay for the next one (then its socket is looked at
/// every [`HALF_CLOSED_LOOK`]). A client that only shut its socket for writing still
/// reads what it waits for: that is not a hang-up (on a Unix stream socket `POLLHUP`
/// tells the two apart: the peer has shut both directions).
pub(crate) async fn hung_up(read: &mut tokio::io::BufReader<OwnedReadHalf>) {
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncBufReadExt;
    if read.fill_buf().await.is_err() {
        return;
    }
    let fd = read.get_ref().as_ref().as_raw_fd();
    while !closed_both_ways(fd) {
        tokio::time::sleep(HALF_CLOSED_LOOK).await;
    }
}

/// Whether the peer of a Unix stream socket has shut it both ways (`POLLHUP`).
fn closed_both_ways(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, a zero timeout; `fd` is open while `read` is borrowed.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n >= 0 {
            return p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
        }
        // A signal (a reload's SIGHUP) is no hang-up: ask again.
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admitted_connections_hold_slots() {
        let open = Arc::new(AtomicUsize::new(0));
        let held: Vec<Slot> = (0..3).map(|_| Slot::admit(&open, 3).unwrap()).collect();
        // However many are refused meanwhile (a flood), none of them counts ...
        for _ in 0..1000 {
            assert_eq!(Slot::admit(&open, 3).err(), Some(3));
        }
        // ... so the reserve above the cap is still there for an admin.
        let admin = Slot::admit(&open, 4).unwrap();
        assert_eq!(Slot::admit(&open, 4).err(), Some(4));
        drop(held);
        assert!(Slot::admit(&open, 3).is_ok());
        drop(admin);
        assert_eq!(open.load(Ordering::Relaxed), 0);
    }

    /// A client that closes its socket has hung up, whatever it sent before; one that
    /// only shut it for writing (the end of its requests) has not, until it closes.
    #[test]
    fn a_hang_up_is_a_close_not_the_end_of_the_requests() {
        use std::time::Duration;
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
            let (read, _write) = ours.into_split();
            let mut read = BufReader::new(read);
            theirs
                .write_all(b"{\"cmd\":\"list-peers\"}\n")
                .await
                .unwrap();
            theirs.shutdown().await.unwrap(); // shut for writing only
            let waited = tokio::time::timeout(Duration::from_secs(60), hung_up(&mut read)).await;
            assert!(
                waited.is_err(),
                "a half-closed client still reads its answer"
            );
            drop(theirs);
            tokio::time::timeout(HALF_CLOSED_LOOK * 2, hung_up(&mut read))
                .await
                .expect("a closed client has hung up");
            let mut next = String::new();
            read.read_line(&mut next).await.unwrap();
            assert_eq!(next, "{\"cmd\":\"list-peers\"}\n", "nothing read away");

            let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
            let (read, _write) = ours.into_split();
            let mut read = BufReader::new(read);
            drop(theirs); // Ctrl-C of `lanspread events`
            tokio::time::timeout(Duration::from_secs(1), hung_up(&mut read))
                .await
                .expect("hung up at once");
        });
    }
}
