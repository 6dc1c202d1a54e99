use super::*;
use crate::table::tests::pid;
use crate::validate::tests::{choose_manifest, dirs, f, game, id, m};

#[test]
fn agreement_and_majority() {
    let c = choose_manifest(&id(), vec![(pid(2), game(100, 7)), (pid(1), game(100, 7))]).unwrap();
    assert_eq!(c.sources, [pid(1), pid(2)]);
    assert_eq!(c.files[0].path.as_str(), "g.eti", "sorted by path");
    let c = choose_manifest(
        &id(),
        vec![
            (pid(1), game(100, 7)),
            (pid(2), game(100, 7)),
            (pid(3), game(101, 7)),
        ],
    )
    .unwrap();
    assert_eq!(c.sources, [pid(1), pid(2)]);
    assert_eq!(c.rejected, [(pid(3), "outvoted manifest".to_owned())]);
}

#[test]
fn a_vote_is_settled_once_the_missing_answers_cannot_change_it() {
    let mut v = ManifestVote::default();
    assert!(!v.settled(0), "no answer yet");
    v.add(pid(1), m(game(100, 7)));
    assert!(v.settled(0), "everyone answered");
    assert!(!v.settled(1), "one more could tie");
    v.add(pid(2), m(game(100, 7)));
    assert!(v.settled(1), "2 against at most 1");
    assert!(!v.settled(2), "2 against at most 2");
    v.add(pid(3), m(game(200, 7)));
    assert!(!v.settled(1), "2 against at most 2");
    assert!(v.settled(0));
    // Invalid manifests do not count for the runner-up either.
    let mut w = ManifestVote::default();
    w.add(pid(1), m(game(100, 7)));
    w.add(pid(2), m(game(100, 7)));
    w.add(pid(3), m(vec![f("g.eti", 100, 7)]));
    assert!(w.settled(1));
    let c = w.choose(&id()).unwrap();
    assert_eq!(c.sources, [pid(1), pid(2)]);
    assert_eq!(c.rejected.len(), 1);
}

#[test]
fn special_mode_bits_do_not_split_a_vote() {
    // An older source advertising a setuid bit and a newer one without it describe the
    // same files: one group, and the chosen manifest carries permission bits only.
    let mut suid = game(100, 7);
    for f in &mut suid {
        f.mode |= 0o4000;
    }
    let c = choose_manifest(&id(), vec![(pid(1), suid), (pid(2), game(100, 7))]).unwrap();
    assert_eq!(c.sources, [pid(1), pid(2)]);
    assert!(c.files.iter().all(|f| f.mode & !0o777 == 0));
}

#[test]
fn s8_s17_tie_fails() {
    let err =
        choose_manifest(&id(), vec![(pid(1), game(100, 7)), (pid(2), game(200, 7))]).unwrap_err();
    assert!(
        matches!(
            err,
            PeerError::MetadataConflict {
                groups: 2,
                top: 1,
                voters: 2,
                ..
            }
        ),
        "{err}"
    );
    // Same sizes, different bytes: still a conflict.
    assert!(choose_manifest(&id(), vec![(pid(1), game(100, 7)), (pid(2), game(100, 8))]).is_err());
}

#[test]
fn folders_vote() {
    // The files decide who is a source: one without the folders (a copy made before
    // protocol 13) sends the same bytes. The folders named most win; the order a
    // source lists them in is no difference.
    let folders_of =
        |c: &Chosen| -> Vec<String> { c.folders.iter().map(|d| d.as_str().to_owned()).collect() };
    let mut vote = ManifestVote::default();
    vote.add(pid(1), dirs(game(100, 7), &["saves", "a/b/c"]));
    vote.add(pid(2), dirs(game(100, 7), &["a/b/c", "saves"]));
    vote.add(pid(3), m(game(100, 7)));
    assert!(vote.settled(0));
    let c = vote.choose(&id()).unwrap();
    assert_eq!(c.sources, [pid(1), pid(2), pid(3)]);
    assert_eq!(folders_of(&c), ["a/b/c", "saves"]);
    assert!(c.rejected.is_empty());
    // Outnumbered, the folders go (as every copy had it before protocol 13); on a
    // tie the longer list wins, whatever order the answers came in.
    let mut vote = ManifestVote::default();
    vote.add(pid(1), dirs(game(100, 7), &["saves"]));
    vote.add(pid(2), m(game(100, 7)));
    vote.add(pid(3), m(game(100, 7)));
    assert!(vote.choose(&id()).unwrap().folders.is_empty());
    for order in [[1, 2], [2, 1]] {
        let mut vote = ManifestVote::default();
        for p in order {
            let listed: &[&str] = if p == 1 { &["saves"] } else { &[] };
            vote.add(pid(p), dirs(game(100, 7), listed));
        }
        let c = vote.choose(&id()).unwrap();
        assert_eq!((c.sources.len(), folders_of(&c)), (2, vec!["saves".into()]));
    }
    // A tie of count and length goes the same way whatever order the answers came in.
    let picks: Vec<Vec<String>> = [[1, 2], [2, 1]]
        .iter()
        .map(|order| {
            let mut vote = ManifestVote::default();
            for &p in order {
                vote.add(
                    pid(p),
                    dirs(game(100, 7), if p == 1 { &["b"] } else { &["a"] }),
                );
            }
            folders_of(&vote.choose(&id()).unwrap())
        })
        .collect();
    assert_eq!(picks[0], picks[1]);
}

