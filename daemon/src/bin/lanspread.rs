//! `lanspread`: the command-line client (`lanspread-cli`), with this package's daemon
//! plugged in for `demo` (two daemons in this process) and `man --daemon`. Parses, runs,
//! maps the result to an exit code.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use lanspread_cli::{run, Cli, DemoPeer, Host, HostedDaemon};
use lanspread_control::{ErrorKind, Failure};
use lanspread_daemon::{Daemon, DaemonArgs, DaemonConfig};

/// The daemon side of the CLI.
struct InProcess;

/// A daemon running in this process.
struct Hosted(Daemon);

impl HostedDaemon for Hosted {
    fn peer_id(&self) -> String {
        self.0.peer_id().to_string()
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    async fn stop(self) {
        self.0.stop().await;
    }
}

impl Host for InProcess {
    type Daemon = Hosted;

    fn daemon_command(&self) -> clap::Command {
        <DaemonArgs as clap::CommandFactory>::command()
    }

    async fn start_daemon(&self, peer: DemoPeer) -> Result<Hosted, Failure> {
        let config = DaemonConfig::loopback(peer.games, peer.state, peer.socket);
        Daemon::start(config)
            .await
            .map(Hosted)
            .map_err(|e| Failure::new(ErrorKind::Internal, e.to_string()))
    }
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's convention), --help/--version exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    lanspread_daemon::logging::init("warn", false);
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            lanspread_cli::err_line(format_args!("lanspread: cannot start the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli, &InProcess)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            lanspread_cli::err_line(format_args!(
                "lanspread: {}",
                lanspread_cli::terminal_safe(e.message())
            ));
            if json && !e.printed() {
                lanspread_cli::out_failure(&e);
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints a usage error as clap does and, under `--json`, also the one JSON document the
/// contract promises (`bad-request`); exits 2. `--help` and `--version` exit 0.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as Clap;
    let usage = !matches!(
        e.kind(),
        Clap::DisplayHelp | Clap::DisplayVersion | Clap::DisplayHelpOnMissingArgumentOrSubcommand
    );
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if usage && json {
        let rendered = e.render().to_string();
        // The error's paragraph (its first lines up to the usage), on one line.
        let para = rendered.split("\n\n").next().unwrap_or("usage error");
        let para: Vec<&str> = para.lines().map(str::trim).collect();
        let para = para.join(" ");
        let message = para.strip_prefix("error: ").unwrap_or(&para);
        let error = lanspread_cli::CliError::failed(ErrorKind::BadRequest, message);
        lanspread_cli::out_failure(&error);
    }
    let _ = e.print();
    ExitCode::from(if usage { 2 } else { 0 })
}
