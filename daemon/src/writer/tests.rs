//! The writer against plain std reads: where small writes go, and the descriptor cache.

use super::files::on_tmpfs;
use super::*;
use std::path::Path;

/// Creates `rel` beneath the root `root` with mode 0o644.
async fn open_in(w: &Writer, root: &Path, rel: &str, size: u64) -> io::Result<u64> {
    let game = Arc::new(GameDir::open(root)?);
    w.open((game, rel.into()), size, 0o644)
        .await
        .map(|(id, _)| id)
}

/// Creates `path`, its folder taken as the root.
async fn open(w: &Writer, path: PathBuf, size: u64) -> io::Result<u64> {
    let (Some(root), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("no folder"));
    };
    open_in(w, root, &name.to_string_lossy(), size).await
}

/// Writes small (inline on tmpfs) and large (through the ring) buffers at their
/// offsets, out of order, and reads the file back with plain std reads.
fn write_and_read_back(dir: &std::path::Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let path = dir.join("f.bin");
    let size = 3 * BUF_SIZE as u64 + 100;
    let expected: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    rt.block_on(async {
        let w = Writer::new();
        let file = open(&w, path.clone(), size).await.unwrap();
        // (offset, len): a 1 MiB piece, small pieces, the short last piece.
        let parts = [
            (BUF_SIZE as u64, 32 << 10),
            (0, BUF_SIZE),
            (3 * BUF_SIZE as u64, 100),
            (BUF_SIZE as u64 + (32 << 10), BUF_SIZE - (32 << 10)),
            (2 * BUF_SIZE as u64, BUF_SIZE),
        ];
        let mut replies = Vec::new();
        for (offset, len) in parts {
            let mut buf = w.buffer().await.unwrap();
            buf.extend(&expected[offset as usize..offset as usize + len]);
            replies.push(w.write(file, offset, buf).await.unwrap());
        }
        for r in replies {
            r.await.unwrap().unwrap();
        }
        w.sync(file).await.unwrap();
        w.close(file).await;
    });
    assert_eq!(std::fs::read(&path).unwrap(), expected, "{}", dir.display());
}

