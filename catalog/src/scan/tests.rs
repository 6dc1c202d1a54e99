use super::*;
use std::os::unix::fs::symlink;

fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

#[test]
fn scans_catalog_roots_and_skips_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let g = t.path();
    write(&g.join("bf1942/version.ini"), b"20250101\n");
    write(&g.join("bf1942/bf1942.eti"), &[1u8; 100]);
    write(&g.join("bf1942/sub/readme.txt"), b"hi");
    write(&g.join("bf1942/local/game.exe"), b"installed");
    write(&g.join("bf1942/.lanspread-meta/x"), b"meta");
    write(&g.join("bf1942/.lanspread"), b"meta");
    write(&g.join("not-a-game/version.ini"), b"20250101");
    write(&g.join("ggoo/version.ini"), b"garbage");
    write(&g.join("stray.txt"), b"x");
    let lib = scan_games_dir(g, &Catalog::builtin()).unwrap();
    assert_eq!(lib.len(), 2);
    let bf = &lib[&GameId::new("bf1942").unwrap()];
    assert_eq!(bf.version.unwrap().as_str(), "20250101");
    assert_eq!(bf.availability(), Availability::Ready);
    let paths: Vec<_> = bf.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["bf1942.eti", "sub/readme.txt", "version.ini"]);
    assert_eq!(bf.size(), 100 + 2 + 9);
    assert!(!bf.installed, "local/ without the marker is not an install");
    let ggoo = &lib[&GameId::new("ggoo").unwrap()];
    assert_eq!(ggoo.version, None);
    assert_eq!(ggoo.availability(), Availability::NotReady);
}

#[test]
fn empty_folders_are_part_of_the_root_and_only_the_deepest_is_named() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("bf1942");
    write(&root.join("version.ini"), b"20250101");
    write(&root.join("data/a.bin"), b"a");
    for d in [
        "saves",
        "a/b/c",
        "data/logs",
        "local",
        ".lanspread",
        "mods/x y",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let r = scan_root(&root, GameId::new("bf1942").unwrap());
    let folders: Vec<_> = r.folders.iter().map(RelPath::as_str).collect();
    // `a` and `a/b` hold `a/b/c`; `data` holds a file; local/ and metadata never travel.
    assert_eq!(folders, ["a/b/c", "data/logs", "mods/x y", "saves"]);
    assert_eq!(r.problem, None);
    assert_eq!(r.availability(), Availability::Ready);
    // A folder that gets a file is no longer listed; one emptied is.
    write(&root.join("saves/slot1"), b"s");
    fs::remove_file(root.join("data/a.bin")).unwrap();
    let r = scan_root(&root, GameId::new("bf1942").unwrap());
    let folders: Vec<_> = r.folders.iter().map(RelPath::as_str).collect();
    assert_eq!(folders, ["a/b/c", "data/logs", "mods/x y"]);
}

#[test]
fn every_scanned_file_is_found_by_its_path_and_nothing_else_is() {
    // Names whose byte order differs from a folder-by-folder walk ('-' and '.' sort
    // before '/'), so the lookup relies on the scan's sort, not on the walk's order.
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("bf1942");
    let names = [
        "a/b.bin",
        "a-b.bin",
        "a.b/c",
        "a/b/c.bin",
        "Z.eti",
        "z.eti",
        "é.txt",
        "version.ini",
    ];
    for (i, n) in names.iter().enumerate() {
        write(&root.join(n), &vec![7u8; i]);
    }
    for i in 0..300 {
        write(&root.join(format!("many/f{i:03}.bin")), b"x");
    }
    let r = scan_root(&root, GameId::new("bf1942").unwrap());
    assert_eq!(r.files.len(), names.len() + 300);
    for f in &r.files {
        assert_eq!(r.file(f.path.as_str()).map(|g| &g.path), Some(&f.path));
    }
    for (i, n) in names.iter().enumerate() {
        assert_eq!(r.file(n).map(|f| f.size), Some(i as u64), "{n}");
    }
    for missing in ["a", "a/b", "many", "many/f300.bin", "", "zz", "local/x"] {
        assert!(r.file(missing).is_none(), "{missing}");
    }
}

#[test]
fn keeps_unix_modes() {
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("cod5/run.sh");
    write(&exe, b"#!/bin/sh\n");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let suid = t.path().join("cod5/suid");
    write(&suid, b"x");
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4750)).unwrap();
    let root = scan_root(&t.path().join("cod5"), GameId::new("cod5").unwrap());
    assert_eq!(root.files[0].mode, 0o755);
    assert_eq!(root.files[1].mode, 0o750, "the setuid bit never travels");
    assert_eq!(root.version, None);
}

