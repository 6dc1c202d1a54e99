//! Messages exchanged between daemons. Each side opens one unidirectional *announce*
//! stream per connection and writes `Hello`, then `Library` (again whenever it changes),
//! and `Goodbye` before it closes.

use std::net::SocketAddr;

use crate::{ChunkHash, ChunkSet, GameId, Manifest, RelPath, Version};
use serde::{Deserialize, Serialize};

use crate::PeerId;

/// Wire protocol version; a peer with another version is refused.
/// 4: partial holdings on the announce stream and `PartialChunks` requests (swarm).
/// 5: `Offer` requests answered `Chosen` or `Later` (a complete source picks the chunk it
/// sends); `Later` also when the swarm upload slots are taken.
/// 6: `Chunks` may be answered `Later` too (the server of a swarm serves in turns).
/// 7: a `Files` answer may be preceded by `Hashing` progress frames.
/// 8: manifests carry a hash per 1 MiB piece, and a chunk's hash is over its pieces'
/// hashes; `PartialChunks` and `Offer` ranges may be the rest of a chunk from a piece on.
/// 9: `HoldingGrowing` (the chunks a partial holder is fetching, served as their pieces
/// verify: cut-through).
/// 10: pieces, chunks and manifests hashed with BLAKE3 instead of SHA-256.
/// 11: a `Peers` entry names the games the peer holds a partial copy of (`holds`).
/// 12: holdings (`Holding*`), partial requests and offers count 8 MiB units
/// ([`crate::UNIT_SIZE`]), not 32 MiB chunks.
/// 13: a `Files` answer is a [`Manifest`]: the files and the empty folders.
pub const PROTOCOL_VERSION: u32 = 13;
/// TLS ALPN identifier of a peer link (announce stream, requests).
pub const ALPN: &[u8] = b"lanspread/1";
/// TLS ALPN identifier of a data connection: a downloader's extra connection to a source,
/// driven by another thread of each side, that carries only requests (after a `Hello`
/// on one unidirectional stream, checked like a link's).
pub const DATA_ALPN: &[u8] = b"lanspread-data/1";
/// Server name used in certificates and SNI; identity comes from the key, not the name.
pub const SERVER_NAME: &str = "lanspread";

/// QUIC application close codes.
pub mod close_code {
    /// Orderly shutdown after a goodbye.
    pub const GOODBYE: u32 = 0;
    /// The peer broke the protocol (garbage, oversized frame, id mismatch).
    pub const PROTOCOL_ERROR: u32 = 1;
    /// The connection reached the node itself.
    pub const SELF_CONNECT: u32 = 2;
    /// Another connection to the same peer is kept instead of this one.
    pub const DUPLICATE: u32 = 3;
    /// The peer speaks another protocol version.
    pub const VERSION_MISMATCH: u32 = 4;
    /// The LAN secret check failed (one side has none, or they differ).
    pub const SECRET_MISMATCH: u32 = 5;
    /// The peer's address holds as many links as the daemon allows one address
    /// (`max_links_per_address`); a new identity from it is refused.
    pub const ADDRESS_CAP: u32 = 6;
}

/// Codes an answer's stream is reset with.
pub mod reset_code {
    /// The answer failed (the asker stopped taking it, or a local failure).
    pub const FAILED: u32 = 1;
    /// A partial holder passing on a chunk as it arrives cannot go on (its own fetch of
    /// it stopped, or its copy ended: committed or cancelled): the whole pieces sent are
    /// good, ask again later. Honoured only from a partial holder after at least one
    /// good piece of the range.
    pub const RELAY_CUT: u32 = 2;
}

/// First frame on an announce stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's peer id; must equal the id derived from its TLS key.
    pub peer_id: PeerId,
    /// Where the sender listens for QUIC.
    pub listen: SocketAddr,
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Free-form software name and version, for logs.
    pub agent: String,
    /// Proof of the LAN secret bound to this TLS session (see `LanSecret`), if the
    /// sender has one.
    pub proof: Option<[u8; 32]>,
}

/// One advertised game: only ready roots (valid sentinel, no active operation) are sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameAd {
    /// Game id.
    pub id: GameId,
    /// Committed version.
    pub version: Version,
    /// Total payload bytes.
    pub size: u64,
}

