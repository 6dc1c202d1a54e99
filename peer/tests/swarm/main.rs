//! A deterministic simulation of a LAN party: one file server and N clients that want
//! the same game at once, every link with its own upload and download rate. Every client
//! runs the daemon's download engine (`Engine`: shuffled order, partial sources with
//! rarest first, offers to the server and rests, the swarm wait); the server answers
//! offers with the daemon's `SeedChooser`. Discrete events and a fluid model of the links
//! (each flow gets the smaller of its sender's and its receiver's fair share), no sockets;
//! a client serves the chunks it is fetching as they arrive (`Lab::relay`), a relayed flow capped by the
//! one it relays (cut-through, `lab/relay.rs`, as the daemon's `Growing` chunks); the
//! engines' clock is the simulated one. It reports the slowest and median client's time against the
//! lower bound of peer-assisted distribution (Kumar & Ross 2006),
//!
//!     T_min = max(F/U, N·F/(U + Σ u_i), F/d_min),
//!
//! and the server's upload as a multiple of F. The figures are simulated seconds, not
//! wall time, so asserting them is deterministic. `Lab::jitter` and `Lab::payload` make
//! the links share unevenly and carry QUIC's payload only, as the real lab's do: that
//! model is the one to judge a policy with before the lab.
//!
//! `LANSPREAD_SWARM_CLIENTS` sizes the environment-sized party (not for CI);
//! `LANSPREAD_SWARM_TIMELINE=1` prints each party's links' use over time (`timeline.rs`).

mod lab;
mod timeline;

use lab::{run, Kill, Lab, Report};
use std::time::Duration;

use lanspread_peer::{OFFER_REST, SWARM_UPLOADS, TURN_HOLD};
use lanspread_proto::UNIT_SIZE;

fn show(name: &str, r: &Report) {
    eprintln!(
        "{name}: T_min {:.1} s, slowest {:.2} × T_min, median {:.2} ×, server upload {:.2} F, \
         {:.0} % from clients, {} races lost",
        r.t_min,
        r.slowest,
        r.median,
        r.server_upload_f,
        100.0 * r.from_clients_share,
        r.races_lost,
    );
    if std::env::var_os("LANSPREAD_SWARM_TIMELINE").is_some() {
        eprintln!("{name}:\n{}", r.timeline);
    }
}

fn assert_all_finish(r: &Report, clients: usize) {
    assert_eq!(r.finished, clients, "{r:?}");
    assert_eq!(r.starved, 0, "{r:?}");
}

#[test]
fn sixteen_clients_at_a_lan_party() {
    let lab = Lab::party(16);
    let r = run(&lab);
    show("N=16", &r);
    assert_all_finish(&r, 16);
    // The server sends each chunk about once and one full copy is in the swarm after F/U.
    assert!(r.server_upload_f <= 1.05, "{r:?}");
    let copy = r.one_copy_at.expect("a copy") / (lab.file_bytes() / lab.server_up);
    assert!(copy < 1.35, "one copy after {copy:.2} × F/U");
    assert!(r.from_clients_share > 0.9, "{r:?}");
    // The end game raced last chunks and cancelled the losers (16 here).
    assert!(r.races_lost > 0, "{r:?}");
    // Every client asks for the manifest before any asks for a chunk, so the server
    // answers the party in upload turns from the first request: four answers at 25 Mbit/s
    // each, and four relayed flows into each client fill its link. (Until session 27 the
    // simulation gave the first client to start four answers outside the turns, as if
    // it were alone: eight at 12.5 Mbit/s for the first 20 s, 1.18 × instead of 1.07 ×.)
    assert!(r.server_flows_max <= SWARM_UPLOADS, "{r:?}");
    // Chunks passed on as they arrive (cut-through), at most four coming in at once
    // (`SWARM_INBOUND_UNITS`): 1.07 × T_min, median 1.01 × (whole verified chunks only:
    // 1.38 ×, see below; three or five coming in at once: 1.20 ×, 1.16 ×; three or five
    // upload turns: 1.20 ×, 1.18 ×; libtorrent with 4 MiB pieces, real lab: 1.32-1.53 ×).
    // The bound guards against a policy regression.
    assert!(r.slowest < 1.15 && r.median < 1.1, "{r:?}");
}