#[test]
fn small_and_large_writes_land_where_they_belong_on_tmpfs_and_elsewhere() {
    // Where the file lies decides the path of small writes: inline on tmpfs (/dev/shm
    // on Linux), through the ring elsewhere (the target dir, on the repository's
    // filesystem). Each is checked where this machine has it; /proc/mounts is the
    // independent word on which is which.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let fs_type = |dir: &std::path::Path| {
        let real = std::fs::canonicalize(dir).unwrap();
        mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
                real.starts_with(at).then(|| (at.len(), kind.to_owned()))
            })
            .max()
            .map(|(_, kind)| kind)
    };
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let dirs = [
        tempfile::tempdir_in("/dev/shm").ok(),
        tempfile::tempdir_in(&target).ok(),
    ];
    let mut kinds = Vec::new();
    for dir in dirs.iter().flatten() {
        let probe = std::fs::File::create(dir.path().join("probe")).unwrap();
        let tmpfs = fs_type(dir.path()).as_deref() == Some("tmpfs");
        assert_eq!(on_tmpfs(&probe), tmpfs, "{}", dir.path().display());
        write_and_read_back(dir.path());
        kinds.push(tmpfs);
    }
    assert!(
        !kinds.is_empty(),
        "neither /dev/shm nor the target dir is writable"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `bytes` at `offset` of `file` and waits for it.
async fn put(w: &Writer, file: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
    let mut buf = w.buffer().await?;
    buf.extend(bytes);
    w.write(file, offset, buf)
        .await?
        .await
        .map_err(|_| gone())?
}

#[test]
fn many_more_files_than_the_cache_holds_open_are_written_synced_and_read_back() {
    // 40 files through a cache of 4, on tmpfs (inline writes) and on the target dir's
    // filesystem (ring writes): every file is written in three pieces visited round-robin,
    // so nearly every write finds its file closed; then each is synced (reopened again).
    // Never more than 4 files are open at once, and every byte lands.
    const CAP: usize = 4;
    const FILES: usize = 40;
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let dirs = [
        tempfile::tempdir_in("/dev/shm").ok(),
        tempfile::tempdir_in(&target).ok(),
    ];
    let mut checked = 0;
    for dir in dirs.iter().flatten() {
        let content = |i: usize| -> Vec<u8> {
            (0..3 * 1000 + i)
                .map(|b| (b * 7 + i) as u8)
                .collect::<Vec<u8>>()
        };
        let w = Writer::with_cap(Some(CAP));
        runtime().block_on(async {
            let mut ids = Vec::new();
            for i in 0..FILES {
                let path = dir.path().join(format!("f{i:02}.bin"));
                ids.push(open(&w, path, content(i).len() as u64).await.unwrap());
            }
            for piece in 0..3 {
                for (i, &id) in ids.iter().enumerate() {
                    let all = content(i);
                    let (from, to) = (
                        piece * 1000,
                        if piece == 2 {
                            all.len()
                        } else {
                            (piece + 1) * 1000
                        },
                    );
                    put(&w, id, from as u64, &all[from..to]).await.unwrap();
                }
            }
            for &id in &ids {
                w.sync(id).await.unwrap();
                w.close(id).await;
            }
        });
        // The cap, and the one file being created past it.
        assert!(
            w.open.peak() <= CAP + 1,
            "{} files open at once, the cap is {CAP}",
            w.open.peak()
        );
        for i in 0..FILES {
            let got = std::fs::read(dir.path().join(format!("f{i:02}.bin"))).unwrap();
            assert!(got == content(i), "file {i} in {}", dir.path().display());
        }
        checked += 1;
    }
    assert!(
        checked > 0,
        "neither /dev/shm nor the target dir is writable"
    );
}

#[test]
fn a_closed_file_replaced_under_its_path_is_never_written_through() {
    // With a cache of one, the second file is closed as soon as it is created; someone then
    // puts a symlink to a file outside at its path, or another file, or replaces its
    // folder by a symlink to a folder outside holding a file of that name, or a FIFO.
    // The writer refuses to write through any of them, without blocking, and leaves
    // every target as it was.
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, b"keep me").unwrap();
    let w = Writer::with_cap(Some(1));
    runtime().block_on(async {
        let a = open(&w, dir.path().join("a.bin"), 10).await.unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let b_path = dir.path().join("sub/b.bin");
        let b = open_in(&w, dir.path(), "sub/b.bin", 10).await.unwrap();
        put(&w, a, 0, b"aaaaaaaaaa").await.unwrap();

        std::fs::remove_file(&b_path).unwrap();
        std::os::unix::fs::symlink(&outside, &b_path).unwrap();
        let err = put(&w, b, 0, b"bbbbbbbbbb").await.unwrap_err();
        assert!(err.to_string().contains("b.bin"), "{err}");
        assert!(w.sync(b).await.is_err(), "sync through a symlink");

        std::fs::remove_file(&b_path).unwrap();
        std::fs::write(&b_path, b"another file").unwrap();
        let err = put(&w, b, 0, b"bbbbbbbbbb").await.unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");

        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("b.bin"), b"elsewhere!").unwrap();
        std::fs::rename(dir.path().join("sub"), dir.path().join("sub.old")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("sub")).unwrap();
        let err = put(&w, b, 0, b"bbbbbbbbbb").await.unwrap_err();
        assert!(err.to_string().contains("reopening"), "{err}");
        assert_eq!(
            std::fs::read(elsewhere.path().join("b.bin")).unwrap(),
            b"elsewhere!"
        );
        // A FIFO in its place: refused, not waited on (an open for writing would block
        // until a reader came, and the writer thread with it).
        std::fs::remove_file(dir.path().join("sub")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let fifo = std::ffi::CString::new(b_path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the path it is given.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        // Bounded waits: a writer that blocked on the FIFO fails here, not hangs.
        let limit = std::time::Duration::from_secs(30);
        let reopened = tokio::time::timeout(limit, put(&w, b, 0, b"bbbbbbbbbb")).await;
        assert!(
            reopened.expect("the writer blocked").is_err(),
            "FIFO reopened"
        );
        let created = tokio::time::timeout(limit, open_in(&w, dir.path(), "sub/b.bin", 10));
        assert!(
            created.await.expect("the writer blocked").is_err(),
            "created over a FIFO"
        );
        // The file still open is written as before.
        put(&w, a, 0, b"AAAAAAAAAA").await.unwrap();
    });
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
    assert_eq!(
        std::fs::read(dir.path().join("sub.old/b.bin")).unwrap(),
        b"another file"
    );
    assert_eq!(
        std::fs::read(dir.path().join("a.bin")).unwrap(),
        b"AAAAAAAAAA"
    );
}

#[test]
fn writes_in_flight_to_more_files_than_the_cache_holds_keep_to_the_pool_and_the_cap() {
    // Many ring writes (the target dir: no inline writes) to 60 files through a cache of
    // 4, none awaited before the next is queued: files the cache closed stay open only
    // while a write uses them, so never more than the cap, the pool's buffers and the
    // one being created are open. Every byte lands.
    // The writes are counted when sent, so every file the cache closed before its sync is
    // reported for the commit's syncfs, even one closed while its write still ran.
    const CAP: usize = 4;
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let dir = tempfile::tempdir_in(&target).unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let w = Writer::with_cap(Some(CAP));
    let content = |i: usize| vec![i as u8; 4096 + i];
    runtime().block_on(async {
        let mut ids = Vec::new();
        for i in 0..60 {
            let path = dir.path().join(format!("f{i:02}.bin"));
            ids.push(open(&w, path, content(i).len() as u64).await.unwrap());
        }
        let mut replies = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let mut buf = w.buffer().await.unwrap();
            buf.extend(&content(i));
            replies.push(w.write(id, 0, buf).await.unwrap());
        }
        for r in replies {
            r.await.unwrap().unwrap();
        }
        for (i, &id) in ids.iter().enumerate() {
            assert_eq!(w.closed_dirty(&[id]), i < ids.len() - CAP, "file {i}");
        }
        for &id in &ids {
            w.sync(id).await.unwrap();
            w.close(id).await;
        }
    });
    assert!(w.open.peak() <= CAP + POOL_BUFFERS + 1, "{}", w.open.peak());
    for i in 0..60 {
        let got = std::fs::read(dir.path().join(format!("f{i:02}.bin"))).unwrap();
        assert!(got == content(i), "file {i}");
    }
}

