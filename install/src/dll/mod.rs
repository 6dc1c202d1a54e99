//! A safe wrapper over UnRAR's DLL interface (`unrar_sys`, UnRAR 7.1 built from source).
//!
//! The install never lets UnRAR create a file: regular files are *tested* (`RAR_TEST`) and
//! their bytes arrive through the `UCM_PROCESSDATA` callback, written by us to a file we
//! opened inside staging; links are read from the header and made by us. The one exception
//! is a RAR 4 Unix symlink, whose target UnRAR keeps in the entry's data and hands out only
//! when extracting: [`Archive::extract_link`] lets UnRAR create that one symlink at a path
//! we chose, and the caller checks the result.
//!
//! Next volumes are never guessed into: UnRAR asks (or tells) through `UCM_CHANGEVOLUMEW`,
//! and the callback answers with the set's own next `.eti` file or stops the archive.
//!
//! `unrar_sys` declares `RARHeaderDataEx` and `RAROpenArchiveDataEx` without the
//! `#pragma pack(1)` of `dll.hpp`, so every field after the first pointer sits at the
//! wrong offset there; the structs below are laid out as UnRAR's header declares them.

use std::ffi::{c_char, c_int, c_long, c_uint};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libc::wchar_t;

mod text;

use text::{from_wide, to_wide, wide_cstr, Utf8Locale};

/// `RAROpenArchiveDataEx` as `dll.hpp` lays it out (packed).
#[repr(C, packed)]
struct OpenData {
    arc_name: *const c_char,
    arc_name_w: *const wchar_t,
    open_mode: c_uint,
    open_result: c_uint,
    cmt_buf: *mut c_char,
    cmt_buf_size: c_uint,
    cmt_size: c_uint,
    cmt_state: c_uint,
    flags: c_uint,
    callback: Option<unrar_sys::Callback>,
    user_data: c_long,
    op_flags: c_uint,
    cmt_buf_w: *mut wchar_t,
    reserved: [c_uint; 25],
}

/// `RARHeaderDataEx` as `dll.hpp` lays it out (packed).
#[repr(C, packed)]
struct HeaderData {
    arc_name: [c_char; 1024],
    arc_name_w: [wchar_t; 1024],
    file_name: [c_char; 1024],
    file_name_w: [wchar_t; 1024],
    flags: c_uint,
    pack_size: c_uint,
    pack_size_high: c_uint,
    unp_size: c_uint,
    unp_size_high: c_uint,
    host_os: c_uint,
    file_crc: c_uint,
    file_time: c_uint,
    unp_ver: c_uint,
    method: c_uint,
    file_attr: c_uint,
    cmt_buf: *mut c_char,
    cmt_buf_size: c_uint,
    cmt_size: c_uint,
    cmt_state: c_uint,
    dict_size: c_uint,
    hash_type: c_uint,
    hash: [c_char; 32],
    redir_type: c_uint,
    redir_name: *mut wchar_t,
    redir_name_size: c_uint,
    dir_target: c_uint,
    mtime_low: c_uint,
    mtime_high: c_uint,
    ctime_low: c_uint,
    ctime_high: c_uint,
    atime_low: c_uint,
    atime_high: c_uint,
    arc_name_ex: *mut wchar_t,
    arc_name_ex_size: c_uint,
    file_name_ex: *mut wchar_t,
    file_name_ex_size: c_uint,
    reserved: [c_uint; 982],
}

const _: () = assert!(std::mem::size_of::<OpenData>() == 176);
const _: () = assert!(std::mem::size_of::<HeaderData>() == 14340);

