//! Human-readable renderings of replies.

use crate::api::{GamesList, PeerInfo, StatusInfo};

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
pub fn event_line(e: &crate::api::Event) -> String {
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
            serde_json::Value::Array(a) => format!("[{} items]", a.len()),
            other => other.to_string(),
        };
        line.push_str(&format!(" {k}={shown}"));
    }
    line
}

/// `status`.
pub fn status(s: &StatusInfo) -> String {
    let ops = if s.operations.is_empty() {
        "none".to_owned()
    } else {
        s.operations
            .iter()
            .map(|o| match o.percent {
                Some(p) => format!(
                    "{} {} {p:.1}% ({} of {})",
                    o.kind,
                    o.game_id,
                    bytes(o.done_bytes),
                    bytes(o.total_bytes)
                ),
                None => format!("{} {}", o.kind, o.game_id),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rate = |l: Option<f64>| l.map_or("unlimited".to_owned(), |v| format!("{v} MiB/s"));
    format!(
        "peer id:     {}\nlisten:      {}\ngames dir:   {}\npeers:       {}\noperations:  {}\nlimits:      upload {}, download {}\nversion:     {}",
        s.peer_id,
        s.addr,
        s.games_dir,
        s.peers,
        ops,
        rate(s.limits.max_upload_mib_s),
        rate(s.limits.max_download_mib_s),
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
    fn units_and_tables() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        let t = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y");
    }

    #[test]
    fn readable_event_lines() {
        let e = crate::api::Event {
            ts_ms: 86_400_000 + 3_723_004,
            kind: crate::api::EventKind::DownloadFailed {
                game_id: lanspread_catalog::GameId::new("cod5").unwrap(),
                reason: "no peers".into(),
            },
        };
        assert_eq!(
            event_line(&e),
            "01:02:03.004 download-failed game_id=cod5 reason=no peers"
        );
    }
}
