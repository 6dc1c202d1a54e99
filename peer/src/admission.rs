//! Inbound connections still in their handshake — QUIC's, then the hello with its
//! identity and LAN secret checks — counted in all and per source address. Past the cap
//! of an address, more from it are refused; past the total cap, new ones are ignored
//! (their clients send their first packet again a moment later, so a burst at a party's
//! start queues instead of failing). A stranger who opens connections and never says
//! hello holds at most its address's share of these slots, each for a bounded time (the
//! daemon's deadline on the phase). While slots are busy, a connection from an address
//! not yet proven is asked to prove it first (a QUIC Retry, one round trip): packets with
//! forged source addresses then hold nothing. Connections past their hello are not
//! counted here.

use std::collections::HashMap;
use std::net::IpAddr;

/// Handshakes in progress at once, from all addresses. A downloader opens its link and
/// up to one data connection per transfer thread at once; a room of clients starting
/// together is let in in waves (past this, a client's first packet is ignored and sent
/// again by its client within its dial timeout).
pub const MAX_HANDSHAKES: usize = 1024;
/// Handshakes in progress at once from one address: two downloads starting together
/// with the most transfer threads (64) each, and their link.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 160;

/// What to do with a new inbound connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Counted: go on with its handshake, and [`Handshakes::end`] it after.
    Counted,
    /// Ask its client to prove its address first (QUIC Retry); it comes back proven.
    Retry,
    /// Turned away, and why.
    Crowded(Crowded),
}

/// Why an inbound connection was turned away: the cap reached and how many were in
/// progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crowded {
    /// This address has `.0` handshakes in progress.
    Address(usize),
    /// `.0` handshakes are in progress in all.
    All(usize),
}

impl std::fmt::Display for Crowded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Crowded::Address(n) => write!(f, "{n} handshakes in progress from that address"),
            Crowded::All(n) => write!(f, "{n} handshakes in progress"),
        }
    }
}

/// The handshakes in progress, in all and per address.
#[derive(Debug)]
pub struct Handshakes {
    per_address: HashMap<IpAddr, usize>,
    total: usize,
    max_total: usize,
    max_per_address: usize,
}

impl Default for Handshakes {
    fn default() -> Self {
        Self::new(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_ADDRESS)
    }
}

impl Handshakes {
    /// No handshake in progress; at most `max_total` at once, `max_per_address` from one.
    pub fn new(max_total: usize, max_per_address: usize) -> Self {
        Self {
            per_address: HashMap::new(),
            total: 0,
            max_total,
            max_per_address,
        }
    }

    /// Decides on a connection from `ip` (`proven`: its client showed it receives at that
    /// address). Once a quarter of either cap is in use, an unproven address is asked to
    /// prove itself first; past the caps, connections are turned away. An IPv4 peer
    /// reached over a dual-stack socket counts as its IPv4 address. Every
    /// [`Admit::Counted`] needs its [`end`](Self::end).
    pub fn begin(&mut self, ip: IpAddr, proven: bool) -> Admit {
        let ip = ip.to_canonical();
        let here = self.per_address.get(&ip).copied().unwrap_or(0);
        let busy = self.total * 4 >= self.max_total || here * 4 >= self.max_per_address;
        if !proven && busy {
            return Admit::Retry;
        }
        if self.total >= self.max_total {
            return Admit::Crowded(Crowded::All(self.total));
        }
        if here >= self.max_per_address {
            return Admit::Crowded(Crowded::Address(here));
        }
        *self.per_address.entry(ip).or_insert(0) += 1;
        self.total += 1;
        Admit::Counted
    }

    /// Ends a handshake [`begin`](Self::begin) counted.
    pub fn end(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if let Some(here) = self.per_address.get_mut(&ip) {
            *here -= 1;
            if *here == 0 {
                self.per_address.remove(&ip);
            }
            self.total -= 1;
        }
    }

    /// Handshakes in progress (what the tests check; the daemon needs only the verdicts).
    #[cfg(test)]
    fn in_progress(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_is_capped_and_others_still_get_in() {
        let mut h = Handshakes::new(10, 3);
        for _ in 0..3 {
            assert_eq!(h.begin(ip("10.0.0.9"), true), Admit::Counted);
        }
        let crowded = Admit::Crowded(Crowded::Address(3));
        assert_eq!(h.begin(ip("10.0.0.9"), true), crowded);
        // The same address reached as IPv4-mapped IPv6 is the same address.
        assert_eq!(h.begin(ip("::ffff:10.0.0.9"), true), crowded);
        assert_eq!(h.begin(ip("10.0.0.1"), true), Admit::Counted);
        h.end(ip("::ffff:10.0.0.9"));
        assert_eq!(h.begin(ip("10.0.0.9"), true), Admit::Counted);
        assert_eq!(h.in_progress(), 4);
    }

    #[test]
    fn the_total_is_capped_and_slots_come_back() {
        let mut h = Handshakes::new(4, 2);
        let addrs: Vec<IpAddr> = (1..=4).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        for a in &addrs {
            assert_eq!(h.begin(*a, true), Admit::Counted);
        }
        let full = Admit::Crowded(Crowded::All(4));
        assert_eq!(h.begin(ip("10.0.0.5"), true), full);
        for a in &addrs {
            h.end(*a);
        }
        assert_eq!(h.in_progress(), 0);
        assert!(h.per_address.is_empty(), "no address is remembered");
        // An end nothing began changes nothing.
        h.end(ip("10.0.0.7"));
        assert_eq!(h.in_progress(), 0);
        for _ in 0..2 {
            assert_eq!(h.begin(ip("10.0.0.5"), true), Admit::Counted);
        }
    }

    #[test]
    fn unproven_addresses_prove_themselves_once_slots_are_busy() {
        let mut h = Handshakes::new(8, 8);
        // Quiet: no round trip is added.
        assert_eq!(h.begin(ip("10.0.0.1"), false), Admit::Counted);
        assert_eq!(h.begin(ip("10.0.0.2"), false), Admit::Counted);
        // A quarter in use: forged source addresses would hold slots, so they must prove
        // themselves; a proven one is counted.
        assert_eq!(h.begin(ip("10.0.0.3"), false), Admit::Retry);
        assert_eq!(h.begin(ip("10.0.0.3"), true), Admit::Counted);
        // Full: even proven ones are turned away, and unproven ones still only retried.
        for _ in 0..5 {
            assert_eq!(h.begin(ip("10.0.0.4"), true), Admit::Counted);
        }
        assert_eq!(
            h.begin(ip("10.0.0.5"), true),
            Admit::Crowded(Crowded::All(8))
        );
        assert_eq!(h.begin(ip("10.0.0.5"), false), Admit::Retry);
        // One address at a quarter of its own cap is busy too.
        let mut h = Handshakes::new(100, 4);
        assert_eq!(h.begin(ip("10.0.0.9"), false), Admit::Counted);
        assert_eq!(h.begin(ip("10.0.0.9"), false), Admit::Retry);
        assert_eq!(h.begin(ip("10.0.0.8"), false), Admit::Counted);
    }
}
