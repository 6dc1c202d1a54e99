use super::*;
use lanspread_catalog::{FileManifest, RelPath};

fn pid(n: u8) -> PeerId {
    PeerId::from_spki(&[n])
}

fn game() -> GameId {
    GameId::new("ggoo").unwrap()
}

fn file(name: &str, size: u64, seed: u8) -> FileManifest {
    let pieces = (0..lanspread_catalog::piece_count(size))
        .map(|i| [seed ^ i as u8; 32])
        .collect();
    FileManifest::from_pieces(RelPath::new(name).unwrap(), size, 0o644, pieces)
}

/// Units in a whole chunk: the per-source budget counts chunks' bytes.
const PER: usize = (CHUNK_SIZE / UNIT_SIZE) as usize;

fn manifest() -> Vec<FileManifest> {
    big(3)
}

/// A game of one archive of `units` units and its sentinel.
fn big(units: u64) -> Vec<FileManifest> {
    vec![
        file("big.eti", units * UNIT_SIZE, 1),
        file("version.ini", 8, 2),
    ]
}

fn drain(e: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| e.poll()).collect()
}

fn fetches(actions: &[Action]) -> Vec<Fetch> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Fetch(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// An engine past its manifest phase with `sources`, each on `lanes` data connections.
fn transferring(files: Vec<FileManifest>, sources: &[PeerId], threads: usize) -> Engine {
    let t0 = Instant::now();
    let mut e = Engine::new(game(), sources, EngineConfig::new(threads), t0);
    drain(&mut e);
    for p in sources {
        e.on_manifest(p.clone(), Ok(files.clone().into()), t0);
    }
    assert_eq!(drain(&mut e), [Action::Prepare]);
    let data: Vec<usize> = if threads > 1 {
        (0..threads).collect()
    } else {
        vec![]
    };
    let opened: Vec<(PeerId, Vec<usize>)> =
        sources.iter().map(|p| (p.clone(), data.clone())).collect();
    e.on_prepared(&[], &opened);
    e
}

#[test]
fn every_source_is_asked_and_a_unanimous_vote_prepares_at_once() {
    let t0 = Instant::now();
    let mut e = Engine::new(game(), &[pid(1), pid(2)], EngineConfig::new(1), t0);
    assert_eq!(
        drain(&mut e),
        [Action::AskManifest(pid(1)), Action::AskManifest(pid(2))]
    );
    assert_eq!(e.poll_timeout(), Some(t0 + MANIFEST_TIMEOUT));
    e.on_manifest(pid(1), Ok(manifest().into()), t0);
    // Settled (1 vote, 1 outstanding, no lead): no grace yet.
    assert_eq!(e.poll_timeout(), Some(t0 + MANIFEST_TIMEOUT));
    assert!(drain(&mut e).is_empty());
    e.on_manifest(pid(2), Ok(manifest().into()), t0);
    assert_eq!(drain(&mut e), [Action::Prepare]);
    let chosen = e.chosen().unwrap();
    assert!(chosen.sources.contains(&pid(1)) && chosen.sources.contains(&pid(2)));
    assert_eq!(e.chunks().len(), 4);
    assert_eq!(e.poll_timeout(), None);
}

#[test]
fn silent_sources_get_the_grace_once_the_vote_is_settled() {
    let t0 = Instant::now();
    let peers = [pid(1), pid(2), pid(3), pid(4)];
    let mut e = Engine::new(game(), &peers, EngineConfig::new(1), t0);
    drain(&mut e);
    let t1 = t0 + Duration::from_secs(2);
    e.on_manifest(pid(1), Ok(manifest().into()), t1);
    e.on_manifest(pid(2), Ok(manifest().into()), t1);
    // 2 votes, 2 silent: they could still tie it.
    assert_eq!(e.poll_timeout(), Some(t0 + MANIFEST_TIMEOUT));
    e.on_manifest(pid(3), Ok(manifest().into()), t1);
    // 3 against at most 1: settled, the last one gets the grace.
    assert_eq!(e.poll_timeout(), Some(t1 + MANIFEST_GRACE));
    e.handle_timeout(t1 + MANIFEST_GRACE - Duration::from_millis(1));
    assert!(drain(&mut e).is_empty());
    e.handle_timeout(t1 + MANIFEST_GRACE);
    assert_eq!(drain(&mut e), [Action::Prepare]);
    let mut three = vec![pid(1), pid(2), pid(3)];
    three.sort();
    assert_eq!(e.chosen().unwrap().sources, three);
    assert!(
        e.why()[&pid(4)].contains("after the others settled"),
        "{:?}",
        e.why()
    );
    // Its late answer changes nothing.
    e.on_manifest(pid(4), Ok(manifest().into()), t1 + MANIFEST_GRACE);
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_source_that_reports_hashing_progress_is_waited_for_and_a_silent_one_is_not() {
    let t0 = Instant::now();
    let mut e = Engine::new(game(), &[pid(1), pid(2)], EngineConfig::new(1), t0);
    drain(&mut e);
    let sec = |n: u64| t0 + Duration::from_secs(n);
    // pid(1) hashes a large game and says so; pid(2) says nothing.
    for n in 1..=10 {
        assert!(e.on_manifest_progress(&pid(1), n << 30, 100 << 30, sec(n * 50)));
        e.handle_timeout(sec(n * 50));
    }
    // pid(2) was left out after one silent timeout; pid(1) lives on.
    assert!(!e.why().contains_key(&pid(1)));
    assert_eq!(e.poll_timeout(), Some(sec(500) + MANIFEST_TIMEOUT));
    // A report that does not move forward (or claims more than all) is not progress.
    assert!(!e.on_manifest_progress(&pid(1), 10 << 30, 100 << 30, sec(510)));
    assert!(!e.on_manifest_progress(&pid(1), 200 << 30, 100 << 30, sec(510)));
    assert!(
        !e.on_manifest_progress(&pid(9), 1, 2, sec(510)),
        "not asked"
    );
    assert_eq!(e.poll_timeout(), Some(sec(500) + MANIFEST_TIMEOUT));
    e.on_manifest(pid(1), Ok(manifest().into()), sec(520));
    assert_eq!(drain(&mut e), [Action::Prepare]);
    assert_eq!(e.chosen().unwrap().sources, [pid(1)]);
}

#[test]
fn a_source_silent_for_the_timeout_is_left_out_while_the_others_answer() {
    let t0 = Instant::now();
    let mut e = Engine::new(game(), &[pid(1), pid(2)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest_progress(&pid(1), 1 << 20, 10 << 30, t0 + Duration::from_secs(30));
    e.handle_timeout(t0 + MANIFEST_TIMEOUT);
    // pid(2) is out; pid(1) still hashes, so nothing is decided yet.
    assert!(drain(&mut e).is_empty());
    assert_eq!(
        e.poll_timeout(),
        Some(t0 + Duration::from_secs(30) + MANIFEST_TIMEOUT)
    );
    e.handle_timeout(t0 + Duration::from_secs(30) + MANIFEST_TIMEOUT);
    let [Action::Fail(PeerError::NoMetadata { why, .. })] = &drain(&mut e)[..] else {
        panic!("no failure")
    };
    assert!(why.contains("silent for"), "{why}");
}

#[test]
fn no_answer_in_time_fails_with_each_reason() {
    let t0 = Instant::now();
    let mut e = Engine::new(game(), &[pid(1), pid(2)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Err("refused: not ready".into()), t0);
    e.handle_timeout(t0 + MANIFEST_TIMEOUT);
    let [Action::Fail(PeerError::NoMetadata { why, .. })] = &drain(&mut e)[..] else {
        panic!("no failure")
    };
    assert!(
        why.contains("not ready") && why.contains("no manifest in time"),
        "{why}"
    );
    // Nothing to ask: fails at once.
    let mut none = Engine::new(game(), &[], EngineConfig::new(1), t0);
    assert!(matches!(
        drain(&mut none)[..],
        [Action::Fail(PeerError::NoMetadata { .. })]
    ));
}

#[test]
fn a_tie_is_a_metadata_conflict_and_a_minority_is_outvoted() {
    let t0 = Instant::now();
    let other = vec![file("big.eti", 3 * UNIT_SIZE, 9), file("version.ini", 8, 2)];
    let mut e = Engine::new(game(), &[pid(1), pid(2)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(manifest().into()), t0);
    e.on_manifest(pid(2), Ok(other.clone().into()), t0);
    assert!(matches!(
        drain(&mut e)[..],
        [Action::Fail(PeerError::MetadataConflict { .. })]
    ));

    let mut e = Engine::new(game(), &[pid(1), pid(2), pid(3)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(manifest().into()), t0);
    e.on_manifest(pid(3), Ok(other.into()), t0);
    e.on_manifest(pid(2), Ok(manifest().into()), t0);
    assert_eq!(drain(&mut e), [Action::Prepare]);
    let mut two = vec![pid(1), pid(2)];
    two.sort();
    assert_eq!(e.chosen().unwrap().sources, two);
    assert_eq!(e.why()[&pid(3)], "outvoted manifest");
}

#[test]
fn the_budget_shares_the_lanes_among_the_sources() {
    assert_eq!(max_in_flight_bytes(1, 1), 4 * CHUNK_SIZE);
    assert_eq!(max_in_flight_bytes(2, 1), 4 * CHUNK_SIZE);
    assert_eq!(max_in_flight_bytes(8, 1), 8 * CHUNK_SIZE);
    assert_eq!(max_in_flight_bytes(8, 2), 4 * CHUNK_SIZE);
    assert_eq!(max_in_flight_bytes(16, 3), 6 * CHUNK_SIZE);
    assert_eq!(max_in_flight_bytes(8, 10), 4 * CHUNK_SIZE);
    assert_eq!(max_in_flight_bytes(8, 0), 8 * CHUNK_SIZE);
    // One source, one thread: four big chunks' worth of units in flight, no more.
    let mut e = transferring(big(10 * PER as u64), &[pid(1)], 1);
    let first = fetches(&drain(&mut e));
    assert_eq!(first.len(), 4 * PER);
    assert!(first
        .iter()
        .all(|f| f.chunks.len() == 1 && f.lane == Lane::Link));
    // Eight threads: eight, one per lane.
    let mut e = transferring(big(10 * PER as u64), &[pid(1)], 8);
    let lanes: BTreeSet<Lane> = fetches(&drain(&mut e)).iter().map(|f| f.lane).collect();
    assert_eq!(lanes.len(), 8);
}

#[test]
fn small_files_are_batched_into_one_request() {
    let mut files: Vec<FileManifest> = (0..300)
        .map(|i| file(&format!("small/{i:03}.bin"), 100 << 10, i as u8))
        .collect();
    files.push(file("version.ini", 8, 0));
    let mut e = transferring(files, &[pid(1)], 1);
    let got = fetches(&drain(&mut e));
    assert!(got.iter().all(|f| f.chunks.len() <= BATCH_CHUNKS));
    let bytes = |f: &Fetch| f.chunks.iter().map(|&c| e.chunks()[c].len).sum::<u64>();
    assert!(got.iter().all(|f| bytes(f) <= BATCH_BYTES));
    assert!(got[0].chunks.len() > 1, "{:?}", got[0]);
    // The first MAX_IN_FLIGHT chunks go out in four requests, not 256.
    let n: usize = got.iter().map(|f| f.chunks.len()).sum();
    assert_eq!(n, MAX_IN_FLIGHT);
    assert_eq!(got.len(), MAX_IN_FLIGHT / BATCH_CHUNKS);
    assert_eq!(got.len(), 4);
}

#[test]
fn verified_chunks_are_reported_and_the_last_one_commits() {
    let mut e = transferring(manifest(), &[pid(1)], 1);
    let batches = fetches(&drain(&mut e));
    // Three big chunks and the sentinel (a small chunk after big ones goes alone).
    assert_eq!(batches.len(), 4, "{batches:?}");
    let mut verified = Vec::new();
    let mut commit = false;
    let mut queue = batches;
    while let Some(f) = queue.pop() {
        e.on_fetched(f.id, vec![Ok(()); f.chunks.len()], false);
        for a in drain(&mut e) {
            match a {
                Action::Verified { chunk, peer } => {
                    assert_eq!(peer, pid(1));
                    verified.push(chunk);
                }
                Action::Fetch(f) => queue.push(f),
                Action::Commit => commit = true,
                other => panic!("{other:?}"),
            }
        }
    }
    verified.sort_unstable();
    assert_eq!(verified, [0, 1, 2, 3]);
    assert!(commit);
    // A stale result after the end changes nothing.
    e.on_fetched(BatchId(0), vec![Ok(())], false);
    assert!(drain(&mut e).is_empty());
}

#[test]
fn resumed_chunks_are_not_fetched() {
    let t0 = Instant::now();
    let mut e = Engine::new(game(), &[pid(1)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(manifest().into()), t0);
    drain(&mut e);
    let (chunks, bytes) = e.on_prepared(&[0, 2, 2, 99], &[(pid(1), vec![])]);
    assert_eq!((chunks, bytes), (2, 2 * UNIT_SIZE));
    let asked: Vec<usize> = fetches(&drain(&mut e))
        .into_iter()
        .flat_map(|f| f.chunks)
        .collect();
    assert_eq!(asked, [1, 3]);
    // Everything present: commit without a fetch.
    let mut e = Engine::new(game(), &[pid(1)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(manifest().into()), t0);
    drain(&mut e);
    e.on_prepared(&[0, 1, 2, 3], &[(pid(1), vec![])]);
    assert_eq!(drain(&mut e), [Action::Commit]);
}

#[test]
fn a_lying_source_is_dropped_and_its_chunk_refetched_elsewhere() {
    let mut e = transferring(manifest(), &[pid(1), pid(2)], 1);
    let first = fetches(&drain(&mut e));
    let lie = first.iter().find(|f| f.peer == pid(2)).unwrap().clone();
    e.on_fetched(
        lie.id,
        vec![Err((FailKind::BadData, "hash mismatch".into()))],
        false,
    );
    let next = fetches(&drain(&mut e));
    assert!(next.iter().all(|f| f.peer == pid(1)), "{next:?}");
    assert!(next.iter().any(|f| f.chunks == lie.chunks));
    assert_eq!(e.why()[&pid(2)], "hash mismatch");
}

#[test]
fn a_banned_source_keeps_the_reason_it_was_banned_for() {
    let mut e = transferring(big(16), &[pid(1), pid(2)], 1);
    let first = fetches(&drain(&mut e));
    let liar: Vec<Fetch> = first.iter().filter(|f| f.peer == pid(2)).cloned().collect();
    assert!(liar.len() >= 2, "{first:?}");
    let n = liar[0].chunks.len();
    e.on_fetched(
        liar[0].id,
        vec![Err((FailKind::BadData, "hash mismatch".into())); n],
        false,
    );
    drain(&mut e);
    // Its other batch ends later, failed as its connection is closed.
    let n = liar[1].chunks.len();
    e.on_fetched(
        liar[1].id,
        vec![Err((FailKind::SourceGone, "connection closed".into())); n],
        false,
    );
    assert_eq!(e.why()[&pid(2)], "hash mismatch");
}

#[test]
fn a_source_without_a_lane_is_gone_and_the_last_loss_fails_with_each_reason() {
    let t0 = Instant::now();
    let mut e = Engine::new(game(), &[pid(1), pid(2)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(manifest().into()), t0);
    e.on_manifest(pid(2), Ok(manifest().into()), t0);
    drain(&mut e);
    // pid(2) lost its link before the lanes were opened.
    e.on_prepared(&[], &[(pid(1), vec![])]);
    let got = fetches(&drain(&mut e));
    assert!(got.iter().all(|f| f.peer == pid(1)));
    assert_eq!(e.why()[&pid(2)], "peer disconnected");
    for f in got {
        let n = f.chunks.len();
        e.on_fetched(
            f.id,
            vec![Err((FailKind::SourceGone, "refused".into())); n],
            false,
        );
    }
    // pid(2) may come back over a new link: the download waits for it.
    assert!(drain(&mut e).is_empty());
    let wait = EngineConfig::new(1).swarm_wait;
    assert_eq!(e.poll_timeout(), Some(t0 + wait));
    e.handle_timeout(t0 + wait);
    let actions = drain(&mut e);
    let Some(Action::Fail(PeerError::SourcesFailed(why))) = actions.last() else {
        panic!("{actions:?}")
    };
    assert!(
        why.starts_with("the sources disconnected and none came back in 30s: 4 missing unit(s)"),
        "{why}"
    );
    assert!(
        why.contains("peer disconnected") && why.contains("refused"),
        "{why}"
    );
    // Refused only: no wait.
    let mut e = transferring(manifest(), &[pid(1)], 1);
    for f in fetches(&drain(&mut e)) {
        let n = f.chunks.len();
        e.on_fetched(
            f.id,
            vec![Err((FailKind::SourceGone, "refused".into())); n],
            false,
        );
    }
    let actions = drain(&mut e);
    let Some(Action::Fail(PeerError::SourcesFailed(why))) = actions.last() else {
        panic!("{actions:?}")
    };
    assert!(why.starts_with("no eligible source left"), "{why}");
}

/// A source that keeps coming back and leaving without sending a chunk does not hold
/// the download: each loss counts as a stall, and after the third in a row it is not
/// waited for any more.
#[test]
fn a_source_that_keeps_leaving_without_sending_is_given_up() {
    let mut e = transferring(manifest(), &[pid(1)], 1);
    let lose = |e: &mut Engine, fetches: Vec<Fetch>| {
        for f in fetches {
            let n = f.chunks.len();
            let gone = Err((FailKind::Disconnected, "connection lost".into()));
            e.on_fetched(f.id, vec![gone; n], false);
        }
    };
    let mut asked = fetches(&drain(&mut e));
    for back in 1..crate::planner::MAX_STALLS {
        lose(&mut e, asked);
        assert!(e.waiting(), "loss {back}: waited for");
        e.add_ready(&[pid(1)]);
        assert!(!e.waiting());
        asked = fetches(&drain(&mut e));
        assert!(!asked.is_empty());
    }
    lose(&mut e, asked);
    assert!(!e.waiting());
    let actions = drain(&mut e);
    let Some(Action::Fail(PeerError::SourcesFailed(why))) = actions.last() else {
        panic!("{actions:?}")
    };
    assert!(why.starts_with("no eligible source left"), "{why}");
}

/// A file server restarted in the middle of a download: every request on its old link
/// fails, the download waits, and once it is ready again over a new link the rest comes
/// from it (over the link: its data connections closed with the old one).
#[test]
fn a_source_that_disconnected_and_came_back_finishes_the_download() {
    let t0 = Instant::now();
    let mut e = transferring(manifest(), &[pid(1)], 2);
    let first = fetches(&drain(&mut e));
    assert!(
        first.iter().all(|f| matches!(f.lane, Lane::Data(_))),
        "{first:?}"
    );
    let (done, lost) = first.split_at(1);
    e.on_fetched(done[0].id, vec![Ok(()); done[0].chunks.len()], false);
    drain(&mut e);
    for f in lost {
        let n = f.chunks.len();
        e.on_fetched(
            f.id,
            vec![Err((FailKind::Disconnected, "connection lost".into())); n],
            false,
        );
    }
    let waiting = drain(&mut e);
    assert!(fetches(&waiting).is_empty(), "{waiting:?}");
    assert!(e.poll_timeout().is_some(), "a wait, not a failure");
    // Back 10 s later.
    e.handle_timeout(t0 + Duration::from_secs(10));
    assert!(drain(&mut e).is_empty());
    e.add_ready(&[pid(1)]);
    let mut queue = fetches(&drain(&mut e));
    assert!(!queue.is_empty());
    let mut commit = false;
    while let Some(f) = queue.pop() {
        assert_eq!((f.peer.clone(), f.lane), (pid(1), Lane::Link));
        e.on_fetched(f.id, vec![Ok(()); f.chunks.len()], false);
        for a in drain(&mut e) {
            match a {
                Action::Fetch(f) => queue.push(f),
                Action::Commit => commit = true,
                Action::Verified { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(commit);
}

#[test]
fn a_lost_data_connection_is_a_stall_and_the_link_takes_over_at_the_end() {
    let mut e = transferring(big(6 * PER as u64), &[pid(1)], 2);
    let first = fetches(&drain(&mut e));
    let lanes: Vec<Lane> = first.iter().map(|f| f.lane).collect();
    let turns: Vec<Lane> = (0..4 * PER).map(|i| Lane::Data(i % 2)).collect();
    assert_eq!(lanes, turns);
    let gone = Err((FailKind::SourceGone, "connection lost: timed out".into()));
    for f in &first {
        let lost = f.lane == Lane::Data(0);
        let res = if lost { gone.clone() } else { Ok(()) };
        e.on_fetched(f.id, vec![res], lost);
    }
    // The source is kept (a stall), its chunks are asked again on the other lane.
    let next = fetches(&drain(&mut e));
    assert!(
        !next.is_empty() && next.iter().all(|f| f.lane == Lane::Data(1)),
        "{next:?}"
    );
    assert!(e.why()[&pid(1)].starts_with("data connection lost"));
    // The other data connection goes too: the link carries the rest.
    for f in &next {
        e.on_fetched(f.id, vec![gone.clone()], true);
    }
    let after = fetches(&drain(&mut e));
    assert!(
        !after.is_empty() && after.iter().all(|f| f.lane == Lane::Link),
        "{after:?}"
    );
    // A batch failing on a data connection that did not close is the source's loss.
    let mut e = transferring(big(6 * PER as u64), &[pid(1)], 2);
    let f = fetches(&drain(&mut e)).remove(0);
    e.on_fetched(f.id, vec![gone], false);
    let actions = drain(&mut e);
    assert!(fetches(&actions).is_empty(), "{actions:?}");
}

#[test]
fn stalls_back_off_and_drop_the_source_after_three() {
    let mut e = transferring(big(8 * PER as u64), &[pid(1)], 1);
    let mut out = fetches(&drain(&mut e));
    for round in 0..3 {
        assert!(!out.is_empty(), "round {round}");
        for f in std::mem::take(&mut out) {
            e.on_fetched(
                f.id,
                vec![Err((FailKind::Stalled, "silent 30s".into()))],
                false,
            );
        }
        let actions = drain(&mut e);
        if round < 2 {
            out = fetches(&actions);
            // Each stall halves what it is asked at once.
            assert!(
                out.len() <= (4 * PER) >> (round + 1),
                "round {round}: {}",
                out.len()
            );
        } else {
            assert!(matches!(
                actions.last(),
                Some(Action::Fail(PeerError::SourcesFailed(_)))
            ));
        }
    }
}

/// The swarm side: partial holders, offers, the end game.
mod lanes;
mod swarm;

/// A source that never answers, in a download asked for whole at its start (each source
/// its even share in flight): once the other has sent its share and sat idle for
/// `LAG_RACE_AFTER`, it sends the silent one's units too — `version.ini` whichever had it
/// — each copy it verifies first cancels the silent one's request, and the download
/// commits. Either source silent (the tie between equal shares goes to one of them).
#[test]
fn a_silent_source_is_raced_once_the_other_sat_idle_a_while() {
    for (quiet, loud) in [(pid(2), pid(1)), (pid(1), pid(2))] {
        let mut e = transferring(big(23), &[pid(1), pid(2)], 2);
        let mut open = fetches(&drain(&mut e));
        let (mut silent, mut cancelled, mut raced) = (Vec::new(), Vec::new(), 0);
        let (mut waited, mut cancels) = (false, 0);
        let committed = loop {
            let mut acts = Vec::new();
            while let Some(f) = open.pop() {
                if f.peer == quiet {
                    assert!(!f.race);
                    silent.push(f.id);
                    continue;
                }
                assert_eq!(f.peer, loud);
                raced += usize::from(f.race);
                let n = f.chunks.len();
                e.on_fetched(f.id, vec![Ok(()); n], false);
                acts.extend(drain(&mut e));
            }
            for id in cancelled.drain(..) {
                let lost = Err((FailKind::NotChosen, "another source sent it first".into()));
                e.on_fetched(id, vec![lost], false);
                acts.extend(drain(&mut e));
            }
            if acts.is_empty() {
                // Idle: the end game waits, then finds the silent source lagging.
                let at = e.poll_timeout().expect("the end game's wait");
                assert!(!waited, "waited twice");
                waited = true;
                e.handle_timeout(at);
                acts.extend(drain(&mut e));
            }
            let commit = acts.contains(&Action::Commit);
            for a in acts {
                match a {
                    Action::Fetch(f) => open.push(f),
                    Action::Cancel(id) => {
                        cancels += 1;
                        cancelled.push(id);
                    }
                    _ => {}
                }
            }
            if commit {
                break true;
            }
            if open.is_empty() && cancelled.is_empty() && e.poll_timeout().is_none() {
                break false;
            }
        };
        assert!(committed && waited, "{quiet:?} silent");
        assert_eq!(
            raced,
            silent.len(),
            "each of the silent source's units raced once"
        );
        assert_eq!(cancels, silent.len(), "and its request cancelled");
    }
}
