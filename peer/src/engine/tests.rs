use super::*;
use lanspread_catalog::RelPath;

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

fn manifest() -> Vec<FileManifest> {
    big(3)
}

/// A game of one archive of `chunks` chunks and its sentinel.
fn big(chunks: u64) -> Vec<FileManifest> {
    vec![
        file("big.eti", chunks * CHUNK_SIZE, 1),
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
        e.on_manifest(p.clone(), Ok(files.clone()), t0);
    }
    assert_eq!(drain(&mut e), [Action::Prepare]);
    let data = if threads > 1 { threads } else { 0 };
    let opened: Vec<(PeerId, usize)> = sources.iter().map(|p| (p.clone(), data)).collect();
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
    e.on_manifest(pid(1), Ok(manifest()), t0);
    // Settled (1 vote, 1 outstanding, no lead): no grace yet.
    assert_eq!(e.poll_timeout(), Some(t0 + MANIFEST_TIMEOUT));
    assert!(drain(&mut e).is_empty());
    e.on_manifest(pid(2), Ok(manifest()), t0);
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
    e.on_manifest(pid(1), Ok(manifest()), t1);
    e.on_manifest(pid(2), Ok(manifest()), t1);
    // 2 votes, 2 silent: they could still tie it.
    assert_eq!(e.poll_timeout(), Some(t0 + MANIFEST_TIMEOUT));
    e.on_manifest(pid(3), Ok(manifest()), t1);
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
    e.on_manifest(pid(4), Ok(manifest()), t1 + MANIFEST_GRACE);
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
    e.on_manifest(pid(1), Ok(manifest()), sec(520));
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
    let other = vec![
        file("big.eti", 3 * CHUNK_SIZE, 9),
        file("version.ini", 8, 2),
    ];
    let mut e = Engine::new(game(), &[pid(1), pid(2)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(manifest()), t0);
    e.on_manifest(pid(2), Ok(other.clone()), t0);
    assert!(matches!(
        drain(&mut e)[..],
        [Action::Fail(PeerError::MetadataConflict { .. })]
    ));

    let mut e = Engine::new(game(), &[pid(1), pid(2), pid(3)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(manifest()), t0);
    e.on_manifest(pid(3), Ok(other), t0);
    e.on_manifest(pid(2), Ok(manifest()), t0);
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
    // One source, one thread: four big chunks in flight, no more.
    let mut e = transferring(big(10), &[pid(1)], 1);
    let first = fetches(&drain(&mut e));
    assert_eq!(first.len(), 4);
    assert!(first
        .iter()
        .all(|f| f.chunks.len() == 1 && f.lane == Lane::Link));
    // Eight threads: eight, one per lane.
    let mut e = transferring(big(10), &[pid(1)], 8);
    let lanes: BTreeSet<Lane> = fetches(&drain(&mut e)).iter().map(|f| f.lane).collect();
    assert_eq!(lanes.len(), 8);
}

#[test]
fn small_files_are_batched_into_one_request() {
    let mut files: Vec<FileManifest> = (0..100)
        .map(|i| file(&format!("small/{i:03}.bin"), 100 << 10, i as u8))
        .collect();
    files.push(file("version.ini", 8, 0));
    let mut e = transferring(files, &[pid(1)], 1);
    let got = fetches(&drain(&mut e));
    assert!(got.iter().all(|f| f.chunks.len() <= BATCH_CHUNKS));
    let bytes = |f: &Fetch| f.chunks.iter().map(|&c| e.chunks()[c].len).sum::<u64>();
    assert!(got.iter().all(|f| bytes(f) <= BATCH_BYTES));
    assert!(got[0].chunks.len() > 1, "{:?}", got[0]);
    // The first MAX_IN_FLIGHT chunks go out in two requests, not 64.
    let n: usize = got.iter().map(|f| f.chunks.len()).sum();
    assert_eq!(n, MAX_IN_FLIGHT);
    assert_eq!(got.len(), 2);
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
    e.on_manifest(pid(1), Ok(manifest()), t0);
    drain(&mut e);
    let (chunks, bytes) = e.on_prepared(&[0, 2, 2, 99], &[(pid(1), 0)]);
    assert_eq!((chunks, bytes), (2, 2 * CHUNK_SIZE));
    let asked: Vec<usize> = fetches(&drain(&mut e))
        .into_iter()
        .flat_map(|f| f.chunks)
        .collect();
    assert_eq!(asked, [1, 3]);
    // Everything present: commit without a fetch.
    let mut e = Engine::new(game(), &[pid(1)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(manifest()), t0);
    drain(&mut e);
    e.on_prepared(&[0, 1, 2, 3], &[(pid(1), 0)]);
    assert_eq!(drain(&mut e), [Action::Commit]);
}

#[test]
fn a_lying_source_is_dropped_and_its_chunk_refetched_elsewhere() {
    let mut e = transferring(manifest(), &[pid(1), pid(2)], 1);
    let first = fetches(&drain(&mut e));
    let lie = first.iter().find(|f| f.peer == pid(2)).unwrap().clone();
    e.on_fetched(
        lie.id,
        vec![Err((FailKind::BadData, "SHA-256 mismatch".into()))],
        false,
    );
    let next = fetches(&drain(&mut e));
    assert!(next.iter().all(|f| f.peer == pid(1)), "{next:?}");
    assert!(next.iter().any(|f| f.chunks == lie.chunks));
    assert_eq!(e.why()[&pid(2)], "SHA-256 mismatch");
}

#[test]
fn a_source_without_a_lane_is_gone_and_the_last_loss_fails_with_each_reason() {
    let t0 = Instant::now();
    let mut e = Engine::new(game(), &[pid(1), pid(2)], EngineConfig::new(1), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(manifest()), t0);
    e.on_manifest(pid(2), Ok(manifest()), t0);
    drain(&mut e);
    // pid(2) lost its link before the lanes were opened.
    e.on_prepared(&[], &[(pid(1), 0)]);
    let got = fetches(&drain(&mut e));
    assert!(got.iter().all(|f| f.peer == pid(1)));
    assert_eq!(e.why()[&pid(2)], "peer disconnected");
    for f in got {
        let n = f.chunks.len();
        e.on_fetched(
            f.id,
            vec![Err((FailKind::SourceGone, "connection lost".into())); n],
            false,
        );
    }
    let actions = drain(&mut e);
    let Some(Action::Fail(PeerError::SourcesFailed(why))) = actions.last() else {
        panic!("{actions:?}")
    };
    assert!(why.starts_with("no eligible source left"), "{why}");
    assert!(
        why.contains("peer disconnected") && why.contains("connection lost"),
        "{why}"
    );
}

#[test]
fn a_lost_data_connection_is_a_stall_and_the_link_takes_over_at_the_end() {
    let mut e = transferring(big(6), &[pid(1)], 2);
    let first = fetches(&drain(&mut e));
    let lanes: Vec<Lane> = first.iter().map(|f| f.lane).collect();
    assert_eq!(
        lanes,
        [Lane::Data(0), Lane::Data(1), Lane::Data(0), Lane::Data(1)]
    );
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
    let mut e = transferring(big(6), &[pid(1)], 2);
    let f = fetches(&drain(&mut e)).remove(0);
    e.on_fetched(f.id, vec![gone], false);
    let actions = drain(&mut e);
    assert!(fetches(&actions).is_empty(), "{actions:?}");
}

#[test]
fn stalls_back_off_and_drop_the_source_after_three() {
    let mut e = transferring(big(8), &[pid(1)], 1);
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
                out.len() <= 4 >> (round + 1),
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

fn holds(len: usize, chunks: &[usize]) -> ChunkSet {
    let mut s = ChunkSet::empty(len);
    for &c in chunks {
        s.insert(c);
    }
    s
}

#[test]
fn partial_holders_are_asked_over_their_link_for_what_they_hold() {
    let t0 = Instant::now();
    let mut e = Engine::new(game(), &[pid(1)], EngineConfig::new(2), t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(big(4)), t0);
    assert_eq!(drain(&mut e), [Action::Prepare]);
    // Known before the lanes open: it keeps its link lane.
    e.set_partials(vec![(pid(2), holds(5, &[0, 1]))], t0);
    e.set_partials(
        vec![(pid(1), holds(5, &[2])), (pid(2), holds(5, &[0, 1]))],
        t0,
    );
    e.on_prepared(&[], &[(pid(1), 2)]);
    let f = fetches(&drain(&mut e));
    let partial: Vec<_> = f.iter().filter(|f| f.partial).collect();
    assert_eq!(partial.len(), 1, "{f:?}");
    assert_eq!(
        (partial[0].peer.clone(), partial[0].lane),
        (pid(2), Lane::Link)
    );
    assert!(
        f.iter().all(|f| f.partial == (f.peer == pid(2))),
        "the server is not partial"
    );
    let server: Vec<usize> = f
        .iter()
        .filter(|f| !f.partial)
        .flat_map(|f| f.chunks.clone())
        .collect();
    assert!(!server.contains(&0) && !server.contains(&1), "{server:?}");
}

#[test]
fn a_starved_swarm_download_waits_for_its_partial_sources_then_fails() {
    let mut e = transferring(big(2), &[pid(1)], 1);
    let t0 = Instant::now();
    e.set_partials(vec![(pid(2), holds(3, &[0]))], t0);
    let f = fetches(&drain(&mut e));
    for f in f {
        let res = if f.peer == pid(1) {
            Err((FailKind::SourceGone, "peer disconnected".into()))
        } else {
            Ok(())
        };
        e.on_fetched(f.id, vec![res; f.chunks.len()], false);
    }
    let after = drain(&mut e);
    assert!(
        after.iter().all(|a| matches!(a, Action::Verified { .. })),
        "{after:?}"
    );
    let due = e.poll_timeout().expect("waiting for the swarm");
    assert_eq!(due, t0 + SWARM_WAIT);
    // The partial source verified a chunk we miss: no longer starved.
    e.set_partials(
        vec![(pid(2), holds(3, &[0, 2]))],
        t0 + Duration::from_secs(10),
    );
    assert_eq!(e.poll_timeout(), None);
    let f = fetches(&drain(&mut e));
    assert_eq!(
        (f.len(), f[0].chunks.clone(), f[0].partial),
        (1, vec![2], true)
    );
    e.on_fetched(f[0].id, vec![Ok(())], false);
    drain(&mut e);
    let since = e.poll_timeout().expect("starved again");
    e.handle_timeout(since - Duration::from_secs(1));
    assert!(drain(&mut e).is_empty());
    e.handle_timeout(since);
    match drain(&mut e).as_slice() {
        [Action::Fail(PeerError::SourcesFailed(why))] => {
            assert!(why.contains("1 missing chunk"), "{why}");
            assert!(why.contains("peer disconnected"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_server_with_every_offered_chunk_on_its_way_rests_until_something_changes() {
    let t0 = Instant::now();
    let mut config = EngineConfig::new(1);
    config.offer = 8;
    let mut e = Engine::new(game(), &[pid(1)], config, t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(big(4)), t0);
    drain(&mut e);
    e.set_partials(vec![(pid(2), holds(5, &[]))], t0);
    e.on_prepared(&[], &[(pid(1), 0)]);
    let f = fetches(&drain(&mut e));
    assert_eq!(f.len(), 1);
    assert!(f[0].offer && f[0].chunks.len() == 5, "{f:?}");
    let busy = vec![Err((FailKind::NotChosen, String::new())); 5];
    e.on_fetched(f[0].id, busy.clone(), false);
    assert!(drain(&mut e).is_empty(), "resting: no new offer at once");
    let due = e.poll_timeout().expect("a rest ends");
    assert!(due <= Instant::now() + OFFER_REST);
    e.handle_timeout(due);
    let f = fetches(&drain(&mut e));
    assert_eq!(f.len(), 1, "offered again after the rest");
    e.on_fetched(f[0].id, busy, false);
    assert!(drain(&mut e).is_empty());
    // New holdings end the rest early.
    e.set_partials(vec![(pid(2), holds(5, &[0]))], Instant::now());
    let f = fetches(&drain(&mut e));
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(e.why().is_empty(), "not choosing is nobody's failure");
}

#[test]
fn an_offers_other_chunks_are_free_as_soon_as_the_server_says_which_it_sends() {
    let t0 = Instant::now();
    let mut config = EngineConfig::new(1);
    config.offer = 8;
    let mut e = Engine::new(game(), &[pid(1)], config, t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(big(4)), t0);
    drain(&mut e);
    e.set_partials(vec![(pid(2), holds(5, &[]))], t0);
    e.on_prepared(&[], &[(pid(1), 0)]);
    let offer = fetches(&drain(&mut e));
    assert!(offer.len() == 1 && offer[0].offer && offer[0].chunks.len() == 5);
    let (id, asked) = (offer[0].id, offer[0].chunks.clone());
    // The partial holder gets a chunk while the offer is out: it is not asked, every
    // pending chunk is in the offer.
    e.set_partials(vec![(pid(2), holds(5, &[asked[3]]))], t0);
    assert!(fetches(&drain(&mut e)).is_empty());
    // The server chose the second: the holder is asked for its chunk at once (before,
    // only when the chosen one had arrived), and the server for nothing more meanwhile.
    e.on_chosen(id, 1);
    let f = fetches(&drain(&mut e));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].peer.clone(), f[0].chunks.clone()),
        (pid(2), vec![asked[3]])
    );
    e.on_chosen(id, 2); // told twice: the first choice stands
    assert!(fetches(&drain(&mut e)).is_empty());
    // The offer ends: one result per chunk as asked, the chosen one's counts.
    let mut results = vec![Err((FailKind::NotChosen, String::new())); 5];
    results[1] = Ok(());
    e.on_fetched(id, results, false);
    let after = drain(&mut e);
    assert!(
        after.contains(&Action::Verified {
            chunk: asked[1],
            peer: pid(1)
        }),
        "{after:?}"
    );
    let next = fetches(&after);
    assert!(
        next.iter()
            .all(|f| f.peer == pid(1) && f.offer && !f.chunks.contains(&asked[1])),
        "the rest offered again, the verified one not: {next:?}"
    );
    assert!(e.why().is_empty());
}

#[test]
fn the_last_chunk_is_raced_from_a_second_holder_and_the_loser_cancelled() {
    let t0 = Instant::now();
    let mut config = EngineConfig::new(1);
    config.offer = 8;
    let mut e = Engine::new(game(), &[pid(1)], config, t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(big(2)), t0);
    drain(&mut e);
    // Two holders of every chunk (the sentinel too); the server is not raced.
    let all = holds(3, &[0, 1, 2]);
    e.set_partials(vec![(pid(2), all.clone()), (pid(3), all)], t0);
    e.on_prepared(&[], &[(pid(1), 0)]);
    let first = fetches(&drain(&mut e));
    assert!(first.iter().all(|f| f.partial && !f.race), "{first:?}");
    assert_eq!(first.len(), 2, "one chunk per holder: {first:?}");
    // Both holders send a chunk; one is verified, two are missing: no race yet.
    let (a, b) = (&first[0], &first[1]);
    e.on_fetched(a.id, vec![Ok(())], false);
    let next = fetches(&drain(&mut e));
    assert_eq!(next.len(), 1, "{next:?}");
    assert!(!next[0].race && next[0].peer == a.peer);
    // The second-to-last verified: the last chunk, on its way from `b`'s holder, is
    // also asked of the other one.
    e.on_fetched(next[0].id, vec![Ok(())], false);
    let actions = drain(&mut e);
    let race = fetches(&actions);
    assert_eq!(race.len(), 1, "{actions:?}");
    assert!(race[0].race && race[0].partial, "{race:?}");
    assert_eq!(
        (race[0].peer.clone(), race[0].chunks.clone()),
        (a.peer.clone(), b.chunks.clone())
    );
    // The racer wins: the first request is cancelled; its late answer changes nothing.
    e.on_fetched(race[0].id, vec![Ok(())], false);
    let actions = drain(&mut e);
    assert!(actions.contains(&Action::Cancel(b.id)), "{actions:?}");
    assert!(actions.contains(&Action::Commit), "{actions:?}");
    let verified = actions
        .iter()
        .filter(|a| matches!(a, Action::Verified { .. }))
        .count();
    assert_eq!(verified, 1, "{actions:?}");
    let cancelled = Err((FailKind::NotChosen, "another source sent it first".into()));
    e.on_fetched(b.id, vec![cancelled], false);
    assert!(drain(&mut e).is_empty());
    assert!(e.why().is_empty(), "losing a race is nobody's failure");
}
