//! How the links share their capacity among the flows crossing them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Flow, Node};

/// Max-min fair rates (progressive filling): the most constrained uplink or downlink
/// fixes the rate of its flows first, what they leave elsewhere goes to the others — what
/// congestion control converges to on a LAN.
pub(super) fn rates(nodes: &[Node], flows: &mut [Flow]) {
    // Resource 2i: node i's uplink, 2i + 1: its downlink.
    let mut cap: Vec<f64> = nodes.iter().flat_map(|n| [n.up, n.down]).collect();
    let mut count = vec![0usize; cap.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); cap.len()];
    for (i, f) in flows.iter().enumerate() {
        for r in [2 * f.src, 2 * f.dst + 1] {
            count[r] += 1;
            users[r].push(i);
        }
    }
    let share = |cap: &[f64], count: &[usize], r: usize| (cap[r] / count[r] as f64).max(0.0);
    let mut heap = BinaryHeap::new();
    for r in 0..cap.len() {
        if count[r] > 0 {
            heap.push(Reverse((share(&cap, &count, r).to_bits(), r)));
        }
    }
    let mut fixed = vec![false; flows.len()];
    while let Some(Reverse((bits, r))) = heap.pop() {
        if count[r] == 0 || share(&cap, &count, r).to_bits() != bits {
            continue; // stale
        }
        let rate = f64::from_bits(bits);
        for &i in &users[r] {
            if fixed[i] {
                continue;
            }
            fixed[i] = true;
            flows[i].rate = rate;
            let other = if r % 2 == 0 {
                2 * flows[i].dst + 1
            } else {
                2 * flows[i].src
            };
            cap[other] -= rate;
            count[other] -= 1;
            if count[other] > 0 {
                heap.push(Reverse((share(&cap, &count, other).to_bits(), other)));
            }
        }
        count[r] = 0;
    }
}
