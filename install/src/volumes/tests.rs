use super::*;
use std::io::Cursor;

fn vol(name: &str, number: Option<u32>, first: Option<bool>, more: Option<bool>) -> Candidate {
    Candidate {
        name: name.into(),
        info: Some(VolumeInfo {
            volume: true,
            first,
            number,
            more,
            entries: 0,
            walked: true,
            bad_name: false,
        }),
    }
}

fn single(name: &str) -> Candidate {
    Candidate {
        name: name.into(),
        info: Some(VolumeInfo::default()),
    }
}

fn names(c: &[Candidate], sets: &[Set]) -> Vec<Vec<String>> {
    sets.iter()
        .map(|s| s.members.iter().map(|&i| c[i].name.clone()).collect())
        .collect()
}

#[test]
fn names_give_stem_and_position_in_both_schemes() {
    assert_eq!(name_position("game.part01.eti"), ("game".into(), 0));
    assert_eq!(name_position("game.part10.eti"), ("game".into(), 9));
    assert_eq!(name_position("game.eti"), ("game".into(), 0));
    assert_eq!(name_position("game.rar.eti"), ("game".into(), 0));
    assert_eq!(name_position("game.r00.eti"), ("game".into(), 1));
    assert_eq!(name_position("game.r99.eti"), ("game".into(), 100));
    assert_eq!(name_position("game.s00.eti"), ("game".into(), 101));
    assert_eq!(name_position("Game.Part3.eti"), ("Game".into(), 2));
}

#[test]
fn sets_are_ordered_by_header_numbers_not_names() {
    let c = vec![
        vol("zz.eti", Some(0), Some(true), Some(true)),
        vol("aa.eti", Some(1), Some(false), Some(true)),
        vol("mm.eti", Some(2), Some(false), Some(false)),
        single("other.eti"),
    ];
    let sets = plan_sets(&c).unwrap();
    assert_eq!(
        names(&c, &sets),
        [vec!["other.eti"], vec!["zz.eti", "aa.eti", "mm.eti"]]
    );
}

#[test]
fn two_sets_group_by_stem_and_unnumbered_volumes_order_by_name() {
    let c = vec![
        vol("a.r00.eti", None, None, None),
        vol("a.eti", None, None, None),
        vol("b.part2.eti", Some(1), Some(false), Some(false)),
        vol("b.part1.eti", Some(0), Some(true), Some(true)),
        vol("a.r01.eti", None, None, None),
    ];
    let sets = plan_sets(&c).unwrap();
    assert_eq!(
        names(&c, &sets),
        [
            vec!["a.eti", "a.r00.eti", "a.r01.eti"],
            vec!["b.part1.eti", "b.part2.eti"]
        ]
    );
}

#[test]
fn gaps_missing_ends_and_duplicates_are_refused() {
    let gap = [
        vol("g.part1.eti", Some(0), Some(true), Some(true)),
        vol("g.part3.eti", Some(2), Some(false), Some(false)),
    ];
    assert!(plan_sets(&gap)
        .unwrap_err()
        .contains("volume 2 is missing (after g.part1.eti)"));
    let open_end = [
        vol("g.part1.eti", Some(0), Some(true), Some(true)),
        vol("g.part2.eti", Some(1), Some(false), Some(true)),
    ];
    assert!(plan_sets(&open_end)
        .unwrap_err()
        .contains("volume 3 is missing"));
    let headless = [vol("g.part2.eti", Some(1), Some(false), Some(false))];
    assert!(plan_sets(&headless)
        .unwrap_err()
        .contains("no first volume"));
    let twice = [
        vol("g.part1.eti", Some(0), Some(true), Some(true)),
        vol("g.part2.eti", Some(1), Some(false), Some(false)),
        vol("copy.eti", Some(1), Some(false), Some(false)),
    ];
    assert!(plan_sets(&twice).unwrap_err().contains("both volume 2"));
}