#[test]
fn a_file_closed_before_its_sync_is_reported_and_not_one_synced_first() {
    // With a cache of one: `a` written, then `c` written (closing `a` with its write not
    // synced: the commit must add a syncfs); `c` synced, then closed by `b`: it needs
    // none. Closing forgets a file.
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::with_cap(Some(1));
    runtime().block_on(async {
        let p = |n: &str| dir.path().join(n);
        let a = open(&w, p("a"), 4).await.unwrap();
        let b = open(&w, p("b"), 4).await.unwrap();
        let c = open(&w, p("c"), 4).await.unwrap();
        put(&w, a, 0, b"aaaa").await.unwrap();
        put(&w, c, 0, b"cccc").await.unwrap(); // closes a, written, unsynced
        w.sync(c).await.unwrap();
        put(&w, b, 0, b"bbbb").await.unwrap(); // closes c, synced
        assert!(w.closed_dirty(&[a]), "a was closed with unsynced bytes");
        assert!(!w.closed_dirty(&[b, c]), "b open, c synced");
        for f in [a, b, c] {
            w.close(f).await;
        }
        // Jobs are taken in order: once a later one is answered, the closes are done.
        let z = open(&w, p("z"), 1).await.unwrap();
        assert!(!w.closed_dirty(&[a]), "forgotten once closed");
        w.close(z).await;
    });
    assert_eq!(w.open.peak(), 1 + 1, "the cap and one being created");
}

