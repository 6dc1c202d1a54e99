use super::*;
use crate::{scan_root, GameId};
use lanspread_proto::CHUNK_SIZE;

#[test]
fn hashes_per_chunk_and_caches_by_identity() {
    let t = tempfile::tempdir().unwrap();
    let root_dir = t.path().join("cnc4");
    fs::create_dir_all(&root_dir).unwrap();
    fs::write(root_dir.join("version.ini"), "20250101").unwrap();
    let data: Vec<u8> = (0..(CHUNK_SIZE + 10)).map(|i| (i % 253) as u8).collect();
    fs::write(root_dir.join("big.bin"), &data).unwrap();
    fs::write(root_dir.join("empty"), b"").unwrap();
    let root = scan_root(&root_dir, GameId::new("cnc4").unwrap());
    let cache = HashCache::new();
    let m = cache.manifest(&root).unwrap();
    let big = m
        .files
        .iter()
        .find(|f| f.path.as_str() == "big.bin")
        .unwrap();
    assert_eq!(big.chunks.len(), 2);
    assert_eq!(big.pieces.len(), 33);
    // Each piece's BLAKE3, computed here over the bytes by the blake3 crate itself, and
    // each chunk's over them.
    let pieces: Vec<ChunkHash> = data
        .chunks(PIECE_SIZE as usize)
        .map(|p| blake3::hash(p).into())
        .collect();
    assert_eq!(big.pieces, pieces);
    let over = |ps: &[ChunkHash]| -> ChunkHash { blake3::hash(&ps.concat()).into() };
    assert_eq!(big.chunks, [over(&pieces[..32]), over(&pieces[32..])]);
    assert!(m
        .files
        .iter()
        .find(|f| f.path.as_str() == "empty")
        .unwrap()
        .chunks
        .is_empty());
    // Persisted: a fresh cache reads the hashes back without hashing.
    assert!(root_dir.join(".lanspread/pieces.json").is_file());
    let fresh = HashCache::new();
    let persisted = load_cache(&root_dir);
    let key = FileKey::of(&fs::metadata(root_dir.join("big.bin")).unwrap());
    assert_eq!(
        from_persisted(&persisted, &big.path, key).unwrap(),
        big.pieces
    );
    assert_eq!(fresh.manifest(&root).unwrap(), m);
    // The metadata dir is never part of the root.
    let rescanned = scan_root(&root_dir, GameId::new("cnc4").unwrap());
    assert_eq!(rescanned.files, root.files);
}

#[test]
fn a_changed_file_is_rehashed() {
    let t = tempfile::tempdir().unwrap();
    let root_dir = t.path().join("cnc4");
    fs::create_dir_all(&root_dir).unwrap();
    fs::write(root_dir.join("a.bin"), b"one").unwrap();
    let cache = HashCache::new();
    let m1 = cache
        .manifest(&scan_root(&root_dir, GameId::new("cnc4").unwrap()))
        .unwrap();
    // New content, new inode (rename over): the identity changes.
    fs::write(root_dir.join("a.tmp"), b"two").unwrap();
    fs::rename(root_dir.join("a.tmp"), root_dir.join("a.bin")).unwrap();
    let m2 = cache
        .manifest(&scan_root(&root_dir, GameId::new("cnc4").unwrap()))
        .unwrap();
    assert_ne!(m1.files[0].chunks, m2.files[0].chunks);
    assert_eq!(
        m2.files[0].pieces[0],
        <ChunkHash>::from(blake3::hash(b"two"))
    );
}

#[test]
fn content_changed_in_place_with_the_mtime_restored_is_rehashed() {
    // What `rsync -t --inplace` and `cp -p` do: same inode, same size, old mtime.
    let t = tempfile::tempdir().unwrap();
    let root_dir = t.path().join("cnc4");
    fs::create_dir_all(&root_dir).unwrap();
    let file = root_dir.join("a.bin");
    fs::write(&file, b"one").unwrap();
    let old = fs::metadata(&file).unwrap().modified().unwrap();
    let cache = HashCache::new();
    let scan = || scan_root(&root_dir, GameId::new("cnc4").unwrap());
    let m1 = cache.manifest(&scan()).unwrap();
    assert!(cache.knows(&file, &fs::metadata(&file).unwrap()));
    assert!(!HashCache::new().knows(&file, &fs::metadata(&file).unwrap()));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = fs::OpenOptions::new().write(true).open(&file).unwrap();
    std::io::Write::write_all(&mut &f, b"two").unwrap();
    f.set_modified(old).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&file).unwrap().modified().unwrap(), old);
    let two = <ChunkHash>::from(blake3::hash(b"two"));
    // A source asked for a range now sees the file is not the one it hashed.
    assert!(!cache.knows(&file, &fs::metadata(&file).unwrap()));
    let opened = fs::File::open(&file).unwrap();
    assert!(!cache.still_holds(&file, &opened, &fs::metadata(&file).unwrap(), &|| true));
    // From the persisted cache after a restart (a fresh cache), and in memory.
    assert_eq!(
        HashCache::new().manifest(&scan()).unwrap().files[0].pieces[0],
        two
    );
    assert_eq!(cache.manifest(&scan()).unwrap().files[0].pieces[0], two);
    assert_ne!(m1.files[0].pieces[0], two);
    // Hashed again: known again.
    assert!(cache.knows(&file, &fs::metadata(&file).unwrap()));
}

