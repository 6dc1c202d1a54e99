//! SHA-256 manifests of game roots (`local/` and `.lanspread*` excluded), with every
//! folder (so an empty folder missing from a copy is a difference).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Relative path → (size, hex SHA-256); a folder is `path/` → (0, "folder").
pub type Manifest = BTreeMap<String, (u64, String)>;

/// Hashes every regular file under `root` and names every folder, skipping top-level
/// `local/` and `.lanspread*`.
pub fn manifest(root: &Path) -> Manifest {
    let mut out = Manifest::new();
    walk(root, "", &mut out);
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut Manifest) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if prefix.is_empty() && (name == "local" || name.starts_with(".lanspread")) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = e.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            out.insert(format!("{rel}/"), (0, FOLDER.to_owned()));
            walk(&path, &rel, out);
        } else if meta.is_file() {
            out.insert(rel, (meta.len(), sha256_file(&path)));
        }
    }
}

/// What a folder's entry holds instead of a hash.
const FOLDER: &str = "folder";

fn sha256_file(path: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Fails with a per-file diff when two roots differ.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    assert_matches_manifest(&manifest(expected), expected, actual);
}

/// [`assert_same_tree`] against the already computed manifest `e` of `expected` (many
/// copies checked against one root hash it once).
pub fn assert_matches_manifest(e: &Manifest, expected: &Path, actual: &Path) {
    let a = manifest(actual);
    if *e == a {
        return;
    }
    let mut diff = String::new();
    for (p, v) in e {
        match a.get(p) {
            None => diff.push_str(&format!("  missing  {p}\n")),
            Some(w) if w != v => diff.push_str(&format!(
                "  differs  {p}: expected {} B {}, got {} B {}\n",
                v.0,
                &v.1[..v.1.len().min(12)],
                w.0,
                &w.1[..w.1.len().min(12)]
            )),
            _ => {}
        }
    }
    for p in a.keys().filter(|p| !e.contains_key(*p)) {
        diff.push_str(&format!("  extra    {p}\n"));
    }
    panic!(
        "{} does not match {}:\n{diff}",
        actual.display(),
        expected.display()
    );
}
