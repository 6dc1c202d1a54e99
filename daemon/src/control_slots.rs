//! The control socket's connection slots: a cap for anyone who may open the socket, and
//! a reserve above it for admins, counted over admitted connections only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use lanspread_control::api::ErrorKind;
use lanspread_control::Failure;
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
}
