//! Volume sets among a root's archives: what each `.eti` file says about itself in its RAR
//! headers ([`probe`]: volume flag, first-volume flag, volume number, whether more volumes
//! follow), and how the files group into sets and order within them ([`plan_sets`], pure).
//!
//! Names are only a fallback: a set is recognised and ordered from its headers, so volumes
//! renamed to `.eti` in either naming scheme (`name.partNN.rar` or `name.rar, name.r00 …`)
//! install, and a gap or a missing last volume is found before anything is extracted.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};

/// What an archive's headers say about it as a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct VolumeInfo {
    /// Part of a multi-volume set.
    pub volume: bool,
    /// `Some(true)` for a set's first volume, `Some(false)` for a later one, `None` when the
    /// headers do not say (RAR 2.x).
    pub first: Option<bool>,
    /// Zero-based position in the set, when recorded (RAR 5 main header, RAR 3+ end block).
    pub number: Option<u32>,
    /// Whether the end block says another volume follows, when it could be read.
    pub more: Option<bool>,
    /// File headers that start an entry here (continuations of an entry from the previous
    /// volume not counted): a second count, by a reader other than UnRAR, of what the
    /// listing must show — exact when `walked`, a lower bound otherwise.
    pub entries: u32,
    /// Every header up to the end block (or a clean end of file) was walked.
    pub walked: bool,
    /// Whether a RAR 5 entry name is not UTF-8: UnRAR cuts such a name at its first bad
    /// byte, so the entry would land under another name (two such names, under one).
    pub bad_name: bool,
}

const RAR4_SIG: &[u8] = b"Rar!\x1a\x07\x00";
const RAR5_SIG: &[u8] = b"Rar!\x1a\x07\x01\x00";
/// How far into a file a signature is looked for (self-extracting archives).
const SFX_MAX: usize = 1 << 20;
/// Headers read before giving up on finding the end block.
const MAX_BLOCKS: usize = 1 << 20;

/// Reads the volume facts of one archive. `Ok(None)`: no RAR signature in the first MiB
/// (UnRAR will say what it is); headers that cannot be walked (encrypted, damaged) leave
/// `number`/`more` unknown rather than failing.
pub(crate) fn probe<R: Read + Seek>(r: &mut R) -> io::Result<Option<VolumeInfo>> {
    let len = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    // The signature is at the start of any archive but a self-extracting one: only then is
    // the first MiB searched (a set of 100 volumes is not read 100 MiB deep to be grouped).
    let mut head = vec![0u8; RAR5_SIG.len()];
    let got = read_full(r, &mut head)?;
    head.truncate(got);
    if !head.starts_with(RAR5_SIG) && !head.starts_with(RAR4_SIG) {
        r.by_ref().take(SFX_MAX as u64).read_to_end(&mut head)?;
    }
    let find = |sig: &[u8]| head.windows(sig.len()).position(|w| w == sig);
    let (pos, v5) = match (find(RAR5_SIG), find(RAR4_SIG)) {
        (Some(a), Some(b)) if b < a => (b, false),
        (Some(a), _) => (a, true),
        (None, Some(b)) => (b, false),
        (None, None) => return Ok(None),
    };
    if v5 {
        r.seek(SeekFrom::Start((pos + RAR5_SIG.len()) as u64))?;
        // A name found bad stays found when a later header cannot be walked.
        let mut bad_name = false;
        let mut info = rar5(r, len, &mut bad_name).unwrap_or_default();
        info.bad_name = bad_name;
        Ok(Some(info))
    } else {
        r.seek(SeekFrom::Start((pos + RAR4_SIG.len()) as u64))?;
        Ok(Some(rar4(r, len).unwrap_or_default()))
    }
}

