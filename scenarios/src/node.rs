//! One `lanspreadd` process under test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::{output_within, wait_for, CLI_LIMIT, WAIT};

/// Path of a built binary (`lanspreadd`, `lanspread`) in the target dir of this test.
pub fn bin(name: &str) -> PathBuf {
    // A test executable lives in target/<profile>/deps/, the lab's bench binary beside the
    // daemon in target/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    let parent = exe.parent().expect("target dir");
    let dir = if parent.ends_with("deps") {
        parent.parent().expect("target dir")
    } else {
        parent
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the scenarios through `cargo test --workspace` (which builds the binaries) \
         or `cargo build --bins` with the same profile first",
        path.display()
    );
    path
}

/// The fixture lab, generated once per target dir and shared read-only by scenarios.
pub fn lab() -> &'static Path {
    static LAB: OnceLock<PathBuf> = OnceLock::new();
    LAB.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let target = exe.parent().and_then(Path::parent).expect("target dir");
        let dir = target.join("lanspread-lab-v1");
        if !dir.join("complete").exists() {
            let tmp = target.join(format!("lanspread-lab-tmp-{}", std::process::id()));
            let _ = fs::remove_dir_all(&tmp);
            lanspread_fixtures::lab(&tmp).expect("writing the fixture lab");
            fs::write(tmp.join("complete"), b"").expect("lab marker");
            // Another test process may have won the race; theirs is identical.
            if fs::rename(&tmp, &dir).is_err() {
                let _ = fs::remove_dir_all(&tmp);
            }
        }
        dir
    })
}

/// A second games dir holding the same games as `games`, hard-linked (same bytes, nothing
/// copied): for a second daemon serving the same files (each daemon owns its games dir).
pub fn linked_copy(games: &Path) -> TempDir {
    let copy = tempfile::Builder::new()
        .prefix("ls-linked-")
        .tempdir_in(games.parent().unwrap_or(games))
        .expect("linked copy dir");
    link_tree(games, copy.path());
    copy
}

/// Recreates the tree `from` under `to`: folders made, files hard-linked. Daemon metadata
/// (`.lanspread*`) is left out: each copy's daemon keeps its own.
fn link_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).expect("read lab dir").flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".lanspread") {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type().expect("lab file type");
        if kind.is_dir() {
            fs::create_dir_all(&dst).expect("lab copy folder");
            link_tree(&src, &dst);
        } else if kind.is_file() {
            fs::hard_link(&src, &dst).expect("lab copy link");
        }
    }
}

/// Extra settings for a node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// `--listen` (default `127.0.0.1:0`).
    pub listen: Option<String>,
    /// `--catalog FILE` content.
    pub catalog: Option<String>,
    /// Reuse this state dir (same identity).
    pub state: Option<PathBuf>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Leave mDNS on (scenarios default to `--no-mdns`).
    pub mdns: bool,
    /// More daemon flags.
    pub args: Vec<String>,
    /// Extra environment variables for the daemon.
    pub env: Vec<(String, String)>,
    /// Tell the daemon its stderr is the journal, as systemd does (`JOURNAL_STREAM` set to
    /// the log file's device and inode).
    pub journal: bool,
    /// Start the daemon with this soft limit on open files (the hard one unchanged), as a
    /// login shell's 1,024 would.
    pub open_files_soft: Option<u64>,
    /// Start the daemon with this hard limit on open files (it cannot raise its soft one
    /// above it).
    pub open_files_hard: Option<u64>,
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Parses stdout as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// The stable error `kind` of a failed `--json` run: from `{"error":{"kind"}}`, a
    /// `*-failed` event, or the `install` part of a download-and-install document.
    pub fn error_kind(&self) -> String {
        let v = self.json();
        let kind = if v["error"].is_object() {
            &v["error"]["kind"]
        } else if v["install"].is_object() {
            &v["install"]["kind"]
        } else {
            &v["kind"]
        };
        kind.as_str()
            .unwrap_or_else(|| panic!("no error kind in {v}"))
            .to_owned()
    }
}

/// A running daemon with its own temp dir (state, socket, events).
pub struct Node {
    /// Name for messages.
    pub name: String,
    /// Its games dir.
    pub games: PathBuf,
    /// Its state dir.
    pub state: PathBuf,
    /// Its peer id.
    pub peer_id: String,
    /// Its QUIC address.
    pub addr: String,
    dir: TempDir,
    socket: PathBuf,
    events: PathBuf,
    opts: NodeOptions,
    child: Option<Child>,
    _lab_copy: Option<TempDir>,
}