#[test]
fn a_moved_change_time_alone_is_checked_by_content() {
    // A hard link made to a served file (a second copy of a game by `cp -l`) moves its
    // ctime only: the source re-reads it and serves it on, with nothing else moved.
    let t = tempfile::tempdir().unwrap();
    let root_dir = t.path().join("cnc4");
    fs::create_dir_all(&root_dir).unwrap();
    let file = root_dir.join("a.bin");
    fs::write(&file, b"one").unwrap();
    let cache = HashCache::new();
    cache
        .manifest(&scan_root(&root_dir, GameId::new("cnc4").unwrap()))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::hard_link(&file, t.path().join("link")).unwrap();
    let meta = fs::metadata(&file).unwrap();
    assert!(!cache.knows(&file, &meta), "the ctime moved");
    let opened = fs::File::open(&file).unwrap();
    // While someone else hashes the file (another request, the indexer), a caller waits
    // for its verdict instead of reading the whole file too; one whose asker left stops
    // waiting.
    let claim = cache.claims.try_claim(&file).unwrap();
    let asked = std::sync::atomic::AtomicU32::new(0);
    let gone = || asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2;
    assert!(!cache.still_holds(&file, &opened, &meta, &gone));
    assert!(
        asked.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "it waited"
    );
    assert!(!cache.knows(&file, &meta), "not hashed while claimed");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| cache.still_holds(&file, &opened, &meta, &|| true));
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(!waiter.is_finished(), "waits for the claim");
        drop(claim);
        assert!(waiter.join().unwrap());
    });
    assert!(cache.still_holds(&file, &opened, &meta, &|| true));
    assert!(cache.knows(&file, &meta), "the new identity is remembered");
    // Never hashed by this cache: nothing to compare with.
    assert!(!HashCache::new().still_holds(&file, &opened, &meta, &|| true));
    // Really changed (its mtime moved) while someone hashes it: refused at once, not
    // after waiting for that hash.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::write(&file, b"newer, and longer").unwrap();
    let _busy = cache.claims.try_claim(&file).unwrap();
    let meta = fs::metadata(&file).unwrap();
    let opened = fs::File::open(&file).unwrap();
    assert!(!cache.still_holds(&file, &opened, &meta, &|| panic!("waited")));
}

#[test]
fn two_callers_at_once_hash_each_file_once_and_share_progress() {
    let t = tempfile::tempdir().unwrap();
    let root_dir = t.path().join("cnc4");
    fs::create_dir_all(&root_dir).unwrap();
    for (name, byte) in [("a.bin", 1u8), ("b.bin", 2), ("c.bin", 3)] {
        fs::write(root_dir.join(name), vec![byte; 3 << 20]).unwrap();
    }
    let root = scan_root(&root_dir, GameId::new("cnc4").unwrap());
    let cache = std::sync::Arc::new(HashCache::new());
    let (second_ran, wait_second) = std::sync::mpsc::channel::<()>();
    let (first_started, wait_first) = std::sync::mpsc::channel::<()>();
    let first = {
        let (cache, root) = (cache.clone(), root.clone());
        let wait = std::sync::Mutex::new(Some((first_started, wait_second)));
        std::thread::spawn(move || {
            // Holds its first file (claimed, one MiB read) until the second caller
            // hashed something.
            cache.manifest_with(&root, &|| {
                if let Some((started, rx)) = wait.lock().unwrap().take() {
                    drop(started);
                    let _ = rx.recv(); // the sender is dropped: it ran
                }
                true
            })
        })
    };
    let _ = wait_first.recv(); // dropped: the first caller holds a claim
    let told = std::sync::Mutex::new(Some(second_ran));
    let second = cache
        .manifest_with(&root, &|| {
            told.lock().unwrap().take();
            let p = cache.progress(&root_dir).unwrap();
            assert_eq!(p.total, 9 << 20);
            true
        })
        .unwrap();
    let first = first.join().unwrap().unwrap();
    assert_eq!(first.manifest, second.manifest);
    assert_eq!(
        first.hashed + second.hashed,
        9 << 20,
        "no file hashed twice"
    );
    assert!(second.hashed > 0 && first.hashed > 0, "both did a part");
    assert_eq!(cache.progress(&root_dir), None, "no one hashes now");
    assert_eq!(cache.manifest_with(&root, &|| true).unwrap().hashed, 0);
}

