//! The complete holder's side of offers (swarm): a downloader offers the chunks it needs
//! that no partial holder it knows has, and this daemon sends the one it has sent least
//! that it is not sending to another downloader right now (`lanspread_peer::SeedChooser`).
//! When every offered chunk is on its way elsewhere, the answer is `Later`: their
//! copies will be in the swarm soon, and the downloader offers again when its view changes
//! (or after `lanspread_peer::OFFER_REST`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lanspread_catalog::{GameId, Version};
use lanspread_peer::SeedChooser;

type Key = (GameId, Version);

/// What this daemon has sent of each game it serves, for offers.
#[derive(Default)]
pub struct Seeds {
    choosers: Mutex<HashMap<Key, SeedChooser>>,
}

/// A chosen chunk on its way; the send counts as ended when this is dropped.
pub struct Sending {
    seeds: Arc<Seeds>,
    key: Key,
    chunk: usize,
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let Some(c) = self.seeds.lock().get_mut(&self.key) {
            c.finished(self.chunk);
        }
    }
}

impl Seeds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, SeedChooser>> {
        self.choosers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chooses among `offered` (chunk numbers of a game of `total` chunks; `None`: neither
    /// a whole chunk nor its rest from a piece) the one to send.
    pub fn choose(self: &Arc<Self>, key: Key, total: usize, offered: &[Option<usize>]) -> Choice {
        let candidates: Vec<usize> = offered.iter().flatten().copied().collect();
        if candidates.is_empty() {
            return Choice::NotChunks;
        }
        let chosen = chooser(&mut self.lock(), &key, total).choose(&candidates);
        let Some(chunk) = chosen else {
            return Choice::OnTheirWay;
        };
        let Some(at) = offered.iter().position(|&o| o == Some(chunk)) else {
            return Choice::NotChunks;
        };
        let sending = Sending {
            seeds: self.clone(),
            key,
            chunk,
        };
        Choice::Send(at, sending)
    }

    /// Chunks being sent without an offer (a plain request at the server of a swarm;
    /// numbers from `lanspread_peer::offered_chunks`, `None` skipped): offers' choices
    /// leave them alone until the returned guards are dropped.
    pub fn sending(
        self: &Arc<Self>,
        key: Key,
        total: usize,
        chunks: &[Option<usize>],
    ) -> Vec<Sending> {
        let mut map = self.lock();
        let c = chooser(&mut map, &key, total);
        chunks
            .iter()
            .flatten()
            .filter(|&&chunk| chunk < total)
            .map(|&chunk| {
                c.sending(chunk);
                Sending {
                    seeds: self.clone(),
                    key: key.clone(),
                    chunk,
                }
            })
            .collect()
    }
}

/// The chooser of `key`, a game of `total` chunks.
fn chooser<'m>(
    map: &'m mut HashMap<Key, SeedChooser>,
    key: &Key,
    total: usize,
) -> &'m mut SeedChooser {
    let c = map
        .entry(key.clone())
        .or_insert_with(|| SeedChooser::new(total));
    if c.len() != total {
        // The game's files changed: start counting afresh.
        *c = SeedChooser::new(total);
    }
    c
}

/// What to answer an offer.
pub enum Choice {
    /// Send the offered range at this position; the guard ends its send.
    Send(usize, Sending),
    /// Every offered chunk is being sent to someone else.
    OnTheirWay,
    /// No offered range is a chunk of the game (or its rest from a piece).
    NotChunks,
}
