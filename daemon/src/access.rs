//! Who may do what on the control socket. The socket is mode 0660 (owner and, when
//! `group` is set, that group may open it); the daemon then checks each caller with
//! `SO_PEERCRED`: anyone who got in may read (status, lists, events, wait-peers);
//! changes (download, install, uninstall, connect, shutdown) are for root, the daemon's
//! own user and members of `admin_group`. The decision is a pure function.

use std::ffi::CString;

use crate::api::Request;

/// A connected client, from `SO_PEERCRED` and `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Primary and supplementary group ids.
    pub gids: Vec<u32>,
}

/// The access rules of one daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The daemon's own user id.
    pub daemon_uid: u32,
    /// Members of this group may make changes.
    pub admin: Option<(String, u32)>,
}

/// Whether a request changes the daemon's state.
pub fn is_change(req: &Request) -> bool {
    matches!(
        req,
        Request::Connect { .. }
            | Request::Download { .. }
            | Request::Install { .. }
            | Request::Uninstall { .. }
            | Request::Cancel { .. }
            | Request::Remove { .. }
            | Request::Shutdown {}
    )
}

/// The kebab-case name of a request, for messages.
fn name(req: &Request) -> &'static str {
    match req {
        Request::Status {} => "status",
        Request::Connect { .. } => "connect",
        Request::ListGames {} => "list-games",
        Request::ListPeers {} => "list-peers",
        Request::WaitPeers { .. } => "wait-peers",
        Request::Events {} => "events",
        Request::Download { .. } => "download",
        Request::Shutdown {} => "shutdown",
        Request::Install { .. } => "install",
        Request::Uninstall { .. } => "uninstall",
        Request::Cancel { .. } => "cancel",
        Request::Remove { .. } => "remove",
    }
}

impl Policy {
    /// Whether `caller` may make changes: root, the daemon's user, members of the admin
    /// group.
    pub fn is_admin(&self, caller: &Caller) -> bool {
        caller.uid == 0
            || caller.uid == self.daemon_uid
            || self
                .admin
                .as_ref()
                .is_some_and(|(_, gid)| caller.gids.contains(gid))
    }

    /// Allows or refuses a request, with a message saying who may.
    pub fn check(&self, caller: &Caller, req: &Request) -> Result<(), String> {
        if !is_change(req) || self.is_admin(caller) {
            return Ok(());
        }
        let who = match &self.admin {
            Some((g, _)) => format!("root, uid {} and members of group {g}", self.daemon_uid),
            None => format!(
                "root and uid {} (set admin_group to allow a group)",
                self.daemon_uid
            ),
        };
        Err(format!(
            "permission denied: `{}` changes the daemon's state; allowed for {who}",
            name(req)
        ))
    }
}

/// The groups of a connected process: its primary group and the `Groups:` line of
/// `/proc/<pid>/status` (empty if the process is already gone).
pub fn caller_of(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
    let mut gids = vec![gid];
    if let Some(status) =
        pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
    {
        if let Some(line) = status.lines().find(|l| l.starts_with("Groups:")) {
            gids.extend(
                line["Groups:".len()..]
                    .split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
    }
    Caller { uid, gids }
}

/// A group name (or a numeric gid) to its gid, through the system's group database.
pub fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let cname = CString::new(name).map_err(|_| format!("group {name:?}: invalid name"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed plain-data struct that getgrnam_r fills.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives it; `found` is only read
    // as a null check.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(format!("group {name:?} does not exist"));
    }
    Ok(grp.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(admin: Option<u32>) -> Policy {
        Policy {
            daemon_uid: 990,
            admin: admin.map(|g| ("lanadmin".into(), g)),
        }
    }

    fn download() -> Request {
        Request::Download {
            game: "cod5".into(),
            install: true,
            detach: false,
        }
    }

    #[test]
    fn reads_for_all_changes_for_root_self_and_admins() {
        let stranger = Caller {
            uid: 1000,
            gids: vec![1000, 50],
        };
        let p = policy(Some(50));
        assert!(p.check(&stranger, &Request::Status {}).is_ok());
        assert!(p.check(&stranger, &Request::Events {}).is_ok());
        assert!(p.check(&stranger, &download()).is_ok(), "admin by group");
        let p = policy(None);
        let err = p.check(&stranger, &download()).unwrap_err();
        assert!(err.contains("permission denied: `download`"), "{err}");
        for req in [
            Request::Shutdown {},
            Request::Connect { addr: "x:1".into() },
            Request::Install { game: "g".into() },
            Request::Uninstall { game: "g".into() },
        ] {
            assert!(p.check(&stranger, &req).is_err(), "{req:?}");
        }
        assert!(p
            .check(
                &Caller {
                    uid: 0,
                    gids: vec![0]
                },
                &download()
            )
            .is_ok());
        assert!(p
            .check(
                &Caller {
                    uid: 990,
                    gids: vec![990]
                },
                &download()
            )
            .is_ok());
    }

    #[test]
    fn groups_resolve() {
        assert_eq!(resolve_group("0"), Ok(0));
        assert_eq!(resolve_group("root"), Ok(0));
        assert!(resolve_group("no-such-group-here").is_err());
    }

    #[test]
    fn own_process_groups_are_read() {
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let c = caller_of(uid, gid, Some(std::process::id() as i32));
        assert_eq!(c.uid, uid);
        assert!(c.gids.contains(&gid));
    }
}