/// A game of `files` files of 1 MiB each, all its own (seed).
fn big(files: usize, seed: u8) -> Vec<FileManifest> {
    let mut all = game(1 << 20, seed);
    all.extend((0..files).map(|i| f(&format!("d/{i:05}.dat"), 1 << 20, seed)));
    all
}

#[test]
fn a_flood_of_distinct_manifests_is_held_within_the_budget() {
    // Three honest sources among fifty that each send a large manifest of their own: the
    // vote never holds more than its budget besides the leader, and the honest files win.
    let honest = big(10, 1);
    let each = files_weight(&big(2_000, 2));
    let budget = 4 * each;
    let mut vote = ManifestVote::with_budget(budget);
    let mut most = 0;
    for i in 0..53u8 {
        if i % 18 == 0 {
            vote.add(pid(200 + i / 18), dirs(honest.clone(), &["saves"]));
        } else {
            vote.add(pid(i), dirs(big(2_000, 10 + i), &[&format!("x{i}")]));
        }
        most = most.max(vote.held());
    }
    assert!(
        most <= budget + each + 64,
        "held {most} bytes at most, budget {budget} and one leader of {each}"
    );
    assert!(vote.settled(0));
    let c = vote.choose(&id()).unwrap();
    assert_eq!(c.files, {
        let mut h = honest;
        h.sort_by(|a, b| a.path.cmp(&b.path));
        h
    });
    assert_eq!(c.sources, [pid(200), pid(201), pid(202)]);
    assert_eq!(c.folders, [RelPath::new("saves").unwrap()]);
    assert_eq!(c.rejected.len(), 50);
}

#[test]
fn files_let_go_come_back_with_the_vote_that_lets_them_win() {
    // With no budget at all, only the leader's files are held; the files that trail
    // are let go and brought back by the next vote for them.
    let (a, b) = (game(100, 1), game(100, 2));
    for order in [[1, 2, 2, 1, 1], [2, 1, 1, 2, 2]] {
        let mut vote = ManifestVote::with_budget(0);
        for (i, which) in order.into_iter().enumerate() {
            let files = if which == 1 { a.clone() } else { b.clone() };
            vote.add(pid(i as u8), m(files));
            assert!(vote.held() <= files_weight(&a).max(files_weight(&b)));
        }
        let c = vote.choose(&id()).unwrap();
        let want = if order[0] == 1 { &a } else { &b };
        let mut want = want.clone();
        want.sort_by(|x, y| x.path.cmp(&y.path));
        assert_eq!(c.files, want);
        assert_eq!(c.sources.len(), 3);
    }
}

#[test]
fn the_leaders_folders_are_kept_with_its_files() {
    // With no budget, the leader keeps the folder list its voters name most, however
    // many other lists come in.
    let mut vote = ManifestVote::with_budget(0);
    vote.add(pid(1), dirs(game(100, 1), &["saves"]));
    vote.add(pid(2), dirs(game(100, 1), &[]));
    vote.add(pid(3), dirs(game(100, 1), &["saves"]));
    vote.add(pid(4), dirs(game(100, 2), &["x"]));
    vote.add(pid(5), dirs(game(100, 1), &["a", "b"]));
    let c = vote.choose(&id()).unwrap();
    assert_eq!(c.sources, [pid(1), pid(2), pid(3), pid(5)]);
    assert_eq!(c.folders, [RelPath::new("saves").unwrap()]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
    /// Whatever the budget and the order, the vote picks the same files and sources as one
    /// that keeps everything, and folders one of their voters listed (the same ones when
    /// nothing had to go).
    #[test]
    fn a_budget_never_changes_who_wins(
        answers in proptest::collection::vec((0u8..4, 0u8..3), 1..12),
        budget in 0usize..3_000,
    ) {
        let folder_lists: [&[&str]; 3] = [&[], &["saves"], &["a", "b/c"]];
        let mut all = ManifestVote::default();
        let mut tight = ManifestVote::with_budget(budget);
        for (i, (files, folders)) in answers.iter().enumerate() {
            let answer = dirs(game(100, *files), folder_lists[*folders as usize]);
            all.add(pid(i as u8), answer.clone());
            tight.add(pid(i as u8), answer);
        }
        let (all, tight) = (all.choose(&id()), tight.choose(&id()));
        match (all, tight) {
            (Ok(all), Ok(tight)) => {
                proptest::prop_assert_eq!(&all.files, &tight.files);
                proptest::prop_assert_eq!(&all.sources, &tight.sources);
                proptest::prop_assert_eq!(all.rejected.len(), tight.rejected.len());
                let listed: Vec<Vec<RelPath>> = answers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| tight.sources.contains(&pid(*i as u8)))
                    .map(|(_, (_, d))| {
                        folder_lists[*d as usize].iter().map(|p| RelPath::new(p).unwrap()).collect()
                    })
                    .collect();
                let mut sorted = tight.folders.clone();
                sorted.sort();
                let named = listed.iter().any(|l| {
                    let mut l = l.clone();
                    l.sort();
                    l == sorted
                });
                proptest::prop_assert!(named, "folders {:?} named by no source", tight.folders);
                let everything: usize = (0..4).map(|s| files_weight(&game(100, s))).sum::<usize>()
                    + folder_lists
                        .iter()
                        .map(|l| folders_weight(&dirs(vec![], l).folders))
                        .sum::<usize>();
                if budget >= everything {
                    proptest::prop_assert_eq!(&all.folders, &tight.folders);
                }
            }
            (Err(all), Err(tight)) => proptest::prop_assert_eq!(all.to_string(), tight.to_string()),
            (all, tight) => proptest::prop_assert!(false, "{all:?} against {tight:?}"),
        }
    }
}