/// Longest entry or link name we take (UnRAR's own limit is 2048 for RAR5 names).
const NAME_MAX: usize = 8192;
/// The change-volume buffer UnRAR passes holds `MAXPATHSIZE` (0x10000) wide characters.
const VOLUME_NAME_MAX: usize = 0x10000 - 1;
/// RAR 5's file header flag bit for directories, as the DLL reports it.
const RHDF_DIRECTORY: c_uint = 0x20;
const RHDF_ENCRYPTED: c_uint = 0x04;
/// UnRAR's redirection types (`FSREDIR_*`).
const FSREDIR_UNIXSYMLINK: c_uint = 1;
const FSREDIR_WINSYMLINK: c_uint = 2;
const FSREDIR_JUNCTION: c_uint = 3;
const FSREDIR_HARDLINK: c_uint = 4;
const FSREDIR_FILECOPY: c_uint = 5;
const UCM_LARGEDICT: c_uint = 5;

/// What an entry is besides plain data, from its redirection record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Redirect {
    /// A regular file or directory.
    None,
    /// A symbolic link (Unix or Windows) or a Windows junction, with its target as
    /// stored (Windows separators turned into `/`). `None` for a RAR 4 Unix link, whose
    /// target is only in its data.
    Symlink(Option<String>),
    /// A hard link to an earlier entry.
    HardLink(String),
    /// A copy of an earlier entry.
    FileCopy(String),
    /// A redirection type this build does not know.
    Unknown(u32),
}

/// One entry header, decoded.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    /// The name as stored, `/`-separated as UnRAR gives it on Unix.
    pub name: String,
    pub is_dir: bool,
    pub encrypted: bool,
    pub unp_size: u64,
    /// Unix mode bits when the archive was made on Unix (`None` for Windows-made ones,
    /// whose attributes say nothing of modes).
    pub unix_mode: Option<u32>,
    pub redirect: Redirect,
    pub mtime: Option<SystemTime>,
}

/// Archive-wide facts from opening it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenFlags {
    pub encrypted_headers: bool,
}

/// How an archive is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Headers only, each split entry once.
    List,
    /// Headers and data.
    Extract,
}

/// What the callback records while UnRAR runs.
struct Ctx {
    /// The set's volumes in order; index 0 is the one opened.
    volumes: Vec<PathBuf>,
    /// The volume UnRAR must open next.
    next: usize,
    /// Set once we answered an `ASK` for `next` (a second ask means it did not open).
    asked: bool,
    /// Where `UCM_PROCESSDATA` bytes go, and how many went.
    sink: Option<fs::File>,
    written: u64,
    /// The most bytes the entry may write (its header's size): a header that lies small
    /// cannot get past the free-space check with more.
    limit: u64,
    /// Why the callback stopped UnRAR, when it did.
    failure: Option<String>,
    /// The output's error when writing it stopped UnRAR (a full disk is no bad archive).
    write_error: Option<std::io::Error>,
    password_asked: bool,
    /// Set from outside to stop UnRAR mid-entry.
    stop: Option<Arc<AtomicBool>>,
}

impl Ctx {
    fn on(&mut self, msg: c_uint, p1: c_long, p2: c_long) -> c_int {
        match msg {
            unrar_sys::UCM_CHANGEVOLUMEW => self.change_volume(p1 as *mut wchar_t, p2),
            // The ANSI twin of a notice already answered in wide form; an ANSI *ask* comes
            // only after the wide one was refused.
            unrar_sys::UCM_CHANGEVOLUME if p2 == unrar_sys::RAR_VOL_NOTIFY => 1,
            unrar_sys::UCM_CHANGEVOLUME => -1,
            unrar_sys::UCM_PROCESSDATA => {
                let Ok(len) = usize::try_from(p2) else {
                    return -1;
                };
                // SAFETY: UnRAR passes a buffer of `len` bytes valid for this call.
                let data = unsafe { std::slice::from_raw_parts(p1 as *const u8, len) };
                if self
                    .stop
                    .as_ref()
                    .is_some_and(|s| s.load(Ordering::Relaxed))
                {
                    self.failure = Some("cancelled".into());
                    return -1;
                }
                let Some(sink) = self.sink.as_mut() else {
                    return 1;
                };
                if self.written.saturating_add(len as u64) > self.limit {
                    self.failure = Some(format!(
                        "more data than the {} bytes its header says",
                        self.limit
                    ));
                    return -1;
                }
                match sink.write_all(data) {
                    Ok(()) => {
                        self.written += len as u64;
                        1
                    }
                    Err(e) => {
                        self.failure = Some(format!("writing: {e}"));
                        self.write_error = Some(e);
                        -1
                    }
                }
            }
            unrar_sys::UCM_NEEDPASSWORD | unrar_sys::UCM_NEEDPASSWORDW => {
                self.password_asked = true;
                -1
            }
            // A dictionary larger than UnRAR's default limit: let it use the memory.
            UCM_LARGEDICT => 1,
            _ => 0,
        }
    }