#[test]
fn symlinks_never_leave_the_root() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("secret.txt");
    write(&outside, b"secret");
    let root = t.path().join("games/cnc4");
    write(&root.join("version.ini"), b"20250101");
    write(&root.join("data.bin"), b"inside");
    symlink(root.join("data.bin"), root.join("alias.bin")).unwrap();
    let id = GameId::new("cnc4").unwrap();
    // A link to a file inside the root is followed.
    let r = scan_root(&root, id.clone());
    let paths: Vec<_> = r.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["alias.bin", "data.bin", "version.ini"]);
    assert_eq!(r.availability(), Availability::Ready, "{:?}", r.problem);
    // Any other is never followed, and the root is not offered without it: every
    // downloader would get the game without that file.
    let not_offered = |why: &str| {
        let r = scan_root(&root, id.clone());
        assert!(r.files.iter().all(|f| f.path.as_str() != "link"), "{r:?}");
        assert_eq!(r.availability(), Availability::NotReady, "{r:?}");
        let problem = r.problem.unwrap_or_default();
        assert!(
            problem.contains("link") && problem.contains(why),
            "{problem}"
        );
    };
    let link = root.join("link");
    symlink(&outside, &link).unwrap();
    not_offered("leaves the game folder");
    fs::remove_file(&link).unwrap();
    symlink(t.path(), &link).unwrap();
    not_offered("symlink to a folder");
    fs::remove_file(&link).unwrap();
    symlink(root.join("gone"), &link).unwrap();
    not_offered("cannot be resolved");
    fs::remove_file(&link).unwrap();
    // Inside, but into the installed copy or the daemon's own files (never sent).
    write(&root.join("local/settings.cfg"), b"the player's");
    write(&root.join(".lanspread/pieces.json"), b"{}");
    for target in ["local/settings.cfg", ".lanspread/pieces.json"] {
        symlink(root.join(target), &link).unwrap();
        not_offered("into local/ or .lanspread");
        fs::remove_file(&link).unwrap();
    }
    let fifo = std::ffi::CString::new(link.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `fifo` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    not_offered("not a regular file");
    fs::remove_file(&link).unwrap();
    assert_eq!(scan_root(&root, id).availability(), Availability::Ready);
}

#[test]
fn names_that_cannot_travel_keep_the_root_from_being_offered() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("cnc4");
    write(&root.join("version.ini"), b"20250101");
    write(&root.join("data.bin"), b"x");
    let ok = scan_root(&root, GameId::new("cnc4").unwrap());
    assert_eq!(ok.availability(), Availability::Ready);
    write(&root.join("sub/a\\b.txt"), b"backslash");
    let r = scan_root(&root, GameId::new("cnc4").unwrap());
    assert_eq!(r.availability(), Availability::NotReady);
    assert!(r.version.is_some(), "the sentinel is still valid");
    assert!(
        r.problem.as_deref().unwrap().contains("backslash"),
        "{:?}",
        r.problem
    );
    fs::remove_file(root.join("sub/a\\b.txt")).unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    write(&root.join("sub").join(bad), b"latin-1");
    let r = scan_root(&root, GameId::new("cnc4").unwrap());
    assert_eq!(r.availability(), Availability::NotReady);
    assert!(
        r.problem.as_deref().unwrap().contains("not UTF-8"),
        "{:?}",
        r.problem
    );
}

#[test]
fn a_game_too_large_for_one_manifest_is_not_offered() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("cnc4");
    write(&root.join("version.ini"), b"20250101");
    // Sparse: 2 × 260 GiB is more than a manifest frame can describe.
    for name in ["a.eti", "b.eti"] {
        let f = fs::File::create(root.join(name)).unwrap();
        f.set_len(260 << 30).unwrap();
    }
    let r = scan_root(&root, GameId::new("cnc4").unwrap());
    assert_eq!(r.availability(), Availability::NotReady);
    assert!(
        r.problem.as_deref().unwrap().contains("too large"),
        "{:?}",
        r.problem
    );
    fs::remove_file(root.join("b.eti")).unwrap();
    let r = scan_root(&root, GameId::new("cnc4").unwrap());
    assert_eq!(r.availability(), Availability::Ready, "{:?}", r.problem);
}

