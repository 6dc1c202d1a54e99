//! Cut-through in the simulation: a partial holder also serves the chunks it is
//! fetching, each piece once it is verified there, so a relayed flow never gets ahead of
//! the flow it relays (`Lab::relay`). What a relay's source loses (its upstream cut, or
//! bad bytes it checked and never passed on) ends the relay as gone.

use std::collections::HashMap;

use lanspread_peer::FailKind;
use lanspread_proto::ChunkSet;

use super::{Flow, Party, EPS};

/// Caps every relayed flow that caught up with its upstream at the upstream's rate (what
/// it then leaves of its links is not handed to others: a small underestimate), and
/// returns the time until the next one catches up.
pub(super) fn cap(flows: &mut [Flow]) -> f64 {
    let at: HashMap<u64, usize> = flows.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
    let mut dt = f64::INFINITY;
    // Flows are in the order they started: an upstream's rate is final before its relays'.
    for i in 0..flows.len() {
        let Some(&u) = flows[i].up.and_then(|id| at.get(&id)) else {
            continue; // not relayed, or its upstream is verified
        };
        let (up_done, up_rate) = (flows[u].len - flows[u].left, flows[u].rate);
        let f = &mut flows[i];
        let done = f.len - f.left;
        if done + EPS * f.len >= up_done {
            f.rate = f.rate.min(up_rate);
        } else if f.rate > up_rate {
            dt = dt.min((up_done - done) / (f.rate - up_rate));
        }
    }
    dt
}

impl Party<'_> {
    /// What client `c` serves: its verified chunks and, with cut-through, those it is
    /// fetching.
    pub(super) fn servable(&self, c: usize) -> ChunkSet {
        let mut set = self.nodes[c].have.clone();
        if self.lab.relay && c > 0 {
            for f in self.flows.iter().filter(|f| f.dst == c) {
                set.insert(f.chunk);
            }
        }
        set
    }

    /// The chunks client `c` is fetching and serves as they arrive (none without
    /// cut-through).
    pub(super) fn growing(&self, c: usize) -> Vec<usize> {
        if !self.lab.relay || c == 0 {
            return Vec::new();
        }
        self.flows
            .iter()
            .filter(|f| f.dst == c && !self.nodes[c].have.contains(f.chunk))
            .map(|f| f.chunk)
            .collect()
    }

    /// The flows `ids` ended without their chunk: the flows that relay them end too, as
    /// gone (their downloaders fetch the chunk again), and so on down the chain.
    pub(super) fn cut_relays(&mut self, ids: &[u64]) {
        let mut ids = ids.to_vec();
        while !ids.is_empty() {
            self.bad.extend(ids.iter().copied());
            let (cut, kept): (Vec<Flow>, Vec<Flow>) = self
                .flows
                .drain(..)
                .partition(|f| f.up.is_some_and(|u| ids.contains(&u)));
            self.flows = kept;
            ids = cut.iter().map(|f| f.id).collect();
            for f in cut {
                if f.turn {
                    let dst = self.nodes[f.dst].id.clone();
                    self.nodes[f.src].turns.release(&dst);
                }
                self.nodes[f.src].uploaded += f.len - f.left;
                self.announce(f.dst);
                let gone = Err((FailKind::SourceGone, "relay cut".to_owned()));
                self.answer(&f, gone);
            }
        }
    }
}
