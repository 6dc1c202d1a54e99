//! How deep, and how many folders: bounds on the tree a manifest makes. A manifest's
//! paths may be 4 KiB long and there may be 100,000 of them: 2,000 levels each, millions
//! of folders that a downloader would create, fsync and rescan (minutes of commit, a
//! filesystem's inodes) for a game of a few bytes. A source's scan holds its own roots
//! to the same bounds, so a tree one side offers the other accepts.

/// Deepest path, in components (`a/b/c` is 3). Real games stay far below.
pub const MAX_DEPTH: usize = 64;

/// Most folders a manifest's paths make, every folder counted once: the ancestors of
/// every file and empty folder, and the empty folders themselves.
pub const MAX_FOLDERS: usize = crate::MAX_MANIFEST_ENTRIES;

/// Checks `entries` — `(path, is an empty folder)`, sorted by path as strings — against
/// [`MAX_DEPTH`] and [`MAX_FOLDERS`]; the error says which bound and where. Linear in the
/// paths' bytes: everything under a folder sorts together, so a folder is new exactly
/// where an entry's folders part from the entry before it.
pub fn check_tree<'a>(entries: impl IntoIterator<Item = (&'a str, bool)>) -> Result<(), String> {
    folders_made(entries).map(drop)
}

/// The folders `entries` make (see [`check_tree`]), or which bound they break.
fn folders_made<'a>(entries: impl IntoIterator<Item = (&'a str, bool)>) -> Result<usize, String> {
    let mut folders = 0usize;
    let mut prev = "";
    for (path, is_folder) in entries {
        let depth = path.split('/').count();
        if depth > MAX_DEPTH {
            return Err(format!(
                "{}…: {depth} levels deep (at most {MAX_DEPTH})",
                path.chars().take(80).collect::<String>()
            ));
        }
        // The folders this entry makes: its parent's path, or its own for an empty folder.
        let chain = if is_folder {
            path
        } else {
            path.rfind('/').map_or("", |i| &path[..i])
        };
        let levels = if chain.is_empty() {
            0
        } else {
            chain.split('/').count()
        };
        folders += levels - shared_levels(chain, prev);
        if folders > MAX_FOLDERS {
            return Err(format!("more than {MAX_FOLDERS} folders"));
        }
        prev = chain;
    }
    Ok(folders)
}

/// Leading components `a` and `b` have in common.
fn shared_levels(a: &str, b: &str) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    a.split('/')
        .zip(b.split('/'))
        .take_while(|(x, y)| x == y)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folders(paths: &[(&str, bool)]) -> usize {
        let mut v = paths.to_vec();
        v.sort();
        // Counted the slow way: every distinct ancestor (and empty folder).
        let mut all = std::collections::BTreeSet::new();
        for (p, is_folder) in &v {
            let parts: Vec<&str> = p.split('/').collect();
            let n = if *is_folder {
                parts.len()
            } else {
                parts.len() - 1
            };
            for i in 1..=n {
                all.insert(parts[..i].join("/"));
            }
        }
        all.len()
    }

    #[test]
    fn each_folder_is_counted_once_in_sorted_order() {
        let cases: &[&[(&str, bool)]] = &[
            &[
                ("a/b.txt", false),
                ("a/b/c", false),
                ("a/c", false),
                ("a.txt", false),
            ],
            &[
                ("x/y/z/f", false),
                ("x/y/g", false),
                ("x/w", true),
                ("q", false),
            ],
            &[
                ("a/b/c/d", true),
                ("a/bc/d", false),
                ("a/b/x", false),
                ("ab/c", false),
            ],
            &[("version.ini", false)],
        ];
        for case in cases {
            let mut v = case.to_vec();
            v.sort();
            assert_eq!(
                folders_made(v.iter().copied()),
                Ok(folders(case)),
                "{case:?}"
            );
        }
    }

    #[test]
    fn deep_paths_and_too_many_folders_are_refused() {
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        let err = check_tree([(deep.as_str(), false)]).unwrap_err();
        assert!(err.contains("65 levels deep"), "{err}");
        let ok = vec!["d"; MAX_DEPTH].join("/");
        check_tree([(ok.as_str(), false)]).unwrap();
        // 62 new folders per file, a few thousand files: past the bound.
        let paths: Vec<String> = (0..MAX_FOLDERS / 62 + 1)
            .map(|i| format!("{i:06}/{}", vec!["d"; MAX_DEPTH - 2].join("/")))
            .collect();
        let err = check_tree(paths.iter().map(|p| (p.as_str(), false))).unwrap_err();
        assert!(err.contains("folders"), "{err}");
        // As many files in one folder are one folder.
        let flat: Vec<String> = (0..MAX_FOLDERS * 2)
            .map(|i| format!("data/{i:07}"))
            .collect();
        check_tree(flat.iter().map(|p| (p.as_str(), false))).unwrap();
    }
}