/// Reads until `buf` is full or the input ends; the count read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// RAR 1.5–4.x: main header flags, then the block chain up to the end block.
fn rar4<R: Read + Seek>(r: &mut R, len: u64) -> Option<VolumeInfo> {
    const MAIN: u8 = 0x73;
    const ENDARC: u8 = 0x7b;
    const MHD_VOLUME: u16 = 0x0001;
    const MHD_PASSWORD: u16 = 0x0080;
    const MHD_FIRSTVOLUME: u16 = 0x0100;
    const LONG_BLOCK: u16 = 0x8000;
    const FILE: u8 = 0x74;
    const LHD_SPLIT_BEFORE: u16 = 0x0001;
    let mut info = VolumeInfo::default();
    for _ in 0..MAX_BLOCKS {
        let start = r.stream_position().ok()?;
        let mut base = [0u8; 7];
        let got = read_full(r, &mut base).ok()?;
        if got == 0 {
            // A clean end without an end block (RAR 2.x): every header was walked.
            info.walked = true;
            return Some(info);
        }
        if got < base.len() {
            return Some(info);
        }
        let (kind, flags, size) = (base[2], u16le(&base, 3)?, u16le(&base, 5)?);
        if size < 7 {
            return Some(info);
        }
        let mut rest = vec![0u8; usize::from(size) - 7];
        r.read_exact(&mut rest).ok()?;
        let block = [&base[..], &rest[..]].concat();
        match kind {
            MAIN => {
                info.volume = flags & MHD_VOLUME != 0;
                if flags & MHD_FIRSTVOLUME != 0 {
                    info.first = Some(true);
                }
                if flags & MHD_PASSWORD != 0 {
                    return Some(info);
                }
            }
            FILE if flags & LHD_SPLIT_BEFORE == 0 => info.entries += 1,
            ENDARC => {
                info.walked = true;
                const NEXT_VOLUME: u16 = 0x0001;
                const DATACRC: u16 = 0x0002;
                const VOLNUMBER: u16 = 0x0008;
                info.more = Some(flags & NEXT_VOLUME != 0);
                if flags & VOLNUMBER != 0 {
                    let at = 7 + if flags & DATACRC != 0 { 4 } else { 0 };
                    let n = u32::from(u16le(&block, at)?);
                    info.number = Some(n);
                    info.first = Some(info.first == Some(true) || n == 0);
                }
                return Some(info);
            }
            _ => {}
        }
        // File and service headers always carry their packed size (UnRAR reads it with
        // or without LONG_BLOCK), and its high 32 bits with LHD_LARGE.
        let sized = kind == FILE || kind == 0x7a;
        let mut data = 0u64;
        if flags & LONG_BLOCK != 0 || sized {
            data = u64::from(u32le(&block, 7)?);
            if sized && flags & 0x0100 != 0 {
                data |= u64::from(u32le(&block, 32)?) << 32;
            }
        }
        // Sizes from the file: checked, a wrapped sum would seek backwards.
        let next = start
            .checked_add(u64::from(size))
            .and_then(|n| n.checked_add(data));
        let Some(next) = next.filter(|&n| n <= len) else {
            return Some(info); // the data runs past the end: cut short
        };
        r.seek(SeekFrom::Start(next)).ok()?;
    }
    Some(info)
}

/// The name bytes of a RAR 5 file header, from its file flags on.
fn rar5_name(b: &[u8]) -> Option<&[u8]> {
    const HAS_MTIME: u64 = 0x0002;
    const HAS_CRC: u64 = 0x0004;
    let mut p = 0;
    let file_flags = vint(b, &mut p)?;
    vint(b, &mut p)?; // unpacked size
    vint(b, &mut p)?; // attributes
    if file_flags & HAS_MTIME != 0 {
        p += 4;
    }
    if file_flags & HAS_CRC != 0 {
        p += 4;
    }
    vint(b, &mut p)?; // compression
    vint(b, &mut p)?; // host OS
    let len = usize::try_from(vint(b, &mut p)?).ok()?;
    b.get(p..p.checked_add(len)?)
}

fn vint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// RAR 5: the main header (volume flags and number), then the header chain up to the end
/// of archive header.
fn rar5<R: Read + Seek>(r: &mut R, len: u64, bad_name: &mut bool) -> Option<VolumeInfo> {
    const MAIN: u64 = 1;
    const CRYPT: u64 = 4;
    const END: u64 = 5;
    const FILE: u64 = 2;
    const HFL_SPLIT_BEFORE: u64 = 0x0008;
    let mut info = VolumeInfo::default();
    for _ in 0..MAX_BLOCKS {
        let mut pre = [0u8; 7];
        let start = r.stream_position().ok()?;
        let got = read_full(r, &mut pre).ok()?;
        if got == 0 {
            info.walked = true;
            return Some(info);
        }
        let mut at = 4;
        let size = vint(&pre[..got], &mut at)?;
        if size == 0 || size > 2 * 1024 * 1024 {
            return Some(info);
        }
        let body_start = start + at as u64;
        r.seek(SeekFrom::Start(body_start)).ok()?;
        let mut body = vec![0u8; usize::try_from(size).ok()?];
        r.read_exact(&mut body).ok()?;
        let mut p = 0;
        let kind = vint(&body, &mut p)?;
        let flags = vint(&body, &mut p)?;
        if flags & 0x0001 != 0 {
            vint(&body, &mut p)?; // extra area size
        }
        let data = if flags & 0x0002 != 0 {
            vint(&body, &mut p)?
        } else {
            0
        };
        match kind {
            CRYPT => return Some(info),
            MAIN => {
                let arc = vint(&body, &mut p)?;
                info.volume = arc & 0x0001 != 0;
                let n = if arc & 0x0002 != 0 {
                    vint(&body, &mut p)?
                } else {
                    0
                };
                info.number = Some(u32::try_from(n).ok()?);
                info.first = Some(n == 0);
            }
            FILE => {
                let name = rar5_name(&body[p..]);
                *bad_name |= name.is_some_and(|n| std::str::from_utf8(n).is_err());
                if flags & HFL_SPLIT_BEFORE == 0 {
                    info.entries += 1;
                }
            }
            END => {
                info.walked = true;
                let end = vint(&body, &mut p)?;
                info.more = Some(end & 0x0001 != 0);
                return Some(info);
            }
            _ => {}
        }
        let next = body_start.checked_add(size)?.checked_add(data)?;
        if next > len {
            return Some(info); // the data runs past the end: cut short
        }
        r.seek(SeekFrom::Start(next)).ok()?;
    }
    Some(info)
}

