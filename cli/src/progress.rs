//! `lanspread download`: streams the download's events, shows an indicatif progress bar on
//! a terminal (plain lines when piped) and ends with the terminal event.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use lanspread_control::{Client, ErrorKind, Event, EventKind, Failure, Reply, Request};

use crate::{output, unexpected, CliError};

/// Runs a download request to its end.
pub async fn download(
    c: &mut Client,
    game: &str,
    install: bool,
    detach: bool,
    json: bool,
) -> Result<(), CliError> {
    let shown = if json { Shown::Json } else { Shown::Human };
    watch(c, game, install, detach, shown).await.map(drop)
}

/// Runs a download without detaching or printing anything; returns its terminal
/// document (`download-finished`, with `install` when it installs). For `demo --json`,
/// whose one document holds it.
pub async fn download_quietly(
    c: &mut Client,
    game: &str,
    install: bool,
) -> Result<serde_json::Value, CliError> {
    watch(c, game, install, false, Shown::Quiet)
        .await
        .map(Option::unwrap_or_default)
}

/// What a download shows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shown {
    /// Lines (or a bar on a terminal).
    Human,
    /// The terminal document (or the start's), as JSON.
    Json,
    /// Nothing.
    Quiet,
}

/// Runs a download request to its end; its terminal document (`None`: detached).
async fn watch(
    c: &mut Client,
    game: &str,
    install: bool,
    detach: bool,
    shown: Shown,
) -> Result<Option<serde_json::Value>, CliError> {
    c.send(&Request::Download {
        game: game.to_owned(),
        install,
        detach,
    })
    .await?;
    let json = shown != Shown::Human;
    let mut watch = Watch {
        game,
        install,
        json,
        print: shown != Shown::Quiet,
        bar: (!json && std::io::stdout().is_terminal()).then(|| bar(game)),
        finished: None,
        hashing_said: false,
    };
    loop {
        let Some(reply) = c.next().await? else {
            return Err(lanspread_control::ControlError::Unreachable(
                "the daemon closed the connection before the download ended (stopped or \
                 crashed? a later `download` resumes it)"
                    .into(),
            )
            .into());
        };
        match reply {
            Reply::Started { game_id } => {
                if watch.print {
                    crate::print(json, &serde_json::json!({"started": game_id}), || {
                        format!("download of {game_id} started")
                    });
                }
                return Ok(None);
            }
            Reply::Event(e) => {
                if let Some(doc) = watch.on_event(&e)? {
                    return Ok(Some(doc));
                }
            }
            other => return Err(unexpected(other)),
        }
    }
}

fn bar(game: &str) -> ProgressBar {
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
}

/// What `download` shows while the events of one download arrive.
struct Watch<'a> {
    game: &'a str,
    install: bool,
    json: bool,
    /// Whether the JSON documents are printed (not for `demo --json`, which prints its
    /// own).
    print: bool,
    /// The progress bar, on a terminal without --json.
    bar: Option<ProgressBar>,
    /// `download-finished` as JSON, kept until the install's event completes the document.
    finished: Option<serde_json::Value>,
    /// Whether a source's hashing was shown (plain lines: said once).
    hashing_said: bool,
}

