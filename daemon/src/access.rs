//! Who may do what on the control socket. The socket is mode 0660 (owner and, when
//! `group` is set, that group may open it); the daemon then checks each caller with
//! `SO_PEERCRED`: anyone who got in may read (status, lists, events, wait-peers);
//! changes (download, install, uninstall, connect, shutdown) are for root, the daemon's
//! own user and members of `admin_group`. The decision is a pure function.

use std::ffi::CString;

use lanspread_control::api::Request;
use lanspread_control::{ErrorKind, Failure};

use crate::DaemonError;

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
            | Request::Reload {}
    ) || matches!(req, Request::Limit { upload_mib_s, download_mib_s }
            if upload_mib_s.is_some() || download_mib_s.is_some())
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
        Request::Limit { .. } => "limit",
        Request::Reload {} => "reload",
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
    pub fn check(&self, caller: &Caller, req: &Request) -> Result<(), Failure> {
        if !is_change(req) || self.is_admin(caller) {
            return Ok(());
        }
        // (The daemon's own uid named unless it is root's.)
        let owner = match self.daemon_uid {
            0 => "root".to_owned(),
            uid => format!("root and uid {uid}"),
        };
        let who = match &self.admin {
            Some((g, _)) => format!("{owner} and members of group {g}"),
            None => format!("{owner} (set admin_group to allow a group)"),
        };
        Err(Failure::new(
            ErrorKind::PermissionDenied,
            format!(
                "permission denied: `{}` changes the daemon's state; allowed for {who}",
                name(req)
            ),
        ))
    }
}

/// The groups of a connected process: its primary group and the `Groups:` line of
/// `/proc/<pid>/status` (empty if the process is already gone).
pub fn caller_of(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
    let status = pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok());
    let mut gids = vec![gid];
    gids.extend(supplementary_groups(status.as_deref().unwrap_or("")));
    Caller { uid, gids }
}

/// The gids of the `Groups:` line of a `/proc/<pid>/status` text.
fn supplementary_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|g| g.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A group name (or a numeric gid) to its gid, through the system's group database;
/// `key` names the setting in the error.
pub fn resolve_group(key: &str, name: &str) -> Result<u32, DaemonError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let bad = |why: &str| DaemonError::Config(format!("{key}: group {name:?}{why}"));
    let cname = CString::new(name).map_err(|_| bad(": invalid name"))?;
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
        return Err(bad(" does not exist"));
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
        // `limit` without values only shows them.
        let show = Request::Limit {
            upload_mib_s: None,
            download_mib_s: None,
        };
        assert!(p.check(&stranger, &show).is_ok());
        assert!(p.check(&stranger, &download()).is_ok(), "admin by group");
        let p = policy(None);
        let err = p.check(&stranger, &download()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        assert!(
            err.message.contains("permission denied: `download`"),
            "{err}"
        );
        for req in [
            Request::Shutdown {},
            Request::Reload {},
            Request::Connect { addr: "x:1".into() },
            Request::Install { game: "g".into() },
            Request::Uninstall { game: "g".into() },
            Request::Limit {
                upload_mib_s: Some(1.0),
                download_mib_s: None,
            },
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
        assert_eq!(resolve_group("group", "0").ok(), Some(0));
        assert_eq!(resolve_group("group", "root").ok(), Some(0));
        let err = resolve_group("admin_group", "no-such-group-here").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"admin_group: group "no-such-group-here" does not exist"#
        );
    }

    #[test]
    fn the_groups_line_of_proc_status_is_parsed() {
        let status = "Name:\tlanspread\nUmask:\t0022\nGid:\t100\t100\t100\t100\n\
                      Groups:\t4 24 27 1001 \nNSpid:\t42\n";
        assert_eq!(supplementary_groups(status), [4, 24, 27, 1001]);
        // No supplementary groups, no line, garbage: none.
        assert!(supplementary_groups("Groups:\t\n").is_empty());
        assert!(supplementary_groups("Name:\tx\n").is_empty());
        assert_eq!(supplementary_groups("Groups:\t7 x 9\n"), [7, 9]);
    }

    #[test]
    fn own_process_groups_are_read_from_proc() {
        // SAFETY: no preconditions.
        let uid = unsafe { libc::getuid() };
        let mut own = vec![0 as libc::gid_t; 256];
        // SAFETY: the buffer holds 256 entries, as told.
        let n = unsafe { libc::getgroups(256, own.as_mut_ptr()) };
        assert!(n >= 0);
        own.truncate(n as usize);
        // A primary gid no process here has, so only /proc can supply the others.
        let c = caller_of(uid, u32::MAX - 1, Some(std::process::id() as i32));
        assert_eq!(c.uid, uid);
        assert_eq!(c.gids[0], u32::MAX - 1);
        for g in own {
            assert!(
                c.gids.contains(&g),
                "group {g} not read from /proc: {:?}",
                c.gids
            );
        }
        // A process that is gone: the primary group alone.
        assert_eq!(caller_of(uid, 5, Some(i32::MAX)).gids, [5]);
    }
}
