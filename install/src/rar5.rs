//! A RAR 5.0 *store* (no compression) archive writer, written from the public RAR 5.0
//! technical description: signature, main archive header, one file header per entry with
//! data CRC32, Unix mode and mtime, and the end-of-archive header.
//!
//! Entries are streamed: the file header is written with a placeholder data CRC, the data
//! follows while its CRC32 is computed, and the header is then rewritten in place. The
//! CRC field has a fixed width, so the header length never changes.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::InstallError;

/// The eight-byte RAR 5.0 signature.
pub const SIGNATURE: [u8; 8] = [0x52, 0x61, 0x72, 0x21, 0x1A, 0x07, 0x01, 0x00];

const HEAD_MAIN: u64 = 1;
const HEAD_FILE: u64 = 2;
const HEAD_END: u64 = 5;
/// Common header flags: an extra area follows the header; a data area follows it.
const HFL_EXTRA: u64 = 0x0001;
const HFL_DATA: u64 = 0x0002;
/// Extra record type: file system redirection.
const EXTRA_REDIR: u64 = 0x05;
const S_IFLNK: u32 = 0o120000;
/// File flags.
const FHFL_DIRECTORY: u64 = 0x0001;
const FHFL_UTIME: u64 = 0x0002;
const FHFL_CRC32: u64 = 0x0004;
/// Host OS value for Unix: attributes are `st_mode`.
const HOST_UNIX: u64 = 1;
/// Compression information: version 0, method 0 (store), smallest dictionary.
const COMPRESSION_STORE: u64 = 0;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

/// Kinds of link entries (RAR 5 redirection types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A Unix symbolic link; the target is stored as written.
    Symlink = 1,
    /// A hard link to an earlier entry of the archive.
    HardLink = 4,
    /// A copy of an earlier entry of the archive.
    FileCopy = 5,
}

/// Options of the writer.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterOptions {
    /// Accept entry names that escape the extraction root (`../x`, `/abs`). Only for tests
    /// that build hostile archives; never set in product code.
    pub allow_unsafe_names: bool,
}

/// What `pack_dir` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackSummary {
    /// Regular files stored.
    pub files: u64,
    /// Directories stored.
    pub dirs: u64,
    /// Symlinks stored.
    pub links: u64,
    /// Payload bytes stored.
    pub bytes: u64,
}

/// Streaming RAR5 store writer over any seekable output.
pub struct Rar5Writer<W: Write + Seek> {
    out: W,
    opts: WriterOptions,
    finished: bool,
}

impl<W: Write + Seek> Rar5Writer<W> {
    /// Starts an archive: writes the signature and the main archive header.
    pub fn new(out: W) -> Result<Self, InstallError> {
        Self::with_options(out, WriterOptions::default())
    }

    /// Like [`Rar5Writer::new`] with options.
    pub fn with_options(mut out: W, opts: WriterOptions) -> Result<Self, InstallError> {
        out.write_all(&SIGNATURE).map_err(io_err)?;
        // Main archive header: no archive flags (not a volume, not solid).
        let mut body = Vec::new();
        put_vint(&mut body, HEAD_MAIN);
        put_vint(&mut body, 0); // header flags
        put_vint(&mut body, 0); // archive flags
        out.write_all(&frame_header(&body)).map_err(io_err)?;
        Ok(Self {
            out,
            opts,
            finished: false,
        })
    }

