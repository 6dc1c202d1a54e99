//! Human-readable renderings of replies.

use lanspread_control::api::{GamesList, PeerInfo, StatusInfo};

/// Bytes with a binary unit.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `upload 12 MiB/s, download unlimited`.
pub fn limits(l: &lanspread_control::api::Limits) -> String {
    let rate = |l: Option<f64>| l.map_or("unlimited".to_owned(), |v| format!("{v} MiB/s"));
    format!(
        "upload {}, download {}",
        rate(l.max_upload_mib_s),
        rate(l.max_download_mib_s)
    )
}

/// What `reload` did, in a line or two.
pub fn reloaded(r: &lanspread_control::api::ReloadInfo) -> String {
    let from = r
        .config
        .as_deref()
        .map_or("flags only (no config file)".to_owned(), str::to_owned);
    let mut out = if r.applied.is_empty() {
        format!("reloaded {from}: nothing to change")
    } else {
        format!("reloaded {from}: applied {}", r.applied.join(", "))
    };
    if !r.needs_restart.is_empty() {
        out.push_str(&format!(
            "\nchanged but kept until the daemon restarts: {}",
            r.needs_restart.join(", ")
        ));
    }
    out
}

/// `37.0% (1.2 GiB of 3.3 GiB)`: how far something measured in bytes is.
pub fn share(done: u64, total: u64) -> String {
    let p = lanspread_control::api::percent(done, total).unwrap_or(100.0);
    format!("{p:.1}% ({} of {})", bytes(done), bytes(total))
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
    let mut t = Table::new();
    // Plain aligned columns like `docker ps`; wrapped to the terminal when there is one.
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(headers.iter().copied())
        .add_rows(rows.iter().cloned());
    for col in t.column_iter_mut() {
        col.set_padding((0, 2))
            .set_cell_alignment(CellAlignment::Left);
    }
    t.lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// One event as a readable line: `HH:MM:SS.mmm name key=value ...` (UTC; lists are
/// shown by their length).
pub fn event_line(e: &lanspread_control::api::Event) -> String {
    let ms = e.ts_ms % 86_400_000;
    let mut line = format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
    let Ok(serde_json::Value::Object(map)) = serde_json::to_value(e) else {
        return line;
    };
    if let Some(name) = map.get("event").and_then(|v| v.as_str()) {
        line.push(' ');
        line.push_str(name);
    }
    for (k, v) in map.iter().filter(|(k, _)| *k != "event" && *k != "ts_ms") {
        let shown = match v {
            serde_json::Value::String(s) => s.clone(),
            // Floats (rates) to one decimal, not 15.
            serde_json::Value::Number(n) if n.is_f64() => {
                format!("{:.1}", n.as_f64().unwrap_or_default())
            }
            // Short lists of names in full; long ones by count.
            serde_json::Value::Array(a) => list(a),
            other => other.to_string(),
        };
        line.push_str(&format!(" {k}={shown}"));
    }
    line
}

/// An event's list field: its items (a file's `path`, or the item itself), up to four,
/// then how many more.
fn list(items: &[serde_json::Value]) -> String {
    const SHOWN: usize = 4;
    let name = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => match (o.get("path").or(o.get("id")), o.get("size")) {
            (Some(serde_json::Value::String(p)), Some(size)) => {
                format!("{p}({})", bytes(size.as_u64().unwrap_or(0)))
            }
            (Some(serde_json::Value::String(p)), None) => p.clone(),
            _ => v.to_string(),
        },
        other => other.to_string(),
    };
    let mut shown: Vec<String> = items.iter().take(SHOWN).map(name).collect();
    if items.len() > SHOWN {
        shown.push(format!("+{} more", items.len() - SHOWN));
    }
    format!("[{}]", shown.join(","))
}

/// The line that ends a download: what was fetched, and what a resumed one reused.
pub fn finished(total: u64, resumed: u64, duration_ms: u64, mib_per_s: f64) -> String {
    let fetched = total.saturating_sub(resumed);
    let took = if duration_ms >= 10_000 {
        format!("{:.1} s", duration_ms as f64 / 1000.0)
    } else {
        format!("{duration_ms} ms")
    };
    if resumed == 0 {
        format!(
            "downloaded {} in {took} ({mib_per_s:.1} MiB/s)",
            bytes(total)
        )
    } else if fetched == 0 {
        format!(
            "all {} were already verified by an earlier attempt; checked and committed in {took}",
            bytes(total)
        )
    } else {
        format!(
            "fetched {} in {took} ({mib_per_s:.1} MiB/s); {} resumed from an earlier attempt",
            bytes(fetched),
            bytes(resumed)
        )
    }
}