#[test]
fn cut_through_is_what_gets_the_start_going() {
    let mut lab = Lab::party(16);
    let relayed = run(&lab);
    lab.relay = false;
    let whole = run(&lab);
    show("N=16, whole chunks only", &whole);
    assert_all_finish(&whole, 16);
    // Without it, no client has a whole unit to pass on for the first seconds (see the
    // timeline): with 8 MiB units 1.11 × against 1.02 × (with 32 MiB ones, ≈ 20 s and
    // 1.38 × against 1.07 ×).
    assert!(whole.slowest < 1.5, "{whole:?}");
    assert!(
        relayed.slowest + 0.05 < whole.slowest,
        "cut-through {:.2} × against {:.2} ×",
        relayed.slowest,
        whole.slowest
    );
}

#[test]
fn late_joiners_are_served_too() {
    let mut lab = Lab::party(16);
    lab.stagger = lab.t_min() / 16.0;
    let r = run(&lab);
    show("N=16 staggered", &r);
    assert_all_finish(&r, 16);
    assert!(r.server_upload_f <= 1.2, "{r:?}");
    // 1.13 × (median 1.03 ×) with cut-through and the end game (the first client is
    // alone for 5.4 s and is answered outside the turns, as the daemon does); 1.27 × (median
    // 1.13 ×) with the inbound cap only; 1.64 × (median 1.27 ×) before it, since upload turns: the first client,
    // ahead of the others, waits its turn at the server like everyone (1.31 × before
    // turns, when N = 256 was 2.58 ×). The bound guards against a policy regression.
    assert!(r.slowest < 1.25 && r.median < 1.1, "{r:?}");
}

#[test]
fn two_hundred_fifty_six_clients_with_a_link_cap() {
    // Each client links to 40 others: what it sees as "no partial holder has it" is not
    // the whole swarm, so the server sends some chunks more than once.
    let r = run(&Lab::party(256));
    show("N=256", &r);
    assert_all_finish(&r, 256);
    // With cut-through 1.14 × at 1.03 F (a chunk being fetched counts as held, so the
    // server is rarely offered it twice; 1.26 × before session 27's fix of the start);
    // the inbound cap alone 1.83 × at 1.53 F; upload turns alone: 2.13 × at 1.69 F
    // (2.58 × at 1.91 F without them).
    assert!(r.server_upload_f <= 1.2, "{r:?}");
    assert!(r.slowest < 1.25, "{r:?}");
}

