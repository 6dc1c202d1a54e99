use super::*;
use std::os::unix::fs::{symlink, PermissionsExt};

fn manifest(p: &str, mode: u32) -> FileManifest {
    let path = lanspread_catalog::RelPath::new(p).unwrap();
    FileManifest::from_pieces(path, 1, mode, vec![[0; 32]])
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A games folder with an `outside` folder beside the root holding a private file.
fn lab() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("game");
    let outside = d.path().join("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    for f in ["x.bin", "sub/x.bin"] {
        fs::write(outside.join(f), b"secret").unwrap();
        fs::set_permissions(outside.join(f), fs::Permissions::from_mode(0o600)).unwrap();
    }
    (d, root, outside)
}

fn inode(p: &Path) -> Inode {
    Inode::of(&fs::symlink_metadata(p).unwrap())
}

#[test]
fn final_modes_are_set_on_the_file_created_never_through_a_link() {
    let (_d, root, outside) = lab();
    // Read-only with a peer's setuid bit: written as 0o644, committed as 0o444.
    let files = [manifest("sub/x.bin", 0o4444)];
    let (dests, dir) = prepare_blocking(&root, (&files, &[])).unwrap();
    let game = dir.game();
    assert_eq!(dests, [PathBuf::from("sub/x.bin")]);
    fs::write(root.join("sub/x.bin"), b"x").unwrap();
    let created = [inode(&root.join("sub/x.bin"))];
    final_modes((game, &created), &files, &dests, true).unwrap();
    assert_eq!(mode_of(&root.join("sub/x.bin")), 0o444);
    // A mode the writer keeps while writing needs nothing at the commit; one with
    // group or other write is set only then.
    let plain = [manifest("sub/x.bin", 0o755)];
    fs::set_permissions(root.join("sub/x.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    final_modes((game, &created), &plain, &dests, true).unwrap();
    assert_eq!(mode_of(&root.join("sub/x.bin")), 0o600);
    let open = [manifest("sub/x.bin", 0o777)];
    final_modes((game, &created), &open, &dests, true).unwrap();
    assert_eq!(mode_of(&root.join("sub/x.bin")), 0o777);
    // Another file of one name put in its place: not the file created. (The created
    // one is moved aside, not removed: a removed inode's number may be given to the
    // next file made, which then looks like it.)
    fs::rename(root.join("sub/x.bin"), root.join("sub/x.old")).unwrap();
    fs::write(root.join("sub/x.bin"), b"other").unwrap();
    let e = final_modes((game, &created), &files, &dests, true).unwrap_err();
    assert!(e.to_string().contains("was replaced"), "{e}");
    fs::remove_file(root.join("sub/x.old")).unwrap();
    // The file replaced by a symlink to a file outside, then by a hard link to it.
    fs::remove_file(root.join("sub/x.bin")).unwrap();
    symlink(outside.join("x.bin"), root.join("sub/x.bin")).unwrap();
    assert!(final_modes((game, &created), &files, &dests, true).is_err());
    fs::remove_file(root.join("sub/x.bin")).unwrap();
    fs::hard_link(outside.join("x.bin"), root.join("sub/x.bin")).unwrap();
    let outside_inode = [inode(&outside.join("x.bin"))];
    let e = final_modes((game, &outside_inode), &files, &dests, true).unwrap_err();
    assert!(e.to_string().contains("other names"), "{e}");
    // Its folder replaced by a symlink to a folder outside holding a file of that name.
    fs::remove_file(root.join("sub/x.bin")).unwrap();
    fs::remove_dir(root.join("sub")).unwrap();
    symlink(&outside, root.join("sub")).unwrap();
    let deep = [inode(&outside.join("sub/x.bin"))];
    assert!(final_modes((game, &deep), &files, &dests, true).is_err());
    // A folder higher up replaced: `a -> outside`, the file at `a/sub/x.bin`.
    symlink(&outside, root.join("a")).unwrap();
    let files = [manifest("a/sub/x.bin", 0o444)];
    let dests = [PathBuf::from("a/sub/x.bin")];
    assert!(final_modes((game, &deep), &files, &dests, true).is_err());
    assert_eq!(mode_of(&outside.join("x.bin")), 0o600);
    assert_eq!(mode_of(&outside.join("sub/x.bin")), 0o600);
}

#[test]
fn a_file_replaced_at_its_path_fails_the_check_and_a_gone_one_stays_expected() {
    let (_d, root, _outside) = lab();
    let files = [manifest("d/a.bin", 0o644), manifest("d/b.bin", 0o644)];
    let (_, dir) = prepare_blocking(&root, (&files, &[])).unwrap();
    fs::write(root.join("d/a.bin"), b"a").unwrap();
    fs::write(root.join("d/b.bin"), b"b").unwrap();
    let keep = BTreeSet::from(["d", "d/a.bin", "d/b.bin"]);
    let check = |expect: &mut HashMap<&str, Inode>| {
        remove_extra(dir.game(), (dir.game().dir(), ""), &keep, expect)
    };
    let (a, b) = (inode(&root.join("d/a.bin")), inode(&root.join("d/b.bin")));
    let mut expect = HashMap::from([("d/a.bin", a), ("d/b.bin", b)]);
    check(&mut expect).unwrap();
    assert!(expect.is_empty());
    // b.bin replaced by another file (the old one moved aside).
    fs::rename(root.join("d/b.bin"), root.join("d/b.old")).unwrap();
    fs::write(root.join("d/b.bin"), b"b").unwrap();
    let mut expect = HashMap::from([("d/a.bin", a), ("d/b.bin", b)]);
    let e = check(&mut expect).unwrap_err();
    assert!(e.to_string().contains("d/b.bin was replaced"), "{e}");
    // a.bin gone: left in `expect`, which the commit reports.
    fs::remove_file(root.join("d/a.bin")).unwrap();
    let mut expect = HashMap::from([("d/a.bin", a)]);
    check(&mut expect).unwrap();
    assert_eq!(expect.len(), 1);
}

#[test]
fn prepare_makes_folders_beneath_the_root_never_through_links() {
    let (_d, root, outside) = lab();
    fs::create_dir(&root).unwrap();
    // A folder of the manifest that is a symlink to a folder outside: the link goes
    // (not followed), the folder is made in the root.
    symlink(&outside, root.join("sub")).unwrap();
    let files = [manifest("sub/deeper/x.bin", 0o644)];
    prepare_blocking(&root, (&files, &[])).unwrap();
    assert!(fs::symlink_metadata(root.join("sub/deeper"))
        .unwrap()
        .is_dir());
    assert!(!outside.join("deeper").exists());
    assert_eq!(fs::read(outside.join("x.bin")).unwrap(), b"secret");
    // `.lanspread` a symlink: the sentinel's folder is not made outside.
    fs::remove_dir_all(root.join("sub")).unwrap();
    fs::remove_dir_all(root.join(".lanspread")).unwrap();
    symlink(&outside, root.join(".lanspread")).unwrap();
    assert!(prepare_blocking(&root, (&[manifest(VERSION_FILE, 0o644)], &[])).is_err());
    assert!(!outside.join("incoming").exists());
    // A symlink at a file's own place is removed, its target left alone.
    fs::remove_file(root.join(".lanspread")).unwrap();
    symlink(outside.join("x.bin"), root.join("x.bin")).unwrap();
    let files = [manifest("x.bin", 0o644), manifest(VERSION_FILE, 0o644)];
    let (dests, _) = prepare_blocking(&root, (&files, &[])).unwrap();
    assert_eq!(
        dests,
        [
            PathBuf::from("x.bin"),
            Path::new(INCOMING).join(VERSION_FILE)
        ]
    );
    assert!(fs::symlink_metadata(root.join("x.bin")).is_err());
    assert_eq!(fs::read(outside.join("x.bin")).unwrap(), b"secret");
    // The root itself a symlink.
    let other = root.with_file_name("other");
    symlink(&outside, &other).unwrap();
    let e = prepare_blocking(&other, (&files, &[])).err().unwrap();
    assert!(e.to_string().contains("not a folder"), "{e}");
}

#[test]
fn stale_entries_go_and_links_to_elsewhere_are_removed_not_followed() {
    let (_d, root, outside) = lab();
    let files = [manifest("keep/a.bin", 0o644)];
    let (_, dir) = prepare_blocking(&root, (&files, &[])).unwrap();
    fs::write(root.join("keep/a.bin"), b"a").unwrap();
    fs::write(root.join("keep/old.bin"), b"o").unwrap();
    fs::create_dir_all(root.join("gone/deep")).unwrap();
    fs::write(root.join("gone/deep/f"), b"f").unwrap();
    symlink(&outside, root.join("link")).unwrap();
    fs::create_dir_all(root.join("local/x")).unwrap();
    let keep = BTreeSet::from(["keep", "keep/a.bin"]);
    let mut expect = HashMap::new();
    remove_extra(dir.game(), (dir.game().dir(), ""), &keep, &mut expect).unwrap();
    let mut left: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, [".lanspread", "keep", "local"]);
    assert!(!root.join("keep/old.bin").exists());
    assert_eq!(fs::read(outside.join("x.bin")).unwrap(), b"secret");
    assert!(outside.join("sub/x.bin").exists());
}

#[test]
fn empty_folders_are_made_kept_and_made_again_never_through_a_link() {
    let (_d, root, outside) = lab();
    let files = [manifest(VERSION_FILE, 0o644)];
    let folders: Vec<RelPath> = ["a/b/c", "saves"]
        .iter()
        .map(|d| RelPath::new(d).unwrap())
        .collect();
    // An older copy's file where a folder on the way must be (an update that turned a
    // file into a folder): removed, or every retry would fail.
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("a"), b"a file").unwrap();
    prepare_blocking(&root, (&files, &folders)).unwrap();
    assert!(root.join("a/b/c").is_dir());
    fs::remove_dir_all(root.join("a")).unwrap();
    fs::remove_dir(root.join("saves")).unwrap();
    // A symlink or an older copy's file at a listed folder's own place: removed (the
    // link not followed), the folder made.
    symlink(&outside, root.join("saves")).unwrap();
    prepare_blocking(&root, (&files, &folders)).unwrap();
    assert!(fs::symlink_metadata(root.join("saves")).unwrap().is_dir());
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        2,
        "nothing made outside"
    );
    fs::remove_dir(root.join("saves")).unwrap();
    fs::write(root.join("saves"), b"an older copy's file").unwrap();
    let (dests, dir) = prepare_blocking(&root, (&files, &folders)).unwrap();
    assert!(root.join("a/b/c").is_dir() && root.join("saves").is_dir());
    fs::write(root.join(&dests[0]), b"20250101").unwrap();
    let created = [inode(&root.join(&dests[0]))];
    // Removed while the download ran: made again; an empty folder of an older copy goes.
    fs::remove_dir(root.join("saves")).unwrap();
    fs::create_dir_all(root.join("stale/empty")).unwrap();
    let version = Version::parse("20250101").unwrap();
    let commit = || {
        commit_blocking(
            (dir.game(), &created),
            (&files, &folders),
            &dests,
            version,
            &[],
        )
    };
    // The root moved away meanwhile (the user's `mv`): nothing committed where it went,
    // nor where it was.
    let moved = root.with_extension("moved");
    fs::rename(&root, &moved).unwrap();
    let e = commit().unwrap_err();
    assert!(e.to_string().contains("was moved or replaced"), "{e}");
    assert!(!moved.join(VERSION_FILE).exists() && !root.exists());
    fs::rename(&moved, &root).unwrap();
    commit().unwrap();
    assert!(root.join("a/b/c").is_dir() && root.join("saves").is_dir());
    assert!(!root.join("stale").exists());
    assert_eq!(fs::read(root.join(VERSION_FILE)).unwrap(), b"20250101");
}