/// `status`.
pub fn status(s: &StatusInfo) -> String {
    let ops = if s.operations.is_empty() {
        "none".to_owned()
    } else {
        s.operations
            .iter()
            .map(|o| match (&o.hashing, o.percent) {
                (Some(h), _) => format!(
                    "{} {}: waiting for a source to hash it, {}",
                    o.kind,
                    o.game_id,
                    share(h.done_bytes, h.total_bytes)
                ),
                (None, Some(p)) => format!(
                    "{} {} {p:.1}% ({} of {}){}",
                    o.kind,
                    o.game_id,
                    bytes(o.done_bytes),
                    bytes(o.total_bytes),
                    if o.state == "waiting" {
                        ", waiting for its sources"
                    } else {
                        ""
                    }
                ),
                (None, None) => format!("{} {}", o.kind, o.game_id),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut notes = String::new();
    for p in &s.problems {
        notes.push_str(&format!("\nnot offered: {} ({})", p.game_id, p.reason));
    }
    if let Some(m) = &s.metrics {
        notes.push_str(&format!("\nmetrics:     http://{m}/metrics"));
    }
    if s.events_dropped > 0 {
        notes.push_str(&format!(
            "\nevents:      {} lines dropped (the events reader did not keep up)",
            s.events_dropped
        ));
    }
    format!(
        "peer id:     {}\nlisten:      {}\ngames dir:   {}\npeers:       {}\noperations:  {}\nlimits:      {}\nversion:     {}{notes}",
        s.peer_id,
        s.addr,
        s.games_dir,
        s.peers,
        ops,
        limits(&s.limits),
        s.version
    )
}

/// `list-games`.
pub fn games(g: &GamesList) -> String {
    let local: Vec<Vec<String>> = g
        .local
        .iter()
        .map(|l| {
            vec![
                l.id.to_string(),
                l.version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                format!("{:?}", l.availability),
                if l.installed { "yes" } else { "no" }.into(),
                bytes(l.size),
            ]
        })
        .collect();
    let remote: Vec<Vec<String>> = g
        .remote
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.eti_game_version.to_string(),
                r.peer_count.to_string(),
                bytes(r.size),
            ]
        })
        .collect();
    let mut out = String::from("LOCAL\n");
    if local.is_empty() {
        out.push_str("(no games)\n");
    } else {
        out.push_str(&table(
            &["GAME", "VERSION", "STATE", "INSTALLED", "SIZE"],
            &local,
        ));
        out.push('\n');
        for l in &g.local {
            if let Some(why) = &l.reason {
                out.push_str(&format!("{} is not offered to peers: {why}\n", l.id));
            }
        }
    }
    out.push_str("\nREMOTE\n");
    if remote.is_empty() {
        out.push_str("(no games offered by peers)");
    } else {
        out.push_str(&table(&["GAME", "NEWEST", "PEERS", "SIZE"], &remote));
    }
    out
}