/// A frame on an announce stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Identity and listen address.
    Hello(Hello),
    /// The sender's complete library; replaces the previous one.
    Library(Vec<GameAd>),
    /// The sender is leaving.
    Goodbye {
        /// Why, for logs.
        reason: String,
    },
    /// The sender is downloading a game and holds these chunks verified (the whole
    /// state: at the start of a download, after a resume re-verified its journal).
    /// A partial holder is not a ready peer: it never counts in `peer_count` nor votes on
    /// manifests, and it serves only these chunks at exactly this manifest.
    Holding(Holding),
    /// More chunks of a [`Message::Holding`] verified since (batched).
    HoldingMore {
        /// The game.
        game: GameId,
        /// The manifest the chunks were checked against.
        digest: ChunkHash,
        /// The chunks, as indices into the manifest's chunks.
        chunks: Vec<u32>,
    },
    /// The sender no longer serves its partial copy of the game (committed: it is in
    /// the next `Library`; or failed, cancelled, removed).
    HoldingGone {
        /// The game.
        game: GameId,
    },
    /// The chunks of a [`Message::Holding`] the sender is fetching now (the whole list,
    /// replacing the previous one; at most [`MAX_GROWING`]): it serves them as their
    /// pieces verify (cut-through), a request waiting for pieces still on their way.
    HoldingGrowing {
        /// The game.
        game: GameId,
        /// The manifest the chunks are checked against.
        digest: ChunkHash,
        /// The chunks, as indices into the manifest's chunks.
        chunks: Vec<u32>,
    },
    /// Peer exchange: the other peers the sender is linked to (at most [`MAX_PEX`]; the
    /// whole list, resent when it changes), so peers told only the server's address find
    /// each other across VLANs without mDNS.
    Peers(Vec<PeerAddr>),
}

impl Message {
    /// The message's name, for errors: never its content, which a peer chose (a refusal
    /// that printed it could be megabytes long).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Library(_) => "library",
            Message::Goodbye { .. } => "goodbye",
            Message::Holding(_) => "holding",
            Message::HoldingMore { .. } => "holding-more",
            Message::HoldingGone { .. } => "holding-gone",
            Message::HoldingGrowing { .. } => "holding-growing",
            Message::Peers(_) => "peers",
        }
    }
}

impl PeerResponse {
    /// The answer's name, for errors: never its content (a manifest printed whole into
    /// a failure reason could be megabytes long).
    pub fn kind(&self) -> &'static str {
        match self {
            PeerResponse::Files(_) => "files",
            PeerResponse::Chunk { .. } => "chunk",
            PeerResponse::Refused { .. } => "refused",
            PeerResponse::Chosen { .. } => "chosen",
            PeerResponse::Later => "later",
            PeerResponse::Hashing { .. } => "hashing",
        }
    }
}

/// Most characters of a peer's free text (a refusal's, goodbye's or close's reason) kept
/// by [`peer_text`].
pub const MAX_PEER_TEXT: usize = 200;

