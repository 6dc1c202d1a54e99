//! What the planner knows of one source: its load, what it holds, and whether and why it
//! was dropped.

use lanspread_proto::ChunkSet;

#[derive(Debug, Clone, Default)]
pub(super) struct Source {
    pub(super) in_flight: usize,
    /// Bytes of the chunks in flight from this source.
    pub(super) in_flight_bytes: u64,
    /// Bytes done or in flight from this source.
    pub(super) assigned: u64,
    pub(super) dropped: bool,
    /// What a partial source holds (`None`: a complete source, every chunk).
    pub(super) has: Option<ChunkSet>,
    /// Of those, the chunks it is still fetching (cut-through): asked for only when it
    /// holds no verified chunk we need, since a relay goes no faster than its upstream.
    pub(super) growing: Vec<usize>,
    /// Dropped for cause (bad bytes, gone while asked): never revived in this download.
    pub(super) banned: bool,
    /// Dropped because its link closed ([`FailKind::Disconnected`]) or, a partial source,
    /// because it is no longer listed: revived when it is back.
    pub(super) lost: bool,
    /// Found slower than the others (`lag.rs`): out of the balance for the rest of the
    /// download.
    pub(super) lagging: bool,
    /// A source that answered `Later`: not asked again until [`Planner::wake`].
    pub(super) resting: bool,
    /// It said `Later` when nothing had verified for `holders::LATER_UNCOUNT`.
    pub(super) quiet: bool,
    /// Whether its holding counts in the rarity (see `holders.rs`).
    pub(super) counted: bool,
    /// A complete source that was a partial one: its partial requests may still fail.
    pub(super) was_partial: bool,
    /// Stalls since its last verified chunk.
    pub(super) stalls: u32,
    /// Times it was lost (its link closed, or no longer listed) since its last verified
    /// chunk: after [`MAX_STALLS`](super::MAX_STALLS) it is not waited for any more.
    pub(super) losses: u32,
    /// Halvings of its window (0: the full caps).
    pub(super) backoff: u32,
    /// Counted stalls so far: one silence of a source fails every chunk it had in flight,
    /// and only the first of them (assigned in the current epoch) counts.
    pub(super) epoch: u32,
}

impl Source {
    /// Back after it was dropped, not for cause. One that was lost starts a new life: its
    /// requests from before fail as the old connection's and cost it nothing
    /// ([`FailKind::Disconnected`](super::FailKind::Disconnected)), and its stalls and
    /// back-off start again (not its losses: a peer that keeps leaving without sending is
    /// given up).
    pub(super) fn revive(&mut self) {
        self.dropped = false;
        if std::mem::take(&mut self.lost) {
            self.epoch += 1;
            self.stalls = 0;
            self.backoff = 0;
            // Back over a new link: judged afresh.
            self.lagging = false;
        }
    }

    /// It was lost (see [`Source::losses`]): dropped, and waited for unless it was lost
    /// too often without sending. The loss is one whatever it had in flight (a new epoch).
    pub(super) fn lose(&mut self) {
        self.epoch += 1;
        self.dropped = true;
        self.losses += 1;
        self.lost = self.losses < super::MAX_STALLS;
    }
}
