//! Resolving flags over the config file.

use super::*;

fn args(extra: &[&str]) -> DaemonArgs {
    let mut v = vec!["lanspreadd"];
    v.extend_from_slice(extra);
    DaemonArgs::parse_from(v)
}

/// A config file holding `text` (`d.toml` in a temp dir kept alive by the first value).
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("d.toml");
    std::fs::write(&cfg, text).unwrap();
    (t, cfg)
}

#[test]
fn peer_addresses_are_checked_before_any_lookup() {
    for ok in ["10.0.0.1:41741", "server.lan:1", "[::1]:41741"] {
        check_host_port(ok).unwrap();
    }
    for (bad, says) in [
        ("10.0.0.1:99999", "not a number in 1..=65535"),
        ("10.0.0.1:0", "not a number in 1..=65535"),
        ("10.0.0.1", "not host:port"),
        (":41741", "not host:port"),
        ("::1:41741", "brackets"),
    ] {
        let err = check_host_port(bad).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
        assert!(err.message.contains(says), "{bad}: {err}");
    }
}

#[test]
fn flags_win_over_the_file() {
    let (_t, cfg) = config_file(
        "games = \"/g\"\nstate = \"/s\"\nlisten = \"127.0.0.1:9\"\nmdns = false\npeers = [\"10.0.0.1:41741\"]\ntransfer_threads = 2\nmax_links = 5\n",
    );
    let c = args(&[
        "--config",
        cfg.to_str().unwrap(),
        "--games",
        "/other",
        "--socket",
        "/x.sock",
    ])
    .resolve()
    .unwrap();
    assert_eq!(c.games, PathBuf::from("/other"));
    assert_eq!(c.state, PathBuf::from("/s"));
    assert_eq!(c.listen, "127.0.0.1:9".parse().unwrap());
    assert!(!c.mdns);
    assert_eq!(c.peers, ["10.0.0.1:41741"]);
    assert_eq!(c.transfer_threads, 2);
    assert_eq!(c.max_links, 5);
}

#[test]
fn relative_paths_become_absolute_before_the_daemon_leaves_its_directory() {
    let (_t, cfg) = config_file("games = \"g\"\nstate = \"/s\"\nmdns = false\n");
    let c = args(&[
        "--config",
        cfg.to_str().unwrap(),
        "--socket",
        "run/x.sock",
        "--events",
        "-",
    ])
    .resolve()
    .unwrap()
    .absolute()
    .unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(c.games, cwd.join("g"));
    assert_eq!(c.state, PathBuf::from("/s"));
    assert_eq!(c.socket, cwd.join("run/x.sock"));
    assert_eq!(c.events, Some(PathBuf::from("-")), "stdout stays stdout");
}

#[test]
fn unknown_keys_and_missing_dirs_are_errors() {
    let (_t, cfg) = config_file("games = \"/g\"\nstate = \"/s\"\ngamez = 1\n");
    let err = args(&["--config", cfg.to_str().unwrap()])
        .resolve()
        .unwrap_err();
    assert!(err.to_string().contains("gamez"), "{err}");
    let err = args(&["--state", "/s", "--socket", "/x"])
        .resolve()
        .unwrap_err();
    assert!(err.to_string().contains("--games"), "{err}");
}

#[test]
fn limits_must_be_positive() {
    let err = args(&["--games", "/g", "--state", "/s", "--max-upload-mib-s", "0"])
        .resolve()
        .unwrap_err();
    assert!(err.to_string().contains("max_upload_mib_s"), "{err}");
    let c = args(&[
        "--games",
        "/g",
        "--state",
        "/s",
        "--max-download-mib-s",
        "12.5",
    ])
    .resolve()
    .unwrap();
    assert_eq!(c.max_download_mib_s, Some(12.5));
}

/// The contract: config keys are the flag names with `_` for `-`. (A value of the wrong
/// type is another error than an unknown key.)
#[test]
fn every_flag_is_a_config_key_under_its_name() {
    use clap::CommandFactory;
    let cmd = DaemonArgs::command();
    let mut checked = 0;
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        // `--config` names the file; `--no-mdns` is `mdns = false`.
        if matches!(long, "config" | "no-mdns" | "help" | "version") {
            continue;
        }
        let key = long.replace('-', "_");
        let text = format!("{key} = []\n");
        if let Err(e) = toml::from_str::<FileConfig>(&text) {
            assert!(!e.to_string().contains("unknown field"), "{key}: {e}");
        }
        checked += 1;
    }
    assert!(checked >= 15, "{checked}");
    let parsed: FileConfig = toml::from_str("mdns_interface = [\"lo\"]\n").unwrap();
    assert_eq!(parsed.mdns_interfaces, ["lo"]);
}

