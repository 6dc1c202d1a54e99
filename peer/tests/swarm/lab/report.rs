//! What a party's run reports: the clients' times against T_min, the server's upload,
//! the links' use over time; and the check that whoever did not finish stopped cleanly.

use crate::timeline::{Timeline, Window};

use super::{Node, Party};

#[derive(Debug)]
pub struct Report {
    pub t_min: f64,
    pub slowest: f64,
    pub median: f64,
    pub server_upload_f: f64,
    /// Share of all bytes the clients got from other clients.
    pub from_clients_share: f64,
    /// Clients that finished / that stopped (download failed) with chunks missing.
    pub finished: usize,
    pub starved: usize,
    /// Chunks from the liar that failed their hash (and were fetched again elsewhere).
    pub liar_rejected: usize,
    /// End-game races whose loser was cancelled.
    pub races_lost: usize,
    /// When every chunk first existed on some client (s).
    pub one_copy_at: Option<f64>,
    /// Most answers the server sent at once.
    pub server_flows_max: usize,
    /// The links' use over time.
    pub timeline: Timeline,
}

impl Party<'_> {
    /// Adds the links' use over the next `dt` seconds to the timeline.
    pub(super) fn record(&mut self, dt: f64) {
        if self.timeline.is_none() {
            return;
        }
        let downloading: Vec<usize> = (1..=self.lab.clients).filter(|&c| self.active(c)).collect();
        let from = |c: usize| self.flows.iter().filter(move |f| f.src == c);
        let into = |c: usize| self.flows.iter().filter(move |f| f.dst == c);
        let count = |n: usize| n as f64;
        let step = Window {
            server_up: from(0).map(|f| f.rate).sum(),
            clients_up: self
                .flows
                .iter()
                .filter(|f| f.src > 0)
                .map(|f| f.rate)
                .sum(),
            idle_down: count(
                downloading
                    .iter()
                    .filter(|&&c| into(c).next().is_none())
                    .count(),
            ),
            idle_up: count(
                downloading
                    .iter()
                    .filter(|&&c| from(c).next().is_none())
                    .count(),
            ),
            server_flows: count(from(0).count()),
            flows_in: count(downloading.iter().map(|&c| into(c).count()).sum::<usize>())
                / downloading.len().max(1) as f64,
        };
        if let Some(t) = self.timeline.as_mut() {
            t.add(self.now, dt, &step);
        }
    }

    pub(super) fn report(&self) -> Report {
        let lab = self.lab;
        let n = lab.clients;
        let living: Vec<&Node> = self.nodes[1..].iter().filter(|c| !c.dead).collect();
        let mut times: Vec<f64> = living
            .iter()
            .filter_map(|c| c.done_at.map(|t| t - c.start))
            .collect();
        times.sort_by(f64::total_cmp);
        let finished = times.len();
        // Whoever did not finish must lack only chunks no living peer holds: a clean
        // failure, not a stall.
        for c in living.iter().filter(|c| c.done_at.is_none()) {
            assert!(c.failed, "a client neither finished nor failed");
            for chunk in (0..=lab.units()).filter(|&x| !c.have.contains(x)) {
                let somewhere = self.nodes.iter().any(|o| !o.dead && o.have.contains(chunk));
                assert!(
                    !somewhere,
                    "a client stopped while chunk {chunk} exists: {}",
                    c.why
                );
            }
        }
        let f = lab.file_bytes();
        let t = |x: Option<&f64>| x.map_or(f64::INFINITY, |t| t / lab.t_min());
        let starved = living.iter().filter(|c| c.failed).count();
        Report {
            t_min: lab.t_min(),
            slowest: t(times.last()),
            median: t(times.get(times.len() / 2)),
            server_upload_f: self.nodes[0].uploaded / f,
            from_clients_share: self.nodes[1..].iter().map(|c| c.from_clients).sum::<f64>()
                / (f * n as f64),
            finished,
            starved,
            liar_rejected: self.liar_rejected,
            races_lost: self.races_lost,
            one_copy_at: self.one_copy_at,
            server_flows_max: self.server_flows_max,
            timeline: self.timeline.clone().unwrap_or_default(),
        }
    }
}
