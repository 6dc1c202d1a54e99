//! `lanspread download`: streams the download's events, shows an indicatif progress bar on
//! a terminal (plain lines when piped) and ends with the terminal event.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use lanspread_control::{Client, ErrorKind, EventKind, Failure, Reply, Request};

use crate::{output, unexpected, CliError};

/// Runs a download request to its end.
pub async fn download(
    c: &mut Client,
    game: &str,
    install: bool,
    detach: bool,
    json: bool,
) -> Result<(), CliError> {
    c.send(&Request::Download {
        game: game.to_owned(),
        install,
        detach,
    })
    .await?;
    let bar = (!json && std::io::stdout().is_terminal()).then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message(game.to_owned());
        b
    });
    let mut finished: Option<serde_json::Value> = None;
    loop {
        let reply = match c.next().await? {
            Some(r) => r,
            None => {
                return Err(CliError::failed(
                    ErrorKind::Internal,
                    "the daemon closed the connection before the download ended",
                ))
            }
        };
        let event = match reply {
            Reply::Started { game_id } => {
                super::print(json, &serde_json::json!({"started": game_id}), || {
                    format!("download of {game_id} started")
                });
                return Ok(());
            }
            Reply::Event(e) => e,
            other => return Err(unexpected(other)),
        };
        let value = serde_json::to_value(&event)
            .map_err(|e| CliError::failed(ErrorKind::Internal, e.to_string()))?;
        match &event.kind {
            EventKind::GotGameFiles { files, sources, .. } if bar.is_none() && !json => {
                outln!(
                    "{game}: {} files from {} source(s)",
                    files.len(),
                    sources.len()
                );
            }
            EventKind::DownloadBegin {
                bytes,
                chunks,
                resumed_chunks,
                resumed_bytes,
                ..
            } => match &bar {
                Some(b) => {
                    b.set_length(*bytes);
                    b.set_position(*resumed_bytes);
                }
                None if !json && *resumed_chunks > 0 => outln!(
                    "{game}: resuming, {} of {} already here, {} chunks to fetch",
                    output::bytes(*resumed_bytes),
                    output::bytes(*bytes),
                    chunks - resumed_chunks
                ),
                None if !json => outln!(
                    "{game}: downloading {} in {chunks} chunks",
                    output::bytes(*bytes)
                ),
                None => {}
            },
            EventKind::DownloadChunkFinished { len, .. } => {
                if let Some(b) = &bar {
                    b.inc(*len);
                }
            }
            EventKind::DownloadFinished {
                bytes,
                resumed_bytes,
                mib_per_s,
                duration_ms,
                ..
            } => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                if !json {
                    outln!(
                        "{game}: {}",
                        output::finished(*bytes, *resumed_bytes, *duration_ms, *mib_per_s)
                    );
                }
                if event.kind.ends_download(install) {
                    if json {
                        outln!("{value}");
                    }
                    return Ok(());
                }
                finished = Some(value);
            }
            EventKind::DownloadFailed { reason, kind, .. } => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                let f = Failure::new(*kind, format!("download of {game} failed: {reason}"));
                if json {
                    outln!("{value}");
                    return Err(CliError::FailedPrinted(f));
                }
                return Err(CliError::Failed(f));
            }
            EventKind::InstallBegin { .. } if !json => outln!("{game}: installing"),
            EventKind::InstallFinished { .. } => {
                let mut doc = finished.take().unwrap_or_else(|| serde_json::json!({}));
                doc["install"] = value;
                if json {
                    outln!("{doc}");
                } else {
                    outln!("{game}: installed");
                }
                return Ok(());
            }
            EventKind::InstallFailed { reason, kind, .. } => {
                let mut doc = finished.take().unwrap_or_else(|| serde_json::json!({}));
                doc["install"] = value;
                let f = Failure::new(*kind, format!("install of {game} failed: {reason}"));
                if json {
                    outln!("{doc}");
                    return Err(CliError::FailedPrinted(f));
                }
                return Err(CliError::Failed(f));
            }
            _ => {}
        }
    }
}

/// A spinner with a message while a request runs, only on a terminal and without --json.
pub fn spinner(json: bool, msg: &str) -> Option<ProgressBar> {
    if json || !std::io::stdout().is_terminal() {
        return None;
    }
    let s = ProgressBar::new_spinner();
    s.set_message(msg.to_owned());
    s.enable_steady_tick(std::time::Duration::from_millis(100));
    Some(s)
}
