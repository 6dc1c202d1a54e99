//! Length-prefixed postcard frames: a little-endian `u32` length, then that many bytes of
//! postcard. The length is checked against a hard maximum before anything is allocated.
//! Encoding and decoding work on byte buffers; the transport reads and writes them.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ProtoError;

/// Largest accepted frame body in bytes.
pub const MAX_FRAME_LEN: usize = 16 << 20;
/// Largest frame body of a [`crate::Hello`], the first frame of every connection: read
/// within it before the peer has proven anything (its id, the LAN secret), so a stranger
/// cannot make a daemon buffer, decode and log 16 MiB per connection. A hello is a
/// peer id, an address, a version, an agent name and a proof: well under 1 KiB.
pub const MAX_HELLO_LEN: usize = 4 << 10;
/// Largest frame body on an announce stream after the hello. The largest legal ones: a
/// `Library` of [`crate::MAX_LIBRARY`] games (about 85 bytes each at the longest id), a
/// `Holding` (a 128 KiB chunk set at most) and a `HoldingMore` of every chunk (about
/// 3 MiB); all are tested to fit.
pub const MAX_ANNOUNCE_LEN: usize = 4 << 20;
/// Bytes of a frame's length prefix.
pub const FRAME_HEAD_LEN: usize = 4;

/// Encodes a message as one frame (length prefix + body).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let mut out = vec![0u8; FRAME_HEAD_LEN];
    out = postcard::to_extend(msg, out).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    let len = out.len() - FRAME_HEAD_LEN;
    if len > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge {
            len,
            limit: MAX_FRAME_LEN,
        });
    }
    out[..FRAME_HEAD_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Decodes one complete frame from a buffer, returning the message and the bytes used,
/// or `Ok(None)` when the buffer does not hold a whole frame yet.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, ProtoError> {
    let Some(head) = buf.first_chunk::<FRAME_HEAD_LEN>() else {
        return Ok(None);
    };
    let len = frame_body_len(*head)?;
    let Some(body) = buf.get(FRAME_HEAD_LEN..FRAME_HEAD_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, FRAME_HEAD_LEN + len)))
}

/// The body length a frame's prefix announces, refused above [`MAX_FRAME_LEN`] before
/// a reader allocates anything.
pub fn frame_body_len(head: [u8; FRAME_HEAD_LEN]) -> Result<usize, ProtoError> {
    frame_body_len_within(head, MAX_FRAME_LEN)
}

/// [`frame_body_len`] with the reader's own limit (at most [`MAX_FRAME_LEN`]): a peer's
/// request, say, is never larger than [`crate::MAX_REQUEST_LEN`].
pub fn frame_body_len_within(
    head: [u8; FRAME_HEAD_LEN],
    limit: usize,
) -> Result<usize, ProtoError> {
    let len = u32::from_le_bytes(head) as usize;
    let limit = limit.min(MAX_FRAME_LEN);
    if len > limit {
        return Err(ProtoError::FrameTooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes a frame's body (without its prefix).
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtoError> {
    postcard::from_bytes(body).map_err(|e| ProtoError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GameAd, GameId, Hello, Message, PeerId, Version, PROTOCOL_VERSION};

    pub(crate) fn sample() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                peer_id: PeerId::try_from("0123456789abcdef".repeat(2)).unwrap(),
                listen: "127.0.0.1:41741".parse().unwrap(),
                protocol: PROTOCOL_VERSION,
                agent: "test".into(),
                proof: None,
            }),
            Message::Library(vec![GameAd {
                id: GameId::new("ggoo").unwrap(),
                version: Version::parse("20250301").unwrap(),
                size: 456,
            }]),
            Message::Goodbye {
                reason: "bye".into(),
            },
        ]
    }

    #[test]
    fn roundtrip_in_memory() {
        let mut buf = Vec::new();
        for m in sample() {
            buf.extend(encode_frame(&m).unwrap());
        }
        let mut pos = 0;
        let mut got = Vec::new();
        while let Some((m, used)) = decode_frame::<Message>(&buf[pos..]).unwrap() {
            got.push(m);
            pos += used;
        }
        assert_eq!(got, sample());
        assert_eq!(pos, buf.len());
        // A prefix of a frame is "not yet", not an error.
        assert!(decode_frame::<Message>(&buf[..3]).unwrap().is_none());
        assert!(decode_frame::<Message>(&buf[..10]).unwrap().is_none());
    }

    #[test]
    fn a_peer_exchange_entry_names_at_most_four_games() {
        let entry = |games: usize| {
            Message::Peers(vec![crate::PeerAddr {
                peer_id: PeerId::try_from("0123456789abcdef".repeat(2)).unwrap(),
                addr: "10.0.0.1:41741".parse().unwrap(),
                holds: (0..games)
                    .map(|g| GameId::new(&format!("g{g}")).unwrap())
                    .collect(),
            }])
        };
        let four = entry(crate::MAX_PEX_GAMES);
        let frame = encode_frame(&four).unwrap();
        assert_eq!(
            decode_frame::<Message>(&frame).unwrap(),
            Some((four, frame.len()))
        );
        let five = encode_frame(&entry(crate::MAX_PEX_GAMES + 1)).unwrap();
        match decode_frame::<Message>(&five) {
            Err(ProtoError::Malformed(_)) => {}
            other => panic!("five games decoded: {other:?}"),
        }
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        assert!(matches!(
            frame_body_len(u32::MAX.to_le_bytes()),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        let big = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        assert!(matches!(
            decode_frame::<Message>(&big),
            Err(ProtoError::FrameTooLarge { .. })
        ));
        assert_eq!(
            frame_body_len((MAX_FRAME_LEN as u32).to_le_bytes()),
            Ok(MAX_FRAME_LEN)
        );
    }

    #[test]
    fn invalid_ids_inside_a_valid_frame_are_malformed() {
        // A Library frame whose game id is "../x": postcard decodes the string, the GameId
        // newtype refuses it.
        #[derive(serde::Serialize)]
        enum Raw {
            #[allow(dead_code)]
            Hello(u8),
            Library(Vec<(String, String, u64)>),
        }
        let frame =
            encode_frame(&Raw::Library(vec![("../x".into(), "20250101".into(), 1)])).unwrap();
        assert!(matches!(
            decode_frame::<Message>(&frame),
            Err(ProtoError::Malformed(_))
        ));
        let frame = encode_frame(&Raw::Library(vec![("ggoo".into(), "2025".into(), 1)])).unwrap();
        assert!(matches!(
            decode_frame::<Message>(&frame),
            Err(ProtoError::Malformed(_))
        ));
    }
}
