//! Live reload (`SIGHUP`, `lanspread reload`): the daemon's flags are resolved over the
//! config file again, against the directory it was started from, and what can change
//! without dropping a link or a transfer is applied at once: bandwidth limits, static
//! peers, the catalog, the LAN secret, `max_links`, `max_links_per_address`. What cannot (addresses, directories,
//! threads, groups, mDNS, the events file, the UDP payload bound) is reported as needing
//! a restart and keeps its old value. A config that does not load (bad TOML, an
//! unreadable catalog or secret) changes nothing and says why. Which settings changed is
//! a pure function ([`changes`]).

use std::sync::Arc;

use lanspread_catalog::Catalog;
use lanspread_control::api::{EventKind, ReloadInfo};
use lanspread_control::{ErrorKind, Failure};
use lanspread_proto::LanSecret;
use tracing::{info, warn};

use crate::config::{ConfigSource, DaemonConfig};
use crate::state::Shared;
use crate::DaemonError;

/// The settings that differ between `old` and `new`, by name (the config file's keys):
/// those applied live, and those that need a restart. Limits, the catalog and the secret
/// are also compared by what is in force (a `limit` command, a file edited in place) when
/// applied; here only the settings themselves are.
pub fn changes(old: &DaemonConfig, new: &DaemonConfig) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut live = Vec::new();
    let mut restart = Vec::new();
    let mut check = |differs: bool, name: &'static str, is_live: bool| {
        if differs {
            if is_live {
                live.push(name);
            } else {
                restart.push(name);
            }
        }
    };
    check(old.peers != new.peers, "peers", true);
    check(old.max_links != new.max_links, "max_links", true);
    check(
        old.max_links_per_address != new.max_links_per_address,
        "max_links_per_address",
        true,
    );
    check(old.catalog != new.catalog, "catalog", true);
    check(old.secret_file != new.secret_file, "secret_file", true);
    check(old.games != new.games, "games", false);
    check(old.state != new.state, "state", false);
    check(old.listen != new.listen, "listen", false);
    check(old.socket != new.socket, "socket", false);
    check(old.events != new.events, "events", false);
    check(old.mdns != new.mdns, "mdns", false);
    check(
        old.mdns_interfaces != new.mdns_interfaces,
        "mdns_interfaces",
        false,
    );
    check(old.group != new.group, "group", false);
    check(
        old.metrics_listen != new.metrics_listen,
        "metrics_listen",
        false,
    );
    check(old.admin_group != new.admin_group, "admin_group", false);
    check(
        old.transfer_threads != new.transfer_threads,
        "transfer_threads",
        false,
    );
    check(
        old.max_udp_payload != new.max_udp_payload,
        "max_udp_payload",
        false,
    );
    (live, restart)
}

/// A config loaded with the files it names, ready to apply (nothing applied yet).
struct Loaded {
    config: DaemonConfig,
    catalog: Catalog,
    secret: Option<LanSecret>,
}

fn load(source: &ConfigSource) -> Result<Loaded, DaemonError> {
    let config = source.load()?;
    let catalog = match &config.catalog {
        Some(p) => Catalog::load(p)?,
        None => Catalog::builtin(),
    };
    let secret = match &config.secret_file {
        Some(p) => {
            crate::lock::not_in_a_game(p, &config.games, "secret_file")?;
            Some(lanspread_transfer::load_secret(p)?)
        }
        None => None,
    };
    Ok(Loaded {
        config,
        catalog,
        secret,
    })
}

/// Reads the config again and applies it; emits `config-reloaded` or
/// `config-reload-failed`. Reloads run one at a time.
pub async fn reload(shared: &Arc<Shared>) -> Result<ReloadInfo, Failure> {
    let mut guard = shared.reload.lock().await;
    let Some(state) = guard.as_mut() else {
        return Err(Failure::new(
            ErrorKind::NotFound,
            "this daemon was not started from a command line and config file (the demo's): nothing to reload",
        ));
    };
    let source = state.source.clone();
    let loaded = match tokio::task::spawn_blocking(move || load(&source)).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return Err(failed(shared, e.to_string())),
        Err(e) => return Err(failed(shared, format!("reload task failed: {e}"))),
    };
    let (mut applied, needs_restart) = changes(&state.config, &loaded.config);
    apply(shared, &state.config, &loaded.config, &mut applied);
    let secret_changed = match (shared.me.secret(), &loaded.secret) {
        (None, None) => false,
        (Some(a), Some(b)) => !a.same_as(b),
        _ => true,
    };
    if secret_changed {
        shared.me.set_secret(loaded.secret);
        add(&mut applied, "secret_file");
    }
    if *shared.catalog() != loaded.catalog {
        shared.set_catalog(loaded.catalog);
        for peer in shared.peers.recatalog(&shared.catalog()) {
            shared.events.emit(EventKind::RemoteLibraryChanged {
                peer_id: peer.peer_id,
                games: peer.games,
            });
        }
        shared.rescan().await;
        add(&mut applied, "catalog");
    }
    // Settings that need a restart keep their old values, so the next reload reports
    // them again until the daemon restarts.
    state.config = in_force(&state.config, loaded.config);
    let done = ReloadInfo {
        config: state.source.file(),
        applied: applied.iter().map(|s| s.to_string()).collect(),
        needs_restart: needs_restart.iter().map(|s| s.to_string()).collect(),
    };
    info!(applied = ?done.applied, needs_restart = ?done.needs_restart, "config reloaded");
    shared.events.emit(EventKind::ConfigReloaded {
        config: done.config.clone(),
        applied: done.applied.clone(),
        needs_restart: done.needs_restart.clone(),
    });
    Ok(done)
}

