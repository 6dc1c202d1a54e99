//! The transfer resources one daemon's links, serving and downloads share: the QUIC
//! endpoints and their settings, the transfer threads, the bandwidth limits, the io_uring
//! writer, the serve slots and the hash cache. Built once by `Daemon::start`, handed out
//! as `Shared::net`; nothing here is behind the state lock.

use std::sync::Arc;

use lanspread_catalog::HashCache;
use lanspread_transfer::TransportTuning;

use crate::limit::RateLimit;
use crate::threads::TransferThreads;
use crate::writer::Writer;

/// See the module docs.
pub struct Transfers {
    /// The QUIC endpoint links are accepted and dialled on.
    pub endpoint: quinn::Endpoint,
    /// How data connections are dialled (`DATA_ALPN`).
    pub data_client: quinn::ClientConfig,
    /// The runtimes connections are driven on (index 0: the daemon's).
    pub threads: TransferThreads,
    /// The QUIC settings the endpoints were made with (dial timeout, windows).
    pub tuning: TransportTuning,
    /// Upload limit to LAN peers, shared by every client served (changeable live).
    pub upload_limit: RateLimit,
    /// Download limit from LAN peers, shared by every chunk in flight (changeable live).
    pub download_limit: RateLimit,
    /// The io_uring writer for downloads.
    pub writer: Writer,
    /// Chunk requests served at once by this daemon (`serve::CHUNK_STREAMS_TOTAL`).
    pub serve_slots: tokio::sync::Semaphore,
    /// Chunk hashes of served files.
    pub hashes: Arc<HashCache>,
    /// Swarm answers sent at once, one per downloader, freed turns to who waited
    /// longest (`lanspread_peer::UploadTurns`); more are answered `Later`.
    pub upload_turns: std::sync::Mutex<lanspread_peer::UploadTurns>,
    /// Who asked for each game lately (manifest, offers): a plain request while
    /// others ask too is served in turns from the first one
    /// (`lanspread_peer::RecentAskers`).
    pub askers: std::sync::Mutex<
        lanspread_peer::RecentAskers<(lanspread_catalog::GameId, lanspread_catalog::Version)>,
    >,
    /// What was sent of each game, for offers (swarm).
    pub seeds: Arc<crate::seed::Seeds>,
    /// The metrics (`--metrics-listen`); counted whether or not they are served.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Inbound connections still in their handshake, capped in all and per address.
    pub handshakes: crate::handshake_slots::HandshakeSlots,
    /// The manifest frames answers hold, shared between answers of the same manifest.
    pub manifest_frames: crate::manifest_frames::ManifestFrames,
    /// The manifest builds running, joined by the requests for the same root.
    pub manifest_builds: crate::builds::Builds,
}