/// A peer's free text made fit for our failure reasons, events, logs and a terminal: at
/// most [`MAX_PEER_TEXT`] characters, control characters escaped (an ESC sequence in a
/// refusal would otherwise reach the terminal of whoever reads the error).
pub fn peer_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_PEER_TEXT));
    for (i, c) in s.chars().enumerate() {
        if i == MAX_PEER_TEXT {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Most games a sender puts in one [`Message::Library`]: at the longest id and size it
/// fits [`crate::MAX_ANNOUNCE_LEN`] (tested), which a receiver reads the frame within.
pub const MAX_LIBRARY: usize = 40_000;
/// Most peers in one [`Message::Peers`]; a receiver ignores the rest.
pub const MAX_PEX: usize = 64;
/// Most chunks in one [`Message::HoldingGrowing`]; a receiver ignores the rest.
pub const MAX_GROWING: usize = 64;
/// Most games in one [`PeerAddr::holds`]; a longer list does not decode.
pub const MAX_PEX_GAMES: usize = 4;

/// A linked peer as told to others: its id, the address it listens on and what it is
/// downloading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    /// Its peer id (proven again by TLS when dialled).
    pub peer_id: PeerId,
    /// Its QUIC listen address, as the sender sees it.
    pub addr: SocketAddr,
    /// The games it holds a partial copy of (it announced `Holding` to the sender; at
    /// most [`MAX_PEX_GAMES`]): a receiver downloading one of them prefers to link to it.
    #[serde(deserialize_with = "at_most_pex_games")]
    pub holds: Vec<GameId>,
}

/// Decodes [`PeerAddr::holds`], refusing more than [`MAX_PEX_GAMES`] games before it
/// holds more: a frame of tiny ids cannot make the receiver allocate millions of them.
fn at_most_pex_games<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<GameId>, D::Error> {
    at_most(d, MAX_PEX_GAMES, "game ids")
}

/// Decodes a sequence of at most `max` elements (`what` names them in the error),
/// refusing the next one before it is held: a sender cannot make the receiver allocate
/// far more than the frame's bytes.
pub(crate) fn at_most<'de, D, T>(d: D, max: usize, what: &'static str) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct AtMost<T> {
        max: usize,
        what: &'static str,
        of: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for AtMost<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {} {}", self.max, self.what)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                if out.len() == self.max {
                    return Err(serde::de::Error::invalid_length(out.len() + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(AtMost {
        max,
        what,
        of: std::marker::PhantomData,
    })
}

/// What a downloading peer holds of one game.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// The game.
    pub game: GameId,
    /// The version being downloaded.
    pub version: Version,
    /// The digest of the validated manifest (`manifest_digest`).
    pub digest: ChunkHash,
    /// The chunks verified against it, checked by the receiver against the manifest's
    /// chunk count before use ([`ChunkSet::check`]).
    pub chunks: ChunkSet,
}

/// A request on a bidirectional stream opened by a downloader. One request per stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// The manifest (files with piece and chunk hashes) of a game at a version.
    Files {
        /// The game.
        game: GameId,
        /// The version the downloader selected.
        version: Version,
    },
    /// Byte ranges (at most [`MAX_RANGES`]), answered in order: per range a
    /// [`PeerResponse::Chunk`] and its raw bytes, or a [`PeerResponse::Refused`] that ends
    /// the answer. Many small files cost one stream and one round trip together.
    Chunks {
        /// The game.
        game: GameId,
        /// The version the downloader selected.
        version: Version,
        /// The ranges.
        ranges: Vec<ChunkRange>,
    },
    /// Ranges from a partial holder: like [`PeerRequest::Chunks`], but each range must be
    /// one unit ([`crate::UNIT_SIZE`]) of the manifest with this digest that the holder
    /// has verified, whole or its rest from a piece on ([`crate::unit_of_rest`]).
    PartialChunks {
        /// The game.
        game: GameId,
        /// The version being downloaded.
        version: Version,
        /// The validated manifest's digest; the holder's must be the same.
        digest: ChunkHash,
        /// The ranges.
        ranges: Vec<ChunkRange>,
    },
    /// Units a downloader needs (each whole or its rest from a piece on), offered to a
    /// complete source (a ready peer at `version`), which answers
    /// [`PeerResponse::Chosen`] with the one it sends, then that unit as a `Chunk` answer
    /// (or `Refused`).
    Offer {
        /// The game.
        game: GameId,
        /// The version being downloaded.
        version: Version,
        /// The chunks offered (1..=[`MAX_RANGES`]).
        ranges: Vec<ChunkRange>,
    },
}

/// Most ranges in one [`PeerRequest::Chunks`]; a request with more breaks the protocol.
pub const MAX_RANGES: usize = 256;

/// Largest frame body of a [`PeerRequest`]: [`MAX_RANGES`] ranges of the longest path
/// (4,096 bytes, its length and two `u64`s as varints) and room for the rest. A server
/// reads requests within it, so a peer cannot make it hold 16 MiB per stream (256
/// streams per connection) by announcing a frame it never sends.
pub const MAX_REQUEST_LEN: usize = (64 << 10) + MAX_RANGES * (4096 + 32);

/// A byte range of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRange {
    /// The file.
    pub path: RelPath,
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

impl ChunkRange {
    /// The bytes `ranges` ask for together; `None` when the peer's lengths overflow a
    /// `u64` (a wrapped sum would pass any cap).
    pub fn total(ranges: &[ChunkRange]) -> Option<u64> {
        ranges
            .iter()
            .try_fold(0u64, |sum, r| sum.checked_add(r.len))
    }
}