    /// Stores a regular file of exactly `size` bytes read from `data`.
    /// `mode` holds Unix permission bits; `mtime` is seconds since the epoch.
    pub fn add_file(
        &mut self,
        name: &str,
        mode: u32,
        mtime: u32,
        size: u64,
        mut data: impl Read,
    ) -> Result<(), InstallError> {
        self.check(name)?;
        let start = self.out.stream_position().map_err(io_err)?;
        let header = file_header(name, S_IFREG | (mode & 0o7777), mtime, size, 0, Entry::File);
        self.out.write_all(&header).map_err(io_err)?;
        let mut hasher = crc32fast::Hasher::new();
        // Sized to the file (one byte more, to notice a reader that has more than it
        // announced), so packing many small files does not zero a MiB each.
        let mut buf = vec![0u8; size.saturating_add(1).min(1 << 20) as usize];
        let mut read = 0u64;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            };
            read += n as u64;
            if read > size {
                break;
            }
            hasher.update(&buf[..n]);
            self.out.write_all(&buf[..n]).map_err(io_err)?;
        }
        if read != size {
            return Err(InstallError::SizeMismatch {
                name: name.to_owned(),
                announced: size,
                read,
            });
        }
        let end = self.out.stream_position().map_err(io_err)?;
        let fixed = file_header(
            name,
            S_IFREG | (mode & 0o7777),
            mtime,
            size,
            hasher.finalize(),
            Entry::File,
        );
        debug_assert_eq!(fixed.len(), header.len());
        self.out.seek(SeekFrom::Start(start)).map_err(io_err)?;
        self.out.write_all(&fixed).map_err(io_err)?;
        self.out.seek(SeekFrom::Start(end)).map_err(io_err)?;
        Ok(())
    }

    /// Stores a directory entry.
    pub fn add_dir(&mut self, name: &str, mode: u32, mtime: u32) -> Result<(), InstallError> {
        self.check(name)?;
        let header = file_header(name, S_IFDIR | (mode & 0o7777), mtime, 0, 0, Entry::Dir);
        self.out.write_all(&header).map_err(io_err)
    }

    /// Stores a link entry: a symlink to `target` as written, or a hard link or file copy
    /// of the earlier entry `target` (whose size is `size`).
    pub fn add_link(
        &mut self,
        name: &str,
        kind: LinkKind,
        target: &str,
        mtime: u32,
        size: u64,
    ) -> Result<(), InstallError> {
        self.check(name)?;
        let (attr, size) = match kind {
            LinkKind::Symlink => (S_IFLNK | 0o777, 0),
            LinkKind::HardLink | LinkKind::FileCopy => (S_IFREG | 0o644, size),
        };
        let header = file_header(name, attr, mtime, size, 0, Entry::Link(kind, target));
        self.out.write_all(&header).map_err(io_err)
    }

    /// Writes the end-of-archive header and returns the output.
    pub fn finish(mut self) -> Result<W, InstallError> {
        if self.finished {
            return Err(InstallError::Finished);
        }
        let mut body = Vec::new();
        put_vint(&mut body, HEAD_END);
        put_vint(&mut body, 0); // header flags
        put_vint(&mut body, 0); // end of archive flags: last volume
        self.out.write_all(&frame_header(&body)).map_err(io_err)?;
        self.out.flush().map_err(io_err)?;
        self.finished = true;
        Ok(self.out)
    }

    fn check(&self, name: &str) -> Result<(), InstallError> {
        if self.finished {
            return Err(InstallError::Finished);
        }
        if name.is_empty() || name.len() > 4096 || name.contains('\0') {
            return Err(InstallError::UnsafeName(name.to_owned()));
        }
        let escapes = name.starts_with('/') || name.split('/').any(|c| c == ".." || c.is_empty());
        if escapes && !self.opts.allow_unsafe_names {
            return Err(InstallError::UnsafeName(name.to_owned()));
        }
        Ok(())
    }
}

/// Packs every regular file and directory under `dir` (sorted, symlinks skipped) into a
/// RAR5 store archive at `out`, keeping modes and mtimes. The archive is written to a
/// temporary name next to `out` and renamed into place when complete.
pub fn pack_dir(dir: &Path, out: &Path) -> Result<PackSummary, InstallError> {
    let tmp = tmp_name(out);
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| InstallError::io(&tmp, e))?;
        let mut w = Rar5Writer::new(BufWriter::with_capacity(1 << 20, file))?;
        let mut summary = PackSummary {
            files: 0,
            dirs: 0,
            links: 0,
            bytes: 0,
        };
        let out_canon = fs::canonicalize(out.parent().unwrap_or(Path::new("."))).ok();
        pack_walk(
            dir,
            "",
            &mut w,
            &mut summary,
            out_canon.map(|p| p.join(file_name(&tmp))),
        )?;
        let buf = w.finish()?;
        let file = buf
            .into_inner()
            .map_err(|e| InstallError::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| InstallError::io(&tmp, e))?;
        fs::rename(&tmp, out).map_err(|e| InstallError::io(out, e))?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn pack_walk<W: Write + Seek>(
    dir: &Path,
    prefix: &str,
    w: &mut Rar5Writer<W>,
    summary: &mut PackSummary,
    skip: Option<PathBuf>,
) -> Result<(), InstallError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| InstallError::io(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| InstallError::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(InstallError::UnsafeName(path.display().to_string()));
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs::symlink_metadata(&path).map_err(|e| InstallError::io(&path, e))?;
        let mode = meta.permissions().mode();
        let mtime = u32::try_from(meta.mtime().max(0)).unwrap_or(u32::MAX);
        if meta.is_dir() {
            w.add_dir(&rel, mode, mtime)?;
            summary.dirs += 1;
            pack_walk(&path, &rel, w, summary, skip.clone())?;
        } else if meta.is_file() {
            // Never pack the archive being written into itself.
            if skip
                .as_deref()
                .is_some_and(|s| fs::canonicalize(&path).ok().as_deref() == Some(s))
            {
                continue;
            }
            let f = File::open(&path).map_err(|e| InstallError::io(&path, e))?;
            w.add_file(&rel, mode, mtime, meta.len(), f)?;
            summary.files += 1;
            summary.bytes += meta.len();
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(|e| InstallError::io(&path, e))?;
            let Some(target) = target.to_str() else {
                return Err(InstallError::UnsafeName(path.display().to_string()));
            };
            w.add_link(&rel, LinkKind::Symlink, target, mtime, 0)?;
            summary.links += 1;
        } else {
            // A FIFO, socket or device: nothing a game ships, and nothing to leave out silently.
            return Err(InstallError::io(
                &path,
                io::Error::new(io::ErrorKind::Unsupported, "not a file, folder or symlink"),
            ));
        }
    }
    Ok(())
}

