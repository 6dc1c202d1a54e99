//! Live reload (issue 23): `lanspread reload` and `SIGHUP` read the config file again and
//! apply limits, static peers, the catalog and the LAN secret without dropping a link or
//! restarting a running download; what needs a restart is reported; a bad config changes
//! nothing and says why.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use lanspread_scenarios::{Node, NodeOptions};
use serde_json::json;

const MIB: u64 = 1 << 20;

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn with_config(name: &str, games: &Path, config: &Path) -> Node {
    Node::start_with(
        name,
        games,
        NodeOptions {
            args: vec!["--config".into(), config.display().to_string()],
            ..NodeOptions::default()
        },
    )
}

#[test]
fn reload_applies_limits_peers_and_catalog_without_touching_the_running_download() {
    let a_games = tempfile::tempdir().unwrap();
    crate::util::sparse_game(a_games.path(), "cod5", 8, 8);
    crate::util::sparse_game(a_games.path(), "mystery", 8, 8);
    let a = Node::start_with(
        "alpha",
        a_games.path(),
        NodeOptions {
            catalog: Some("cod5\nmystery\n".into()),
            ..NodeOptions::default()
        },
    );
    let b_games = tempfile::tempdir().unwrap();
    let b = Node::start("bravo", b_games.path());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lanspreadd.toml");
    let catalog = dir.path().join("catalog.txt");
    std::fs::write(&catalog, "cod5\n").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "max_download_mib_s = 4\ncatalog = {:?}\n",
            catalog.display().to_string()
        ),
    )
    .unwrap();
    let games = tempfile::tempdir().unwrap();
    let c = with_config("client", games.path(), &cfg);
    c.connect(&a);
    let remote_ids = |n: &Node| -> Vec<String> {
        let g = n.json(&["list-games"]);
        g["remote"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        remote_ids(&c),
        ["cod5"],
        "mystery is not in the catalog yet"
    );
    // Nothing changed: nothing applied.
    let same = c.json(&["reload"]);
    assert_eq!(same["applied"], json!([]), "{same}");
    assert_eq!(same["config"], json!(cfg.display().to_string()));

    // 64 MiB at 4 MiB/s would take 16 s; the config lifts the limit a second in.
    let out = c.cli(&["download", "cod5", "--no-install", "--detach"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    c.wait_event("download-begin", |e| e["game_id"] == "cod5");
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&catalog, "cod5\nmystery\n").unwrap();
    std::fs::write(
        &cfg,
        format!(
            "catalog = {:?}\npeers = [{:?}]\ntransfer_threads = 1\nmax_upload_mib_s = 7\n",
            catalog.display().to_string(),
            b.addr
        ),
    )
    .unwrap();
    let changed_ms = crate::util::now_ms();
    let r = c.json(&["reload"]);
    assert_eq!(
        r["applied"],
        json!(["peers", "max_upload_mib_s", "max_download_mib_s", "catalog"]),
        "{r}"
    );
    assert_eq!(r["needs_restart"], json!(["transfer_threads"]), "{r}");
    assert_eq!(
        c.json(&["status"])["limits"],
        json!({"max_upload_mib_s": 7.0, "max_download_mib_s": null})
    );
    // The catalog's new id is listed from the peer's library at once (no new announce).
    assert_eq!(remote_ids(&c), ["cod5", "mystery"]);
    // The new static peer is dialled.
    assert_eq!(c.cli(&["wait-peers", "2", "--timeout", "20"]).code, 0);
    let done = c.wait_event("download-finished", |e| e["game_id"] == "cod5");
    // The same download went on at the new rate: begun once, never failed, no link lost.
    assert_eq!(c.events_named("download-begin").len(), 1);
    assert!(c.events_named("download-failed").is_empty());
    assert!(c.events_named("peer-lost").is_empty());
    let (after, rate) = crate::util::rate_since(&c, changed_ms, &done);
    assert!(
        after >= 32 * MIB && rate > 3.0 * 4.0,
        "{after} bytes after the reload: {rate:.1} MiB/s"
    );
    let ev = c.wait_event("config-reloaded", |e| e["applied"] != json!([]));
    assert_eq!(ev["needs_restart"], json!(["transfer_threads"]));
    // Still not applied, so still reported, and the human form says so.
    let human = c.cli(&["reload"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(
        human
            .stdout
            .contains("kept until the daemon restarts: transfer_threads"),
        "{}",
        human.stdout
    );

    // A bad config changes nothing: exit 1, kind bad-config, limits as they were.
    std::fs::write(&cfg, "max_upload_mib_s = \"fast\"\n").unwrap();
    let bad = c.cli(&["reload", "--json"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert_eq!(bad.json()["error"]["kind"], "bad-config", "{}", bad.stdout);
    assert!(
        bad.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_upload_mib_s"),
        "{}",
        bad.stdout
    );
    let missing = dir.path().join("gone.txt");
    std::fs::write(
        &cfg,
        format!("catalog = {:?}\n", missing.display().to_string()),
    )
    .unwrap();
    let bad = c.cli(&["reload"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(bad.stderr.contains("gone.txt"), "{}", bad.stderr);
    assert!(bad.stderr.contains("keeps the settings"), "{}", bad.stderr);
    c.wait_event("config-reload-failed", |e| {
        e["reason"].as_str().unwrap_or("").contains("gone.txt")
    });
    assert_eq!(
        c.json(&["status"])["limits"],
        json!({"max_upload_mib_s": 7.0, "max_download_mib_s": null})
    );
    assert_eq!(remote_ids(&c), ["cod5", "mystery"]);

    // SIGHUP does the same as `reload`.
    std::fs::write(
        &cfg,
        format!(
            "catalog = {:?}\nmax_upload_mib_s = 3\n",
            catalog.display().to_string()
        ),
    )
    .unwrap();
    // The first reload's event applied max_upload_mib_s too: wait for a new one.
    let seen = c.events_named("config-reloaded").len();
    c.signal(libc::SIGHUP);
    c.wait_new_event(seen, "config-reloaded", |e| {
        e["applied"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("max_upload_mib_s")))
    });
    assert_eq!(
        c.json(&["status"])["limits"],
        json!({"max_upload_mib_s": 3.0, "max_download_mib_s": null})
    );
    // Removed static peers stay linked (a reload drops no link).
    assert_eq!(c.peer_ids().len(), 2);

    // The config file moved aside is an error, not "every setting back to its default".
    std::fs::rename(&cfg, dir.path().join("aside.toml")).unwrap();
    let gone = c.cli(&["reload"]);
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(gone.stderr.contains("lanspreadd.toml"), "{}", gone.stderr);
    assert_eq!(
        c.json(&["status"])["limits"],
        json!({"max_upload_mib_s": 3.0, "max_download_mib_s": null})
    );
    assert_eq!(remote_ids(&c), ["cod5", "mystery"]);
}

#[test]
fn a_secret_set_by_reload_guards_new_links_and_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write_private(&secret, "a LAN party secret of some length\n");
    let cfg = dir.path().join("lanspreadd.toml");
    std::fs::write(&cfg, "").unwrap();
    let games = tempfile::tempdir().unwrap();
    let c = with_config("guarded", games.path(), &cfg);
    let open = tempfile::tempdir().unwrap();
    let before = Node::start("before", open.path());
    c.connect(&before);

    std::fs::write(
        &cfg,
        format!("secret_file = {:?}\n", secret.display().to_string()),
    )
    .unwrap();
    let r = c.json(&["reload"]);
    assert_eq!(r["applied"], json!(["secret_file"]), "{r}");
    // A peer without the secret is refused now; the link made before stays.
    let open2 = tempfile::tempdir().unwrap();
    let stranger = Node::start("stranger", open2.path());
    let out = stranger.cli(&["connect", &c.addr]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("LAN secret"), "{}", out.stderr);
    assert_eq!(c.peer_ids(), std::slice::from_ref(&before.peer_id));
    // A peer with it links.
    let friend_games = tempfile::tempdir().unwrap();
    let friend = crate::util::node_with_args(
        "friend",
        friend_games.path(),
        &["--secret-file", &secret.display().to_string()],
    );
    friend.connect(&c);
    assert_eq!(c.peer_ids().len(), 2);

    // The same secret written again is no change; a different one is.
    write_private(&secret, "a LAN party secret of some length");
    assert_eq!(c.json(&["reload"])["applied"], json!([]));
    write_private(&secret, "short");
    let bad = c.cli(&["reload"]);
    assert_eq!(bad.code, 1, "a secret too short is refused: {bad:?}");
    assert!(bad.stderr.contains("too short"), "{}", bad.stderr);
    assert!(c.events_named("peer-lost").is_empty(), "no link dropped");
}

/// A static peer a reload removed keeps its link while it lives (a reload drops none) but
/// is dialled no more: lost, it is not linked again when it comes back, while the peer
/// still configured, lost and back at the same moment, is.
#[test]
fn a_static_peer_removed_by_reload_is_not_dialled_again() {
    let (b_games, c_games) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut kept = Node::start("kept", b_games.path());
    let mut removed = Node::start("removed", c_games.path());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lanspreadd.toml");
    std::fs::write(
        &cfg,
        format!("peers = [{:?}, {:?}]\n", kept.addr, removed.addr),
    )
    .unwrap();
    let games = tempfile::tempdir().unwrap();
    let a = with_config("client", games.path(), &cfg);
    let linked = |n: &Node| a.peer_ids().contains(&n.peer_id);
    lanspread_scenarios::wait_for("both static peers linked", || {
        (linked(&kept) && linked(&removed)).then_some(())
    });
    std::fs::write(&cfg, format!("peers = [{:?}]\n", kept.addr)).unwrap();
    let done = a.json(&["reload"]);
    assert_eq!(done["applied"], json!(["peers"]), "{done}");
    assert!(linked(&removed), "a reload drops no link");

    kept.shutdown();
    removed.shutdown();
    lanspread_scenarios::wait_for("both links lost", || a.peer_ids().is_empty().then_some(()));
    kept.restart_at_same_address();
    removed.restart_at_same_address();
    lanspread_scenarios::wait_for("the configured peer linked again", || {
        linked(&kept).then_some(())
    });
    // Both came back together and are dialled on the same backoff: a few seconds more
    // for the removed one, had it been dialled still.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !linked(&removed),
        "the removed static peer was dialled again"
    );
    assert!(a.log().contains("static peer removed: no longer dialled"));
}

/// One address holds at most `max_links_per_address` links: a third identity from
/// loopback is refused and told why; a download over four lanes runs at the cap (data
/// connections are not links); a linked peer killed and started again (same id) is let
/// in at the cap, its new connection replacing the old; a reload lifts the cap for new
/// links.
#[test]
fn one_address_holds_at_most_its_cap_of_links() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lanspreadd.toml");
    std::fs::write(&cfg, "max_links_per_address = 2\n").unwrap();
    let games = tempfile::tempdir().unwrap();
    crate::util::sparse_game(games.path(), "cod5", 4, 8);
    let server = with_config("capped", games.path(), &cfg);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let lanes = ["--transfer-threads", "4"];
    let mut b = crate::util::node_with_args("b", dirs[0].path(), &lanes);
    let c = Node::start("c", dirs[1].path());
    let d = Node::start("d", dirs[2].path());
    b.connect(&server);
    c.connect(&server);

    let out = d.cli(&["connect", &server.addr]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("max_links_per_address"),
        "the refused peer hears why: {}",
        out.stderr
    );
    let mut linked = server.peer_ids();
    linked.sort();
    let mut want = vec![b.peer_id.clone(), c.peer_id.clone()];
    want.sort();
    assert_eq!(linked, want, "the third identity is not linked");

    b.download_ok("cod5", &["--no-install"]);
    assert!(
        server.log().contains("refused 1 link(s) lately"),
        "the refusal is logged:\n{}",
        server.log_tail()
    );

    b.kill();
    b.restart();
    b.connect(&server);
    assert_eq!(
        server.peer_ids().len(),
        2,
        "b's new connection replaced its link"
    );

    std::fs::write(&cfg, "max_links_per_address = 0\n").unwrap();
    let r = server.json(&["reload"]);
    assert_eq!(r["applied"], json!(["max_links_per_address"]), "{r}");
    d.connect(&server);
    assert_eq!(server.peer_ids().len(), 3);
}