    fn change_volume(&mut self, buf: *mut wchar_t, mode: c_long) -> c_int {
        // SAFETY: UnRAR passes a NUL-terminated buffer of MAXPATHSIZE wide characters.
        let asked_for = unsafe { wide_cstr(buf) };
        // Messages name volumes by file name: UnRAR may open them by other paths (the
        // install's links to the open files), and the caller names the archive.
        let name = |p: &Path| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        let Some(expected) = self.volumes.get(self.next).cloned() else {
            self.failure = Some(format!(
                "the set continues past its last volume {} (UnRAR looks for {})",
                self.volumes.last().map(|p| name(p)).unwrap_or_default(),
                name(Path::new(&asked_for)),
            ));
            return -1;
        };
        if mode == unrar_sys::RAR_VOL_NOTIFY {
            if Path::new(&asked_for) != expected {
                self.failure = Some(format!(
                    "UnRAR opened {} as the next volume, but the set's next volume is {}",
                    name(Path::new(&asked_for)),
                    name(&expected)
                ));
                return -1;
            }
            self.next += 1;
            self.asked = false;
            return 1;
        }
        if self.asked {
            self.failure = Some(format!("volume {} could not be opened", name(&expected)));
            return -1;
        }
        let Some(wide) = expected.to_str().map(to_wide) else {
            self.failure = Some(format!(
                "volume {} has a name that is not UTF-8",
                name(&expected)
            ));
            return -1;
        };
        if wide.len() > VOLUME_NAME_MAX {
            self.failure = Some(format!("volume {} has too long a path", name(&expected)));
            return -1;
        }
        // SAFETY: `wide` (NUL included) fits the MAXPATHSIZE buffer, checked above.
        unsafe { std::ptr::copy_nonoverlapping(wide.as_ptr(), buf, wide.len()) };
        self.asked = true;
        1
    }
}

extern "C" fn callback(msg: c_uint, user: c_long, p1: c_long, p2: c_long) -> c_int {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `user` is the `Ctx` box of the open `Archive`, alive while UnRAR runs.
        let ctx = unsafe { &mut *(user as *mut Ctx) };
        ctx.on(msg, p1, p2)
    }))
    .unwrap_or(-1)
}

/// UnRAR's error codes, in words.
fn describe(code: c_int) -> &'static str {
    match code {
        unrar_sys::ERAR_NO_MEMORY => "not enough memory",
        unrar_sys::ERAR_BAD_DATA => "damaged data (checksum error or truncated)",
        unrar_sys::ERAR_BAD_ARCHIVE => "not a valid RAR archive",
        unrar_sys::ERAR_UNKNOWN_FORMAT => "unknown archive format",
        unrar_sys::ERAR_EOPEN => "cannot open the archive or its next volume",
        unrar_sys::ERAR_ECREATE => "cannot create the output",
        unrar_sys::ERAR_ECLOSE => "cannot close the output",
        unrar_sys::ERAR_EREAD => "read error",
        unrar_sys::ERAR_EWRITE => "write error",
        unrar_sys::ERAR_SMALL_BUF => "buffer too small",
        unrar_sys::ERAR_MISSING_PASSWORD | unrar_sys::ERAR_BAD_PASSWORD => {
            "encrypted (lanspread cannot install password-protected archives)"
        }
        unrar_sys::ERAR_EREFERENCE => "a file reference points to a missing entry",
        _ => "unknown UnRAR error",
    }
}

