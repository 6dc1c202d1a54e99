//! The `lanspread` command-line client: clap definitions, one function per command, and
//! the mapping of outcomes to exit codes (0 ok, 1 refused/failed, 2 usage, 3 unreachable).
//! It speaks the control protocol (`lanspread-control`) and does not depend on the daemon:
//! `demo` and `man --daemon` get the daemon through [`Host`].
#![warn(missing_docs)]

/// `println!` for the CLI's output (see [`out_line`]).
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::out_line(format_args!($($t)*))
    };
}

mod demo;
mod host;
mod man;
mod output;
mod progress;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;

use lanspread_control::{Client, ControlError, ErrorKind, Failure, Reply, Request};

pub use host::{DemoPeer, Host, HostedDaemon};

/// The exit codes, in `--help` and the man page.
const EXIT_STATUS: &str = "Exit status: 0 ok; 1 the daemon refused or the operation failed (the message on stderr, \
with --json also the error document); 2 usage error (a bad flag, argument or address); 3 the daemon \
could not be reached.";

/// `lanspread` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "lanspread",
    version,
    about = "Control a lanspreadd daemon and share games on the LAN",
    after_help = EXIT_STATUS
)]
pub struct Cli {
    /// Control socket of the daemon [default: $LANSPREAD_SOCKET, $RUNTIME_DIRECTORY/lanspread.sock, /run/lanspread/lanspread.sock (root), $XDG_RUNTIME_DIR/lanspread/lanspread.sock, /tmp/lanspread-UID/lanspread.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print exactly one JSON document (events: one per line).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Peer id, listen address, games dir, active operations.
    Status,
    /// Dial a peer directly.
    Connect {
        /// host:port of the peer's QUIC listener.
        addr: String,
    },
    /// Local and aggregated remote games.
    ListGames,
    /// Known peers and their games.
    ListPeers,
    /// Block until N peers are connected.
    WaitPeers {
        /// Number of peers.
        n: usize,
        /// Give up after this many seconds (`inf`: never).
        #[arg(long, default_value = "30", value_parser = parse_timeout)]
        timeout: Duration,
    },
    /// Stream events until interrupted: a readable line each, JSON lines with --json.
    Events,
    /// Stop the daemon (goodbye to peers, clean exit).
    Shutdown,
    /// Download a game from the peers with its newest version, then install it.
    Download {
        /// Game id.
        game: String,
        /// Only download; do not extract into local/.
        #[arg(long)]
        no_install: bool,
        /// Start it and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// Extract a downloaded game's archives into <games>/<id>/local/.
    Install {
        /// Game id.
        game: String,
    },
    /// Remove <games>/<id>/local/ (the download stays).
    Uninstall {
        /// Game id.
        game: String,
    },
    /// Stop a running download (a later `download` resumes from what was verified) or
    /// install (an earlier install is kept).
    Cancel {
        /// Game id.
        game: String,
    },
    /// Delete a game's folder (partial or complete download, and its install).
    Remove {
        /// Game id.
        game: String,
        /// Do not ask for confirmation (needed when not on a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Change the bandwidth limits at once, running transfers included (until the daemon
    /// restarts or reloads its config); without options, show them.
    Limit {
        /// Upload limit in MiB/s, or `off` (also `0`).
        #[arg(long, value_name = "N|off", value_parser = parse_limit)]
        upload_mib_s: Option<f64>,
        /// Download limit in MiB/s, or `off` (also `0`).
        #[arg(long, value_name = "N|off", value_parser = parse_limit)]
        download_mib_s: Option<f64>,
    },
    /// Re-read the daemon's config file and apply what can change live (bandwidth limits,
    /// static peers, catalog, LAN secret, max_links), like SIGHUP; a bad config changes
    /// nothing (exit 1).
    Reload,
    /// Write a RAR5 store archive of a directory (no daemon needed).
    Pack {
        /// Directory to pack.
        dir: PathBuf,
        /// Archive to write.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Two local peers on loopback, one real download (checked), its throughput reported;
    /// everything cleaned up.
    Demo,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of `lanspread`, or of `lanspreadd` with --daemon.
    Man {
        /// The daemon's page instead.
        #[arg(long)]
        daemon: bool,
    },
}

/// How a command ended.
#[derive(Debug)]
pub enum CliError {
    /// The daemon refused or the operation failed (exit 1).
    Failed(Failure),
    /// The operation failed and its terminal JSON document was already printed (exit 1).
    FailedPrinted(Failure),
    /// The daemon could not be reached (exit 3).
    Unreachable(String),
}

impl From<Failure> for CliError {
    fn from(f: Failure) -> Self {
        Self::Failed(f)
    }
}

impl From<ControlError> for CliError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Unreachable(m) => Self::Unreachable(m),
            ControlError::Failed(f) => Self::Failed(f),
        }
    }
}

