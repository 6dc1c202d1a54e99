//! Data connections lost and opened again: the lanes the engine chooses among.

use super::*;

/// A data connection lost while its source stays is retired; once it is open again
/// (`lane_back`) it takes batches again.
#[test]
fn a_data_lane_opened_again_takes_batches_again() {
    let mut e = transferring(big(6 * PER as u64), &[pid(1)], 2);
    assert!(e.wants_lanes(&pid(1)));
    assert!(e.lane_back(&pid(1), 0), "live already");
    let first = fetches(&drain(&mut e));
    let gone = Err((FailKind::SourceGone, "connection lost: timed out".into()));
    for f in &first {
        let lost = f.lane == Lane::Data(0);
        let res = if lost { gone.clone() } else { Ok(()) };
        e.on_fetched(f.id, vec![res], lost);
    }
    // Still a source that wants its lanes: the driver dials lane 0 again.
    assert!(e.wants_lanes(&pid(1)));
    assert!(!e.lanes.is_live(&pid(1), Lane::Data(0)));
    assert!(e.lane_back(&pid(1), 0));
    let next = fetches(&drain(&mut e));
    assert!(
        next.iter().any(|f| f.lane == Lane::Data(0)),
        "the lane opened again takes batches: {next:?}"
    );
    assert!(next.iter().all(|f| f.lane != Lane::Link), "{next:?}");
    // Closed while idle (the driver saw it first): no batch goes there.
    e.lane_closed(&pid(1), 1);
    for f in &next {
        e.on_fetched(f.id, vec![Ok(())], false);
    }
    let last = fetches(&drain(&mut e));
    assert!(!last.is_empty());
    assert!(last.iter().all(|f| f.lane == Lane::Data(0)), "{last:?}");
    // With one transfer thread there are no data lanes to open.
    let mut one = transferring(big(2), &[pid(1)], 1);
    assert!(!one.wants_lanes(&pid(1)));
    assert!(!one.lane_back(&pid(1), 0));
    assert!(fetches(&drain(&mut one))
        .iter()
        .all(|f| f.lane == Lane::Link));
}

/// A source lost with its link takes no lanes until it is back; then its link carries
/// batches until its data connections are open again, and they carry the rest.
#[test]
fn a_source_back_over_a_new_link_gets_its_data_lanes_again() {
    let mut e = transferring(big(6 * PER as u64), &[pid(1)], 2);
    for f in fetches(&drain(&mut e)) {
        let n = f.chunks.len();
        let gone = Err((FailKind::Disconnected, "connection lost".into()));
        e.on_fetched(f.id, vec![gone; n], false);
    }
    assert!(fetches(&drain(&mut e)).is_empty());
    assert!(!e.wants_lanes(&pid(1)), "lost: not dialled");
    assert!(!e.lane_back(&pid(1), 0));
    e.add_ready(&[pid(1)]);
    assert!(e.wants_lanes(&pid(1)));
    let mut on_link = fetches(&drain(&mut e));
    assert!(!on_link.is_empty());
    assert!(on_link.iter().all(|f| f.lane == Lane::Link), "{on_link:?}");
    // Both data connections open again: the link takes nothing new.
    assert!(e.lane_back(&pid(1), 1));
    assert!(e.lane_back(&pid(1), 0));
    let f = on_link.remove(0);
    e.on_fetched(f.id, vec![Ok(()); f.chunks.len()], false);
    let mut next = fetches(&drain(&mut e));
    assert!(!next.is_empty());
    let mut commit = false;
    let mut lanes = BTreeSet::new();
    on_link.append(&mut next);
    let mut queue = on_link;
    while let Some(f) = queue.pop() {
        if f.lane != Lane::Link {
            lanes.insert(f.lane);
        }
        e.on_fetched(f.id, vec![Ok(()); f.chunks.len()], false);
        for a in drain(&mut e) {
            match a {
                Action::Fetch(f) => {
                    assert_ne!(f.lane, Lane::Link, "{f:?}");
                    queue.push(f);
                }
                Action::Commit => commit = true,
                Action::Verified { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(commit);
    assert_eq!(lanes, BTreeSet::from([Lane::Data(0), Lane::Data(1)]));
}