impl Watch<'_> {
    /// Shows one event; the terminal document when it ends the command.
    fn on_event(&mut self, event: &Event) -> Result<Option<serde_json::Value>, CliError> {
        let (game, json) = (self.game, self.json);
        let value = serde_json::to_value(event)
            .map_err(|e| CliError::failed(ErrorKind::Internal, e.to_string()))?;
        match &event.kind {
            EventKind::GotGameFiles { files, sources, .. } if self.bar.is_none() && !json => {
                outln!(
                    "{game}: {} files from {} source(s)",
                    files.len(),
                    sources.len()
                );
            }
            EventKind::DownloadHashing {
                done_bytes,
                total_bytes,
                ..
            } => match &self.bar {
                Some(b) => b.set_message(format!(
                    "{game}: a source hashes the game {}",
                    output::share(*done_bytes, *total_bytes)
                )),
                None if json || self.hashing_said => {}
                None => {
                    self.hashing_said = true;
                    outln!(
                        "{game}: waiting for a source to hash the game ({} of {} done)",
                        output::bytes(*done_bytes),
                        output::bytes(*total_bytes)
                    );
                }
            },
            EventKind::DownloadWaiting {
                waiting, wait_ms, ..
            } => {
                let said = if *waiting {
                    format!(
                        "{game}: no source can send now; waiting up to {} s for them",
                        wait_ms / 1000
                    )
                } else {
                    format!("{game}: a source can send again")
                };
                match &self.bar {
                    Some(b) if *waiting => b.set_message(said),
                    Some(b) => b.set_message(game.to_owned()),
                    None if json => {}
                    None => outln!("{said}"),
                }
            }
            EventKind::DownloadBegin {
                bytes,
                chunks,
                resumed_chunks,
                resumed_bytes,
                ..
            } => self.begin(*bytes, *chunks, *resumed_chunks, *resumed_bytes),
            EventKind::DownloadChunkFinished {
                len, resumed_bytes, ..
            } => {
                if let Some(b) = &self.bar {
                    b.inc(len.saturating_sub(*resumed_bytes));
                }
            }
            EventKind::DownloadFinished {
                bytes,
                resumed_bytes,
                mib_per_s,
                duration_ms,
                ..
            } => {
                if let Some(b) = &self.bar {
                    b.finish_and_clear();
                }
                if !json {
                    outln!(
                        "{game}: {}",
                        output::finished(*bytes, *resumed_bytes, *duration_ms, *mib_per_s)
                    );
                }
                if event.kind.ends_download(self.install) {
                    if json && self.print {
                        outln!("{value}");
                    }
                    return Ok(Some(value));
                }
                self.finished = Some(value);
            }
            EventKind::DownloadFailed { reason, kind, .. } => {
                if let Some(b) = &self.bar {
                    b.abandon();
                }
                let message = format!("download of {game} failed: {reason}");
                return Err(self.failed(Failure::new(*kind, message), &value));
            }
            EventKind::InstallBegin { .. } if !json => outln!("{game}: installing"),
            EventKind::InstallFinished { .. } => {
                let doc = self.with_install(value);
                if !json {
                    outln!("{game}: installed");
                } else if self.print {
                    outln!("{doc}");
                }
                return Ok(Some(doc));
            }
            EventKind::InstallFailed { reason, kind, .. } => {
                let doc = self.with_install(value);
                let message = format!("install of {game} failed: {reason}");
                return Err(self.failed(Failure::new(*kind, message), &doc));
            }
            _ => {}
        }
        Ok(None)
    }

    fn begin(&self, bytes: u64, chunks: u64, resumed_chunks: u64, resumed_bytes: u64) {
        let game = self.game;
        match &self.bar {
            Some(b) => {
                b.set_message(game.to_owned());
                b.set_length(bytes);
                b.set_position(resumed_bytes);
            }
            None if self.json => {}
            None if resumed_bytes > 0 => outln!(
                "{game}: resuming, {} of {} already here, {} chunks to fetch",
                output::bytes(resumed_bytes),
                output::bytes(bytes),
                chunks.saturating_sub(resumed_chunks)
            ),
            None => outln!(
                "{game}: downloading {} in {chunks} chunks",
                output::bytes(bytes)
            ),
        }
    }

    /// The `download-finished` document with the install's event under `install`.
    fn with_install(&mut self, install: serde_json::Value) -> serde_json::Value {
        let mut doc = self
            .finished
            .take()
            .unwrap_or_else(|| serde_json::json!({}));
        doc["install"] = install;
        doc
    }

    /// The command's failure; with --json its document is printed first.
    fn failed(&self, f: Failure, doc: &serde_json::Value) -> CliError {
        if self.json && self.print {
            outln!("{doc}");
            return CliError::FailedPrinted(f);
        }
        CliError::Failed(f)
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