impl CliError {
    /// A failure of `kind` (exit 1).
    pub fn failed(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Failed(Failure::new(kind, message))
    }

    /// The process exit code: a bad request (a malformed address, `remove` without
    /// `--yes` off a terminal: the daemon's or the CLI's own check) is a usage error, as
    /// clap's are (exit 2).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(f) | CliError::FailedPrinted(f) if f.kind == ErrorKind::BadRequest => {
                2
            }
            CliError::Failed(_) | CliError::FailedPrinted(_) => 1,
            CliError::Unreachable(_) => 3,
        }
    }

    /// True when stdout already holds the JSON document for this failure.
    pub fn printed(&self) -> bool {
        matches!(self, CliError::FailedPrinted(_))
    }

    /// The message for stderr.
    pub fn message(&self) -> &str {
        match self {
            CliError::Failed(f) | CliError::FailedPrinted(f) => &f.message,
            CliError::Unreachable(m) => m,
        }
    }

    /// The stable kind, as in `{"error":{"message","kind"}}`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CliError::Failed(f) | CliError::FailedPrinted(f) => f.kind,
            CliError::Unreachable(_) => ErrorKind::DaemonUnreachable,
        }
    }

    /// The JSON document of this failure: `{"error":{"message","kind"}}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"message": self.message(), "kind": self.kind()}})
    }
}

/// Runs a parsed command line; `host` supplies the daemon for `demo` and `man --daemon`.
pub async fn run(cli: Cli, host: &impl Host) -> Result<(), CliError> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(lanspread_control::socket_path_from_env);
    let json = cli.json;
    let ask = |request: Request, spinner: Option<String>| one_shot(&socket, json, request, spinner);
    match cli.command {
        Command::Pack { dir, output } => pack(json, &dir, &output),
        Command::Demo => demo::run(host, json).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "lanspread", &mut script);
            out_bytes(&script);
            Ok(())
        }
        Command::Man { daemon } => {
            let cmd = if daemon {
                host.daemon_command()
            } else {
                <Cli as clap::CommandFactory>::command()
            };
            let page = man::man_page(cmd).map_err(|e| Failure::io("man page", &e))?;
            out_bytes(&page);
            Ok(())
        }
        Command::Download {
            game,
            no_install,
            detach,
        } => {
            let mut c = Client::connect(&socket).await?;
            progress::download(&mut c, &game, !no_install, detach, json).await
        }
        Command::Events => events(&socket, json).await,
        Command::Status => ask(Request::Status {}, None).await.map(drop),
        Command::Connect { addr } => ask(Request::Connect { addr }, None).await.map(drop),
        Command::ListGames => ask(Request::ListGames {}, None).await.map(drop),
        Command::ListPeers => ask(Request::ListPeers {}, None).await.map(drop),
        Command::WaitPeers { n, timeout } => {
            let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let request = Request::WaitPeers {
                count: n,
                timeout_ms,
            };
            // The daemon answers when the wait ends; give it a little more.
            let reply_within = timeout.saturating_add(reply_timeout());
            one_shot_within(&socket, json, request, None, Some(reply_within))
                .await
                .map(drop)
        }
        Command::Install { game } => {
            let msg = format!("installing {game}");
            ask(Request::Install { game }, Some(msg)).await.map(drop)
        }
        Command::Uninstall { game } => {
            let msg = format!("uninstalling {game}");
            ask(Request::Uninstall { game }, Some(msg)).await.map(drop)
        }
        Command::Cancel { game } => ask(Request::Cancel { game }, None).await.map(drop),
        Command::Limit {
            upload_mib_s,
            download_mib_s,
        } => {
            let request = Request::Limit {
                upload_mib_s,
                download_mib_s,
            };
            ask(request, None).await.map(drop)
        }
        Command::Reload => ask(Request::Reload {}, None).await.map(drop),
        Command::Remove { game, yes } => {
            if !yes {
                confirm_remove(&game)?;
            }
            let msg = format!("removing {game}");
            ask(Request::Remove { game }, Some(msg)).await.map(drop)
        }
        Command::Shutdown => {
            let mut c = ask(Request::Shutdown {}, None).await?;
            // Wait until the daemon has said goodbye and closed the socket.
            c.wait_closed(Duration::from_secs(10)).await;
            Ok(())
        }
    }
}