#[test]
fn a_game_of_more_entries_than_a_manifest_lists_is_not_offered() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("cnc4");
    write(&root.join("version.ini"), b"20250101");
    // With version.ini, one entry more than a manifest may list.
    for i in 0..lanspread_proto::MAX_MANIFEST_ENTRIES {
        fs::create_dir_all(root.join(format!("d/{i}"))).unwrap();
    }
    let r = scan_root(&root, GameId::new("cnc4").unwrap());
    assert_eq!(r.availability(), Availability::NotReady);
    let why = r.problem.as_deref().unwrap();
    assert!(why.contains("1 files and 100000 empty folders"), "{why}");
    fs::remove_dir(root.join("d/0")).unwrap();
    let r = scan_root(&root, GameId::new("cnc4").unwrap());
    assert_eq!(r.availability(), Availability::Ready, "{:?}", r.problem);
}

#[test]
fn sentinel_must_be_a_small_regular_file() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("cnc4");
    fs::create_dir_all(&root).unwrap();
    let sentinel = root.join("version.ini");
    // A FIFO: opened non-blocking, refused, never read (this would hang otherwise).
    let c = std::ffi::CString::new(sentinel.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    assert_eq!(scan_root(&root, GameId::new("cnc4").unwrap()).version, None);
    fs::remove_file(&sentinel).unwrap();
    // A symlink, even to a valid version file or to /dev/zero.
    let outside = t.path().join("v.ini");
    fs::write(&outside, "20250101").unwrap();
    symlink(&outside, &sentinel).unwrap();
    assert_eq!(scan_root(&root, GameId::new("cnc4").unwrap()).version, None);
    fs::remove_file(&sentinel).unwrap();
    symlink("/dev/zero", &sentinel).unwrap();
    assert_eq!(scan_root(&root, GameId::new("cnc4").unwrap()).version, None);
    fs::remove_file(&sentinel).unwrap();
    fs::write(&sentinel, format!("20250101{}", " ".repeat(100))).unwrap();
    assert_eq!(scan_root(&root, GameId::new("cnc4").unwrap()).version, None);
    fs::write(&sentinel, " 20250101\n").unwrap();
    let r = scan_root(&root, GameId::new("cnc4").unwrap());
    assert!(
        r.version.is_some() && r.problem.is_none(),
        "{:?}",
        r.problem
    );
    // Saved by an editor that starts with a byte-order mark.
    fs::write(&sentinel, "\u{feff}20250101\r\n").unwrap();
    let r = scan_root(&root, GameId::new("cnc4").unwrap());
    assert_eq!(r.availability(), Availability::Ready, "{:?}", r.problem);
    // Not a version: not ready, and the root says why (not only the log).
    fs::write(&sentinel, "2025-01-01").unwrap();
    let r = scan_root(&root, GameId::new("cnc4").unwrap());
    assert_eq!(r.availability(), Availability::NotReady);
    let why = r.problem.unwrap_or_default();
    assert!(why.starts_with("version.ini: invalid version"), "{why}");
    // No sentinel at all is a download not begun, no problem.
    fs::remove_file(&sentinel).unwrap();
    assert_eq!(scan_root(&root, GameId::new("cnc4").unwrap()).problem, None);
}

#[test]
fn symlinked_roots_are_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let elsewhere = t.path().join("disk2/cnc4");
    write(&elsewhere.join("version.ini"), b"20250101");
    fs::create_dir_all(t.path().join("games")).unwrap();
    symlink(&elsewhere, t.path().join("games/cnc4")).unwrap();
    let lib = scan_games_dir(&t.path().join("games"), &Catalog::builtin()).unwrap();
    assert!(lib.is_empty());
}

#[test]
fn installed_needs_the_marker() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("cnctw");
    write(&root.join("version.ini"), b"20250101");
    write(&root.join("local").join(INSTALLED_MARKER), b"");
    assert!(scan_root(&root, GameId::new("cnctw").unwrap()).installed);
}

/// A `local` (or a marker) that is a symlink is no install of this game, whatever it
/// points at.
#[test]
fn installed_follows_no_symlink() {
    let t = tempfile::tempdir().unwrap();
    let elsewhere = t.path().join("elsewhere");
    write(&elsewhere.join(INSTALLED_MARKER), b"");
    let root = t.path().join("cnctw");
    write(&root.join("version.ini"), b"20250101");
    std::os::unix::fs::symlink(&elsewhere, root.join("local")).unwrap();
    let id = GameId::new("cnctw").unwrap();
    assert!(
        !scan_root(&root, id.clone()).installed,
        "local/ is a symlink"
    );
    std::fs::remove_file(root.join("local")).unwrap();
    std::fs::create_dir(root.join("local")).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.join(INSTALLED_MARKER),
        root.join("local").join(INSTALLED_MARKER),
    )
    .unwrap();
    assert!(!scan_root(&root, id).installed, "the marker is a symlink");
}