/// An open archive (or volume set, read from its first volume).
pub(crate) struct Archive {
    handle: *const unrar_sys::Handle,
    ctx: Box<Ctx>,
    header: Box<HeaderData>,
    name_buf: Vec<wchar_t>,
    redir_buf: Vec<wchar_t>,
    /// Open archive-wide facts.
    pub flags: OpenFlags,
    _locale: Option<Utf8Locale>,
}

/// An UnRAR failure, in words, with the callback's reason when it stopped UnRAR.
#[derive(Debug)]
pub(crate) struct DllError(pub String);

impl DllError {
    /// The failure is a password UnRAR asked for or refused.
    pub fn is_encrypted(&self) -> bool {
        self.0 == describe(unrar_sys::ERAR_MISSING_PASSWORD)
    }
}

impl Archive {
    /// Opens `volumes[0]`; the others are handed to UnRAR in order when it asks.
    pub fn open(volumes: &[PathBuf], mode: Mode) -> Result<Self, DllError> {
        let locale = Utf8Locale::set();
        let path = volumes
            .first()
            .ok_or_else(|| DllError("no volume to open".into()))?;
        let name = path
            .to_str()
            .ok_or_else(|| DllError("the archive path is not UTF-8".into()))?;
        let wide = to_wide(name);
        let mut ctx = Box::new(Ctx {
            volumes: volumes.to_vec(),
            next: 1,
            asked: false,
            sink: None,
            written: 0,
            limit: 0,
            failure: None,
            write_error: None,
            password_asked: false,
            stop: None,
        });
        // SAFETY: all-zero is a valid `OpenData` (null pointers, no callback, zero ints).
        let mut data: OpenData = unsafe { std::mem::zeroed() };
        data.arc_name_w = wide.as_ptr();
        data.open_mode = match mode {
            Mode::List => unrar_sys::RAR_OM_LIST,
            Mode::Extract => unrar_sys::RAR_OM_EXTRACT,
        };
        data.callback = Some(callback);
        data.user_data = &mut *ctx as *mut Ctx as c_long;
        // SAFETY: `data` is laid out as UnRAR declares it and lives across the call; the
        // callback's user data (the boxed ctx) outlives the handle (closed in Drop first).
        let handle = unsafe {
            unrar_sys::RAROpenArchiveEx(
                &mut data as *mut OpenData as *const unrar_sys::OpenArchiveDataEx,
            )
        };
        let result = data.open_result as c_int;
        if handle.is_null() || result != 0 {
            if !handle.is_null() {
                // SAFETY: a handle UnRAR returned, closed once.
                unsafe { unrar_sys::RARCloseArchive(handle) };
            }
            return Err(DllError(describe(result).to_owned()));
        }
        let flags = OpenFlags {
            encrypted_headers: data.flags & unrar_sys::ROADF_ENCHEADERS != 0,
        };
        // SAFETY: all-zero is a valid `HeaderData`.
        let header: Box<HeaderData> = Box::new(unsafe { std::mem::zeroed() });
        Ok(Self {
            handle,
            ctx,
            header,
            name_buf: vec![0; NAME_MAX],
            redir_buf: vec![0; NAME_MAX],
            flags,
            _locale: locale,
        })
    }

    fn fail(&mut self, code: c_int) -> DllError {
        if let Some(why) = self.ctx.failure.take() {
            return DllError(why);
        }
        if self.ctx.password_asked {
            return DllError(describe(unrar_sys::ERAR_MISSING_PASSWORD).to_owned());
        }
        DllError(describe(code).to_owned())
    }