/// `pack`: a RAR5 store archive of a directory, no daemon involved.
fn pack(json: bool, dir: &std::path::Path, output: &std::path::Path) -> Result<(), CliError> {
    let s = lanspread_install::pack_dir(dir, output).map_err(|e| {
        let kind = match &e {
            lanspread_install::InstallError::Io { source, .. } => {
                lanspread_control::io_kind(source)
            }
            // What is in the folder (a name an archive cannot hold, a file that changed
            // while it was read): the pack failed, the command line was fine (exit 1).
            _ => ErrorKind::Io,
        };
        CliError::failed(kind, format!("pack failed: {e}"))
    })?;
    #[derive(Serialize)]
    struct Packed {
        archive: String,
        files: u64,
        dirs: u64,
        links: u64,
        bytes: u64,
    }
    let p = Packed {
        archive: output.display().to_string(),
        files: s.files,
        dirs: s.dirs,
        links: s.links,
        bytes: s.bytes,
    };
    print(json, &p, || {
        format!(
            "packed {} files, {} dirs, {} symlinks, {} into {}",
            p.files,
            p.dirs,
            p.links,
            output::bytes(p.bytes),
            p.archive
        )
    });
    Ok(())
}

/// `events`: every event as a line until the daemon closes the stream.
async fn events(socket: &std::path::Path, json: bool) -> Result<(), CliError> {
    let mut c = Client::connect(socket).await?;
    c.send(&Request::Events {}).await?;
    loop {
        match c.next().await? {
            Some(Reply::Event(e)) => {
                let line = if json {
                    serde_json::to_string(&e)
                        .map_err(|e| CliError::failed(ErrorKind::Internal, e.to_string()))?
                } else {
                    output::event_line(&e)
                };
                outln!("{line}");
            }
            Some(other) => return Err(unexpected(other)),
            None => return Ok(()),
        }
    }
}

/// Asks on the terminal before `remove` deletes files; without a terminal, `--yes` is
/// required.
fn confirm_remove(game: &str) -> Result<(), CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(CliError::failed(
            ErrorKind::BadRequest,
            format!("remove deletes every file of {game}; pass --yes to confirm"),
        ));
    }
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "delete every file of {game} from the games dir? [y/N] "
    );
    let _ = err.flush();
    drop(err);
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::failed(
            ErrorKind::Cancelled,
            format!("{game} kept"),
        ))
    }
}

/// How long a quick request (status, lists, connect, shutdown) may wait for its reply: a
/// daemon that is stopped (SIGSTOP) or wedged still accepts connections, and the CLI must
/// then say so (exit 3), not hang. `LANSPREAD_REPLY_TIMEOUT_MS` overrides it (tests).
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

fn reply_timeout() -> Duration {
    std::env::var("LANSPREAD_REPLY_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(REPLY_TIMEOUT, Duration::from_millis)
}

/// Writes one line of output. When its reader has gone away (`lanspread status | head
/// -1`), the process ends quietly with exit 0 instead of panicking like `println!` (SIGPIPE
/// stays ignored, so a control socket the daemon closed is still an error with a message).
pub fn out_line(args: std::fmt::Arguments<'_>) {
    let line = args.to_string();
    out_bytes(format!("{}\n", terminal_safe(&line)).as_bytes());
}

/// Writes a failure's JSON document (`--json`) to stdout as one line; a stdout whose
/// reader went away is ignored, so the exit code stays the failure's (not [`out_line`]'s
/// quiet 0: a script reading only the exit code must still see the failure).
pub fn out_failure(error: &CliError) {
    use std::io::Write;
    let line = format!("{}\n", error.json());
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
}

/// Writes one line to stderr, ignoring a stderr that is closed or whose reader went away
/// (`eprintln!` panics then: in a thread that was to end the process, the process would
/// live on). The text is written as given: callers escape what a peer chose.
pub fn err_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// `text` with its control characters but newline and tab escaped as `\u001b`: what the
/// CLI prints may hold names and reasons a peer chose (a file name, a refusal), and an
/// escape sequence among them would drive the reader's terminal (colours, its title,
/// the clipboard). The form is JSON's own escape, so `--json` output stays the same
/// document (serde_json leaves DEL and U+0080–U+009F as they are; inside a string the
/// escape decodes to the same character, and JSON has none outside strings).
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Writes `bytes` to stdout as [`out_line`] does: a reader gone away ends the process
/// quietly (`lanspread man | head -1`).
fn out_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let res = out.write_all(bytes).and_then(|()| out.flush());
    if let Err(e) = res {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        err_line(format_args!("lanspread: cannot write the output: {e}"));
        std::process::exit(1);
    }
}