#[test]
fn a_write_queued_behind_a_sync_is_not_covered_by_it() {
    // `a` written and awaited; then a sync of `a` and another write to it queued back to
    // back (the sync first): the sync covers the first write only, so when the cache (of
    // one) closes `a` for `b`, `a` is reported — a sync that counted the writes sent
    // when it ran would have called it clean.
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::with_cap(Some(1));
    runtime().block_on(async {
        let a = open(&w, dir.path().join("a"), 8).await.unwrap();
        let b = open(&w, dir.path().join("b"), 4).await.unwrap();
        put(&w, a, 0, b"aaaa").await.unwrap();
        let mut buf = w.buffer().await.unwrap();
        buf.extend(b"AAAA");
        let (synced, written) = tokio::join!(w.sync(a), async {
            w.write(a, 4, buf).await.unwrap().await.unwrap()
        });
        synced.unwrap();
        written.unwrap();
        put(&w, b, 0, b"bbbb").await.unwrap(); // closes a
        assert!(w.closed_dirty(&[a]), "a's second write was never synced");
        w.close(a).await;
        w.close(b).await;
    });
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"aaaaAAAA");
}

#[test]
fn a_committed_file_keeps_owner_read_whatever_its_manifest_mode() {
    assert_eq!(final_mode(0o000), 0o400);
    assert_eq!(final_mode(0o200), 0o600);
    assert_eq!(final_mode(0o644), 0o644);
    assert_eq!(final_mode(0o4311), 0o711, "no setuid bit from a peer");
}

#[test]
fn files_are_created_beneath_their_root_with_their_working_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let (root, outside) = (dir.path().join("g"), dir.path().join("etc"));
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("shadow"), b"secret").unwrap();
    let game = Arc::new(GameDir::open(&root).unwrap());
    let w = Writer::new();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    runtime().block_on(async {
        // A peer's setuid bit is dropped; a read-only mode keeps owner read and write
        // until the commit.
        let x = w
            .open((game.clone(), "data/x".into()), 4, 0o4755)
            .await
            .unwrap()
            .0;
        let y = w
            .open((game.clone(), "data/y".into()), 4, 0o444)
            .await
            .unwrap()
            .0;
        assert_eq!(mode(&root.join("data/x")), 0o755);
        assert_eq!(mode(&root.join("data/y")), 0o644);
        put(&w, x, 0, b"xxxx").await.unwrap();
        put(&w, y, 0, b"yyyy").await.unwrap();
        w.sync(x).await.unwrap();
        w.sync(y).await.unwrap();
        // The folder swapped for a symlink out of the root after it was made (between a
        // download's preparation and its creates): nothing is created there.
        std::fs::rename(root.join("data"), root.join("data.old")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("data")).unwrap();
        let e = w.open((game.clone(), "data/shadow".into()), 4, 0o644);
        assert!(e.await.is_err());
        assert!(w
            .open((game.clone(), "data/new".into()), 4, 0o644)
            .await
            .is_err());
        // A hard link to a file elsewhere at a file's place: replaced, not written.
        std::fs::hard_link(outside.join("shadow"), root.join("z")).unwrap();
        std::fs::set_permissions(
            outside.join("shadow"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let z = w
            .open((game.clone(), "z".into()), 4, 0o644)
            .await
            .unwrap()
            .0;
        put(&w, z, 0, b"zzzz").await.unwrap();
    });
    assert_eq!(std::fs::read(outside.join("shadow")).unwrap(), b"secret");
    assert_eq!(mode(&outside.join("shadow")), 0o600);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(std::fs::read(root.join("z")).unwrap(), b"zzzz");
    assert_eq!(std::fs::read(root.join("data.old/y")).unwrap(), b"yyyy");
}

#[test]
fn a_ring_that_cannot_be_made_fails_each_job_naming_io_uring() {
    let t = tempfile::tempdir().unwrap();
    // More entries than the kernel takes: set-up fails as it does where io_uring is
    // off. (Before: the writer thread panicked, every job said "writer thread is gone".)
    let mut w = Writer::new();
    w.ring_entries = u32::MAX;
    let rt = runtime();
    for _ in 0..2 {
        let err = rt
            .block_on(open(&w, t.path().join("f.bin"), 10))
            .unwrap_err();
        assert!(
            err.to_string().contains("io_uring is not available"),
            "{err}"
        );
    }
    assert!(!t.path().join("f.bin").exists());
    // The same writer with a ring it can have works.
    w.ring_entries = 256;
    rt.block_on(open(&w, t.path().join("f.bin"), 10)).unwrap();
}