#[test]
fn a_stale_tree_a_thousand_folders_deep_is_removed_without_recursion() {
    let (_d, root, _outside) = lab();
    let files = [manifest("keep.bin", 0o644)];
    let (_, dir) = prepare_blocking(&root, (&files, &[])).unwrap();
    fs::write(root.join("keep.bin"), b"k").unwrap();
    // 1,000 nested folders made one beneath the other, a stale file at the bottom. The
    // sweep holds a descriptor per level: the soft open-files limit goes up to the hard
    // one, as the daemon's own does at its start.
    let (_, limit) = lanspread_catalog::raise_open_files_limit().unwrap();
    assert!(limit > 1100, "open-files limit too low");
    let mut at = dir.game().dir().try_clone().unwrap();
    for _ in 0..1000 {
        at.create_dir("a").unwrap();
        at = at.open_dir("a").unwrap();
    }
    at.write("stale.bin", b"old").unwrap();
    drop(at);
    let keep = BTreeSet::from(["keep.bin"]);
    let mut expect = HashMap::from([("keep.bin", inode(&root.join("keep.bin")))]);
    // On a small stack: a walk that recursed per level (≈ 700 bytes a frame in the
    // release build; 3,000 levels overflowed a blocking thread's 2 MiB, and with it the
    // whole daemon) needs ≈ 700 KB here.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn_scoped(s, || {
                remove_extra(dir.game(), (dir.game().dir(), ""), &keep, &mut expect)
            })
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
    });
    assert!(expect.is_empty());
    assert!(!root.join("a").exists(), "the stale tree is gone");
    assert!(root.join("keep.bin").exists());
}