/// `--timeout` of `wait-peers`: seconds, `inf` for no limit; not negative or NaN.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs.is_nan() || secs < 0.0 {
        return Err(format!("{s} is not a number of seconds >= 0"));
    }
    // `inf` and anything past a century mean "no limit" (what the daemon's timer holds).
    Ok(Duration::try_from_secs_f64(secs)
        .unwrap_or(Duration::MAX)
        .min(Duration::from_secs(100 * 365 * 86_400)))
}

/// One request, one rendered reply; `spinner` shows a message on a terminal meanwhile.
/// Quick requests get [`REPLY_TIMEOUT`]; installs and uninstalls take as long as they take.
async fn one_shot(
    socket: &std::path::Path,
    json: bool,
    request: Request,
    spinner: Option<String>,
) -> Result<Client, CliError> {
    let within = match request {
        Request::Install { .. } | Request::Uninstall { .. } | Request::Remove { .. } => None,
        // A dial may take a name lookup, the QUIC handshake and the hello exchange.
        Request::Connect { .. } => Some(reply_timeout() * 3),
        _ => Some(reply_timeout()),
    };
    one_shot_within(socket, json, request, spinner, within).await
}

async fn one_shot_within(
    socket: &std::path::Path,
    json: bool,
    request: Request,
    spinner: Option<String>,
    within: Option<Duration>,
) -> Result<Client, CliError> {
    let mut c = Client::connect(socket).await?;
    let spinner = spinner.and_then(|msg| progress::spinner(json, &msg));
    let reply = match within {
        None => c.request(&request).await,
        Some(limit) => match tokio::time::timeout(limit, c.request(&request)).await {
            Ok(reply) => reply,
            Err(_) => Err(ControlError::Unreachable(format!(
                "lanspreadd at {} did not answer within {:.1} s (is it stopped or overloaded?)",
                socket.display(),
                limit.as_secs_f64()
            ))),
        },
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    render(json, reply?)?;
    Ok(c)
}

pub(crate) fn unexpected(reply: Reply) -> CliError {
    match reply {
        Reply::Error { message, kind } => CliError::failed(kind, message),
        other => CliError::failed(
            ErrorKind::Internal,
            format!("unexpected reply from the daemon: {other:?}"),
        ),
    }
}

pub(crate) fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) {
    if json {
        match serde_json::to_string(value) {
            Ok(s) => outln!("{s}"),
            Err(e) => err_line(format_args!("lanspread: cannot encode output: {e}")),
        }
    } else {
        outln!("{}", human());
    }
}

fn render(json: bool, reply: Reply) -> Result<(), CliError> {
    match reply {
        Reply::Status(s) => print(json, &s, || output::status(&s)),
        Reply::Connected(p) => print(json, &p, || {
            format!(
                "connected to {} at {} ({} games)",
                p.peer_id,
                p.addr,
                p.games.len()
            )
        }),
        Reply::Games(g) => print(json, &g, || output::games(&g)),
        Reply::Peers(p) => print(json, &p, || output::peers(&p)),
        Reply::Limits(l) => print(json, &l, || format!("limits: {}", output::limits(&l))),
        Reply::Reloaded(r) => print(json, &r, || output::reloaded(&r)),
        Reply::Ok => print(json, &serde_json::json!({"ok": true}), || "ok".into()),
        Reply::Event(e) => print(json, &e, || match &e.kind {
            lanspread_control::EventKind::InstallFinished { game_id } => {
                format!("installed {game_id}")
            }
            lanspread_control::EventKind::UninstallFinished { game_id } => {
                format!("uninstalled {game_id}")
            }
            other => format!("{other:?}"),
        }),
        other => return Err(unexpected(other)),
    }
    Ok(())
}

/// A limit on the command line: MiB/s, or `off` (sent as 0, which lifts it).
fn parse_limit(s: &str) -> Result<f64, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(0.0);
    }
    match s.parse::<f64>() {
        Ok(0.0) => Ok(0.0),
        // Out of range is a usage error here (exit 2), as a word is, not the daemon's.
        Ok(v) => lanspread_control::check_limit("limit", v),
        _ => Err(format!("{s:?} is not a number of MiB/s or `off`")),
    }
}