    /// The next entry, or `None` at the end of the archive (or set).
    pub fn next_header(&mut self) -> Result<Option<Header>, DllError> {
        let h = &mut *self.header;
        h.redir_name = self.redir_buf.as_mut_ptr();
        h.redir_name_size = NAME_MAX as c_uint;
        h.file_name_ex = self.name_buf.as_mut_ptr();
        h.file_name_ex_size = NAME_MAX as c_uint;
        // UnRAR writes NUL-terminated names; clearing the first unit is enough for an entry
        // without a redirection name.
        self.name_buf[0] = 0;
        self.redir_buf[0] = 0;
        // SAFETY: the header struct is laid out as UnRAR declares it; its name buffers are
        // our vectors of the sizes given, alive across the call.
        let code = unsafe {
            unrar_sys::RARReadHeaderEx(
                self.handle,
                &mut *self.header as *mut HeaderData as *const unrar_sys::HeaderDataEx,
            )
        };
        if code == unrar_sys::ERAR_END_ARCHIVE {
            return match self.ctx.failure.take() {
                Some(why) => Err(DllError(why)),
                None => Ok(None),
            };
        }
        if code != 0 {
            return Err(self.fail(code));
        }
        let h = &*self.header;
        let name = from_wide(&self.name_buf)
            .ok_or_else(|| DllError("an entry name is not valid Unicode".into()))?;
        let redir_type = h.redir_type;
        let target = || from_wide(&self.redir_buf).filter(|t| !t.is_empty());
        let redirect = match redir_type {
            0 => Redirect::None,
            FSREDIR_UNIXSYMLINK => Redirect::Symlink(target()),
            FSREDIR_WINSYMLINK | FSREDIR_JUNCTION => {
                Redirect::Symlink(Some(target().unwrap_or_default().replace('\\', "/")))
            }
            FSREDIR_HARDLINK => Redirect::HardLink(target().unwrap_or_default()),
            FSREDIR_FILECOPY => Redirect::FileCopy(target().unwrap_or_default()),
            other => Redirect::Unknown(other),
        };
        let flags = h.flags;
        let attr = h.file_attr;
        let unix = h.host_os == 3;
        let mtime = (u64::from(h.mtime_high) << 32) | u64::from(h.mtime_low);
        Ok(Some(Header {
            name,
            is_dir: flags & RHDF_DIRECTORY != 0,
            encrypted: flags & RHDF_ENCRYPTED != 0,
            unp_size: (u64::from(h.unp_size_high) << 32) | u64::from(h.unp_size),
            unix_mode: unix.then_some(attr),
            redirect,
            mtime: from_filetime(mtime),
        }))
    }

    fn process(&mut self, op: c_int, dest: Option<&[wchar_t]>) -> Result<(), DllError> {
        let dest_ptr = dest.map_or(std::ptr::null(), |d| d.as_ptr());
        // SAFETY: an open handle; `dest_ptr` is null or a NUL-terminated wide string alive
        // across the call.
        let code =
            unsafe { unrar_sys::RARProcessFileW(self.handle, op, std::ptr::null(), dest_ptr) };
        if code != 0 {
            return Err(self.fail(code));
        }
        if let Some(why) = self.ctx.failure.take() {
            return Err(DllError(why));
        }
        Ok(())
    }

    /// Moves past the current entry without reading its data.
    pub fn skip(&mut self) -> Result<(), DllError> {
        self.process(unrar_sys::RAR_SKIP, None)
    }

    /// Unpacks the current entry into `out` (checking its checksum), at most `limit`
    /// bytes (its header's size: more fails), returning the file and how many bytes were
    /// written. When writing `out` failed, the error is [`Archive::take_write_error`]'s.
    pub fn unpack_into(&mut self, out: fs::File, limit: u64) -> Result<(fs::File, u64), DllError> {
        self.ctx.sink = Some(out);
        self.ctx.written = 0;
        self.ctx.limit = limit;
        self.ctx.write_error = None;
        let res = self.process(unrar_sys::RAR_TEST, None);
        let out = self.ctx.sink.take();
        res?;
        let out = out.ok_or_else(|| DllError("output lost".into()))?;
        Ok((out, self.ctx.written))
    }