/// Limits, the link caps and new static peers, in place.
fn apply(
    shared: &Arc<Shared>,
    old: &DaemonConfig,
    new: &DaemonConfig,
    applied: &mut Vec<&'static str>,
) {
    for (name, limit, want) in [
        (
            "max_upload_mib_s",
            &shared.net.upload_limit,
            new.max_upload_mib_s,
        ),
        (
            "max_download_mib_s",
            &shared.net.download_limit,
            new.max_download_mib_s,
        ),
    ] {
        // The file is the truth after a reload: a `limit` command's change lasts until
        // the next reload or restart.
        if limit.mib_per_s() != want {
            limit.set(want);
            add(applied, name);
        }
    }
    shared.peers.set_max_links(new.max_links);
    shared.peers.set_max_per_address(new.max_links_per_address);
    // Static peers that are new are dialled now; removed ones stay linked while their
    // link lives (no link is dropped by a reload) but are dialled no more, not after a
    // loss either.
    for peer in old.peers.iter().filter(|p| !new.peers.contains(p)) {
        crate::links::static_peers::stop(shared, peer);
    }
    for peer in new.peers.iter().filter(|p| !old.peers.contains(p)).cloned() {
        crate::links::static_peers::start(shared, peer);
    }
}

fn add(applied: &mut Vec<&'static str>, name: &'static str) {
    if !applied.contains(&name) {
        applied.push(name);
    }
}

/// The settings in force after a reload: the live ones from `new`, every other one as
/// it was (so a setting added later is restart-only unless it is made live here).
fn in_force(old: &DaemonConfig, new: DaemonConfig) -> DaemonConfig {
    DaemonConfig {
        peers: new.peers,
        max_links: new.max_links,
        max_links_per_address: new.max_links_per_address,
        catalog: new.catalog,
        secret_file: new.secret_file,
        max_upload_mib_s: new.max_upload_mib_s,
        max_download_mib_s: new.max_download_mib_s,
        ..old.clone()
    }
}

fn failed(shared: &Shared, reason: String) -> Failure {
    let reason = format!("{reason}; the daemon keeps the settings it had");
    warn!("reload: {reason}");
    shared.events.emit(EventKind::ConfigReloadFailed {
        reason: reason.clone(),
    });
    Failure::new(ErrorKind::BadConfig, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DaemonArgs;
    use clap::Parser;

    fn config(flags: &[&str]) -> DaemonConfig {
        let mut v = vec!["lanspreadd", "--games", "/g", "--state", "/s"];
        v.extend_from_slice(flags);
        DaemonArgs::parse_from(v).resolve().unwrap()
    }

    #[test]
    fn live_and_restart_settings_are_told_apart() {
        let old = config(&["--listen", "127.0.0.1:1", "--max-links", "8"]);
        assert_eq!(changes(&old, &old), (vec![], vec![]));
        let new = config(&[
            "--listen",
            "127.0.0.1:2",
            "--max-links",
            "9",
            "--catalog",
            "/c",
            "--transfer-threads",
            "3",
            "--secret-file",
            "/k",
            "--max-links-per-address",
            "2",
        ]);
        let (live, restart) = changes(&old, &new);
        assert_eq!(
            live,
            [
                "max_links",
                "max_links_per_address",
                "catalog",
                "secret_file"
            ]
        );
        assert_eq!(restart, ["listen", "transfer_threads"]);
        // Limits are compared with what is in force when applied, not here.
        let limited = config(&[
            "--listen",
            "127.0.0.1:1",
            "--max-links",
            "8",
            "--max-upload-mib-s",
            "5",
        ]);
        assert_eq!(changes(&old, &limited), (vec![], vec![]));
    }

    #[test]
    fn settings_that_need_a_restart_keep_their_old_values() {
        let old = config(&["--listen", "127.0.0.1:1", "--group", "a"]);
        // Every restart-only setting changed, and one live one.
        let new = config(&[
            "--listen",
            "127.0.0.1:2",
            "--group",
            "b",
            "--admin-group",
            "c",
            "--socket",
            "/x2.sock",
            "--events",
            "/e",
            "--no-mdns",
            "--mdns-interface",
            "eth9",
            "--transfer-threads",
            "3",
            "--metrics-listen",
            "127.0.0.1:9",
            "--max-links",
            "3",
            "--max-links-per-address",
            "5",
        ]);
        let (_, restart) = changes(&old, &new);
        assert_eq!(restart.len(), 9, "{restart:?}");
        let kept = in_force(&old, new);
        assert_eq!(kept.listen, old.listen);
        assert_eq!(kept.group, old.group);
        assert_eq!(kept.max_links, 3, "live settings are taken");
        assert_eq!(kept.max_links_per_address, 5, "live settings are taken");
        let (_, restart) = changes(&old, &kept);
        assert!(restart.is_empty(), "{restart:?}");
    }

    #[test]
    fn relative_paths_resolve_against_the_start_directory() {
        let source = ConfigSource::with_base(
            DaemonArgs::parse_from([
                "lanspreadd",
                "--games",
                "g",
                "--state",
                "/s",
                "--catalog",
                "c.txt",
            ]),
            "/srv/start".into(),
        );
        let c = source.load().unwrap();
        assert_eq!(c.games, std::path::PathBuf::from("/srv/start/g"));
        assert_eq!(
            c.catalog,
            Some(std::path::PathBuf::from("/srv/start/c.txt"))
        );
    }
}