#[test]
fn clients_from_the_environment() {
    // `LANSPREAD_SWARM_CLIENTS=1000` runs the large party (about 7 minutes here: 1.16 ×
    // T_min, median 1.15 ×, at 1.03 F; 1.29 × before session 27's fix of the start;
    // 1.95 × at 1.75 F without cut-through); CI runs 32 (1.12 ×).
    let n = std::env::var("LANSPREAD_SWARM_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let r = run(&Lab::party(n));
    show(&format!("N={n}"), &r);
    assert_all_finish(&r, n);
    assert!(r.slowest < 1.5, "{r:?}");
    assert!(r.from_clients_share > 0.9, "{r:?}");
}

#[test]
fn a_vanishing_partial_holder_costs_nothing_but_its_chunks() {
    let mut lab = Lab::party(16);
    lab.kill = Kill::At(5, 40.0);
    let r = run(&lab);
    show("N=16, client 5 killed at 40 s", &r);
    assert_all_finish(&r, 15);
}

#[test]
fn the_server_may_leave_once_one_copy_is_in_the_swarm() {
    let mut lab = Lab::party(16);
    lab.kill = Kill::ServerAfterOneCopy;
    let r = run(&lab);
    show("N=16, server killed after one copy", &r);
    assert_all_finish(&r, 16);
}

#[test]
fn a_server_gone_too_early_leaves_clean_failures() {
    let mut lab = Lab::party(16);
    lab.kill = Kill::At(0, 30.0);
    let r = run(&lab);
    show("N=16, server killed at 30 s", &r);
    // Every client gets what exists and stops; `run` asserts nobody stalls while a chunk
    // it lacks is held by a living peer.
    assert_eq!(r.finished, 0, "{r:?}");
    assert_eq!(r.starved, 16, "{r:?}");
}

#[test]
fn a_lying_partial_holder_is_dropped_and_its_chunks_fetched_elsewhere() {
    let mut lab = Lab::party(16);
    lab.liar = Some(3);
    let r = run(&lab);
    show("N=16, client 3 lies", &r);
    assert!(r.liar_rejected > 0, "the liar sent nothing: {r:?}");
    assert_all_finish(&r, 16);
}

#[test]
fn the_simulation_is_deterministic() {
    let a = run(&Lab::party(8));
    let b = run(&Lab::party(8));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

#[test]
fn links_that_share_unevenly_cost_what_the_real_lab_loses() {
    // The real lab's links are not fluid: Cubic flows through `tbf` back off and climb
    // again, and a relay that caught up with its upstream cannot take up what the
    // sharing would give it. Flow weights drawn anew every 2 s from 1 ± 0.6, with QUIC's
    // ≈ 95 % payload through `tbf`, give N = 4 / 8 / 16 1.15 / 1.20 / 1.22 × T_min against
    // the real lab's 1.11–1.13 / 1.19–1.20 / 1.24 × (N = 16 at 50 Mbit/s, where its 17
    // daemons have CPU to spare). Policies judged with it (session 29, N = 8 / 16 / 32;
    // this policy 1.20 / 1.22 / 1.30 ×): four chunks coming in stays best (3: 1.26 / 1.30 /
    // 1.32 ×, 5: 1.22 / 1.24 / 1.36 ×, 6: 1.21 / 1.33 / 1.40 ×), four upload turns too (3:
    // 1.30 / 1.32 / 1.39 ×, 5: 1.21 / 1.29 / 1.31 ×, as the real lab's 1.36 × at N = 16);
    // a fifth chunk when all four coming in are relays of growing chunks 1.20 / 1.23 /
    // 1.29 × (real lab: 1.40, 1.35 × against 1.27, 1.35 ×); racing 0, 2 or 4 last chunks
    // changes ≤ 0.02; relays of relays forbidden 1.21 / 1.33 / 1.41 ×. Letting a relay held
    // to its upstream hand its links' rest to the other flows at once takes N = 16 only to
    // 1.18 ×: most of the loss is the uneven sharing itself.
    let fluid = run(&Lab::party(16));
    let mut lab = Lab::party(16);
    lab.jitter = (0.6, 2.0);
    lab.payload = 0.95;
    let r = run(&lab);
    show("N=16, uneven links", &r);
    assert_all_finish(&r, 16);
    assert!(r.server_upload_f <= 1.05, "{r:?}");
    // Fluctuating links cost what the fluid model cannot show, and no more than the real
    // lab loses.
    assert!(r.slowest > fluid.slowest + 0.08, "{r:?} against {fluid:?}");
    assert!(r.slowest < 1.3 && r.median < 1.25, "{r:?}");
}

#[test]
fn eight_mib_units_with_shorter_delays_beat_whole_chunks() {
    // The engine's unit cut to 8 MiB slices of the chunks (announced, asked for, relayed
    // and served alone), with the rests and turn holds cut in proportion, in the uneven
    // model (session 30, two seeds, N = 8 / 16 / 32): 1.13 / 1.16–1.17 / 1.19 × against
    // 32 MiB chunks' 1.16–1.20 / 1.22 / 1.30 ×; 4 MiB with 62 / 94 ms 1.13–1.14 / 1.14 /
    // 1.18 ×, 16 MiB with 250 / 375 ms 1.16 / 1.18–1.20 / 1.21–1.24 ×. With today's 500 /
    // 750 ms, 8 MiB units are worse (N = 16 1.24–1.26 ×, N = 32 1.70–1.74 ×): a freed turn
    // kept for the queue's head idles for most of a slice's time. 8 MiB, 125 / 187 ms is
    // what the daemon runs (`UNIT_SIZE`, `OFFER_REST`, `TURN_HOLD`).
    let uneven = |unit: u64, rest: u64, hold: u64| {
        let mut lab = Lab::party(16);
        lab.jitter = (0.6, 2.0);
        lab.payload = 0.95;
        lab.unit = unit << 20;
        lab.offer_rest = Duration::from_millis(rest);
        lab.turn_hold = Duration::from_millis(hold);
        lab
    };
    let chunks = run(&uneven(32, 500, 750));
    let slices = run(&uneven(8, 125, 187));
    assert_eq!(
        (UNIT_SIZE, OFFER_REST, TURN_HOLD),
        (
            8 << 20,
            Duration::from_millis(125),
            Duration::from_millis(187)
        ),
        "the daemon's settings are the ones judged here"
    );
    show("N=16, uneven links, 8 MiB units, 125 / 187 ms", &slices);
    assert_all_finish(&slices, 16);
    assert!(slices.server_upload_f <= 1.05, "{slices:?}");
    assert!(
        slices.slowest < chunks.slowest - 0.04,
        "{slices:?} against {chunks:?}"
    );
    assert!(slices.slowest <= 1.2 && slices.median <= 1.17, "{slices:?}");
}
