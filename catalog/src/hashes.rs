//! A hash (BLAKE3, [`piece_hash`]) per 1 MiB piece of every file of a root (a chunk's
//! hash follows from its pieces'), and a cache of them keyed by file identity (size,
//! mtime, ctime, inode, device) so that serving a file twice never hashes it twice.

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use lanspread_proto::{piece_count, piece_hash, ChunkHash, FileManifest, Manifest, PIECE_SIZE};

use crate::hash_store::{
    from_persisted, load_cache, persisted_as, store_cache, to_persisted, CacheFile,
};
use crate::inflight::{Claims, HashProgress, RootProgress};
use crate::{CatalogError, FileDescriptor, GameRoot};

/// Hashes every 1 MiB piece of the open regular file `file` (named `shown` in errors),
/// reading it from its start with `pread` (its offset is left alone) and at most
/// `size + 1` bytes: a file that grows while it is read is not read for ever, and the
/// caller's check of the piece count against `size` sees that it changed. `read` is told
/// the length of each read as it is done; it returns `false` to stop
/// ([`CatalogError::Stopped`]).
///
/// The file is opened by the caller, never here by path: a path opened blocking would
/// hang on a FIFO swapped in after the scan (see [`crate::Confined::open`]).
pub fn hash_file(
    file: &File,
    shown: &Path,
    size: u64,
    read: &mut dyn FnMut(u64) -> bool,
) -> Result<Vec<ChunkHash>, CatalogError> {
    let mut buf = vec![0u8; PIECE_SIZE as usize];
    let mut out = Vec::new();
    // Bytes of the piece being read; it is hashed whole (BLAKE3 is fastest on one long
    // slice).
    let mut in_piece = 0usize;
    let mut pos = 0u64;
    let limit = size.saturating_add(1);
    while pos < limit {
        let room = (buf.len() - in_piece).min(usize::try_from(limit - pos).unwrap_or(usize::MAX));
        let n = match file.read_at(&mut buf[in_piece..in_piece + room], pos) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CatalogError::io(shown, e)),
        };
        if n == 0 {
            break;
        }
        pos += n as u64;
        in_piece += n;
        if in_piece == buf.len() {
            out.push(piece_hash(&buf));
            in_piece = 0;
        }
        if !read(n as u64) {
            return Err(CatalogError::Stopped);
        }
    }
    if in_piece > 0 {
        out.push(piece_hash(&buf[..in_piece]));
    }
    Ok(out)
}

