use super::*;
use std::fs;
use std::os::unix::fs::symlink;

/// A games folder with a root `g` and, beside it, a folder standing for `/etc`.
fn lab() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("g");
    let outside = t.path().join("etc");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("shadow"), b"secret").unwrap();
    (t, root, outside)
}

#[test]
fn a_folder_swapped_for_a_symlink_out_of_the_root_takes_no_write() {
    let (_t, root, outside) = lab();
    let g = GameDir::open(&root).unwrap();
    g.create_folders(Path::new("data/maps")).unwrap();
    // Between the download's preparation and its writes, `data` becomes a symlink.
    fs::rename(root.join("data"), root.join("old")).unwrap();
    symlink(&outside, root.join("data")).unwrap();
    for access in [Access::Create, Access::Write, Access::Read] {
        assert!(g.open_file(Path::new("data/shadow"), access).is_err());
    }
    assert!(g.create_folders(Path::new("data/maps")).is_err());
    assert!(g
        .replace(Path::new("data/x"), Path::new("data/x.tmp"), b"j")
        .is_err());
    // An absolute symlink, and `..`, are refused alike.
    symlink("/", root.join("abs")).unwrap();
    assert!(g.open_file(Path::new("abs/tmp/x"), Access::Create).is_err());
    assert!(g
        .open_file(Path::new("../etc/shadow"), Access::Create)
        .is_err());
    assert_eq!(fs::read(outside.join("shadow")).unwrap(), b"secret");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn a_symlink_or_fifo_at_the_file_itself_is_refused_without_blocking() {
    let (_t, root, outside) = lab();
    let g = GameDir::open(&root).unwrap();
    symlink(outside.join("shadow"), root.join("a.eti")).unwrap();
    for access in [Access::Create, Access::Write, Access::Read] {
        assert!(g.open_file(Path::new("a.eti"), access).is_err());
    }
    let fifo = std::ffi::CString::new(root.join("b.eti").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // Opened for reading without a writer, then refused; for writing without a reader,
    // the kernel refuses it at once (ENXIO).
    let e = g.open_file(Path::new("b.eti"), Access::Read).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    for access in [Access::Create, Access::Write] {
        let e = g.open_file(Path::new("b.eti"), access).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "{e}");
    }
    assert_eq!(fs::read(outside.join("shadow")).unwrap(), b"secret");
}

#[test]
fn a_hard_link_at_the_destination_is_replaced_not_written_through() {
    let (_t, root, outside) = lab();
    fs::hard_link(outside.join("shadow"), root.join("a.eti")).unwrap();
    let g = GameDir::open(&root).unwrap();
    let (file, meta) = g.open_file(Path::new("a.eti"), Access::Create).unwrap();
    assert_eq!((meta.nlink(), meta.len()), (1, 0));
    std::os::unix::fs::FileExt::write_all_at(&file, b"game", 0).unwrap();
    assert_eq!(fs::read(outside.join("shadow")).unwrap(), b"secret");
    assert_eq!(fs::read(root.join("a.eti")).unwrap(), b"game");
    // A file of one name is kept as it is (a resumed download's bytes).
    let (_, meta) = g.open_file(Path::new("a.eti"), Access::Create).unwrap();
    assert_eq!(meta.len(), 4);
}

#[test]
fn the_root_moved_after_it_was_opened_keeps_taking_the_writes() {
    let (t, root, outside) = lab();
    let g = GameDir::open(&root).unwrap();
    fs::rename(&root, t.path().join("moved")).unwrap();
    symlink(&outside, &root).unwrap();
    g.open_file(Path::new("a.eti"), Access::Create).unwrap();
    assert!(t.path().join("moved/a.eti").is_file());
    assert!(!outside.join("a.eti").exists());
    // And a root that is itself a symlink is not opened.
    assert!(GameDir::open(&root).is_err());
}

#[test]
fn folders_are_made_one_by_one_and_what_is_in_the_way_is_named() {
    let (_t, root, outside) = lab();
    let g = GameDir::open(&root).unwrap();
    // Readable folders: fsync and syncfs refuse a path handle (O_PATH).
    sync_dir(&g.create_folders(Path::new("a/b/c")).unwrap()).unwrap();
    sync_dir(&g.open_folder(Path::new("a/b")).unwrap()).unwrap();
    assert!(root.join("a/b/c").is_dir());
    fs::write(root.join("a/f"), b"").unwrap();
    let e = g.create_folders(Path::new("a/f/x")).unwrap_err();
    assert!(e.to_string().contains("is in the way"), "{e}");
    assert!(g.create_folders(Path::new("/abs")).is_err());
    // Replacing: the file in the way goes; a symlink to a folder outside is unlinked,
    // its target left alone.
    g.create_folders_replacing(Path::new("a/f/x")).unwrap();
    assert!(root.join("a/f/x").is_dir());
    symlink(&outside, root.join("a/l")).unwrap();
    let before = fs::read_dir(&outside).unwrap().count();
    g.create_folders_replacing(Path::new("a/l/y")).unwrap();
    assert!(fs::symlink_metadata(root.join("a/l")).unwrap().is_dir());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), before);
    assert!(g.create_folders_replacing(Path::new("../up")).is_err());
    fs::remove_dir_all(root.join("a/f")).unwrap();
    fs::write(root.join("a/f"), b"").unwrap();
    g.replace(Path::new("a/j"), Path::new("a/j.tmp"), b"one")
        .unwrap();
    // A symlink left at the temporary name is removed, not followed.
    symlink(root.join("a/f"), root.join("a/j.tmp")).unwrap();
    g.replace(Path::new("a/j"), Path::new("a/j.tmp"), b"two")
        .unwrap();
    assert_eq!(fs::read(root.join("a/j")).unwrap(), b"two");
    assert_eq!(fs::read(root.join("a/f")).unwrap(), b"");
    // A replacement that fails (here the rename, over a folder that is not empty; a
    // full disk fails the write) leaves no temporary file.
    g.replace(Path::new("a/b"), Path::new("a/b.tmp"), b"x")
        .unwrap_err();
    assert!(!root.join("a/b.tmp").exists());
    assert!(root.join("a/b/c").is_dir());
    g.sync().unwrap();
}

