//! How the links share their capacity among the flows crossing them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Flow, Node};

/// Weighted max-min fair rates (progressive filling): the most constrained uplink or
/// downlink, per unit of weight, fixes the rate of its flows first, what they leave
/// elsewhere goes to the others — what congestion control converges to on a LAN. With
/// every weight 1 each flow gets an equal share; jittered weights (`Lab::jitter`) give
/// flows the unequal, shifting shares that loss-driven congestion control gives them.
pub(super) fn rates(nodes: &[Node], flows: &mut [Flow]) {
    // Resource 2i: node i's uplink, 2i + 1: its downlink.
    let mut cap: Vec<f64> = nodes.iter().flat_map(|n| [n.up, n.down]).collect();
    let mut count = vec![0usize; cap.len()];
    let mut weight = vec![0.0f64; cap.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); cap.len()];
    for (i, f) in flows.iter().enumerate() {
        for r in [2 * f.src, 2 * f.dst + 1] {
            count[r] += 1;
            weight[r] += f.weight;
            users[r].push(i);
        }
    }
    // Rate per unit of weight.
    let share = |cap: &[f64], weight: &[f64], r: usize| (cap[r] / weight[r]).max(0.0);
    let mut heap = BinaryHeap::new();
    for (r, &n) in count.iter().enumerate() {
        if n > 0 {
            heap.push(Reverse((share(&cap, &weight, r).to_bits(), r)));
        }
    }
    let mut fixed = vec![false; flows.len()];
    while let Some(Reverse((bits, r))) = heap.pop() {
        if count[r] == 0 || share(&cap, &weight, r).to_bits() != bits {
            continue; // stale
        }
        let rate = f64::from_bits(bits);
        for &i in &users[r] {
            if fixed[i] {
                continue;
            }
            fixed[i] = true;
            flows[i].rate = rate * flows[i].weight;
            let other = if r % 2 == 0 {
                2 * flows[i].dst + 1
            } else {
                2 * flows[i].src
            };
            cap[other] -= flows[i].rate;
            count[other] -= 1;
            weight[other] -= flows[i].weight;
            if count[other] > 0 {
                heap.push(Reverse((share(&cap, &weight, other).to_bits(), other)));
            }
        }
        count[r] = 0;
    }
}