/// One archive of a root: its file name and what its headers say.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub name: String,
    pub info: Option<VolumeInfo>,
}

/// A set to extract: indices into the candidates, first volume first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Set {
    pub members: Vec<usize>,
}

/// A name's stem and the position its name suggests: `x.partN.eti` → (`x`, N−1),
/// `x.rNN.eti` → (`x`, NN+1), `x.sNN.eti` → (`x`, NN+101), `x.eti`/`x.rar.eti` → (`x`, 0).
pub(crate) fn name_position(name: &str) -> (String, u32) {
    let base = name.strip_suffix(".eti").unwrap_or(name);
    if let Some((stem, ext)) = base.rsplit_once('.') {
        let lower = ext.to_ascii_lowercase();
        if let Some(n) = lower
            .strip_prefix("part")
            .and_then(|d| d.parse::<u32>().ok())
        {
            return (stem.to_owned(), n.saturating_sub(1));
        }
        let mut chars = lower.chars();
        if let (Some(letter @ 'r'..='z'), digits) = (chars.next(), chars.as_str()) {
            if digits.len() == 2 && digits.bytes().all(|b| b.is_ascii_digit()) {
                let n: u32 = digits.parse().unwrap_or(0);
                let hundreds = u32::from(letter as u8 - b'r');
                return (stem.to_owned(), hundreds * 100 + n + 1);
            }
        }
        if lower == "rar" {
            return (stem.to_owned(), 0);
        }
    }
    (base.to_owned(), 0)
}

/// Groups the archives into sets and orders each set's volumes. Each archive that is not
/// a volume is a set of its own. Volumes group by name stem; when that leaves a group
/// without a first volume and the root holds exactly one first volume, every volume is
/// taken to belong to it. Within a set the headers' volume numbers give the order (names
/// when a number is missing); the numbers must run 0, 1, 2 … without a gap and the last
/// volume must not announce another.
pub(crate) fn plan_sets(c: &[Candidate]) -> Result<Vec<Set>, String> {
    let mut sets = Vec::new();
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, cand) in c.iter().enumerate() {
        match cand.info {
            Some(info) if info.volume => groups
                .entry(name_position(&cand.name).0)
                .or_default()
                .push(i),
            _ => sets.push(Set { members: vec![i] }),
        }
    }
    let is_first = |i: usize| match c[i].info.and_then(|v| v.first) {
        Some(f) => f,
        None => name_position(&c[i].name).1 == 0,
    };
    let firsts: Vec<usize> = groups
        .values()
        .flatten()
        .copied()
        .filter(|&i| is_first(i))
        .collect();
    let orphaned = groups.values().any(|g| !g.iter().any(|&i| is_first(i)));
    if orphaned && firsts.len() == 1 {
        let all: Vec<usize> = groups.into_values().flatten().collect();
        groups = BTreeMap::from([(String::new(), all)]);
    }
    for members in groups.into_values() {
        sets.push(Set {
            members: order(c, members)?,
        });
    }
    sets.sort_by(|a, b| c[a.members[0]].name.cmp(&c[b.members[0]].name));
    Ok(sets)
}

/// Orders one group and checks it is whole.
fn order(c: &[Candidate], mut members: Vec<usize>) -> Result<Vec<usize>, String> {
    let numbered = members
        .iter()
        .all(|&i| c[i].info.and_then(|v| v.number).is_some());
    let key = |i: usize| -> u32 {
        if numbered {
            c[i].info.and_then(|v| v.number).unwrap_or(0)
        } else {
            name_position(&c[i].name).1
        }
    };
    members.sort_by_key(|&i| (key(i), c[i].name.clone()));
    let name = |i: usize| c[i].name.as_str();
    let first = members[0];
    if key(first) != 0 || c[first].info.and_then(|v| v.first) == Some(false) {
        return Err(format!(
            "volume set of {} has no first volume (it starts at volume {})",
            name(first),
            u64::from(key(first)) + 1
        ));
    }
    for (pos, w) in members.windows(2).enumerate() {
        let (a, b) = (key(w[0]), key(w[1]));
        if a == b {
            return Err(format!(
                "{} and {} are both volume {} of one set",
                name(w[0]),
                name(w[1]),
                u64::from(a) + 1
            ));
        }
        if Some(b) != a.checked_add(1) {
            return Err(format!(
                "volume set {}: volume {} is missing (after {})",
                name(first),
                pos as u32 + 2,
                name(w[0])
            ));
        }
    }
    let last = members[members.len() - 1];
    if c[last].info.and_then(|v| v.more) == Some(true) {
        return Err(format!(
            "volume set {}: volume {} is missing (after {}, which says more follow)",
            name(first),
            u64::from(key(last)) + 2,
            name(last)
        ));
    }
    Ok(members)
}

#[cfg(test)]
mod tests;
