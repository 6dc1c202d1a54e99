//! The partial holders' part of the planner, tested without sockets: rarest chunk
//! first, one chunk at a time per holder, the inbound cap, rests, bans and revivals.

use super::super::tests::file;
use super::super::{FailKind, Planner, PlannerStatus};
use super::LATER_UNCOUNT;
use crate::table::tests::pid;
use lanspread_proto::ChunkSet;
use lanspread_proto::UNIT_SIZE;
use std::time::Duration;

const C: u64 = UNIT_SIZE;

fn set(len: usize, chunks: &[usize]) -> ChunkSet {
    let mut s = ChunkSet::empty(len);
    for &c in chunks {
        s.insert(c);
    }
    s
}

fn order(p: &mut Planner) -> Vec<usize> {
    let mut out = Vec::new();
    while let Some(a) = p.poll_assign() {
        out.push(a.chunk);
        p.on_done(a.chunk, &a.peer);
    }
    out
}

#[test]
fn a_shuffle_is_repeatable_per_seed_different_between_seeds_and_keeps_small_runs() {
    let mut files = vec![file("big.eti", 16 * C)];
    files.extend((0..6).map(|i| file(&format!("s{i}"), 1000)));
    let plan = |seed| {
        Planner::new(&files, &[pid(1)], 64)
            .batch_small_chunks(32, 1 << 20, 8 << 20)
            .shuffled(seed)
    };
    let (a, b, c) = (
        order(&mut plan(1)),
        order(&mut plan(1)),
        order(&mut plan(2)),
    );
    assert_eq!(a, b, "same seed, same order");
    assert_ne!(a, c, "another seed, another order");
    assert_ne!(a, (0..22).collect::<Vec<_>>(), "not file order");
    let last = order(&mut plan(1).fetch_last(0));
    assert_eq!(
        &last[6..],
        (0..16).collect::<Vec<_>>(),
        "file 0 last, in order"
    );
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..22).collect::<Vec<_>>(), "every chunk once");
    // A 32 MiB chunk's units go one after another.
    let per = (lanspread_proto::CHUNK_SIZE / C) as usize;
    for chunk in 0..16 / per {
        let at: Vec<usize> = (chunk * per..(chunk + 1) * per)
            .map(|u| a.iter().position(|&x| x == u).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[1] == w[0] + 1), "{a:?}");
    }
    // The six small files are one unit: one batch.
    let mut p = plan(3);
    let batches: Vec<_> = std::iter::from_fn(|| {
        let b = p.poll_batch()?;
        for &c in &b.chunks {
            p.on_done(c, &b.peer);
        }
        Some(b.chunks)
    })
    .collect();
    assert!(batches.contains(&(16..22).collect()), "{batches:?}");
}