/// Identity of a file's content as far as the cache is concerned. The change time is in
/// it because the modification time is not enough: `rsync -t --inplace` and `cp -p`
/// rewrite a file in place and then restore its old mtime, but no one can set the ctime
/// (any write or utimes moves it). A persisted entry from before ctime was keyed (0) never
/// matches, so it is re-hashed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct FileKey {
    size: u64,
    mtime_ns: i128,
    #[serde(default)]
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl FileKey {
    /// The file's size.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    pub(crate) fn of(meta: &fs::Metadata) -> Self {
        Self {
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// Identities kept in memory per file: the newest (a file's hashes under its identity
/// now) and a few before it, whose hashes a copy given out earlier may still be checked
/// against ([`HashCache::still_holds`]). More would only grow with every change of a file
/// over the daemon's life (≈ 1.6 MB per identity of a 50 GB file).
const IDENTITIES_KEPT: usize = 4;
/// A file's piece hashes under each identity kept, the newest last.
type Identities = Vec<(FileKey, Vec<ChunkHash>)>;
/// Changed identities remembered (see `HashCache::changed`) before the set starts over.
const CHANGED_KEPT: usize = 4096;

/// Piece hashes of served files, in memory and persisted per root in
/// `<root>/.lanspread/pieces.json`. A persisted cache that cannot be written (read-only
/// games dir) only costs a re-hash after a restart.
#[derive(Debug, Default)]
pub struct HashCache {
    /// Per file, its piece hashes under the last [`IDENTITIES_KEPT`] identities they were
    /// computed or adopted for, the newest last (a path's own map: a lookup by `&Path`
    /// allocates nothing and hashes the path once, where the ordered map compared it
    /// component by component along the tree — the source looks once per range it
    /// serves).
    mem: Mutex<HashMap<PathBuf, Identities>>,
    /// Identities [`HashCache::still_holds`] re-read and found changed: not read again
    /// for every request (a rewritten 20 GB file is refused at once, not re-hashed).
    changed: Mutex<std::collections::BTreeSet<(PathBuf, FileKey)>>,
    /// Files being hashed now.
    claims: Claims,
    /// How far the roots being hashed now are.
    progress: RootProgress,
}

impl HashCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The manifest of a root: every file with its piece and chunk hashes, hashing only files whose
    /// identity is not cached yet, and its empty folders. Blocking; call from a blocking thread.
    pub fn manifest(&self, root: &GameRoot) -> Result<Manifest, CatalogError> {
        Ok(self.manifest_with(root, &|| true)?.manifest)
    }

    /// [`HashCache::manifest`], stopping with [`CatalogError::Stopped`] once `go_on`
    /// says no (checked every MiB read). A file someone else hashes now (the background
    /// indexer and a request, two requests) is not hashed twice: it is left for last and
    /// waited for. While it runs, [`HashCache::progress`] tells how far the root is.
    pub fn manifest_with(
        &self,
        root: &GameRoot,
        go_on: &dyn Fn() -> bool,
    ) -> Result<Indexed, CatalogError> {
        // Read from disk only when something is not in memory (a big root's cache is
        // megabytes of JSON).
        let mut persisted = None;
        let mut known = Vec::with_capacity(root.files.len());
        let mut todo = 0u64;
        for FileDescriptor { path, .. } in &root.files {
            let full = path.to_path(&root.dir);
            let meta = fs::metadata(&full).map_err(|e| CatalogError::io(&full, e))?;
            let key = FileKey::of(&meta);
            let chunks = self.cached(&full, key, (&mut persisted, &root.dir), path);
            if chunks.is_none() {
                todo += meta.size();
            }
            known.push((full, meta, key, chunks));
        }
        let _watching = self.progress.begin(&root.dir, root.size(), todo);
        let mut hashed = 0u64;
        // A file whose hashing stops or fails part-way takes back what it counted: whoever
        // hashes it next counts it again.
        // Files are opened inside the root as it resolves now, never blocking (a FIFO
        // swapped in after the scan is refused at once, a symlink re-pointed out of the
        // root too), and must still be the file whose identity was looked up.
        let mut confined = None;
        let mut hash = |full: &Path, key: FileKey| {
            let mut counted = 0u64;
            let res = open_as(&mut confined, &root.dir, full, key).and_then(|file| {
                let pieces = hash_file(&file, full, key.size, &mut |n| {
                    self.progress.add(&root.dir, n);
                    counted += n;
                    go_on()
                })?;
                match file.metadata() {
                    Ok(m) if FileKey::of(&m) == key => Ok(pieces),
                    Ok(_) => Err(changed_while_hashing(full)),
                    Err(e) => Err(CatalogError::io(full, e)),
                }
            });
            match &res {
                Ok(_) => hashed += counted,
                Err(_) => self.progress.take_back(&root.dir, counted),
            }
            res
        };
        // Files nobody hashes now first, then the ones someone else was hashing.
        let mut later = Vec::new();
        for (i, (full, _, key, chunks)) in known.iter_mut().enumerate() {
            if chunks.is_some() {
                continue;
            }
            match self.claims.try_claim(full) {
                // Someone may have hashed it since the first look.
                Some(_claim) => match self.in_memory(full, *key) {
                    Some(c) => *chunks = Some(c),
                    None => *chunks = Some(self.remember(full, *key, hash(full, *key)?)),
                },
                None => later.push(i),
            }
        }
        for i in later {
            let (full, _, key, chunks) = &mut known[i];
            while chunks.is_none() {
                if !self.claims.wait_free(full, go_on) {
                    return Err(CatalogError::Stopped);
                }
                if let Some(c) = self.in_memory(full, *key) {
                    *chunks = Some(c);
                } else if let Some(_claim) = self.claims.try_claim(full) {
                    // The other one stopped or failed: hash it here.
                    *chunks = Some(self.remember(full, *key, hash(full, *key)?));
                }
            }
        }
        let mut dirty = false;
        // What was just hashed (or only known in memory, after a restart it would be
        // hashed again) is persisted; compared by identity, not by decoding every entry.
        let mut persisted = match persisted {
            Some(p) => Some(p),
            None if hashed > 0 => Some(load_cache(&root.dir)),
            None => None,
        };
        let mut files = Vec::with_capacity(root.files.len());
        for (f, (full, meta, key, pieces)) in root.files.iter().zip(known) {
            let pieces = pieces.unwrap_or_default();
            if pieces.len() as u64 != piece_count(meta.size()) || meta.size() != f.size {
                // The file changed between the scan and now; the caller rescans.
                return Err(changed_while_hashing(&full));
            }
            if let Some(persisted) = persisted
                .as_mut()
                .filter(|p| !persisted_as(p, &f.path, key))
            {
                persisted
                    .entries
                    .insert(f.path.as_str().to_owned(), to_persisted(key, &pieces));
                dirty = true;
            }
            files.push(FileManifest::from_pieces(
                f.path.clone(),
                f.size,
                f.mode,
                pieces,
            ));
        }
        if let Some(persisted) = persisted.as_mut().filter(|_| dirty) {
            persisted.entries.retain(|p, _| root.file(p).is_some());
            store_cache(&root.dir, persisted);
        }
        Ok(Indexed {
            manifest: Manifest {
                files,
                folders: root.folders.clone(),
            },
            hashed,
        })
    }

    /// How far the hashing of the root in `dir` is, while a manifest of it is being built.
    pub fn progress(&self, dir: &Path) -> Option<HashProgress> {
        self.progress.get(dir)
    }

    fn in_memory(&self, full: &Path, key: FileKey) -> Option<Vec<ChunkHash>> {
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(full)?
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| c.clone())
    }

    /// Remembers `chunks` as the piece hashes of `full` with identity `key`.
    fn insert(&self, full: &Path, key: FileKey, chunks: Vec<ChunkHash>) {
        let mut mem = self.mem.lock().unwrap_or_else(|p| p.into_inner());
        match mem.get_mut(full) {
            Some(ids) => {
                ids.retain(|(k, _)| *k != key);
                ids.push((key, chunks));
                if ids.len() > IDENTITIES_KEPT {
                    ids.remove(0);
                }
            }
            None => {
                mem.insert(full.to_path_buf(), vec![(key, chunks)]);
            }
        }
    }

    /// The hashes of a file in memory or in the persisted cache of the root at `dir`
    /// (read once, when first needed; then kept in memory).
    fn cached(
        &self,
        full: &Path,
        key: FileKey,
        (persisted, dir): (&mut Option<CacheFile>, &Path),
        path: &crate::RelPath,
    ) -> Option<Vec<ChunkHash>> {
        if let Some(c) = self.in_memory(full, key) {
            return Some(c);
        }
        let persisted = persisted.get_or_insert_with(|| load_cache(dir));
        let c = from_persisted(persisted, path, key)?;
        Some(self.remember(full, key, c))
    }

    fn remember(&self, full: &Path, key: FileKey, chunks: Vec<ChunkHash>) -> Vec<ChunkHash> {
        self.insert(full, key, chunks.clone());
        chunks
    }
}