/// `list-peers`.
pub fn peers(p: &[PeerInfo]) -> String {
    if p.is_empty() {
        return "(no peers)".into();
    }
    let rows: Vec<Vec<String>> = p
        .iter()
        .map(|p| {
            let games = p
                .games
                .iter()
                .map(|g| format!("{}@{}", g.id, g.version))
                .chain(p.partial.iter().map(|g| {
                    let (n, of) = (g.chunks_verified, g.chunks);
                    format!("{}@{} (partial {n}/{of} units)", g.id, g.version)
                }))
                .collect::<Vec<_>>()
                .join(" ");
            vec![
                p.peer_id.to_string(),
                p.addr.clone(),
                p.games.len().to_string(),
                games,
            ]
        })
        .collect();
    table(&["PEER ID", "ADDRESS", "GAMES", "LIBRARY"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_reaches_the_terminal_has_no_escape_sequences() {
        assert!(matches!(
            crate::terminal_safe("plain\ttext\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        // A refusal that sets the window title, rings and rewrites the line.
        let shown = crate::terminal_safe("x\u{1b}]0;owned\u{7}\ry\u{9b}31m");
        assert_eq!(shown, "x\\u001b]0;owned\\u0007\\u000dy\\u009b31m");
        assert!(!shown.chars().any(char::is_control));
        // JSON output stays the same document: serde_json leaves DEL and C1 characters
        // raw, and their escapes decode to them again.
        let doc = serde_json::json!({"reason": "a\u{7f}b\u{85}c\u{1b}d"});
        let text = doc.to_string();
        let shown = crate::terminal_safe(&text);
        assert!(!shown.chars().any(char::is_control), "{shown}");
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn peers_show_their_partial_copies_after_their_games() {
        use lanspread_control::api::{GameId, GameVersion, PartialRow, PeerId, Version};
        let v = Version::parse("20250101").unwrap();
        let id = |s: &str| GameId::new(s).unwrap();
        let row = PeerInfo {
            peer_id: PeerId::from_spki(b"k"),
            addr: "10.0.0.2:4000".into(),
            games: vec![GameVersion {
                id: id("ggoo"),
                version: v,
            }],
            partial: vec![PartialRow {
                id: id("cod5"),
                version: v,
                chunks_verified: 3,
                chunks: 9,
            }],
        };
        let text = peers(&[row]);
        assert!(
            text.contains("ggoo@20250101 cod5@20250101 (partial 3/9 units)"),
            "{text}"
        );
    }

    #[test]
    fn units_and_tables() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        let t = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y");
    }

    #[test]
    fn readable_event_lines() {
        let e = lanspread_control::api::Event {
            ts_ms: 86_400_000 + 3_723_004,
            kind: lanspread_control::api::EventKind::DownloadFailed {
                game_id: lanspread_control::api::GameId::new("cod5").unwrap(),
                reason: "no peers".into(),
                kind: lanspread_control::api::ErrorKind::NoSources,
                sources: Vec::new(),
            },
        };
        assert_eq!(
            event_line(&e),
            "01:02:03.004 download-failed game_id=cod5 kind=no-sources reason=no peers sources=[]"
        );
        let id = lanspread_control::api::GameId::new("cod5").unwrap();
        let rate = lanspread_control::api::Event {
            ts_ms: 0,
            kind: lanspread_control::api::EventKind::DownloadFinished {
                game_id: id.clone(),
                version: lanspread_control::api::Version::parse("20250101").unwrap(),
                bytes: 1 << 20,
                chunks: 1,
                duration_ms: 3,
                resumed_bytes: 0,
                mib_per_s: 333.33333333333337,
                mbit_per_s: 2796.2026666666668,
            },
        };
        let line = event_line(&rate);
        assert!(
            line.contains("mbit_per_s=2796.2 mib_per_s=333.3 "),
            "{line}"
        );
        let files = lanspread_control::api::Event {
            ts_ms: 0,
            kind: lanspread_control::api::EventKind::GotGameFiles {
                game_id: id,
                version: lanspread_control::api::Version::parse("20250101").unwrap(),
                files: (0..6)
                    .map(|i| lanspread_control::api::FileSize {
                        path: format!("f{i}.eti"),
                        size: 2048,
                    })
                    .collect(),
                sources: Vec::new(),
            },
        };
        let line = event_line(&files);
        assert!(
            line.contains(
                "files=[f0.eti(2.0 KiB),f1.eti(2.0 KiB),f2.eti(2.0 KiB),f3.eti(2.0 KiB),+2 more]"
            ),
            "{line}"
        );
    }

    #[test]
    fn a_resumed_download_says_what_it_fetched() {
        assert_eq!(
            finished(3 << 20, 0, 1500, 2.0),
            "downloaded 3.0 MiB in 1500 ms (2.0 MiB/s)"
        );
        assert_eq!(
            finished(406 << 20, 406 << 20, 13, 0.0),
            "all 406.0 MiB were already verified by an earlier attempt; checked and committed in 13 ms"
        );
        assert_eq!(
            finished(400 << 20, 300 << 20, 20_000, 5.0),
            "fetched 100.0 MiB in 20.0 s (5.0 MiB/s); 300.0 MiB resumed from an earlier attempt"
        );
    }
}
