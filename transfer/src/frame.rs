//! Length-prefixed postcard frames: a little-endian `u32` length, then that many bytes of
//! postcard. The length is checked against a hard maximum before anything is allocated.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest accepted frame body in bytes.
pub const MAX_FRAME_LEN: usize = 16 << 20;

/// Frame errors; every one of them ends the stream it happened on.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced length exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The body is not a valid postcard message of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The underlying stream failed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes a message as one frame (length prefix + body).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Decodes one complete frame from a buffer, returning the message and the bytes used,
/// or `Ok(None)` when the buffer does not hold a whole frame yet.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = body_len(head.try_into().unwrap_or([0; 4]))?;
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let msg = postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(Some((msg, 4 + len)))
}

fn body_len(head: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(head) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode_frame(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = body_len(head)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GameAd, Hello, Message, PeerId, PROTOCOL_VERSION};
    use lanspread_catalog::{GameId, Version};

    fn sample() -> Vec<Message> {
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

    #[tokio::test]
    async fn roundtrip_over_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        for m in sample() {
            write_frame(&mut a, &m).await.unwrap();
        }
        drop(a);
        for m in sample() {
            assert_eq!(read_frame::<_, Message>(&mut b).await.unwrap(), Some(m));
        }
        assert_eq!(read_frame::<_, Message>(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_allocation() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let err = read_frame::<_, Message>(&mut b).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
        let big = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes();
        assert!(matches!(
            decode_frame::<Message>(&big),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn malformed_and_truncated_frames_are_errors() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&3u32.to_le_bytes()).await.unwrap();
        a.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
        a.write_all(&[9, 0]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<_, Message>(&mut b).await,
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            read_frame::<_, Message>(&mut b).await,
            Err(FrameError::Truncated)
        ));
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
            Err(FrameError::Malformed(_))
        ));
        let frame = encode_frame(&Raw::Library(vec![("ggoo".into(), "2025".into(), 1)])).unwrap();
        assert!(matches!(
            decode_frame::<Message>(&frame),
            Err(FrameError::Malformed(_))
        ));
    }
}
