//! Aggregation of peer libraries into one row per game, and latest-version selection.

use lanspread_catalog::{GameId, Version};
use lanspread_proto::PeerId;
use serde::Serialize;

use crate::PeerTable;

/// One game as offered by the connected peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteRow {
    /// Game id.
    pub id: GameId,
    /// The newest version any peer has.
    pub eti_game_version: Version,
    /// How many peers have the game, at any version.
    pub peer_count: usize,
    /// Payload size at the newest version.
    pub size: u64,
}

/// The peers that may serve a game: those with its newest version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// The newest version.
    pub version: Version,
    /// Peers having exactly that version, sorted by id.
    pub peers: Vec<PeerId>,
}

/// One row per game id advertised by at least one peer, sorted by id.
pub fn aggregate(table: &PeerTable) -> Vec<RemoteRow> {
    let mut rows: std::collections::BTreeMap<&GameId, RemoteRow> = Default::default();
    for (_, entry) in table.iter() {
        for (id, game) in &entry.games {
            let row = rows.entry(id).or_insert_with(|| RemoteRow {
                id: id.clone(),
                eti_game_version: game.version,
                peer_count: 0,
                size: game.size,
            });
            row.peer_count += 1;
            if game.version > row.eti_game_version {
                row.eti_game_version = game.version;
                row.size = game.size;
            } else if game.version == row.eti_game_version {
                row.size = row.size.max(game.size);
            }
        }
    }
    rows.into_values().collect()
}

/// The newest version of `id` among the peers and the peers that have it; `None` when no
/// peer has the game. Stale peers are never sources.
pub fn latest_sources(table: &PeerTable, id: &GameId) -> Option<Sources> {
    let version = table
        .iter()
        .filter_map(|(_, e)| e.games.get(id))
        .map(|g| g.version)
        .max()?;
    let peers = table
        .iter()
        .filter(|(_, e)| e.games.get(id).is_some_and(|g| g.version == version))
        .map(|(p, _)| p.clone())
        .collect();
    Some(Sources { version, peers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::{ad, pid};
    use lanspread_catalog::Catalog;

    /// (peer number, [(id, version, size)]).
    type Lib<'a> = (u8, &'a [(&'a str, &'a str, u64)]);

    fn table(libs: &[Lib<'_>]) -> PeerTable {
        let mut t = PeerTable::new();
        for (n, games) in libs {
            t.upsert(
                &pid(*n),
                format!("127.0.0.1:{}", 1000 + u16::from(*n))
                    .parse()
                    .unwrap(),
            );
            let ads: Vec<_> = games.iter().map(|(i, v, s)| ad(i, v, *s)).collect();
            t.set_library(&pid(*n), &ads, &Catalog::builtin());
        }
        t
    }

    #[test]
    fn s3_each_game_once_with_peer_counts() {
        let t = table(&[
            (
                1,
                &[
                    ("alienswarm", "20250101", 100),
                    ("bf1942", "20250115", 10),
                    ("ggoo", "20250301", 7),
                ],
            ),
            (
                2,
                &[
                    ("bfbc2", "20250201", 20),
                    ("cnc4", "20250101", 5),
                    ("cnctw", "20250110", 6),
                    ("ggoo", "20250301", 7),
                ],
            ),
        ]);
        let rows = aggregate(&t);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.peer_count, r.size))
            .collect();
        assert_eq!(
            got,
            [
                ("alienswarm", 1, 100),
                ("bf1942", 1, 10),
                ("bfbc2", 1, 20),
                ("cnc4", 1, 5),
                ("cnctw", 1, 6),
                ("ggoo", 2, 7)
            ]
        );
    }

    #[test]
    fn s15_newest_version_wins_and_counts_all_peers() {
        let t = table(&[
            (1, &[("cnc4", "20250101", 1)]),
            (2, &[("cnc4", "20250201", 2)]),
            (3, &[("cnc4", "20250301", 3)]),
        ]);
        let rows = aggregate(&t);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].eti_game_version.as_str(), "20250301");
        assert_eq!(rows[0].peer_count, 3);
        assert_eq!(rows[0].size, 3);
        let s = latest_sources(&t, &GameId::new("cnc4").unwrap()).unwrap();
        assert_eq!(s.peers, [pid(3)]);
    }

    #[test]
    fn s36_singleton_newest_is_the_only_source() {
        let mut libs: Vec<Lib<'_>> = vec![(9, &[("cod5", "20260501", 9)])];
        for n in 1..=4 {
            libs.push((n, &[("cod5", "20250101", 1)]));
        }
        let t = table(&libs);
        let rows = aggregate(&t);
        assert_eq!(
            (rows[0].peer_count, rows[0].eti_game_version.as_str()),
            (5, "20260501")
        );
        let s = latest_sources(&t, &GameId::new("cod5").unwrap()).unwrap();
        assert_eq!(s.version.as_str(), "20260501");
        assert_eq!(s.peers, [pid(9)]);
    }

    #[test]
    fn s16_stale_peer_is_counted_but_not_a_source() {
        let t = table(&[
            (1, &[("alienswarm", "20250101", 1)]),
            (2, &[("alienswarm", "20250201", 2)]),
            (3, &[("alienswarm", "20250201", 2)]),
        ]);
        let s = latest_sources(&t, &GameId::new("alienswarm").unwrap()).unwrap();
        assert_eq!(s.peers, [pid(2), pid(3)]);
        assert_eq!(aggregate(&t)[0].peer_count, 3);
        assert!(latest_sources(&t, &GameId::new("ggoo").unwrap()).is_none());
    }

    #[test]
    fn s30_mesh_rows_are_unique() {
        let t = table(&[
            (1, &[("ggoo", "20250301", 7), ("cnc4", "20250101", 1)]),
            (2, &[("ggoo", "20250301", 7), ("cnc4", "20250201", 2)]),
            (3, &[("ggoo", "20250101", 3), ("bf1942", "20250115", 4)]),
            (4, &[("cnc4", "20250201", 2)]),
            (5, &[]),
        ]);
        let rows = aggregate(&t);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.eti_game_version.as_str(), r.peer_count))
            .collect();
        assert_eq!(
            got,
            [
                ("bf1942", "20250115", 1),
                ("cnc4", "20250201", 3),
                ("ggoo", "20250301", 3)
            ]
        );
    }
}
