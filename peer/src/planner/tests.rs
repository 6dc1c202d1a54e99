use super::*;
use crate::table::tests::pid;
use lanspread_catalog::RelPath;
use lanspread_proto::ChunkSet;
use proptest::prelude::*;

pub(super) fn file(name: &str, size: u64) -> FileManifest {
    let pieces = (0..lanspread_catalog::piece_count(size))
        .map(|i| [i as u8; 32])
        .collect();
    FileManifest::from_pieces(RelPath::new(name).unwrap(), size, 0o644, pieces)
}

const C: u64 = UNIT_SIZE;

#[test]
fn smaller_units_cut_every_chunk_on_piece_boundaries() {
    const MIB: u64 = 1 << 20;
    let files = [
        file("a.eti", CHUNK_SIZE + 9 * MIB + 5),
        file("version.ini", 9),
    ];
    let p = Planner::with_unit(&files, &[], 4, 8 * MIB);
    let got: Vec<(usize, u64, u64, usize)> = p
        .chunks()
        .iter()
        .map(|c| (c.file, c.offset, c.len, c.pieces.len()))
        .collect();
    let expected = [
        (0, 0, 8 * MIB, 8),
        (0, 8 * MIB, 8 * MIB, 8),
        (0, 16 * MIB, 8 * MIB, 8),
        (0, 24 * MIB, 8 * MIB, 8),
        (0, CHUNK_SIZE, 8 * MIB, 8),
        (0, CHUNK_SIZE + 8 * MIB, MIB + 5, 2),
        (1, 0, 9, 1),
    ];
    assert_eq!(got, expected);
    // Each unit carries its own pieces, and its hash is theirs.
    let unit = &p.chunks()[5];
    assert_eq!(unit.pieces, files[0].pieces[40..42]);
    assert_eq!(unit.hash, chunk_hash(&unit.pieces));
    // The protocol's unit is 8 MiB; any size that is not a divisor of the chunk in whole
    // pieces falls back to the whole chunk, whose hash is the manifest's.
    assert_eq!(p.chunks(), Planner::new(&files, &[], 4).chunks());
    let whole = Planner::with_unit(&files, &[], 4, CHUNK_SIZE);
    for odd in [0, MIB / 2, 3 * MIB, 2 * CHUNK_SIZE] {
        assert_eq!(
            Planner::with_unit(&files, &[], 4, odd).chunks(),
            whole.chunks()
        );
    }
    assert_eq!(whole.chunks()[0].hash, files[0].chunks[0]);
}

#[test]
fn s14_two_sources_stay_within_one_chunk() {
    let files = [file("big.eti", 3 * C + C / 2 + 7), file("version.ini", 9)];
    let mut p = Planner::new(&files, &[pid(1), pid(2)], 2);
    assert_eq!(p.chunks().len(), 5);
    // Source 1 is much faster: it finishes everything it gets at once.
    let mut steps = 0;
    while p.status() == PlannerStatus::Running {
        steps += 1;
        assert!(steps < 100);
        let mut started = Vec::new();
        while let Some(a) = p.poll_assign() {
            started.push(a);
        }
        let a = started
            .iter()
            .find(|a| a.peer == pid(1))
            .or(started.first())
            .cloned();
        if let Some(a) = a {
            p.on_done(a.chunk, &a.peer);
            for other in started.into_iter().filter(|o| o != &a) {
                p.on_done(other.chunk, &other.peer);
            }
        }
    }
    assert_eq!(p.status(), PlannerStatus::Finished);
    let per = p.per_source();
    let (a, b) = (per[&pid(1)], per[&pid(2)]);
    assert!(a.abs_diff(b) < C, "{a} vs {b}");
    assert_eq!(a + b, 3 * C + C / 2 + 7 + 9);
}

#[test]
fn s18_chunk_of_a_dead_source_is_retried_on_the_survivor() {
    let files = [file("g.eti", 4 * C)];
    let mut p = Planner::new(&files, &[pid(1), pid(2)], 1);
    let a = p.poll_assign().unwrap();
    let b = p.poll_assign().unwrap();
    assert_ne!(a.peer, b.peer);
    let dead = b.peer.clone();
    p.on_failed(b.chunk, &dead, FailKind::SourceGone);
    p.on_done(a.chunk, &a.peer);
    let mut fetched_from = Vec::new();
    while let Some(x) = p.poll_assign() {
        fetched_from.push(x.peer.clone());
        p.on_done(x.chunk, &x.peer);
    }
    assert_eq!(p.status(), PlannerStatus::Finished);
    assert!(
        fetched_from.iter().all(|x| x == &a.peer),
        "nothing more from the dead source"
    );
    assert_eq!(fetched_from.len(), 3, "the failed chunk is fetched again");
}

