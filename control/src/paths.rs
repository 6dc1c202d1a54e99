//! Default locations.

use std::path::PathBuf;

/// The control socket path when `--socket` is not given: `$LANSPREAD_SOCKET`, else
/// `$RUNTIME_DIRECTORY/lanspread.sock` (systemd), else `/run/lanspread/lanspread.sock` as
/// root, else `$XDG_RUNTIME_DIR/lanspread/lanspread.sock`, else a per-user folder in /tmp.
pub fn default_socket_path(env: impl Fn(&str) -> Option<String>, uid: u32) -> PathBuf {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(p) = set("LANSPREAD_SOCKET") {
        return PathBuf::from(p);
    }
    if let Some(d) = set("RUNTIME_DIRECTORY") {
        // systemd may list several directories separated by ':'; ours is the first.
        let first = d.split(':').next().unwrap_or(&d).to_owned();
        return PathBuf::from(first).join("lanspread.sock");
    }
    if uid == 0 {
        return PathBuf::from("/run/lanspread/lanspread.sock");
    }
    if let Some(d) = set("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("lanspread/lanspread.sock");
    }
    PathBuf::from(format!("/tmp/lanspread-{uid}/lanspread.sock"))
}

/// The socket path for this process's environment.
pub fn socket_path_from_env() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    default_socket_path(|k| std::env::var(k).ok(), uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(vars: &[(&str, &str)], uid: u32) -> PathBuf {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        default_socket_path(|k| m.get(k).cloned(), uid)
    }

    #[test]
    fn precedence() {
        let all = [
            ("LANSPREAD_SOCKET", "/x.sock"),
            ("RUNTIME_DIRECTORY", "/run/sd"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ];
        assert_eq!(resolve(&all, 1000), PathBuf::from("/x.sock"));
        assert_eq!(
            resolve(&all[1..], 0),
            PathBuf::from("/run/sd/lanspread.sock")
        );
        assert_eq!(
            resolve(&all[2..], 0),
            PathBuf::from("/run/lanspread/lanspread.sock")
        );
        assert_eq!(
            resolve(&all[2..], 1000),
            PathBuf::from("/run/user/1000/lanspread/lanspread.sock")
        );
        assert_eq!(
            resolve(&[], 1000),
            PathBuf::from("/tmp/lanspread-1000/lanspread.sock")
        );
        assert_eq!(
            resolve(&[("LANSPREAD_SOCKET", "")], 0),
            PathBuf::from("/run/lanspread/lanspread.sock")
        );
    }
}