impl Node {
    /// Starts a daemon on `games` and waits for `local-peer-ready`.
    pub fn start(name: &str, games: &Path) -> Node {
        Self::start_with(name, games, NodeOptions::default())
    }

    /// Like [`Node::start`] with options.
    pub fn start_with(name: &str, games: &Path, opts: NodeOptions) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ls-{name}-"))
            .tempdir()
            .expect("tempdir");
        // A daemon owns its games dir (it locks it), so scenarios running in parallel
        // cannot all serve the shared lab itself: a node on the lab serves a copy of its
        // own, hard-linked (same bytes, nothing copied; sources never write their files).
        let lab_copy = games.starts_with(lab()).then(|| {
            let copy = tempfile::Builder::new()
                .prefix("lanspread-lab-copy-")
                .tempdir_in(lab().parent().expect("target dir"))
                .expect("lab copy dir");
            link_tree(games, copy.path());
            copy
        });
        let games = lab_copy.as_ref().map_or(games, |c| c.path());
        let state = opts
            .state
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let mut node = Node {
            name: name.to_owned(),
            games: games.to_path_buf(),
            state,
            peer_id: String::new(),
            addr: String::new(),
            socket: dir.path().join("ctl.sock"),
            events: dir.path().join("events.jsonl"),
            dir,
            opts,
            child: None,
            _lab_copy: lab_copy,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let _ = fs::remove_file(&self.events);
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("lanspreadd"));
                c
            }
            None => Command::new(bin("lanspreadd")),
        };
        if !self.opts.mdns {
            cmd.arg("--no-mdns");
        }
        cmd.arg("--games")
            .arg(&self.games)
            .arg("--state")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--events")
            .arg(&self.events)
            .arg("--listen")
            .arg(self.opts.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .env("LANSPREAD_LOG", "info,quinn=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon.log");
        if self.opts.journal {
            use std::os::unix::fs::MetadataExt;
            let m = log.metadata().expect("daemon.log metadata");
            cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        }
        cmd.stderr(Stdio::from(log));
        if self.opts.open_files_soft.is_some() || self.opts.open_files_hard.is_some() {
            use std::os::unix::process::CommandExt;
            let (soft, hard) = (self.opts.open_files_soft, self.opts.open_files_hard);
            // SAFETY: between fork and exec only getrlimit/setrlimit run, both
            // async-signal-safe, on a struct on this stack.
            unsafe {
                cmd.pre_exec(move || {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if let Some(hard) = hard {
                        lim.rlim_max = lim.rlim_max.min(hard);
                    }
                    lim.rlim_cur = soft.unwrap_or(lim.rlim_cur).min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        // The scenarios describe who connects to whom; peer exchange (on by default for
        // users) would link their nodes further. A test of peer exchange passes
        // `--max-links` itself.
        if !self.opts.args.iter().any(|a| a == "--max-links") {
            cmd.args(["--max-links", "0"]);
        }
        cmd.args(&self.opts.args);
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        if let Some(catalog) = &self.opts.catalog {
            let path = self.dir.path().join("catalog.txt");
            fs::write(&path, catalog).expect("catalog");
            cmd.arg("--catalog").arg(path);
        }
        let mut child = cmd.spawn().expect("spawn lanspreadd");
        // A daemon that refused to start says why at once (no 30 s wait for an event).
        let ready = self.wait_until(
            "local-peer-ready",
            |_| true,
            || {
                let status = child.try_wait().ok().flatten()?;
                Some(format!("lanspreadd exited at start ({status})"))
            },
        );
        self.child = Some(child);
        self.peer_id = ready["peer_id"].as_str().expect("peer_id").to_owned();
        self.addr = ready["addr"].as_str().expect("addr").to_owned();
    }

    /// The control socket path.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone()
    }

    /// Runs `lanspread --socket <ours> args...` (failing the test past [`CLI_LIMIT`]).
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let out = output_within(
            Command::new(bin("lanspread"))
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
            CLI_LIMIT,
        );
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command with `--json`, asserts exit 0 and returns the document.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.cli(&a);
        assert_eq!(
            out.code,
            0,
            "{}: lanspread {args:?} failed: {}{}",
            self.name,
            out.stderr,
            self.log_tail()
        );
        out.json()
    }

    /// `connect` to another node, asserting success.
    pub fn connect(&self, other: &Node) -> Value {
        self.json(&["connect", &other.addr])
    }

    /// Runs `download GAME --json` with extra flags and returns the CLI output.
    pub fn download(&self, game: &str, flags: &[&str]) -> CliOutput {
        let mut a = vec!["--json", "download", game];
        a.extend_from_slice(flags);
        self.cli(&a)
    }

    /// Downloads and asserts success; returns the terminal JSON document.
    pub fn download_ok(&self, game: &str, flags: &[&str]) -> Value {
        let out = self.download(game, flags);
        assert_eq!(
            out.code,
            0,
            "{}: download {game} failed: {}{}",
            self.name,
            out.stderr,
            self.log_tail()
        );
        out.json()
    }

    /// Events about one game.
    pub fn game_events(&self, game: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["game_id"] == game)
            .collect()
    }

    /// Bytes per source peer id from `download-chunk-finished` events of a game.
    pub fn bytes_per_source(&self, game: &str) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for e in self
            .game_events(game)
            .iter()
            .filter(|e| e["event"] == "download-chunk-finished")
        {
            for (peer, bytes) in lanspread_control::chunk_sources(e) {
                *out.entry(peer).or_insert(0) += bytes;
            }
        }
        out
    }

    /// The local row of a game in `list-games`.
    pub fn local_row(&self, game: &str) -> Option<Value> {
        let v = self.json(&["list-games"]);
        v["local"]
            .as_array()?
            .iter()
            .find(|g| g["id"] == game)
            .cloned()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.events).unwrap_or_default();
        text.lines()
            .filter(|l| l.ends_with('}'))
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: bad event line {l:?}: {e}", self.name))
            })
            .collect()
    }

    /// Events named `name` so far.
    pub fn events_named(&self, name: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == name)
            .collect()
    }

    /// Waits for an event named `name` matching `pred`.
    pub fn wait_event(&self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_until(name, pred, || None)
    }

    /// Waits for an event named `name` matching `pred` among those after the first `seen`
    /// of that name (take `seen` from [`Node::events_named`] before causing the event), so
    /// that an earlier event that also matches is not taken for the awaited one.
    pub fn wait_new_event(&self, seen: usize, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_after(seen, name, pred, || None)
    }

    /// Like [`Node::wait_event`], failing at once when `gone` says why it never will come.
    fn wait_until(
        &self,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        gone: impl FnMut() -> Option<String>,
    ) -> Value {
        self.wait_after(0, name, pred, gone)
    }

    /// [`Node::wait_until`] among the events named `name` after the first `seen`.
    fn wait_after(
        &self,
        seen: usize,
        name: &str,
        pred: impl Fn(&Value) -> bool,
        mut gone: impl FnMut() -> Option<String>,
    ) -> Value {
        let start = Instant::now();
        loop {
            if let Some(e) = self
                .events_named(name)
                .into_iter()
                .skip(seen)
                .find(|e| pred(e))
            {
                return e;
            }
            if let Some(why) = gone() {
                panic!("{}: {why}{}", self.name, self.log_tail());
            }
            assert!(
                start.elapsed() < WAIT,
                "{}: no `{name}` event (after the first {seen}) within {WAIT:?}{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peer ids this node lists.
    pub fn peer_ids(&self) -> Vec<String> {
        let v = self.json(&["list-peers"]);
        v.as_array()
            .expect("peers array")
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    /// Asks the daemon to shut down and waits for a clean exit (code 0).
    pub fn shutdown(&mut self) {
        let out = self.cli(&["shutdown"]);
        assert_eq!(
            out.code, 0,
            "{}: shutdown failed: {}",
            self.name, out.stderr
        );
        let code = self.wait_exit();
        assert_eq!(
            code,
            Some(0),
            "{}: daemon exit status{}",
            self.name,
            self.log_tail()
        );
    }

    /// Kills the daemon with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
        }
        self.wait_exit();
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal to the running daemon (SIGSTOP/SIGCONT to freeze a source).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if start.elapsed() < WAIT => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{}: daemon did not exit{}", self.name, self.log_tail());
                }
            }
        }
    }

    /// Starts the daemon again with the same games and state dir (same peer id), on a
    /// new port.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "{}: restart of a running node",
            self.name
        );
        self.opts.state = Some(self.state.clone());
        self.spawn();
    }

    /// Starts the daemon again with the same games, state dir and address (a file server
    /// restarted by its service manager: the peers that dialled it redial it).
    pub fn restart_at_same_address(&mut self) {
        self.opts.listen = Some(self.addr.clone());
        self.restart();
    }

    /// Waits until `list-games --json` satisfies `pred`, returning it.
    pub fn wait_games(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_for(&format!("{}: {what}", self.name), || {
            let v = self.json(&["list-games"]);
            pred(&v).then_some(v)
        })
    }

    /// The whole daemon log (all runs of this node).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// The last lines of the daemon log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("\n--- {} daemon log (tail) ---\n{tail}", self.name)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
