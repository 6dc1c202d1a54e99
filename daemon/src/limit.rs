//! Bandwidth limits for LAN peers: one shared pacer per direction, so the upload limit
//! is shared fairly by every client being served and the download limit by every chunk
//! in flight (the decision math is `lanspread_peer::Pacer`).

use std::sync::Mutex;
use std::time::Instant;

use lanspread_peer::Pacer;

/// A shared rate limit.
pub struct RateLimit {
    pacer: Mutex<Pacer>,
    epoch: Instant,
    /// The configured rate.
    pub mib_per_s: f64,
}

impl RateLimit {
    /// A limit of `mib_per_s` MiB/s (already checked positive).
    pub fn new(mib_per_s: f64) -> Self {
        Self {
            pacer: Mutex::new(Pacer::new(mib_per_s)),
            epoch: Instant::now(),
            mib_per_s,
        }
    }

    /// Waits until `bytes` may move.
    pub async fn take(&self, bytes: u64) {
        let wait = self
            .pacer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(self.epoch.elapsed(), bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Waits on an optional limit.
pub async fn take(limit: Option<&RateLimit>, bytes: u64) {
    if let Some(l) = limit {
        l.take(bytes).await;
    }
}