/// A RAR 5 entry name that is not UTF-8 is seen (UnRAR would cut it short); names in
/// any script are not.
#[test]
fn probe_finds_an_entry_name_that_is_not_utf8() {
    let mut w = crate::Rar5Writer::new(Cursor::new(Vec::new())).unwrap();
    w.add_file("👋/bad@@name", 0o644, 0, 1, Cursor::new(b"x".to_vec()))
        .unwrap();
    let mut bytes = w.finish().unwrap().into_inner();
    assert!(
        !probe(&mut Cursor::new(bytes.clone()))
            .unwrap()
            .unwrap()
            .bad_name
    );
    let at = bytes.windows(2).position(|w| w == b"@@").unwrap();
    bytes[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    let info = probe(&mut Cursor::new(bytes.clone())).unwrap().unwrap();
    assert!(info.bad_name, "{info:?}");
    assert_eq!(info.entries, 1);
    // A header after it that cannot be walked does not hide it.
    let end = bytes.len() - 8; // the end-of-archive header
    bytes[end + 4..].copy_from_slice(&[0xff; 4]); // its size vint never ends
    let info = probe(&mut Cursor::new(bytes)).unwrap().unwrap();
    assert!(info.bad_name && !info.walked, "{info:?}");
}

#[test]
fn probe_reads_our_own_rar5_and_counts_entries() {
    let mut w = crate::Rar5Writer::new(Cursor::new(Vec::new())).unwrap();
    w.add_dir("d", 0o755, 0).unwrap();
    w.add_file("d/a", 0o644, 0, 3, Cursor::new(b"abc".to_vec()))
        .unwrap();
    let bytes = w.finish().unwrap().into_inner();
    let info = probe(&mut Cursor::new(bytes.clone())).unwrap().unwrap();
    assert_eq!(
        (info.volume, info.first, info.number, info.more),
        (false, Some(true), Some(0), Some(false))
    );
    assert_eq!((info.entries, info.walked), (2, true));
    // Cut short: a lower bound only.
    let cut = &bytes[..bytes.len() - 10];
    let info = probe(&mut Cursor::new(cut.to_vec())).unwrap().unwrap();
    assert!(!info.walked && info.entries >= 1, "{info:?}");
    // Not an archive at all.
    assert_eq!(probe(&mut Cursor::new(b"hello".to_vec())).unwrap(), None);
}

#[test]
fn probe_reads_rar4_and_rar5_volume_headers_made_by_rar() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/rar/libarchive");
    let read = |n: &str| {
        probe(&mut std::fs::File::open(dir.join(n)).unwrap())
            .unwrap()
            .unwrap()
    };
    let first = read("test_read_format_rar_multivolume.part0001.rar");
    assert_eq!(
        (first.volume, first.first, first.number, first.more),
        (true, Some(true), Some(0), Some(true))
    );
    let last = read("test_read_format_rar_multivolume.part0004.rar");
    assert_eq!(
        (last.first, last.number, last.more),
        (Some(false), Some(3), Some(false))
    );
    let mid = read("test_read_format_rar5_multiarchive.part03.rar");
    assert_eq!(
        (mid.volume, mid.first, mid.number, mid.more),
        (true, Some(false), Some(2), Some(true))
    );
}

#[test]
fn header_sizes_that_wrap_are_cut_short_not_followed_back() {
    // RAR 4: a main block, then a file block whose packed size (with its high 32 bits,
    // LHD_LARGE) would wrap the next block's offset back to the main block.
    let mut rar = b"Rar!\x1a\x07\x00".to_vec();
    rar.extend([0, 0, 0x73, 0, 0, 13, 0, 0, 0, 0, 0, 0, 0]);
    let mut file = vec![0u8; 40];
    file[2] = 0x74;
    file[3..5].copy_from_slice(&0x8100u16.to_le_bytes());
    file[5..7].copy_from_slice(&40u16.to_le_bytes());
    let data = u64::MAX - (20 + 40) + 1 + 7; // 20 + 40 + data wraps to 7
    file[7..11].copy_from_slice(&(data as u32).to_le_bytes());
    file[32..36].copy_from_slice(&((data >> 32) as u32).to_le_bytes());
    rar.extend(&file);
    let info = probe(&mut Cursor::new(rar)).unwrap().unwrap();
    assert_eq!(info.entries, 1, "the chain was followed backwards");
    assert!(!info.walked);
    // A volume number at the top of its range: named, not wrapped.
    let last = [vol("a.eti", Some(u32::MAX), Some(false), Some(false))];
    let err = plan_sets(&last).unwrap_err();
    assert!(err.contains("starts at volume 4294967296"), "{err}");
}
