//! Who sent a chunk, read from a `download-chunk-finished` event as JSON (what
//! `lanspread events --json` prints): tools that chart or sum a download's sources read
//! it the same way.

use serde_json::Value;

/// The `(peer id, bytes)` that sent a `download-chunk-finished` event's chunk: its
/// `sources`, or, from a daemon that does not list them, its `peer_id` with the bytes
/// not resumed (`len - resumed_bytes`).
pub fn chunk_sources(event: &Value) -> Vec<(String, u64)> {
    let listed: Vec<(String, u64)> = event["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let peer = s["peer_id"].as_str().unwrap_or("").to_owned();
            (peer, s["bytes"].as_u64().unwrap_or(0))
        })
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    let peer = event["peer_id"].as_str().unwrap_or("").to_owned();
    let len = event["len"].as_u64().unwrap_or(0);
    let resumed = event["resumed_bytes"].as_u64().unwrap_or(0);
    vec![(peer, len.saturating_sub(resumed))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_sources_or_the_peer_with_what_it_sent() {
        let both = serde_json::json!({"peer_id": "a", "len": 10, "resumed_bytes": 2,
            "sources": [{"peer_id": "a", "bytes": 5}, {"peer_id": "b", "bytes": 3}]});
        assert_eq!(chunk_sources(&both), [("a".into(), 5), ("b".into(), 3)]);
        let old = serde_json::json!({"peer_id": "a", "len": 10, "resumed_bytes": 2});
        assert_eq!(chunk_sources(&old), [("a".to_owned(), 8)]);
    }
}