#[test]
fn free_space_of_a_real_filesystem() {
    let t = tempfile::tempdir().unwrap();
    assert!(free_space(t.path()).unwrap() > 0);
    assert!(free_space(Path::new("/nonexistent/x")).is_err());
}

#[test]
fn unreadable_games_dir_is_an_error() {
    let err = scan_games_dir(Path::new("/nonexistent/games"), &Catalog::builtin()).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/games"));
}

#[test]
fn a_tree_a_thousand_folders_deep_is_walked_without_recursion() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("cnc4");
    write(&root.join("version.ini"), b"20250101");
    // 1,000 levels: within PATH_MAX by path, far past a small stack for a walk that
    // recursed per folder (≈ 1 KiB a frame in the release build: ≈ 1 MB here).
    let deep: PathBuf = std::iter::repeat_n("a", 1000).collect();
    write(&root.join(&deep).join("x.bin"), b"deep");
    fs::create_dir_all(root.join(&deep).join("empty")).unwrap();
    let scanned = std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn({
            let root = root.clone();
            move || scan_root(&root, GameId::new("cnc4").unwrap())
        })
        .unwrap()
        .join()
        .unwrap();
    // Walked whole, and not offered: deeper than a peer would accept.
    let why = scanned.problem.as_deref().unwrap_or_default();
    assert!(
        why.contains("a tree peers would refuse") && why.contains("1001 levels deep"),
        "{why}"
    );
    let rel = |tail: &str| format!("{}/{tail}", vec!["a"; 1000].join("/"));
    let paths: Vec<&str> = scanned.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, [rel("x.bin").as_str(), "version.ini"]);
    assert_eq!(
        scanned
            .folders
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>(),
        [rel("empty").as_str()]
    );
    // Removed here: the temporary folder's own removal recurses per level. (One
    // descriptor per level: the soft open-files limit up to the hard one.)
    crate::raise_open_files_limit().unwrap();
    let game = crate::GameDir::open(&root).unwrap();
    crate::remove_all_in(game.dir(), Path::new("a"), false).unwrap();
}

/// A folder of a root is listed only through a descriptor of the folder its parent's
/// listing saw: swapped for a symlink (or a folder above it swapped) after its parent was
/// listed, it is not walked — the scan would have listed what is out there as the game's.
#[test]
fn a_folder_swapped_for_a_symlink_while_scanned_is_not_walked() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("cnc4");
    let outside = t.path().join("outside");
    write(&root.join("a/b/f.eti"), b"game");
    write(&outside.join("b/secret"), b"not the game's");
    let was = folder_id(&fs::symlink_metadata(root.join("a/b")).unwrap());
    assert!(open_folder(&root.join("a/b"), false, Some(was)).is_ok());
    // `a/b` itself a symlink now: not opened.
    fs::rename(root.join("a/b"), t.path().join("kept")).unwrap();
    symlink(outside.join("b"), root.join("a/b")).unwrap();
    assert!(open_folder(&root.join("a/b"), false, Some(was)).is_err());
    // Unless the walk's top, which may be reached through a link.
    assert!(open_folder(&root.join("a/b"), true, None).is_ok());
    fs::remove_file(root.join("a/b")).unwrap();
    // `a` a symlink to a folder that has a `b`: not the folder listed.
    fs::rename(root.join("a"), t.path().join("kept-a")).unwrap();
    symlink(&outside, root.join("a")).unwrap();
    let err = open_folder(&root.join("a/b"), false, Some(was)).unwrap_err();
    assert!(err.to_string().contains("moved while"), "{err}");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    // A root swapped for a link is not walked either.
    fs::remove_file(root.join("a")).unwrap();
    fs::rename(t.path().join("kept-a"), root.join("a")).unwrap();
    fs::rename(t.path().join("kept"), root.join("a/b")).unwrap();
    write(&root.join("version.ini"), b"20250101");
    let r = scan_root(&root, GameId::new("cnc4").unwrap());
    let paths: Vec<_> = r.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["a/b/f.eti", "version.ini"], "{:?}", r.problem);
    assert_eq!(r.availability(), Availability::Ready, "{:?}", r.problem);
    let linked = t.path().join("linked");
    symlink(&root, &linked).unwrap();
    let r = scan_root(&linked, GameId::new("cnc4").unwrap());
    assert!(r.files.is_empty(), "{r:?}");
    assert_eq!(r.availability(), Availability::NotReady, "{r:?}");
}
