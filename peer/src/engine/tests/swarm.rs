use super::*;

/// A swarm download from server `pid(1)` (offers of up to 8 chunks, one thread) of
/// `files`, with `holders` known as partial sources before its lanes open; prepared.
fn offering(files: Vec<FileManifest>, holders: Vec<(PeerId, ChunkSet)>) -> (Engine, Instant) {
    let t0 = Instant::now();
    let mut config = EngineConfig::new(1);
    config.offer = 8;
    let mut e = Engine::new(game(), &[pid(1)], config, t0);
    drain(&mut e);
    e.on_manifest(pid(1), Ok(files.into()), t0);
    drain(&mut e);
    e.set_partials(holders, t0);
    e.on_prepared(&[], &[(pid(1), vec![])]);
    (e, t0)
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
    e.on_manifest(pid(1), Ok(big(4).into()), t0);
    assert_eq!(drain(&mut e), [Action::Prepare]);
    // Known before the lanes open: it keeps its link lane.
    e.set_partials(vec![(pid(2), holds(5, &[0, 1]))], t0);
    e.set_partials(
        vec![(pid(1), holds(5, &[2])), (pid(2), holds(5, &[0, 1]))],
        t0,
    );
    e.on_prepared(&[], &[(pid(1), vec![0, 1])]);
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
            assert!(why.contains("1 missing unit"), "{why}");
            assert!(why.contains("peer disconnected"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_server_with_every_offered_chunk_on_its_way_rests_until_something_changes() {
    let (mut e, _) = offering(big(4), vec![(pid(2), holds(5, &[]))]);
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
    let (mut e, t0) = offering(big(4), vec![(pid(2), holds(5, &[]))]);
    let offer = fetches(&drain(&mut e));
    assert!(offer.len() == 1 && offer[0].offer && offer[0].chunks.len() == 5);
    let (id, asked) = (offer[0].id, offer[0].chunks.clone());
    // The partial holder gets a chunk while the offer is out: it is not asked, every
    // pending chunk is in the offer.
    e.set_partials(vec![(pid(2), holds(5, &[asked[3]]))], t0);
    assert!(fetches(&drain(&mut e)).is_empty());
    // The server chose the second: the holder is asked for its chunk at once (before,
    // only when the chosen one had arrived), and the server for nothing more meanwhile.
    let released = e.on_chosen(id, 1);
    let others: Vec<usize> = asked.iter().copied().filter(|&c| c != asked[1]).collect();
    assert_eq!(released, others);
    assert_eq!(e.picked(id), Some(1));
    let f = fetches(&drain(&mut e));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].peer.clone(), f[0].chunks.clone()),
        (pid(2), vec![asked[3]])
    );
    // Told twice: the first choice stands.
    assert!(e.on_chosen(id, 2).is_empty());
    assert_eq!(e.picked(id), Some(1));
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
    // Two holders of every chunk (the sentinel too); the server is not raced.
    let all = holds(3, &[0, 1, 2]);
    let (mut e, _) = offering(big(2), vec![(pid(2), all.clone()), (pid(3), all)]);
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