#[test]
fn a_stopped_caller_stops_and_leaves_nothing_half_known() {
    let t = tempfile::tempdir().unwrap();
    let root_dir = t.path().join("cnc4");
    fs::create_dir_all(&root_dir).unwrap();
    fs::write(root_dir.join("a.bin"), vec![7u8; 3 << 20]).unwrap();
    let root = scan_root(&root_dir, GameId::new("cnc4").unwrap());
    let cache = HashCache::new();
    let stopped = cache.manifest_with(&root, &|| false).unwrap_err();
    assert!(matches!(stopped, CatalogError::Stopped), "{stopped}");
    assert_eq!(cache.progress(&root_dir), None);
    assert_eq!(
        cache.manifest_with(&root, &|| true).unwrap().hashed,
        3 << 20
    );
}

/// `f` on a thread of its own, its result within 30 s (a regression that blocks fails
/// the test instead of hanging it).
fn within_30s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("blocked: hashing waited on a FIFO or read without end")
}

#[test]
fn a_fifo_or_device_swapped_in_after_the_scan_fails_at_once_and_frees_the_file() {
    let t = tempfile::tempdir().unwrap();
    let root_dir = t.path().join("cnc4");
    fs::create_dir_all(&root_dir).unwrap();
    fs::write(root_dir.join("version.ini"), "20250101").unwrap();
    let file = root_dir.join("big2.dat");
    fs::write(&file, vec![7u8; 3000]).unwrap();
    let root = scan_root(&root_dir, GameId::new("cnc4").unwrap());
    assert!(root.problem.is_none(), "{:?}", root.problem);
    let cache = std::sync::Arc::new(HashCache::new());
    // A FIFO with the same name: no writer ever comes.
    fs::remove_file(&file).unwrap();
    let c = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads the path it is given.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let (c2, r2) = (cache.clone(), root.clone());
    let err = within_30s(move || c2.manifest(&r2)).unwrap_err();
    assert!(matches!(err, CatalogError::Io { .. }), "{err}");
    // A symlink re-pointed at an endless device: refused, not read for ever.
    fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &file).unwrap();
    let (c2, r2) = (cache.clone(), root.clone());
    let err = within_30s(move || c2.manifest(&r2)).unwrap_err();
    assert!(matches!(err, CatalogError::Io { .. }), "{err}");
    // The file back: nothing is left claimed, the next manifest is built at once.
    fs::remove_file(&file).unwrap();
    fs::write(&file, vec![7u8; 3000]).unwrap();
    let root = scan_root(&root_dir, GameId::new("cnc4").unwrap());
    let m = within_30s(move || cache.manifest(&root)).unwrap();
    assert_eq!(m.files.len(), 2);
}

#[test]
fn a_file_longer_than_its_size_is_read_one_byte_past_it() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("grows");
    fs::write(&path, vec![1u8; 3 << 20]).unwrap();
    let file = fs::File::open(&path).unwrap();
    let mut read = 0u64;
    let pieces = hash_file(&file, &path, 1 << 20, &mut |n| {
        read += n;
        true
    })
    .unwrap();
    assert_eq!(read, (1 << 20) + 1);
    // One piece more than a file of that size has: the caller's count check refuses it.
    assert_eq!(pieces.len() as u64, piece_count(1 << 20) + 1);
    // The whole file, read from its start whatever its offset.
    std::io::Read::read_exact(&mut &file, &mut [0u8; 10]).unwrap();
    let all = hash_file(&file, &path, 3 << 20, &mut |_| true).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], <ChunkHash>::from(blake3::hash(&vec![1u8; 1 << 20])));
}

/// A file changed again and again keeps only its last few identities in memory, the
/// newest among them.
#[test]
fn only_the_last_identities_of_a_file_are_kept() {
    let cache = HashCache::new();
    let full = Path::new("/games/cnc4/a.eti");
    let key = |n: u64| FileKey {
        size: 1,
        mtime_ns: i128::from(n),
        ctime_ns: i128::from(n),
        ino: 1,
        dev: 1,
    };
    for n in 0..10u8 {
        cache.insert(full, key(u64::from(n)), vec![[n; 32]]);
    }
    // Again under one it has: moved to the newest, not kept twice.
    cache.insert(full, key(7), vec![[7; 32]]);
    let mem = cache.mem.lock().unwrap();
    let kept: Vec<FileKey> = mem[full].iter().map(|(k, _)| *k).collect();
    assert_eq!(kept, [key(6), key(8), key(9), key(7)]);
    drop(mem);
    assert_eq!(cache.in_memory(full, key(9)), Some(vec![[9; 32]]));
    assert_eq!(cache.in_memory(full, key(2)), None);
}