#[test]
fn a_partial_source_gets_its_rarest_chunk_one_at_a_time_and_the_server_the_rest() {
    let files = [file("g.eti", 8 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 4);
    assert!(p.set_partial(&pid(2), set(8, &[0, 1, 2])));
    assert!(p.set_partial(&pid(3), set(8, &[1, 2, 5])));
    assert!(
        !p.set_partial(&pid(1), set(8, &[0])),
        "a complete source stays one"
    );
    assert!(!p.set_partial(&pid(4), set(7, &[0])), "another chunk count");
    assert_eq!(
        (p.rarity(0), p.rarity(1), p.rarity(5), p.rarity(7)),
        (1, 2, 1, 0)
    );
    let started: Vec<_> = std::iter::from_fn(|| p.poll_assign()).collect();
    let of = |n| {
        started
            .iter()
            .filter(|a| a.peer == pid(n))
            .map(|a| a.chunk)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(2), [0], "rarest it holds; one chunk at a time");
    assert_eq!(of(3), [5]);
    // The server: only chunks no partial source holds, in order, one at a time in a
    // swarm.
    assert_eq!(of(1), [3]);
    p.on_done(3, &pid(1));
    assert_eq!(
        p.poll_assign().map(|a| (a.chunk, a.peer)),
        Some((4, pid(1)))
    );
    assert!(p.is_partial(&pid(2)) && !p.is_partial(&pid(1)));
    p.on_done(0, &pid(2));
    assert_eq!(
        p.poll_assign().map(|a| (a.chunk, a.peer)),
        Some((1, pid(2)))
    );
}

#[test]
fn a_chunk_a_holder_is_still_fetching_is_asked_for_only_when_it_has_no_verified_one() {
    let files = [file("g.eti", 4 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 4);
    // Holder 2 verified 1 and is fetching 0 (first in the order, as rare).
    p.set_partial(&pid(2), set(4, &[0, 1]));
    p.set_growing(&pid(2), &[0]);
    let a = p.poll_assign().unwrap();
    assert_eq!(
        (a.peer.clone(), a.chunk),
        (pid(2), 1),
        "a verified chunk first: a relay is no faster than its upstream"
    );
    // Growing chunks count as held: the server is not offered chunk 0.
    assert_eq!(p.rarity(0), 1);
    let server: Vec<_> = std::iter::from_fn(|| p.poll_assign()).collect();
    assert!(
        server.iter().all(|x| x.peer == pid(1) && x.chunk != 0),
        "{server:?}"
    );
    p.on_done(1, &pid(2));
    // Nothing verified left there that we lack: the growing one.
    let b = p.poll_assign().unwrap();
    assert_eq!((b.peer, b.chunk), (pid(2), 0));
}

#[test]
fn in_a_swarm_at_most_four_chunks_come_in_at_once_the_servers_answer_counting_one() {
    let files = [file("g.eti", 10 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 64).offer_to_complete_sources(4);
    for peer in 2..=8 {
        p.set_partial(&pid(peer), set(10, &[0, 1, 2, 3, 4, 5]));
    }
    let first: Vec<_> = std::iter::from_fn(|| p.poll_batch()).collect();
    let partial: Vec<_> = first.iter().filter(|b| !b.offer).collect();
    let offers: Vec<_> = first.iter().filter(|b| b.offer).collect();
    assert_eq!(
        partial.len() as u64,
        super::SWARM_INBOUND_UNITS,
        "seven holders, four chunks: {first:?}"
    );
    assert!(partial.iter().all(|b| b.chunks.len() == 1));
    // The server is never held back: what the swarm lacks comes from it.
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].chunks, [6, 7, 8, 9]);
    // Its answer counts as one chunk, not the four offered: one partial chunk done
    // leaves three and the server's, so nothing new starts; two done leave room for
    // exactly one.
    p.on_done(partial[0].chunks[0], &partial[0].peer);
    assert_eq!(p.poll_batch(), None, "four coming in");
    p.on_done(partial[1].chunks[0], &partial[1].peer);
    let next: Vec<_> = std::iter::from_fn(|| p.poll_batch()).collect();
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(!next[0].offer);
}

#[test]
fn finished_peers_answering_at_once_leave_the_partial_holders_a_chunk() {
    let files = [file("g.eti", 10 * C)];
    let complete: Vec<_> = (1..=5).map(pid).collect();
    let mut p = Planner::new(&files, &complete, 64).limit_in_flight_bytes(C);
    // Five finished peers each send a chunk ...
    let busy: Vec<_> = std::iter::from_fn(|| p.poll_batch()).collect();
    assert_eq!(busy.len(), 5, "{busy:?}");
    // ... and a partial holder still gets the chunk only it has.
    p.set_partial(&pid(9), set(10, &[9]));
    let next: Vec<_> = std::iter::from_fn(|| p.poll_batch()).collect();
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(
        (next[0].peer.clone(), next[0].chunks.clone()),
        (pid(9), vec![9])
    );
}

#[test]
fn a_lying_partial_source_is_banned_and_its_chunks_go_to_the_server() {
    let files = [file("g.eti", 2 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 4);
    p.set_partial(&pid(2), set(2, &[0, 1]));
    let a = p.poll_assign().unwrap();
    assert_eq!(a.peer, pid(2));
    assert_eq!(
        p.poll_assign(),
        None,
        "the server has nothing the swarm lacks"
    );
    p.on_failed(a.chunk, &pid(2), FailKind::BadData);
    assert_eq!(p.rarity(0) + p.rarity(1), 0);
    assert!(
        !p.set_partial(&pid(2), set(2, &[0, 1])),
        "banned for this download"
    );
    let rest: Vec<_> = std::iter::from_fn(|| p.poll_assign()).collect();
    assert!(rest.iter().all(|a| a.peer == pid(1)) && rest.len() == 2);
}

#[test]
fn a_vanished_partial_source_frees_its_chunks_and_may_come_back() {
    let files = [file("g.eti", 3 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 1);
    p.set_partial(&pid(2), set(3, &[0, 1]));
    let a = p.poll_assign().unwrap();
    let b = p.poll_assign().unwrap();
    assert_eq!((a.peer.clone(), b.peer.clone()), (pid(2), pid(1)));
    assert_eq!(b.chunk, 2);
    p.remove_partial(&pid(2));
    assert_eq!(p.partial_sources().count(), 0);
    p.on_done(2, &pid(1));
    assert_eq!(
        p.poll_assign().map(|x| x.peer),
        Some(pid(1)),
        "chunk 1 is free now"
    );
    p.on_failed(a.chunk, &pid(2), FailKind::SourceGone);
    assert_eq!(p.partial_sources().count(), 0);
    p.set_partial(&pid(3), set(3, &[0]));
    assert_eq!(p.partial_sources().count(), 1);
}

#[test]
fn without_the_server_a_swarm_download_starves_while_a_holder_may_verify_more_or_come_back() {
    let files = [file("g.eti", 3 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 4);
    p.set_partial(&pid(2), set(3, &[0]));
    let started: Vec<_> = std::iter::from_fn(|| p.poll_assign()).collect();
    assert_eq!(started.len(), 2);
    for a in &started {
        if a.peer == pid(1) {
            p.on_failed(a.chunk, &a.peer, FailKind::SourceGone);
        } else {
            p.on_done(a.chunk, &a.peer);
        }
    }
    assert_eq!(
        p.status(),
        PlannerStatus::Starved,
        "the partial source lacks 1 and 2"
    );
    assert_eq!(p.poll_assign(), None);
    p.set_partial(&pid(2), set(3, &[0, 2]));
    assert_eq!(p.status(), PlannerStatus::Running);
    let a = p.poll_assign().unwrap();
    assert_eq!((a.chunk, a.peer.clone()), (2, pid(2)));
    p.on_done(2, &pid(2));
    assert_eq!(p.status(), PlannerStatus::Starved);
    // No longer listed (its link closed, or its download ended): it may be listed again,
    // and the caller's wait decides (the engine's `swarm_wait`).
    p.remove_partial(&pid(2));
    assert_eq!(p.status(), PlannerStatus::Starved);
    assert!(p.partial_sources().next().is_none());
    assert!(
        p.set_partial(&pid(2), set(3, &[0, 2])),
        "back, the same holding"
    );
    assert_eq!(p.partial_sources().count(), 1);
    assert_eq!(p.status(), PlannerStatus::Starved, "it still lacks 1");
}

#[test]
fn a_partial_source_that_committed_becomes_a_complete_one_level_with_the_others() {
    let files = [file("g.eti", 6 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 8).limit_in_flight_bytes(4 * C);
    // Alone, the server gets its whole window; with a partial source known, one chunk.
    let a = p.poll_assign().unwrap();
    p.on_done(a.chunk, &a.peer);
    p.set_partial(&pid(2), set(6, &[]));
    let b = p.poll_assign().unwrap();
    assert_eq!(b.peer, pid(1));
    assert_eq!(
        p.poll_assign(),
        None,
        "one chunk at a time from the server in a swarm"
    );
    // Its download ended while asked: gone, not banned; then it is ready.
    p.set_partial(&pid(2), set(6, &[0, 1, 2, 3, 4, 5]));
    let c = p.poll_assign().unwrap();
    assert_eq!(c.peer, pid(2));
    p.on_failed(c.chunk, &pid(2), FailKind::SourceGone);
    assert!(p.add_complete(&pid(2)));
    assert!(!p.add_complete(&pid(2)), "known already");
    assert!(!p.is_partial(&pid(2)));
    assert_eq!((0..6).map(|c| p.rarity(c)).sum::<u32>(), 0);
    let next = p.poll_assign().unwrap();
    assert_eq!(
        next.peer,
        pid(2),
        "level with the server, so it gets the next chunk"
    );
    // Bad bytes ban a late source too.
    p.on_failed(next.chunk, &pid(2), FailKind::BadData);
    assert!(!p.add_complete(&pid(2)));
    assert!(!p.set_partial(&pid(2), set(6, &[0])));
}

#[test]
fn in_a_swarm_the_server_is_offered_what_the_swarm_lacks_and_the_rest_comes_back() {
    let files = [file("g.eti", 6 * C)];
    let plan = || Planner::new(&files, &[pid(1)], 64).offer_to_complete_sources(4);
    // Alone: plain batches, no offers.
    let mut alone = plan();
    assert!(!alone.poll_batch().unwrap().offer);
    let mut p = plan();
    p.set_partial(&pid(2), set(6, &[0]));
    let mut batches: Vec<_> = std::iter::from_fn(|| p.poll_batch()).collect();
    batches.sort_by_key(|b| b.offer);
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert_eq!(
        (batches[0].peer.clone(), batches[0].chunks.clone()),
        (pid(2), vec![0])
    );
    let offer = &batches[1];
    assert!(offer.offer && offer.peer == pid(1));
    assert_eq!(
        offer.chunks,
        [1, 2, 3, 4],
        "what no partial source holds, in order"
    );
    // The server sent chunk 3; the others are pending again, in their places.
    for &c in &offer.chunks {
        match c {
            3 => drop(p.on_done(c, &pid(1))),
            _ => p.on_failed(c, &pid(1), FailKind::NotChosen),
        }
    }
    let next = p.poll_batch().unwrap();
    assert_eq!((next.offer, next.chunks), (true, vec![1, 2, 4, 5]));
    assert_eq!(p.status(), PlannerStatus::Running);
}

#[test]
fn a_partial_source_that_says_later_rests_and_the_server_gets_its_chunks() {
    let files = [file("g.eti", 2 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 4);
    p.set_partial(&pid(2), set(2, &[0, 1]));
    let a = p.poll_assign().unwrap();
    assert_eq!(a.peer, pid(2));
    assert_eq!(p.poll_assign(), None);
    p.on_failed(a.chunk, &pid(2), FailKind::NotChosen);
    p.rest(&pid(2), Duration::from_secs(1));
    assert_eq!(p.rarity(0) + p.rarity(1), 2, "busy for now: still a holder");
    assert_eq!(p.poll_assign(), None);
    p.wake();
    let again = p.poll_assign().unwrap();
    p.on_failed(again.chunk, &pid(2), FailKind::NotChosen);
    p.rest(&pid(2), LATER_UNCOUNT);
    assert_eq!(
        p.rarity(0) + p.rarity(1),
        0,
        "it never serves: no longer counted"
    );
    let b = p.poll_assign().unwrap();
    assert_eq!(b.peer, pid(1), "so the server may send what only it holds");
    // Holdings that did not change do not wake it; a verified chunk does.
    assert!(p.set_partial(&pid(2), set(2, &[0, 1])));
    assert_eq!(p.rarity(0), 0);
    p.on_done(b.chunk, &pid(1));
    assert_eq!(p.rarity(0) + p.rarity(1), 2, "awake and counted again");
}

#[test]
fn a_partial_source_that_only_ever_says_later_is_dropped_in_the_end() {
    let files = [file("g.eti", 2 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 4);
    p.set_partial(&pid(2), set(2, &[0, 1]));
    for secs in [1, 100, 299] {
        p.rest(&pid(2), Duration::from_secs(secs));
        p.wake();
        assert_eq!(p.partial_sources().count(), 1);
    }
    p.rest(&pid(2), super::super::LATER_DROP);
    assert_eq!(p.partial_sources().count(), 0);
    // The server is busy, never dropped for it.
    p.rest(&pid(1), 10 * super::super::LATER_DROP);
    p.wake();
    assert_eq!(p.status(), PlannerStatus::Running);
    assert!(p.poll_assign().is_some_and(|a| a.peer == pid(1)));
}

#[test]
fn a_resting_server_does_not_hold_the_other_back_and_comes_back_level() {
    let files = [file("g.eti", 8 * C)];
    let mut p = Planner::new(&files, &[pid(1), pid(2)], 1);
    p.rest(&pid(1), Duration::ZERO);
    for _ in 0..3 {
        let a = p.poll_assign().unwrap();
        assert_eq!(a.peer, pid(2));
        p.on_done(a.chunk, &a.peer);
        p.rest(&pid(1), Duration::ZERO); // woken by every chunk; it keeps saying later
    }
    p.wake();
    let per = p.per_source();
    assert!(per[&pid(1)] + C >= per[&pid(2)], "level on waking: {per:?}");
}

#[test]
fn a_dropped_partial_source_comes_back_only_with_a_changed_holding() {
    let files = [file("g.eti", 3 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 1);
    p.set_partial(&pid(2), set(3, &[0]));
    let a = p.poll_assign().unwrap();
    assert_eq!(a.peer, pid(2));
    p.on_failed(a.chunk, &pid(2), FailKind::SourceGone);
    assert!(
        !p.set_partial(&pid(2), set(3, &[0])),
        "same holding: stays dropped"
    );
    assert!(p.set_partial(&pid(2), set(3, &[0, 1])), "changed: back");
    // Turned complete while a partial request was in flight: that request failing
    // as gone is no ban.
    let b = p.poll_assign().unwrap();
    assert_eq!(b.peer, pid(2));
    assert!(p.add_complete(&pid(2)));
    p.on_failed(b.chunk, &pid(2), FailKind::SourceGone);
    assert!(!p.add_complete(&pid(2)));
    assert!(!p.sources[&pid(2)].banned);
}
