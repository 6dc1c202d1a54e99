//! The symlink policy, the same for RAR 4 and RAR 5, Unix- and Windows-made archives, file
//! and directory links: a link is kept when its target, resolved from where the link sits,
//! stays inside the install folder — through any other links of the same install — and is
//! refused otherwise (absolute targets, drive letters and `\??\` junction targets included).
//! A target that does not exist is allowed if its path stays inside.
//!
//! [`lexical_escape`] judges a target alone (pure); [`escapes`] walks the finished staging
//! tree the way the kernel resolves a path, so a chain such as `d/l → ..` plus
//! `m → d/l/..` is caught even though each target looks harmless on its own. It only ever
//! looks at paths inside staging.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Longest chain of links followed before a target counts as a loop.
const MAX_HOPS: usize = 40;

/// Why a target is refused before looking at the disk: absolute, a drive or device path,
/// or more `..` than the link has folders above it. `link` is the link's path inside the
/// install folder.
pub(crate) fn lexical_escape(link: &Path, target: &str) -> Option<&'static str> {
    if target.is_empty() {
        return Some("has an empty target");
    }
    if target.starts_with('/') || target.contains('\0') {
        return Some("has an absolute target");
    }
    let first = target.split('/').next().unwrap_or_default();
    if first.contains(':') || first == "??" {
        return Some("has a Windows drive or device target");
    }
    let mut depth = link.parent().map_or(0, |p| p.components().count());
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir if depth == 0 => return Some("points outside the install folder"),
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Some("has an absolute target"),
        }
    }
    None
}

/// Resolves the link at `staging/link` through the links of the staging tree and says
/// whether it leaves `staging`. Reads link targets and file types inside staging only.
pub(crate) fn escapes(staging: &Path, link: &Path) -> bool {
    let mut at: Vec<PathBuf> = link
        .parent()
        .map(|p| {
            p.components()
                .map(|c| PathBuf::from(c.as_os_str()))
                .collect()
        })
        .unwrap_or_default();
    let Ok(first) = fs::read_link(staging.join(link)) else {
        return true;
    };
    let mut todo: Vec<PathBuf> = components_rev(&first);
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.to_str() {
            Some("..") => {
                if at.pop().is_none() {
                    return true;
                }
                continue;
            }
            Some(".") => continue,
            _ => {}
        }
        if c.is_absolute() {
            return true;
        }
        at.push(c);
        let here: PathBuf = staging.join(at.iter().collect::<PathBuf>());
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_HOPS {
                    return true;
                }
                let Ok(t) = fs::read_link(&here) else {
                    return true;
                };
                at.pop();
                todo.extend(components_rev(&t));
            }
            // Missing: the rest resolves by name only (nothing more is created).
            _ => {}
        }
    }
    false
}

/// The target's components, last first (a stack), with an absolute root kept as `/`.
fn components_rev(target: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = target
        .components()
        .map(|c| match c {
            Component::RootDir | Component::Prefix(_) => PathBuf::from("/"),
            other => PathBuf::from(other.as_os_str()),
        })
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn lexical_rules() {
        let l = Path::new("dir/link");
        assert_eq!(lexical_escape(l, "x"), None);
        assert_eq!(lexical_escape(l, "../x"), None);
        assert_eq!(lexical_escape(l, "./../dir/../x"), None);
        assert!(lexical_escape(l, "../../x").is_some());
        assert!(lexical_escape(Path::new("link"), "../random123").is_some());
        assert!(lexical_escape(l, "/etc/passwd").is_some());
        assert!(lexical_escape(l, "C:/Windows").is_some());
        assert!(lexical_escape(l, "//??/C:/x").is_some());
        assert!(lexical_escape(l, "??/C:/x").is_some());
        assert!(lexical_escape(l, "").is_some());
        assert!(lexical_escape(l, "a/../../..").is_some());
    }

    #[test]
    fn chains_through_other_links_are_resolved() {
        let t = tempfile::tempdir().unwrap();
        let s = t.path().join("staging");
        fs::create_dir_all(s.join("d/sub")).unwrap();
        symlink("..", s.join("d/l")).unwrap(); // d/l → staging itself: inside
        symlink("d/l/..", s.join("m")).unwrap(); // looks inside by name, is staging/..
        symlink("sub", s.join("d/ok")).unwrap();
        symlink("d/ok/../l/d", s.join("fine")).unwrap();
        symlink("loop2", s.join("loop1")).unwrap();
        symlink("loop1", s.join("loop2")).unwrap();
        symlink("not/there/yet", s.join("dangling")).unwrap();
        symlink("nope/../../..", s.join("dangling_out")).unwrap();
        assert!(!escapes(&s, Path::new("d/l")));
        assert!(escapes(&s, Path::new("m")));
        assert!(!escapes(&s, Path::new("d/ok")));
        assert!(!escapes(&s, Path::new("fine")));
        assert!(escapes(&s, Path::new("loop1")));
        assert!(!escapes(&s, Path::new("dangling")));
        assert!(escapes(&s, Path::new("dangling_out")));
    }
}