/// The answer frame on a request stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// The manifest.
    Files(Manifest),
    /// `len` raw bytes follow on the stream.
    Chunk {
        /// Bytes that follow.
        len: u64,
    },
    /// The serve gate refused the request.
    Refused {
        /// Why.
        reason: String,
    },
    /// The offered range (an index into the `Offer`'s ranges) the source sends next.
    Chosen {
        /// Index into the offered ranges.
        index: u32,
    },
    /// Nothing now: every offered chunk is on its way to another downloader (the asker
    /// will find it in the swarm soon), or every swarm upload slot is taken. The asker
    /// asks elsewhere, or again later. Ends the answer.
    Later,
    /// An answer to `Files` is on its way: the source is hashing the game (`done` of
    /// `total` bytes hashed). Sent about every second until the manifest follows; the
    /// downloader counts a source that reports progress as alive.
    Hashing {
        /// Bytes whose hashes are known.
        done: u64,
        /// The game's bytes.
        total: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_total_that_overflows_is_none_not_wrapped() {
        let r = |len| ChunkRange {
            path: RelPath::new("a.bin").unwrap(),
            offset: 0,
            len,
        };
        assert_eq!(ChunkRange::total(&[]), Some(0));
        assert_eq!(ChunkRange::total(&[r(8 << 20), r(1)]), Some((8 << 20) + 1));
        // Two 8 MiB units and a length that brings a wrapping sum back to 8 MiB.
        let wrap = u64::MAX - (8 << 20) + 1;
        assert_eq!(ChunkRange::total(&[r(8 << 20), r(8 << 20), r(wrap)]), None);
    }

    #[test]
    fn a_peers_text_is_cut_and_its_control_characters_escaped() {
        assert_eq!(peer_text("no room"), "no room");
        assert_eq!(
            peer_text("a\u{1b}]52;c;x\u{7}\nb"),
            "a\\u{1b}]52;c;x\\u{7}\\nb"
        );
        let long = peer_text(&"é".repeat(10_000));
        assert_eq!(long.chars().count(), MAX_PEER_TEXT + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn a_hello_and_a_large_library_fit_their_frame_limits() {
        use crate::{GameId, Version, MAX_ANNOUNCE_LEN, MAX_HELLO_LEN};
        let body = |m: &Message| crate::encode_frame(m).unwrap().len() - crate::FRAME_HEAD_LEN;
        let hello = Message::Hello(Hello {
            peer_id: PeerId::from_spki(&[0xff; 600]),
            listen: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
                .parse()
                .unwrap(),
            protocol: u32::MAX,
            agent: crate::AGENT.into(),
            proof: Some([0xff; 32]),
        });
        assert!(body(&hello) * 4 <= MAX_HELLO_LEN, "{}", body(&hello));
        // The most games a library carries, at the longest id and size.
        let ads = (0..MAX_LIBRARY)
            .map(|i| GameAd {
                id: GameId::new(&format!("{i:0>64}")).unwrap(),
                version: Version::parse("99991231").unwrap(),
                size: u64::MAX,
            })
            .collect();
        let library = Message::Library(ads);
        assert!(body(&library) <= MAX_ANNOUNCE_LEN, "{}", body(&library));
        // The largest chunk set a holding can carry.
        let holding = Message::Holding(Holding {
            game: GameId::new(&"g".repeat(64)).unwrap(),
            version: Version::parse("99991231").unwrap(),
            digest: [0xff; 32],
            chunks: crate::ChunkSet::full(crate::MAX_CHUNKS),
        });
        assert!(body(&holding) <= MAX_ANNOUNCE_LEN, "{}", body(&holding));
        // Every chunk at once, one index each.
        let more = Message::HoldingMore {
            game: GameId::new(&"g".repeat(64)).unwrap(),
            digest: [0xff; 32],
            chunks: (0..crate::MAX_CHUNKS as u32).collect(),
        };
        assert!(body(&more) <= MAX_ANNOUNCE_LEN, "{}", body(&more));
    }

    #[test]
    fn the_largest_request_fits_its_frame_limit() {
        let path = RelPath::new(&"a".repeat(4096)).unwrap();
        let ranges = vec![
            ChunkRange {
                path,
                offset: u64::MAX,
                len: u64::MAX,
            };
            MAX_RANGES
        ];
        let game = crate::GameId::new(&"g".repeat(64)).unwrap();
        let version = crate::Version::parse("99991231").unwrap();
        let request = PeerRequest::PartialChunks {
            game,
            version,
            digest: [0xff; 32],
            ranges,
        };
        let frame = crate::encode_frame(&request).unwrap();
        assert!(frame.len() - crate::FRAME_HEAD_LEN <= MAX_REQUEST_LEN);
        assert!(RelPath::new(&"a".repeat(4097)).is_err(), "paths are capped");
    }
}
