//! Rules for connections: refuse the node itself, keep exactly one connection per peer
//! when both sides dial at once, and bound the links one address may hold.

use lanspread_proto::PeerId;

use crate::PeerError;

/// Who opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialled.
    Outbound,
    /// The peer dialled.
    Inbound,
}

/// Refuses a connection whose proven peer id is our own.
pub fn check_not_self(local: &PeerId, remote: &PeerId) -> Result<(), PeerError> {
    if local == remote {
        Err(PeerError::SelfConnect)
    } else {
        Ok(())
    }
}

/// Decides whether a new connection to `remote` replaces the existing one.
///
/// A dead existing connection is always replaced. Between two live ones, both sides must
/// reach the same verdict without talking, so the connection dialled by the peer with
/// the smaller id is kept.
pub fn prefer_new_link(
    local: &PeerId,
    remote: &PeerId,
    existing_alive: bool,
    existing: Direction,
    new: Direction,
) -> bool {
    if !existing_alive {
        return true;
    }
    if existing == new {
        // A redial in the same direction supersedes the old connection (e.g. `connect`
        // again after the peer moved).
        return true;
    }
    let dialled_by_smaller = |d: Direction| match d {
        Direction::Outbound => local < remote,
        Direction::Inbound => remote < local,
    };
    dialled_by_smaller(new)
}

/// Links one address may hold by default (`max_links_per_address`). A LAN machine runs one
/// daemon; a host behind NAT, or a test lab on loopback, may run more. Past the cap, new
/// identities from that address are refused, so one machine cannot make itself hundreds
/// of peers (each with its library, partial copies and manifest answers held here, and
/// told to every other peer by peer exchange).
pub const DEFAULT_MAX_LINKS_PER_ADDRESS: usize = 16;

/// Whether an inbound link from an address that holds `from_address` links already is
/// refused under `cap` (`0`: no cap). A peer that is linked already is not refused here:
/// its new connection may replace the old one (a restart, another route; as
/// [`prefer_new_link`] decides), which adds no link.
pub fn over_address_cap(from_address: usize, already_linked: bool, cap: usize) -> bool {
    cap != 0 && !already_linked && from_address >= cap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::pid;

    #[test]
    fn self_is_refused() {
        assert_eq!(
            check_not_self(&pid(1), &pid(1)),
            Err(PeerError::SelfConnect)
        );
        assert_eq!(check_not_self(&pid(1), &pid(2)), Ok(()));
        assert_eq!(
            PeerError::SelfConnect.to_string(),
            "cannot connect peer to itself"
        );
    }

    #[test]
    fn both_sides_keep_the_same_connection() {
        let (a, b) = (pid(1), pid(2));
        // Connection X dialled by a, connection Y dialled by b. a registered X first,
        // b registered Y first.
        let a_keeps_y = prefer_new_link(&a, &b, true, Direction::Outbound, Direction::Inbound);
        let b_keeps_x = prefer_new_link(&b, &a, true, Direction::Outbound, Direction::Inbound);
        // a (smaller) keeps its own dial X; b switches to X.
        assert!(!a_keeps_y);
        assert!(b_keeps_x);
    }

    #[test]
    fn an_address_holds_at_most_its_cap_of_links() {
        assert!(!over_address_cap(0, false, 2));
        assert!(!over_address_cap(1, false, 2));
        assert!(over_address_cap(2, false, 2), "a third identity");
        assert!(
            !over_address_cap(2, true, 2),
            "a linked peer's new connection"
        );
        assert!(!over_address_cap(5_000, false, 0), "no cap");
    }

    #[test]
    fn dead_or_same_direction_is_replaced() {
        assert!(prefer_new_link(
            &pid(1),
            &pid(2),
            false,
            Direction::Outbound,
            Direction::Inbound
        ));
        assert!(prefer_new_link(
            &pid(1),
            &pid(2),
            true,
            Direction::Inbound,
            Direction::Inbound
        ));
    }
}