    /// The error writing the output of the last [`Archive::unpack_into`] stopped at, if
    /// that is what stopped it.
    pub fn take_write_error(&mut self) -> Option<std::io::Error> {
        self.ctx.write_error.take()
    }

    /// Verifies the current entry's data without writing it anywhere.
    pub fn test(&mut self) -> Result<(), DllError> {
        self.ctx.sink = None;
        self.process(unrar_sys::RAR_TEST, None)
    }

    /// Lets UnRAR create the current entry (a RAR 4 symlink) at exactly `dest`.
    pub fn extract_link(&mut self, dest: &Path) -> Result<(), DllError> {
        let wide = dest
            .to_str()
            .map(to_wide)
            .ok_or_else(|| DllError("the destination path is not UTF-8".into()))?;
        self.ctx.sink = None;
        self.process(unrar_sys::RAR_EXTRACT, Some(&wide))
    }

    /// Makes UnRAR stop within one output block once `stop` is set.
    pub fn stop_when(&mut self, stop: Arc<AtomicBool>) {
        self.ctx.stop = Some(stop);
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by `open` and is closed exactly once, before the
        // ctx box it calls back into is freed.
        unsafe { unrar_sys::RARCloseArchive(self.handle) };
    }
}

/// A Windows FILETIME (100 ns since 1601) as a time, when it is set.
fn from_filetime(ft: u64) -> Option<SystemTime> {
    const UNIX_EPOCH_FT: u64 = 116_444_736_000_000_000;
    if ft == 0 {
        return None;
    }
    let since = ft.checked_sub(UNIX_EPOCH_FT)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_nanos(since.saturating_mul(100)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_is_the_outputs_error_not_the_archives() {
        // libarchive's test archive (RAR 4); /dev/full fails every write with ENOSPC.
        let rar = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/rar/libarchive/test_read_format_rar_compress_best.rar");
        let mut arc = Archive::open(&[rar], Mode::Extract).unwrap();
        while let Some(h) = arc.next_header().unwrap() {
            if h.is_dir || h.unp_size == 0 {
                arc.skip().unwrap();
                continue;
            }
            let full = fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap();
            assert!(arc.unpack_into(full, h.unp_size).is_err());
            let e = arc.take_write_error().expect("the write's error");
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            return;
        }
        panic!("no file in the archive");
    }

    /// An entry that unpacks to more than its header's size is stopped there: the
    /// free-space check, made from the headers, holds.
    #[test]
    fn an_entry_writes_no_more_than_its_header_says() {
        let rar = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/rar/libarchive/test_read_format_rar_compress_best.rar");
        let mut arc = Archive::open(&[rar], Mode::Extract).unwrap();
        let dir = tempfile::tempdir().unwrap();
        while let Some(h) = arc.next_header().unwrap() {
            if h.is_dir || h.unp_size < 2 {
                arc.skip().unwrap();
                continue;
            }
            let out = fs::File::create(dir.path().join("out")).unwrap();
            let e = arc.unpack_into(out, h.unp_size / 2).unwrap_err();
            assert!(e.0.contains("its header says"), "{}", e.0);
            assert!(
                arc.take_write_error().is_none(),
                "the archive's fault, not the disk's"
            );
            let written = fs::metadata(dir.path().join("out")).unwrap().len();
            assert!(written <= h.unp_size / 2, "{written} of {}", h.unp_size);
            return;
        }
        panic!("no file in the archive");
    }

    #[test]
    fn filetime_converts_and_zero_means_unset() {
        assert_eq!(from_filetime(0), None);
        let t = from_filetime(116_444_736_000_000_000 + 10_000_000).unwrap();
        assert_eq!(t, SystemTime::UNIX_EPOCH + Duration::from_secs(1));
    }
}
