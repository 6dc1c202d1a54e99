//! Requests in the simulation, the way the daemon answers them: upload turns, offers
//! chosen by the server's `SeedChooser`, plain requests at the server of a swarm, a
//! chunk's flow started, cancelled (a race's loser), delivered or cut by a node that left,
//! and each outcome handed to the asker's engine.

use lanspread_peer::{BatchId, ChunkResult, FailKind, Fetch, Plain};

use super::{Flow, Party};

impl Party<'_> {
    /// A fetch starts a flow, or is answered at once (an offer with every chunk on its way
    /// elsewhere, a source that is gone).
    pub(super) fn fetch(&mut self, c: usize, f: Fetch) {
        let s = self.index[&f.peer];
        let answer = |kind: FailKind| vec![Err((kind, String::new())); f.chunks.len()];
        // The daemon answers swarm requests (and plain ones to the server of a swarm:
        // every client downloads here) in upload turns, `Later` when it has none free.
        let now = self.at();
        // Clients that start at this instant count too: in the daemon every one of them
        // asks the server for the manifest before any asks for a chunk.
        let downloading = (1..self.nodes.len())
            .filter(|&k| self.active(k) || self.due(k))
            .count();
        let dst = self.nodes[c].id.clone();
        let dead = self.nodes[s].dead;
        let turns = &mut self.nodes[s].turns;
        // Some(true): a turn taken; None: `Later`.
        let turn = if dead {
            Some(false)
        } else if f.offer || f.partial {
            turns.take(&dst, now).then_some(true)
        } else if downloading > 1 {
            // Every client asked the server for the manifest together: none is alone.
            match turns.take_plain(&dst, now, false) {
                Plain::Free | Plain::Turn => Some(true),
                Plain::Later => None,
            }
        } else {
            Some(false)
        };
        let results: Vec<ChunkResult> = match turn {
            _ if self.nodes[s].dead => answer(FailKind::SourceGone),
            None => answer(FailKind::NotChosen),
            Some(turn) if f.offer => match self.nodes[s].chooser.choose(&f.chunks) {
                Some(chunk) => {
                    // The answer's head names it: the others are free at once.
                    let (id, index) = (f.id, f.chunks.iter().position(|&k| k == chunk));
                    self.flow(s, c, chunk, f, turn);
                    if let (Some(e), Some(i)) = (self.nodes[c].engine.as_mut(), index) {
                        e.tick(now);
                        e.on_chosen(id, i); // the driving loop polls on
                    }
                    return;
                }
                None => answer(FailKind::NotChosen),
            },
            Some(turn) if f.chunks.iter().all(|&k| self.servable(s).contains(k)) => {
                assert_eq!(f.chunks.len(), 1, "big chunks go alone");
                if turn && !f.partial {
                    // A plain request at the server of a swarm: offers leave it alone.
                    self.nodes[s].chooser.sending(f.chunks[0]);
                }
                return self.flow(s, c, f.chunks[0], f, turn);
            }
            Some(_) => answer(FailKind::SourceGone), // refused: not a verified chunk there
        };
        if turn == Some(true) {
            self.nodes[s].turns.release(&dst); // answered at once: the turn ends
        }
        if let Some(e) = self.nodes[c].engine.as_mut() {
            e.tick(now);
            e.on_fetched(f.id, results, false);
        }
    }

    pub(super) fn flow(&mut self, src: usize, dst: usize, chunk: usize, f: Fetch, turn: bool) {
        let len = self.nodes[dst]
            .engine
            .as_ref()
            .map_or(self.lab.unit, |e| e.chunks()[chunk].len);
        // A chunk its source is still fetching: relayed as it arrives there.
        let up = (!self.nodes[src].have.contains(chunk))
            .then(|| self.flows.iter().find(|u| u.dst == src && u.chunk == chunk))
            .flatten()
            .map(|u| u.id);
        self.next_flow += 1;
        self.flows.push(Flow {
            id: self.next_flow,
            up,
            src,
            dst,
            chunk,
            left: len as f64,
            len: len as f64,
            rate: 0.0,
            batch: f.id,
            asked: f.chunks,
            turn,
            weight: 1.0,
        });
        if self.lab.relay {
            self.announce(dst); // it holds a growing chunk now
        }
    }

    /// Client `c` cancels its request `id` (a race's loser: the chunk came from the other
    /// source). Flows relaying it from `c` go on: `c` holds the chunk now.
    pub(super) fn cancel(&mut self, c: usize, id: BatchId) {
        let Some(i) = self.flows.iter().position(|f| f.dst == c && f.batch == id) else {
            return;
        };
        let f = self.flows.remove(i);
        self.races_lost += 1;
        if f.turn {
            let dst = self.nodes[c].id.clone();
            self.nodes[f.src].turns.release(&dst);
        }
        if f.src == 0 {
            self.nodes[0].chooser.finished(f.chunk);
        }
        self.nodes[f.src].uploaded += f.len - f.left;
        for r in self.flows.iter_mut().filter(|r| r.up == Some(f.id)) {
            r.up = None;
        }
        self.answer(&f, Err((FailKind::NotChosen, "cancelled".to_owned())));
    }

    /// A chunk arrived: the liar's fail their hash, the others are verified.
    pub(super) fn delivered(&mut self, f: Flow) {
        if f.src == 0 {
            self.nodes[0].chooser.finished(f.chunk);
        }
        self.nodes[f.src].uploaded += f.len;
        let outcome = if self.lab.liar == Some(f.src) {
            self.liar_rejected += 1;
            // Its downloader checks every piece: it relayed none of them.
            self.cut_relays(&[f.id]);
            self.announce(f.dst);
            Err((FailKind::BadData, "hash mismatch".to_owned()))
        } else {
            Ok(())
        };
        self.answer(&f, outcome);
    }

    /// Reports a flow's outcome to its downloader (an offer's other chunks: not chosen).
    pub(super) fn answer(&mut self, f: &Flow, outcome: ChunkResult) {
        let results = f
            .asked
            .iter()
            .map(|&k| {
                if k == f.chunk {
                    outcome.clone()
                } else {
                    Err((FailKind::NotChosen, String::new()))
                }
            })
            .collect();
        let now = self.at();
        if let Some(e) = self.nodes[f.dst].engine.as_mut() {
            e.tick(now);
            e.on_fetched(f.batch, results, false);
        }
        self.drive(f.dst);
    }

    /// Node `k` is gone: its flows end unfinished, every peer forgets it.
    pub(super) fn kill(&mut self, k: usize) {
        self.nodes[k].dead = true;
        let (cut, kept): (Vec<Flow>, Vec<Flow>) =
            self.flows.drain(..).partition(|f| f.src == k || f.dst == k);
        self.flows = kept;
        self.cut_relays(&cut.iter().map(|f| f.id).collect::<Vec<_>>());
        for f in cut {
            if f.turn {
                let dst = self.nodes[f.dst].id.clone();
                self.nodes[f.src].turns.release(&dst);
            }
            if f.src == 0 {
                self.nodes[0].chooser.finished(f.chunk);
            }
            if f.dst != k {
                self.announce(f.dst);
                let gone = Err((FailKind::SourceGone, "peer disconnected".to_owned()));
                self.answer(&f, gone);
            }
        }
        self.announce(k);
    }
}
