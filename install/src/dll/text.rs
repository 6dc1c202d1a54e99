//! Text across UnRAR's DLL interface: its wide (UTF-32) strings, and the UTF-8 thread
//! locale its multibyte conversions need.

use libc::wchar_t;

use super::VOLUME_NAME_MAX;

/// A NUL-terminated UTF-32 string, with UTF-16 surrogate pairs (which RAR 4's Unicode
/// name encoding stores for characters outside the BMP) joined. `None` when it is not
/// valid Unicode.
pub(super) fn from_wide(units: &[wchar_t]) -> Option<String> {
    let end = units.iter().position(|&c| c == 0).unwrap_or(units.len());
    let mut out = String::with_capacity(end);
    let mut i = 0;
    while i < end {
        let c = units[i] as u32;
        i += 1;
        if (0xD800..0xDC00).contains(&c) {
            let low = units
                .get(i)
                .map(|&u| u as u32)
                .filter(|u| (0xDC00..0xE000).contains(u))?;
            i += 1;
            out.push(char::from_u32(
                0x10000 + ((c - 0xD800) << 10) + (low - 0xDC00),
            )?);
        } else {
            out.push(char::from_u32(c)?);
        }
    }
    Some(out)
}

/// # Safety
/// `p` must point to a NUL-terminated wide string.
pub(super) unsafe fn wide_cstr(p: *const wchar_t) -> String {
    let mut len = 0;
    // SAFETY: the caller promises a terminating NUL.
    while unsafe { *p.add(len) } != 0 && len < VOLUME_NAME_MAX {
        len += 1;
    }
    // SAFETY: `len` characters were just read.
    let units = unsafe { std::slice::from_raw_parts(p, len) };
    from_wide(units).unwrap_or_else(|| "\u{FFFD}".to_owned())
}

pub(super) fn to_wide(s: &str) -> Vec<wchar_t> {
    s.chars().map(|c| c as wchar_t).chain([0]).collect()
}

/// Sets a UTF-8 `LC_CTYPE` for this thread while it lives, so that UnRAR's multibyte
/// conversions (RAR 4 names without Unicode data, link targets) decode UTF-8 whatever the
/// process locale is (a daemon started by systemd runs in the C locale).
pub(super) struct Utf8Locale {
    old: libc::locale_t,
    new: libc::locale_t,
}

impl Utf8Locale {
    pub(super) fn set() -> Option<Self> {
        for name in [c"C.UTF-8", c"C.utf8", c"en_US.UTF-8"] {
            // SAFETY: `name` is a valid C string; a null base asks for a new object.
            let new = unsafe {
                libc::newlocale(libc::LC_CTYPE_MASK, name.as_ptr(), std::ptr::null_mut())
            };
            if !new.is_null() {
                // SAFETY: `new` is a valid locale object; uselocale only affects this thread.
                let old = unsafe { libc::uselocale(new) };
                return Some(Self { old, new });
            }
        }
        None
    }
}

impl Drop for Utf8Locale {
    fn drop(&mut self) {
        // SAFETY: restores the thread's previous locale, then frees ours (no longer in use).
        unsafe {
            libc::uselocale(self.old);
            libc::freelocale(self.new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_names_join_surrogate_pairs_and_refuse_lone_ones() {
        let s: Vec<wchar_t> = "a𝄞b".chars().map(|c| c as wchar_t).chain([0]).collect();
        assert_eq!(from_wide(&s).as_deref(), Some("a𝄞b"));
        // 𝄞 as RAR 4 stores it: a UTF-16 surrogate pair.
        let pair = [0x61, 0xD834, 0xDD1E, 0x62, 0];
        assert_eq!(from_wide(&pair).as_deref(), Some("a𝄞b"));
        assert_eq!(from_wide(&[0x61, 0xD834, 0x62, 0]), None);
        assert_eq!(from_wide(&[0xDD1E, 0]), None);
        assert_eq!(from_wide(&[0x11_0000, 0]), None);
    }
}
