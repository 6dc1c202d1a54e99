//! Where a simulated party's time goes: the links' use in fixed windows (the server's
//! upload, the clients' uploads, downloaders with nothing coming in or going out, flows
//! per downlink). `LANSPREAD_SWARM_TIMELINE=1` prints it with each test's report; it is
//! how the inbound cap (`SWARM_INBOUND_UNITS`) and the start-up cost were found.

use std::fmt;

/// Window length, simulated seconds.
pub const WINDOW: f64 = 5.0;
const MBIT: f64 = 1e6 / 8.0;

/// Link use: one step's (then as it was for the step's length) or one window's (a time
/// average over the window).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// The server's upload, bytes/s.
    pub server_up: f64,
    /// All clients' uploads together, bytes/s.
    pub clients_up: f64,
    /// Downloading clients with nothing coming in / nothing going out.
    pub idle_down: f64,
    pub idle_up: f64,
    /// Flows the server sends; flows into a downloading client.
    pub server_flows: f64,
    pub flows_in: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline(pub Vec<Window>);

impl Timeline {
    /// Adds a step that started at `now` and lasted `dt`, split over the windows it
    /// spans.
    pub fn add(&mut self, now: f64, dt: f64, s: &Window) {
        let (mut at, end) = (now, now + dt);
        while at < end {
            let i = (at / WINDOW) as usize;
            let upto = ((i + 1) as f64 * WINDOW).min(end);
            if self.0.len() <= i {
                self.0.resize(i + 1, Window::default());
            }
            let w = &mut self.0[i];
            let k = (upto - at) / WINDOW;
            w.server_up += s.server_up * k;
            w.clients_up += s.clients_up * k;
            w.idle_down += s.idle_down * k;
            w.idle_up += s.idle_up * k;
            w.server_flows += s.server_flows * k;
            w.flows_in += s.flows_in * k;
            at = upto.max(at + 1e-9);
        }
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "     s | server Mbit/s | clients up Mbit/s | idle down | idle up | server flows | flows in"
        )?;
        for (i, w) in self.0.iter().enumerate() {
            writeln!(
                f,
                "{:6.0} | {:13.1} | {:17.1} | {:9.1} | {:7.1} | {:12.1} | {:8.1}",
                i as f64 * WINDOW,
                w.server_up / MBIT,
                w.clients_up / MBIT,
                w.idle_down,
                w.idle_up,
                w.server_flows,
                w.flows_in,
            )?;
        }
        Ok(())
    }
}