fn tmp_name(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    out.with_file_name(name)
}

fn file_name(p: &Path) -> PathBuf {
    PathBuf::from(p.file_name().unwrap_or_default())
}

fn io_err(e: io::Error) -> InstallError {
    InstallError::io(PathBuf::new(), e)
}

/// Builds a complete file header (CRC, size, body) for one entry. Every entry declares a
/// data area, empty for folders and links, as WinRAR writes them (libarchive refuses a
/// folder header without one: "no data found in file/service block").
fn file_header(name: &str, attr: u32, mtime: u32, size: u64, crc: u32, kind: Entry<'_>) -> Vec<u8> {
    let dir = matches!(kind, Entry::Dir);
    let extra = match kind {
        Entry::Link(link, target) => redirect_record(link, target),
        _ => Vec::new(),
    };
    let stored = if matches!(kind, Entry::File) { size } else { 0 };
    let mut body = Vec::with_capacity(64 + name.len() + extra.len());
    put_vint(&mut body, HEAD_FILE);
    if extra.is_empty() {
        put_vint(&mut body, HFL_DATA);
    } else {
        put_vint(&mut body, HFL_DATA | HFL_EXTRA);
        put_vint(&mut body, extra.len() as u64);
    }
    put_vint(&mut body, stored); // data size: stored, so packed == unpacked
    let mut flags = FHFL_UTIME;
    if dir {
        flags |= FHFL_DIRECTORY;
    } else if matches!(kind, Entry::File) {
        flags |= FHFL_CRC32;
    }
    put_vint(&mut body, flags);
    put_vint(&mut body, size); // unpacked size
    put_vint(&mut body, u64::from(attr));
    body.extend_from_slice(&mtime.to_le_bytes());
    if matches!(kind, Entry::File) {
        body.extend_from_slice(&crc.to_le_bytes());
    }
    put_vint(&mut body, COMPRESSION_STORE);
    put_vint(&mut body, HOST_UNIX);
    put_vint(&mut body, name.len() as u64);
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(&extra);
    frame_header(&body)
}

/// What a file header describes.
#[derive(Clone, Copy)]
enum Entry<'a> {
    File,
    Dir,
    Link(LinkKind, &'a str),
}

/// A file system redirection record (extra record type 5): link type, flags, target.
fn redirect_record(kind: LinkKind, target: &str) -> Vec<u8> {
    let mut rec = Vec::with_capacity(8 + target.len());
    put_vint(&mut rec, EXTRA_REDIR);
    put_vint(&mut rec, kind as u64);
    put_vint(&mut rec, 0); // flags: target is not a directory
    put_vint(&mut rec, target.len() as u64);
    rec.extend_from_slice(target.as_bytes());
    let mut out = Vec::with_capacity(rec.len() + 2);
    put_vint(&mut out, rec.len() as u64);
    out.extend_from_slice(&rec);
    out
}

/// Prefixes a header body with its size (vint) and the CRC32 of size + body.
fn frame_header(body: &[u8]) -> Vec<u8> {
    let mut sized = Vec::with_capacity(body.len() + 10);
    put_vint(&mut sized, body.len() as u64);
    sized.extend_from_slice(body);
    let crc = crc32fast::hash(&sized);
    let mut out = Vec::with_capacity(sized.len() + 4);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&sized);
    out
}

/// RAR5 variable-length integer: 7 data bits per byte, low bits first, high bit = more.
fn put_vint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests;