#[test]
fn s38_bad_data_drops_the_source_and_refetches() {
    let files = [file("g.eti", 2 * C)];
    let mut p = Planner::new(&files, &[pid(1), pid(2)], 1);
    let a = p.poll_assign().unwrap();
    let b = p.poll_assign().unwrap();
    p.on_failed(a.chunk, &a.peer, FailKind::BadData);
    p.on_done(b.chunk, &b.peer);
    let r = p.poll_assign().unwrap();
    assert_eq!(r.chunk, a.chunk);
    assert_eq!(r.peer, b.peer);
    p.on_done(r.chunk, &r.peer);
    assert_eq!(p.status(), PlannerStatus::Finished);
}

#[test]
fn s19_sole_source_gone_fails() {
    let files = [file("g.eti", 2 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 4);
    let a = p.poll_assign().unwrap();
    let b = p.poll_assign().unwrap();
    p.on_failed(a.chunk, &a.peer, FailKind::SourceGone);
    assert_eq!(
        p.status(),
        PlannerStatus::Running,
        "one chunk still in flight"
    );
    p.on_failed(b.chunk, &b.peer, FailKind::SourceGone);
    assert_eq!(
        p.status(),
        PlannerStatus::Failed("no eligible source left".into())
    );
    assert!(p.poll_assign().is_none());
}

#[test]
fn a_source_whose_link_closed_is_waited_for_and_comes_back() {
    let files = [file("g.eti", 3 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 4);
    let a = p.poll_assign().unwrap();
    let b = p.poll_assign().unwrap();
    let c = p.poll_assign().unwrap();
    p.on_done(a.chunk, &a.peer);
    p.on_failed(b.chunk, &b.peer, FailKind::Disconnected);
    assert_eq!(p.status(), PlannerStatus::Running, "one chunk in flight");
    assert!(p.poll_assign().is_none(), "nothing goes to a lost source");
    // A partial source that is no longer listed may come back too; the download waits.
    assert!(p.set_partial(&pid(2), ChunkSet::empty(3)));
    p.remove_partial(&pid(2));
    assert!(p.poll_assign().is_none());
    // The old connection's last request fails after the source came back over a new link:
    // it costs the source nothing.
    assert!(p.add_complete(&pid(1)), "back over a new link");
    assert!(!p.add_complete(&pid(1)), "already back");
    p.on_failed(c.chunk, &c.peer, FailKind::Disconnected);
    assert_eq!(p.status(), PlannerStatus::Running);
    let mut got = Vec::new();
    while let Some(x) = p.poll_assign() {
        assert_eq!(x.peer, pid(1));
        got.push(x.chunk);
        p.on_done(x.chunk, &x.peer);
    }
    got.sort_unstable();
    assert_eq!(
        got,
        vec![b.chunk, c.chunk],
        "both failed chunks fetched again"
    );
    assert_eq!(p.status(), PlannerStatus::Finished);
}

#[test]
fn a_lost_source_leaves_the_download_starved_until_it_is_back() {
    let files = [file("g.eti", 2 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 4);
    let a = p.poll_assign().unwrap();
    let b = p.poll_assign().unwrap();
    p.on_failed(a.chunk, &a.peer, FailKind::Disconnected);
    p.on_failed(b.chunk, &b.peer, FailKind::Disconnected);
    assert_eq!(p.status(), PlannerStatus::Starved, "it may come back");
    // One that refuses or sends bad bytes is not waited for, even if it was lost before.
    let mut q = p.clone();
    assert!(q.add_complete(&pid(1)));
    let x = q.poll_assign().unwrap();
    q.on_failed(x.chunk, &x.peer, FailKind::SourceGone);
    assert_eq!(
        q.status(),
        PlannerStatus::Failed("no eligible source left".into())
    );
    assert!(!q.add_complete(&pid(1)), "banned: never back");
    // Revived, it starts level with a fresh window.
    assert!(p.add_complete(&pid(1)));
    assert_eq!(p.status(), PlannerStatus::Running);
    let mut asked: Vec<Assignment> = std::iter::from_fn(|| p.poll_assign()).collect();
    assert_eq!(asked.len(), 2);
    // A peer that keeps leaving without sending a chunk is given up after MAX_STALLS
    // losses (the first one above).
    let mut lives = 2;
    loop {
        for x in asked.drain(..) {
            p.on_failed(x.chunk, &x.peer, FailKind::Disconnected);
        }
        if !p.add_complete(&pid(1)) {
            break;
        }
        lives += 1;
        asked = std::iter::from_fn(|| p.poll_assign()).collect();
        assert_eq!(asked.len(), 2);
    }
    assert_eq!(lives, MAX_STALLS);
    assert_eq!(
        p.status(),
        PlannerStatus::Failed("no eligible source left".into())
    );
}

#[test]
fn transient_failures_retry_then_give_up() {
    let files = [file("g.eti", 10)];
    let mut p = Planner::new(&files, &[pid(1)], 1);
    for _ in 0..MAX_TRANSIENT_RETRIES {
        let a = p.poll_assign().unwrap();
        p.on_failed(a.chunk, &a.peer, FailKind::Transient);
        assert_eq!(p.status(), PlannerStatus::Running);
    }
    let a = p.poll_assign().unwrap();
    p.on_failed(a.chunk, &a.peer, FailKind::Transient);
    assert!(matches!(p.status(), PlannerStatus::Failed(_)));
}

#[test]
fn a_stalled_source_backs_off_and_is_kept_until_it_stalls_in_a_row() {
    let files = [file("g.eti", 8 * C)];
    let mut p = Planner::new(&files, &[pid(1)], 64).limit_in_flight_bytes(4 * C);
    let start = |p: &mut Planner| std::iter::from_fn(|| p.poll_assign()).collect::<Vec<_>>();
    let stall_all = |p: &mut Planner, a: &[Assignment]| {
        for x in a {
            p.on_failed(x.chunk, &pid(1), FailKind::Stalled);
        }
    };
    // One silence fails all four chunks in flight: it counts once, halves the window,
    // and the source stays.
    let first = start(&mut p);
    assert_eq!(first.len(), 4);
    stall_all(&mut p, &first);
    assert_eq!(p.status(), PlannerStatus::Running);
    let second = start(&mut p);
    assert_eq!(second.len(), 2, "window 4 -> 2 chunks");
    // A verified chunk resets the count and widens the window again.
    let mut q = p.clone();
    q.on_done(second[0].chunk, &pid(1));
    stall_all(&mut q, &second[1..]);
    let again = start(&mut q);
    stall_all(&mut q, &again);
    assert_eq!(
        q.status(),
        PlannerStatus::Running,
        "2 silences since the last chunk"
    );
    // Silences in a row with nothing verified: dropped after the third.
    stall_all(&mut p, &second);
    assert_eq!(p.status(), PlannerStatus::Running, "2 silences");
    let third = start(&mut p);
    assert_eq!(third.len(), 1, "window 2 -> 1 chunk");
    stall_all(&mut p, &third);
    assert_eq!(
        p.status(),
        PlannerStatus::Failed("no eligible source left".into())
    );
}

#[test]
fn empty_files_need_no_chunks() {
    let p = Planner::new(&[file("empty", 0)], &[pid(1)], 1);
    assert_eq!(p.status(), PlannerStatus::Finished);
}

#[test]
fn late_reports_from_a_replaced_owner_are_ignored() {
    let files = [file("g.eti", 10)];
    let mut p = Planner::new(&files, &[pid(1), pid(2)], 1);
    let a = p.poll_assign().unwrap();
    p.on_failed(a.chunk, &a.peer, FailKind::SourceGone);
    let b = p.poll_assign().unwrap();
    p.on_done(a.chunk, &a.peer); // stale
    assert_eq!(p.status(), PlannerStatus::Running);
    p.on_done(b.chunk, &b.peer);
    assert_eq!(p.status(), PlannerStatus::Finished);
}

proptest! {
    /// Whatever the sizes, sources, completion order and failures: when the planner
    /// finishes, every byte of every file was fetched exactly once by a successful chunk,
    /// and no chunk reaches past its file's end.
    #[test]
    fn every_byte_exactly_once(
        sizes in proptest::collection::vec(0u64..(3 * C), 1..6),
        n_sources in 1usize..5,
        max_in_flight in 1usize..4,
        script in proptest::collection::vec((0usize..8, 0u8..10), 0..200),
        batch in 1usize..5,
    ) {
        let files: Vec<_> = sizes.iter().enumerate().map(|(i, s)| file(&format!("f{i}"), *s)).collect();
        let sources: Vec<_> = (0..n_sources).map(|i| pid(i as u8 + 1)).collect();
        // Batches of up to `batch` chunks of any size (1 = no batching).
        let mut p = Planner::new(&files, &sources, max_in_flight)
            .batch_small_chunks(batch, C, 2 * C);
        for c in p.chunks() {
            prop_assert!(c.len > 0 && c.len <= C);
            prop_assert!(c.offset + c.len <= files[c.file].size);
        }
        let mut in_flight: Vec<Assignment> = Vec::new();
        let mut covered: Vec<Vec<(u64, u64)>> = vec![Vec::new(); files.len()];
        let mut script = script.into_iter();
        loop {
            while let Some(b) = p.poll_batch() {
                prop_assert!(!b.chunks.is_empty() && b.chunks.len() <= batch);
                in_flight.extend(b.chunks.into_iter().map(|chunk| Assignment { chunk, peer: b.peer.clone() }));
            }
            if in_flight.is_empty() {
                break;
            }
            let (pick, what) = script.next().unwrap_or((0, 9));
            let a = in_flight.remove(pick % in_flight.len());
            // Failures only while another source is still live, so the download can end.
            match what {
                0 if n_sources > 1 => p.on_failed(a.chunk, &a.peer, FailKind::BadData),
                1 => p.on_failed(a.chunk, &a.peer, FailKind::Transient),
                _ => {
                    // (A race's second copy — a lagging source's unit sent again —
                    // counts once: the first verified.)
                    let (file, range) = {
                        let c = &p.chunks()[a.chunk];
                        (c.file, (c.offset, c.len))
                    };
                    if matches!(p.on_done(a.chunk, &a.peer), Settled::First { .. }) {
                        covered[file].push(range);
                    }
                }
            }
            if let PlannerStatus::Failed(_) = p.status() {
                // Everything dropped: allowed only when failures were injected.
                return Ok(());
            }
        }
        prop_assert_eq!(p.status(), PlannerStatus::Finished);
        for (f, mut ranges) in files.iter().zip(covered) {
            ranges.sort();
            let mut next = 0;
            for (off, len) in ranges {
                prop_assert_eq!(off, next, "gap or overlap in {}", f.path);
                next = off + len;
            }
            prop_assert_eq!(next, f.size);
        }
    }
}

#[test]
fn s39_present_chunks_are_never_assigned() {
    let files = [file("big.eti", 4 * C), file("version.ini", 9)];
    let mut p = Planner::new(&files, &[pid(1)], 8);
    assert!(p.mark_present(1));
    assert!(p.mark_present(4));
    assert!(!p.mark_present(1), "marked twice");
    assert!(!p.mark_present(99), "out of range");
    let mut got = Vec::new();
    while let Some(a) = p.poll_assign() {
        got.push(a.chunk);
    }
    assert_eq!(got, [0, 2, 3]);
    assert!(!p.mark_present(0), "in flight");
    for c in got {
        p.on_done(c, &pid(1));
    }
    assert_eq!(p.status(), PlannerStatus::Finished);
    // Resumed chunks count for no source.
    assert_eq!(p.per_source()[&pid(1)], 3 * C);
}

#[test]
fn everything_present_is_finished_at_once() {
    let files = [file("a", C + 1)];
    let mut p = Planner::new(&files, &[pid(1)], 2);
    assert!(p.mark_present(0) && p.mark_present(1));
    assert_eq!(p.poll_assign(), None);
    assert_eq!(p.status(), PlannerStatus::Finished);
}

#[test]
fn byte_window_keeps_few_big_chunks_but_many_small_files_in_flight() {
    // Big chunks: the byte window (4 chunks' worth) binds before the 64-chunk cap.
    let big = [file("big.eti", 10 * C)];
    let mut p = Planner::new(&big, &[pid(1)], 64).limit_in_flight_bytes(4 * C);
    let started: Vec<_> = std::iter::from_fn(|| p.poll_assign()).collect();
    assert_eq!(started.len(), 4);
    p.on_done(started[0].chunk, &pid(1));
    assert!(p.poll_assign().is_some(), "room again after one finished");
    assert!(p.poll_assign().is_none());

    // Small files: the chunk cap binds.
    let small: Vec<_> = (0..200).map(|i| file(&format!("f{i}"), 32 << 10)).collect();
    let mut p = Planner::new(&small, &[pid(1)], 64).limit_in_flight_bytes(4 * C);
    let started: Vec<_> = std::iter::from_fn(|| p.poll_assign()).collect();
    assert_eq!(started.len(), 64);
    // A failure gives its bytes back too.
    p.on_failed(started[0].chunk, &pid(1), FailKind::Transient);
    assert!(p.poll_assign().is_some());

    // One chunk bigger than the window still goes out alone.
    let mut p = Planner::new(&big, &[pid(1)], 64).limit_in_flight_bytes(C / 2);
    assert!(p.poll_assign().is_some());
    assert!(p.poll_assign().is_none());
}

#[test]
fn small_files_go_in_batches_big_chunks_alone() {
    let mut files: Vec<_> = (0..10).map(|i| file(&format!("s{i}"), 32 << 10)).collect();
    files.push(file("big.eti", 2 * C));
    files.push(file("version.ini", 9));
    let mut p = Planner::new(&files, &[pid(1)], 64)
        .limit_in_flight_bytes(4 * C)
        .batch_small_chunks(4, 1 << 20, 8 << 20);
    let batches: Vec<_> = std::iter::from_fn(|| p.poll_batch()).collect();
    let shapes: Vec<_> = batches.iter().map(|b| b.chunks.clone()).collect();
    // Runs of small chunks in order, four at most; big chunks alone; the small file after
    // a big chunk starts a new batch.
    assert_eq!(
        shapes,
        [
            vec![0, 1, 2, 3],
            vec![4, 5, 6, 7],
            vec![8, 9],
            vec![10],
            vec![11],
            vec![12]
        ]
    );
    assert!(batches.iter().all(|b| b.peer == pid(1)));
    for b in &batches {
        for &c in &b.chunks {
            p.on_done(c, &pid(1));
        }
    }
    assert_eq!(p.status(), PlannerStatus::Finished);
}

#[test]
fn batches_respect_the_byte_cap_and_the_in_flight_caps() {
    let files: Vec<_> = (0..10).map(|i| file(&format!("s{i}"), 300 << 10)).collect();
    // 1 MiB per batch: three 300 KiB files fit, a fourth does not.
    let mut p = Planner::new(&files, &[pid(1)], 64).batch_small_chunks(64, 1 << 20, 1 << 20);
    assert_eq!(p.poll_batch().unwrap().chunks, [0, 1, 2]);
    // Five chunks in flight at most: the second batch stops at two.
    let mut p = Planner::new(&files, &[pid(1)], 5).batch_small_chunks(64, 1 << 20, 8 << 20);
    assert_eq!(p.poll_batch().unwrap().chunks, [0, 1, 2, 3, 4]);
    assert_eq!(p.poll_batch(), None);
    p.on_done(0, &pid(1));
    assert_eq!(p.poll_batch().unwrap().chunks, [5]);
}

#[test]
fn batches_alternate_between_sources_and_failed_chunks_come_back() {
    let files: Vec<_> = (0..400).map(|i| file(&format!("s{i}"), 1 << 20)).collect();
    let mut p =
        Planner::new(&files, &[pid(1), pid(2)], 256).batch_small_chunks(64, 1 << 20, 16 << 20);
    let batches: Vec<_> = std::iter::from_fn(|| p.poll_batch()).collect();
    // Balance (S14) holds inside a batch: no source gets a chunk's worth ahead.
    let per = p.per_source();
    assert!(per[&pid(1)].abs_diff(per[&pid(2)]) <= C, "{per:?}");
    assert!(batches.iter().any(|b| b.peer == pid(1)));
    assert!(batches.iter().any(|b| b.peer == pid(2)));
    // A source dies with a batch in flight: its chunks go to the other one.
    let lost = batches.iter().find(|b| b.peer == pid(2)).unwrap().clone();
    for &c in lost.chunks.iter().rev() {
        p.on_failed(c, &pid(2), FailKind::SourceGone);
    }
    for b in batches.iter().filter(|b| b.peer == pid(1)) {
        for &c in &b.chunks {
            p.on_done(c, &pid(1));
        }
    }
    let again = p.poll_batch().unwrap();
    assert_eq!(again.peer, pid(1));
    assert_eq!(again.chunks[0], lost.chunks[0], "retried first, in order");
}

#[test]
fn a_complete_source_in_a_swarm_gets_one_offer_at_a_time_even_when_it_chose_a_small_chunk() {
    let files: Vec<_> = (0..6).map(|i| file(&format!("s{i}"), 1000)).collect();
    let mut p = Planner::new(&files, &[pid(1)], 64)
        .batch_small_chunks(32, 1 << 20, 8 << 20)
        .offer_to_complete_sources(64);
    p.set_partial(&pid(2), ChunkSet::empty(6));
    let offer = p.poll_batch().unwrap();
    assert!(offer.offer && offer.chunks.len() == 6, "{offer:?}");
    // The server chose the first (a small file): the others are pending again, but the
    // server is not offered them while it sends that one.
    for &c in &offer.chunks[1..] {
        p.on_failed(c, &pid(1), FailKind::NotChosen);
    }
    p.chosen(offer.chunks[0]);
    assert_eq!(p.poll_batch(), None);
    let _ = p.on_done(offer.chunks[0], &pid(1));
    let next = p.poll_batch().unwrap();
    assert!(next.offer && next.chunks.len() == 5, "{next:?}");
}
