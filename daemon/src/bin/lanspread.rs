//! `lanspread`: the command-line client. Parses, runs, maps the result to an exit code.

use std::process::ExitCode;

use clap::Parser;
use lanspread_daemon::cli::{run, Cli};

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's convention), --help/--version exit 0.
    let cli = Cli::parse();
    lanspread_daemon::logging::init("warn", false);
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lanspread: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanspread: {}", e.message());
            if json && !e.printed() {
                lanspread_daemon::cli::out_line(format_args!("{}", e.json()));
            }
            ExitCode::from(e.exit_code())
        }
    }
}
