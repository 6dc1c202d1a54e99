//! The framing of answers, decided without IO. A request stream carries one
//! [`PeerRequest`]; a `Files` request is answered by one `Files` or `Refused` frame; a
//! `Chunks` request by, per range in order, a `Chunk { len }` frame and `len` raw bytes,
//! until a `Refused` frame ends the answer early. The source checks the request
//! ([`PeerRequest::check`]); the downloader judges each frame it reads
//! ([`manifest_answer`], [`chunk_head`]).

use crate::{ChunkRange, GameId, Manifest, PeerRequest, PeerResponse, Version, MAX_RANGES};

/// Why an answer frame is not the one a downloader waits for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerFault {
    /// The source refused (its gate, or it could not read the file).
    #[error("refused: {0}")]
    Refused(String),
    /// The stream ended before the frame.
    #[error("stream ended before the answer")]
    Ended,
    /// The source sent a frame that does not answer the request: it breaks the
    /// protocol (or lies about the length of a range).
    #[error("unexpected answer {0}")]
    Unexpected(String),
}

impl PeerRequest {
    /// A chunk request for `ranges`.
    pub fn chunks(game: GameId, version: Version, ranges: Vec<ChunkRange>) -> Self {
        Self::Chunks {
            game,
            version,
            ranges,
        }
    }

    /// Checks a received request: `Err` is a protocol violation (a chunk request with no
    /// range or more than [`MAX_RANGES`]), which ends the connection.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Files { .. } => Ok(()),
            Self::Chunks { ranges, .. }
            | Self::PartialChunks { ranges, .. }
            | Self::Offer { ranges, .. }
                if ranges.is_empty() || ranges.len() > MAX_RANGES =>
            {
                Err(format!(
                    "{} ranges in one request (1..={MAX_RANGES} allowed)",
                    ranges.len()
                ))
            }
            Self::Chunks { .. } | Self::PartialChunks { .. } | Self::Offer { .. } => Ok(()),
        }
    }
}

/// The answer to a `Files` request, as read (`None`: the stream ended).
pub fn manifest_answer(frame: Option<PeerResponse>) -> Result<Manifest, AnswerFault> {
    match frame {
        Some(PeerResponse::Files(manifest)) => Ok(manifest),
        other => Err(fault(other)),
    }
}

/// The header of one range of a `Chunks` answer, as read: `Ok` when it announces
/// exactly the `want` bytes asked for, which follow raw on the stream.
pub fn chunk_head(frame: Option<PeerResponse>, want: u64) -> Result<(), AnswerFault> {
    match frame {
        Some(PeerResponse::Chunk { len }) if len == want => Ok(()),
        other => Err(fault(other)),
    }
}

fn fault(frame: Option<PeerResponse>) -> AnswerFault {
    match frame {
        Some(PeerResponse::Refused { reason }) => AnswerFault::Refused(crate::peer_text(&reason)),
        None => AnswerFault::Ended,
        Some(PeerResponse::Chunk { len }) => {
            AnswerFault::Unexpected(format!("chunk of {len} bytes"))
        }
        Some(other) => AnswerFault::Unexpected(other.kind().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RelPath;

    fn range() -> ChunkRange {
        ChunkRange {
            path: RelPath::new("a.eti").unwrap(),
            offset: 0,
            len: 8,
        }
    }

    #[test]
    fn requests_are_checked_for_their_range_count() {
        let game = GameId::new("ggoo").unwrap();
        let v = Version::parse("20250301").unwrap();
        let files = PeerRequest::Files {
            game: game.clone(),
            version: v,
        };
        assert!(files.check().is_ok());
        assert!(PeerRequest::chunks(game.clone(), v, vec![range()])
            .check()
            .is_ok());
        let full = vec![range(); MAX_RANGES];
        assert!(PeerRequest::chunks(game.clone(), v, full).check().is_ok());
        let over = vec![range(); MAX_RANGES + 1];
        let e = PeerRequest::chunks(game.clone(), v, over)
            .check()
            .unwrap_err();
        assert!(e.contains("257 ranges"), "{e}");
        assert!(PeerRequest::chunks(game, v, Vec::new()).check().is_err());
    }

    #[test]
    fn answer_frames_are_judged() {
        assert_eq!(chunk_head(Some(PeerResponse::Chunk { len: 8 }), 8), Ok(()));
        // A source announcing another length than asked lies or is broken.
        assert!(matches!(
            chunk_head(Some(PeerResponse::Chunk { len: 9 }), 8),
            Err(AnswerFault::Unexpected(_))
        ));
        assert!(matches!(
            chunk_head(Some(PeerResponse::Files(Manifest::default())), 8),
            Err(AnswerFault::Unexpected(_))
        ));
        let refused = PeerResponse::Refused {
            reason: "not ready".into(),
        };
        assert_eq!(
            chunk_head(Some(refused.clone()), 8),
            Err(AnswerFault::Refused("not ready".into()))
        );
        assert_eq!(chunk_head(None, 8), Err(AnswerFault::Ended));
        assert_eq!(
            manifest_answer(Some(PeerResponse::Files(Manifest::default()))),
            Ok(Manifest::default())
        );
        assert!(manifest_answer(Some(refused))
            .unwrap_err()
            .to_string()
            .contains("not ready"));
        assert!(matches!(
            manifest_answer(Some(PeerResponse::Chunk { len: 1 })),
            Err(AnswerFault::Unexpected(_))
        ));
    }
}