/// The error of a file that is not what the scan or the cache lookup saw: the caller
/// rescans.
fn changed_while_hashing(full: &Path) -> CatalogError {
    CatalogError::io(full, std::io::Error::other("file changed while hashing"))
}

/// Opens `full` for hashing through `confined` (the root `dir` resolved on first use):
/// inside the root, a regular file, without blocking, with the identity `key`.
fn open_as(
    confined: &mut Option<crate::Confined>,
    dir: &Path,
    full: &Path,
    key: FileKey,
) -> Result<File, CatalogError> {
    let confined = match confined {
        Some(c) => c,
        None => confined.insert(crate::Confined::new(dir).map_err(|e| CatalogError::io(dir, e))?),
    };
    let (file, meta) = confined.open(full).map_err(|e| CatalogError::io(full, e))?;
    if FileKey::of(&meta) != key {
        return Err(changed_while_hashing(full));
    }
    Ok(file)
}

/// A root's manifest and how many bytes had to be read for it (0: every file's hashes
/// were known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// Every file with its piece and chunk hashes, and the empty folders.
    pub manifest: Manifest,
    /// Bytes read and hashed to build it.
    pub hashed: u64,
}

impl HashCache {
    /// Takes the piece hashes of files this daemon just wrote and verified piece by piece
    /// against them (a committed download), keyed by each file's identity now: the new
    /// copy is served at once, without hashing it again. Blocking.
    pub fn adopt(&self, root: &Path, files: &[FileManifest]) -> Result<(), CatalogError> {
        let mut persisted = load_cache(root);
        for f in files {
            let full = f.path.to_path(root);
            let meta = fs::metadata(&full).map_err(|e| CatalogError::io(&full, e))?;
            if meta.size() != f.size {
                continue;
            }
            let key = FileKey::of(&meta);
            self.insert(&full, key, f.pieces.clone());
            persisted
                .entries
                .insert(f.path.as_str().to_owned(), to_persisted(key, &f.pieces));
        }
        store_cache(root, &persisted);
        Ok(())
    }

