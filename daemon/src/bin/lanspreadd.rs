//! `lanspreadd`: the daemon.

use std::time::Duration;

use clap::Parser;
use lanspread_daemon::{ConfigSource, Daemon, DaemonArgs};
use tokio::sync::watch;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long a stop may take after SIGTERM/SIGINT before the process exits anyway.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

fn main() -> std::process::ExitCode {
    // Before any other thread exists, so every thread inherits the blocked mask and only
    // the signal thread receives SIGTERM/SIGINT: a stop request is seen even while the
    // runtime's thread is stuck (a hung filesystem, say).
    let (signals, hups) = match signal_thread() {
        Ok(rx) => rx,
        Err(e) => {
            lanspread_cli::err_line(format_args!(
                "lanspreadd: cannot set up signal handling: {e}"
            ));
            return std::process::ExitCode::FAILURE;
        }
    };
    let target = lanspread_daemon::logging::init("info,quinn=warn", true);
    tracing::debug!(?target, "logging");
    let args = DaemonArgs::parse();
    // One thread drives QUIC, the control socket and the downloads; blocking work (scans,
    // hashing, file reads) goes to the blocking pool and writes to the io_uring thread.
    // Measured with the compare tool on 2 cores: S37 went from 0.46x to 0.61x of raw
    // quinn against the multi-thread runtime (cross-thread wakeups per packet).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            lanspread_cli::err_line(format_args!("lanspreadd: cannot start the runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args, signals, hups));
    // Blocking tasks still running (a scan of a hung disk) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            lanspread_cli::err_line(format_args!("lanspreadd: {}", report(&e)));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(
    args: DaemonArgs,
    mut signals: watch::Receiver<Option<&'static str>>,
    mut hups: watch::Receiver<u64>,
) -> anyhow::Result<()> {
    // Captures the directory the daemon was started from: relative paths (and a reload's)
    // resolve against it.
    let source = ConfigSource::new(args)?;
    // The working directory is never used: paths are absolute from here on, and a daemon
    // must not keep the directory it was started from busy (or resolve anything against it).
    std::env::set_current_dir("/").map_err(|e| anyhow::anyhow!("cannot change to /: {e}"))?;
    let daemon = tokio::select! {
        d = Daemon::start_from(source) => d?,
        _ = signals.changed() => {
            tracing::info!("stop requested during start-up");
            return Ok(());
        }
    };
    // systemd (Type=notify): ready only now that the control socket and QUIC are up. Without
    // NOTIFY_SOCKET this does nothing.
    let status = format!("peer {} listening on {}", daemon.peer_id(), daemon.addr());
    if let Err(e) = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ],
    ) {
        tracing::warn!("sd_notify: {e}");
    }
    // A SIGHUP that came during start-up is not lost: the loop below sees it at once.
    loop {
        tokio::select! {
            _ = signals.changed() => {
                let name = signals.borrow().unwrap_or("signal");
                tracing::info!("{name}");
                break;
            }
            _ = daemon.shutdown_requested() => {
                tracing::info!("shutdown requested");
                break;
            }
            _ = hups.changed() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                // The outcome is logged and emitted as an event by the reload itself. A
                // stop request wins over a reload stuck on a hung filesystem.
                tokio::select! {
                    _ = daemon.reload() => {}
                    _ = signals.changed() => {
                        let name = signals.borrow().unwrap_or("signal");
                        tracing::info!("{name} during a reload");
                        break;
                    }
                    _ = daemon.shutdown_requested() => {
                        tracing::info!("shutdown requested during a reload");
                        break;
                    }
                }
                let _ = sd_notify::notify(
                    false,
                    &[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)],
                );
            }
        }
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    daemon.stop().await;
    Ok(())
}

/// The stop signal's name once one came, and the count of SIGHUPs.
type Signals = (watch::Receiver<Option<&'static str>>, watch::Receiver<u64>);

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and so in every thread started
/// later) and starts the one thread that waits for them. The first SIGTERM/SIGINT asks the
/// daemon to stop and arms a watchdog that ends the process after [`STOP_DEADLINE`]; a
/// second one ends it at once. Each SIGHUP bumps the reload counter.
fn signal_thread() -> std::io::Result<Signals> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the calls
    // get valid pointers to it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    let (tx, rx) = watch::channel(None);
    let (hup_tx, hup_rx) = watch::channel(0u64);
    std::thread::Builder::new()
        .name("lanspread-signals".into())
        .spawn(move || {
            let mut stopping = false;
            loop {
                let mut sig = 0;
                // SAFETY: set is a valid, initialised signal set; sig a valid out pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if sig == libc::SIGHUP {
                    hup_tx.send_modify(|n| *n += 1);
                    continue;
                }
                let name = if sig == libc::SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if stopping {
                    lanspread_cli::err_line(format_args!("lanspreadd: {name} again: exiting now"));
                    std::process::exit(1);
                }
                stopping = true;
                tx.send_replace(Some(name));
                std::thread::spawn(|| {
                    std::thread::sleep(STOP_DEADLINE);
                    lanspread_cli::err_line(format_args!(
                        "lanspreadd: the stop did not finish within {} s: exiting",
                        STOP_DEADLINE.as_secs()
                    ));
                    std::process::exit(1);
                });
            }
        })?;
    Ok((rx, hup_rx))
}

/// The error and its causes, each said once: an IO error's text is often already part of
/// the message that wraps it ("path: No such file or directory (os error 2)").
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