#[test]
fn chmod_changes_the_entry_itself_never_a_symlink_target() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, root, outside) = lab();
    let g = GameDir::open(&root).unwrap();
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("d/f"), b"").unwrap();
    g.chmod(Path::new("d/f"), 0o4755).unwrap();
    g.chmod(Path::new("d"), 0o500).unwrap();
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(
        (mode(&root.join("d/f")), mode(&root.join("d"))),
        (0o4755, 0o500)
    );
    g.chmod(Path::new("d"), 0o755).unwrap();
    fs::set_permissions(outside.join("shadow"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink(outside.join("shadow"), root.join("l")).unwrap();
    assert!(g.chmod(Path::new("l"), 0o644).is_err());
    symlink(&outside, root.join("ld")).unwrap();
    assert!(g.chmod(Path::new("ld/shadow"), 0o644).is_err());
    assert_eq!(mode(&outside.join("shadow")), 0o600);
    // A sub-folder opened as a root of its own.
    let sub = g.sub(Path::new("d")).unwrap();
    sub.create_new(Path::new("new")).unwrap();
    assert!(sub.create_new(Path::new("new")).is_err());
    assert!(root.join("d/new").is_file());
}

#[test]
fn a_deep_tree_with_locked_folders_is_removed_without_recursion_or_chmod_by_name() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, root, outside) = lab();
    let g = GameDir::open(&root).unwrap();
    // 900 levels (within a soft open-files limit of 1,024), every folder 0555 with a
    // file in it, a symlink out at the bottom.
    const DEPTH: usize = 900;
    let (_, limit) = crate::raise_open_files_limit().unwrap();
    assert!(limit as usize > DEPTH + 64, "open-files limit too low");
    let mut at = g.dir().try_clone().unwrap();
    at.create_dir("t").unwrap();
    let mut at_name = "t";
    for _ in 0..DEPTH {
        let next = at.open_dir(at_name).unwrap();
        next.write("f", b"x").unwrap();
        next.create_dir("d").unwrap();
        at.set_permissions(
            at_name,
            cap_std::fs::Permissions::from_std(fs::Permissions::from_mode(0o555)),
        )
        .unwrap();
        at = next;
        at_name = "d";
    }
    symlink(&outside, root.join("link")).unwrap();
    at.symlink("../../../../../etc", "up").ok();
    // A small stack: a recursive walk 900 levels deep would overflow it.
    let root2 = root.clone();
    std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(move || {
            let g = GameDir::open(&root2).unwrap();
            remove_all_in(g.dir(), Path::new("t"), true).unwrap();
            remove_all_in(g.dir(), Path::new("link"), true).unwrap();
            remove_all_in(g.dir(), Path::new("missing"), true).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(!root.join("t").exists());
    assert!(fs::symlink_metadata(root.join("link")).is_err());
    assert_eq!(fs::read(outside.join("shadow")).unwrap(), b"secret");
}

#[test]
fn a_private_folder_is_made_here_and_ours_alone() {
    use std::os::unix::fs::PermissionsExt;
    let (_t, root, outside) = lab();
    let g = GameDir::open(&root).unwrap();
    let p = g.private_folder(Path::new("staging")).unwrap();
    let mode = fs::metadata(root.join("staging"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    p.create_new(Path::new("f")).unwrap();
    // Already there (made by someone first), or a symlink: refused.
    assert!(g.private_folder(Path::new("staging")).is_err());
    symlink(&outside, root.join("s2")).unwrap();
    assert!(g.private_folder(Path::new("s2")).is_err());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
}