    /// Whether the file at `full` (a root's file, named as [`HashCache::manifest`] names
    /// it), now described by `meta`, still has the identity it had when its hashes were
    /// computed. A source checks this before serving a range of it: a file changed since
    /// (even with its mtime restored) would send bytes its manifest does not describe.
    pub fn knows(&self, full: &Path, meta: &fs::Metadata) -> bool {
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(full)
            .is_some_and(|ids| ids.iter().any(|(k, _)| *k == FileKey::of(meta)))
    }

    /// [`HashCache::knows`], or, when only the file's change time moved since it was
    /// hashed (same size, mtime, inode and device: a hard link made or removed, a chmod or
    /// chown), whether its content still hashes to what was given out; then the new
    /// identity is remembered and `true` returned. Blocking: it may read the whole file,
    /// once however many ask at once: while one caller (or the indexer) hashes the file
    /// the others wait for its verdict, each as long as `go_on` says (asked every 100 ms;
    /// `false` then).
    pub fn still_holds(
        &self,
        full: &Path,
        file: &File,
        meta: &fs::Metadata,
        go_on: &dyn Fn() -> bool,
    ) -> bool {
        if self.knows(full, meta) {
            return true;
        }
        let now = FileKey::of(meta);
        let key = (full.to_path_buf(), now);
        let changed = || self.changed.lock().unwrap_or_else(|p| p.into_inner());
        if changed().contains(&key) {
            return false;
        }
        let same_but_ctime = |k: &FileKey| {
            FileKey {
                ctime_ns: now.ctime_ns,
                ..*k
            } == now
        };
        let given = || -> Vec<Vec<ChunkHash>> {
            self.mem
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(full)
                .into_iter()
                .flatten()
                .filter(|(k, _)| same_but_ctime(k))
                .map(|(_, c)| c.clone())
                .collect()
        };
        // Nothing given out that the ctime alone tells from it (the file really changed):
        // refused at once, not after waiting for whoever hashes it now (the indexer,
        // after an update).
        if given().is_empty() {
            return false;
        }
        // One caller re-reads; the others wait for its verdict. The one that reads goes
        // on to the end even when its asker left: a file that takes longer than an
        // asker waits would otherwise never be found unchanged.
        let _claim = loop {
            if let Some(claim) = self.claims.try_claim(full) {
                break claim;
            }
            if !self.claims.wait_free(full, go_on) {
                return false;
            }
            // The verdict of whoever hashed it meanwhile.
            if self.knows(full, meta) {
                return true;
            }
            if changed().contains(&key) {
                return false;
            }
        };
        // Known by now? (Hashed between the first look and the claim.)
        if self.knows(full, meta) {
            return true;
        }
        let given = given();
        if given.is_empty() {
            return false;
        }
        // The open file itself (a path opened again could be another file by now, or a
        // FIFO that blocks).
        let Ok(fresh) = hash_file(file, full, now.size, &mut |_| true) else {
            return false;
        };
        // The file may have been rewritten while it was read: the identity must not
        // have moved again.
        let unmoved = file.metadata().is_ok_and(|m| FileKey::of(&m) == now);
        if !unmoved || !given.contains(&fresh) {
            let mut changed = changed();
            if changed.len() >= CHANGED_KEPT {
                // Only a saving of re-reads: forgetting costs one more read each.
                changed.clear();
            }
            changed.insert(key);
            return false;
        }
        self.insert(full, now, fresh);
        true
    }
}

#[cfg(test)]
mod tests;