/// The packaged config file documents every key: uncommented, it parses with
/// unknown keys refused, and it names every key the daemon reads.
#[test]
fn the_packaged_config_documents_every_key() {
    let text = include_str!("../../debian/lanspreadd.toml");
    let mut keys = Vec::new();
    let uncommented: String = text
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("# ")?;
            let (key, _) = l.split_once(" = ")?;
            if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.push(key.to_owned());
                Some(format!("{l}\n"))
            } else {
                None
            }
        })
        .collect();
    let parsed: FileConfig = toml::from_str(&uncommented).unwrap();
    assert!(parsed.games.is_some() && parsed.metrics_allow_remote.is_some());
    assert_eq!(parsed.peers, ["fileserver.lan:41741"]);
    // Every field of FileConfig, by its debug name, is documented.
    let debug = format!("{:?}", FileConfig::default());
    let fields: Vec<&str> = debug
        .split(['{', ','])
        .filter_map(|part| part.split_once(": ").map(|(name, _)| name.trim()))
        .collect();
    assert!(fields.len() >= 18, "{fields:?}");
    for f in fields {
        assert!(
            keys.iter().any(|k| k == f),
            "{f} is not in debian/lanspreadd.toml"
        );
    }
}

#[test]
fn metrics_stay_on_loopback_unless_allowed() {
    let base = ["--games", "/g", "--state", "/s"];
    let c = args(&[&base[..], &["--metrics-listen", "127.0.0.1:9101"]].concat())
        .resolve()
        .unwrap();
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9101".parse().unwrap()));
    let err = args(&[&base[..], &["--metrics-listen", "0.0.0.0:9101"]].concat())
        .resolve()
        .unwrap_err();
    assert!(err.to_string().contains("--metrics-allow-remote"), "{err}");
    let c = args(
        &[
            &base[..],
            &["--metrics-listen", "[::]:9101", "--metrics-allow-remote"],
        ]
        .concat(),
    )
    .resolve()
    .unwrap();
    assert!(c.metrics_listen.is_some());
    assert_eq!(
        args(&base).resolve().unwrap().metrics_listen,
        None,
        "off by default"
    );
}

/// Each of `bad` given to `flag` is refused with an error naming `key`.
fn refused(flag: &str, bad: &[&str], key: &str) {
    let base = ["--games", "/g", "--state", "/s"];
    for v in bad {
        let err = args(&[&base[..], &[flag, v]].concat())
            .resolve()
            .unwrap_err();
        assert!(err.to_string().contains(key), "{flag} {v}: {err}");
    }
}

#[test]
fn transfer_threads_are_bounded() {
    let base = ["--games", "/g", "--state", "/s"];
    refused("--transfer-threads", &["0", "65"], "transfer_threads");
    let c = args(&[&base[..], &["--transfer-threads", "4"]].concat())
        .resolve()
        .unwrap();
    assert_eq!(c.transfer_threads, 4);
    let auto = args(&base).resolve().unwrap().transfer_threads;
    assert!((1..=DEFAULT_TRANSFER_THREADS_CAP).contains(&auto), "{auto}");
}

#[test]
fn the_udp_payload_bound_is_checked_and_read_from_the_file() {
    let base = ["--games", "/g", "--state", "/s"];
    refused("--max-udp-payload", &["1199", "65528"], "max_udp_payload");
    assert_eq!(args(&base).resolve().unwrap().max_udp_payload, 1452);
    let (_t, cfg) = config_file("max_udp_payload = 8952\n");
    let c = args(&[&base[..], &["--config", cfg.to_str().unwrap()]].concat());
    assert_eq!(c.resolve().unwrap().max_udp_payload, 8952);
}

#[test]
fn a_relative_config_file_is_read_from_where_the_daemon_was_started() {
    let (t, _) = config_file("games = \"/g\"\nstate = \"/s\"\nmax_links = 7\n");
    let source = super::ConfigSource::with_base(args(&["--config", "d.toml"]), t.path().into());
    // Not where the test runs: the daemon reads it after changing to `/`.
    let c = source.load().unwrap();
    assert_eq!(c.max_links, 7);
    assert_eq!(
        source.file().unwrap(),
        t.path().join("d.toml").display().to_string()
    );
}
