//! Inbound connections still in their handshake — QUIC's, then the hello with its
//! identity and LAN secret checks — counted in all and per source address. Past either
//! cap a new connection is refused before anything is kept for it, so a stranger who
//! opens connections and never says hello holds at most its address's share of these
//! slots, each for at most the hello's timeout, and cannot make the daemon keep
//! connections without bound. Connections past their hello are not counted here.

use std::collections::HashMap;
use std::net::IpAddr;

/// Handshakes in progress at once, from all addresses. A downloader opens its link and
/// up to one data connection per transfer thread at once; a room of clients starting
/// together is let in in waves (a refused data connection costs its download a lane, a
/// refused link is dialled again).
pub const MAX_HANDSHAKES: usize = 1024;
/// Handshakes in progress at once from one address: two downloads starting together
/// with the most transfer threads (64) each, and their link.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 160;

/// Why an inbound connection was refused: the cap reached and how many were in progress.
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

    /// Counts a handshake from `ip` when both caps allow it; an IPv4 peer reached over a
    /// dual-stack socket counts as its IPv4 address. Every `Ok` needs its [`end`](Self::end).
    pub fn begin(&mut self, ip: IpAddr) -> Result<(), Crowded> {
        let ip = ip.to_canonical();
        if self.total >= self.max_total {
            return Err(Crowded::All(self.total));
        }
        let here = self.per_address.entry(ip).or_insert(0);
        if *here >= self.max_per_address {
            return Err(Crowded::Address(*here));
        }
        *here += 1;
        self.total += 1;
        Ok(())
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

    /// Handshakes in progress.
    pub fn in_progress(&self) -> usize {
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
            h.begin(ip("10.0.0.9")).unwrap();
        }
        assert_eq!(h.begin(ip("10.0.0.9")), Err(Crowded::Address(3)));
        // The same address reached as IPv4-mapped IPv6 is the same address.
        assert_eq!(h.begin(ip("::ffff:10.0.0.9")), Err(Crowded::Address(3)));
        h.begin(ip("10.0.0.1")).unwrap();
        h.end(ip("::ffff:10.0.0.9"));
        h.begin(ip("10.0.0.9")).unwrap();
        assert_eq!(h.in_progress(), 4);
    }

    #[test]
    fn the_total_is_capped_and_slots_come_back() {
        let mut h = Handshakes::new(4, 2);
        let addrs: Vec<IpAddr> = (1..=4).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        for a in &addrs {
            h.begin(*a).unwrap();
        }
        assert_eq!(h.begin(ip("10.0.0.5")), Err(Crowded::All(4)));
        for a in &addrs {
            h.end(*a);
        }
        assert_eq!(h.in_progress(), 0);
        assert!(h.per_address.is_empty(), "no address is remembered");
        // An end nothing began changes nothing.
        h.end(ip("10.0.0.7"));
        assert_eq!(h.in_progress(), 0);
        for _ in 0..2 {
            h.begin(ip("10.0.0.5")).unwrap();
        }
    }
}
