//! Frames (`lanspread_proto`'s length-prefixed postcard) read from and written to async
//! streams. The length is checked against the protocol's maximum before anything is
//! allocated.

use lanspread_proto::{decode_body, encode_frame, frame_body_len_within, FRAME_HEAD_LEN};

/// What a frame's body buffer starts at; it grows as its bytes arrive.
const FIRST_ALLOCATION: usize = 64 << 10;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::TransferError;

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), TransferError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode_frame(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, TransferError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_frame_within(r, lanspread_proto::MAX_FRAME_LEN).await
}

/// [`read_frame`] of a frame at most `limit` bytes long (a peer's request:
/// [`lanspread_proto::MAX_REQUEST_LEN`]). The body's buffer grows with the bytes that
/// arrive, never to the announced length up front: a peer that announces a large frame
/// and sends nothing costs nothing.
pub async fn read_frame_within<R, T>(r: &mut R, limit: usize) -> Result<Option<T>, TransferError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut head = [0u8; FRAME_HEAD_LEN];
    let mut got = 0;
    while got < FRAME_HEAD_LEN {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(TransferError::Truncated)
            };
        }
        got += n;
    }
    let len = frame_body_len_within(head, limit)?;
    let mut body = Vec::with_capacity(len.min(FIRST_ALLOCATION));
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(TransferError::Truncated);
    }
    Ok(Some(decode_body(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanspread_proto::{GameAd, GameId, Hello, Message, PeerId, Version, MAX_FRAME_LEN};
    use lanspread_proto::{ProtoError, PROTOCOL_VERSION};

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
        assert!(
            matches!(err, TransferError::Proto(ProtoError::FrameTooLarge { .. })),
            "{err}"
        );
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&((MAX_FRAME_LEN + 1) as u32).to_le_bytes())
            .await
            .unwrap();
        assert!(read_frame::<_, Message>(&mut b).await.is_err());
    }

    #[tokio::test]
    async fn a_frame_over_the_readers_own_limit_is_refused() {
        let request = lanspread_proto::PeerRequest::Files {
            game: GameId::new("ggoo").unwrap(),
            version: Version::parse("20250301").unwrap(),
        };
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, &request).await.unwrap();
        // Within the limit: read as ever.
        let got = read_frame_within::<_, lanspread_proto::PeerRequest>(&mut b, 1 << 10).await;
        assert_eq!(got.unwrap(), Some(request));
        // Announced above it: refused from the prefix alone, with both numbers.
        let limit = lanspread_proto::MAX_REQUEST_LEN;
        a.write_all(&((limit + 1) as u32).to_le_bytes())
            .await
            .unwrap();
        let err = read_frame_within::<_, lanspread_proto::PeerRequest>(&mut b, limit)
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransferError::Proto(ProtoError::FrameTooLarge { len, limit: l }) if len == limit + 1 && l == limit),
            "{err}"
        );
        // Announced large and cut short: truncated.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(1_000_000u32).to_le_bytes()).await.unwrap();
        a.write_all(&[1, 2, 3]).await.unwrap();
        drop(a);
        assert!(matches!(
            read_frame::<_, Message>(&mut b).await,
            Err(TransferError::Truncated)
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
            Err(TransferError::Proto(ProtoError::Malformed(_)))
        ));
        assert!(matches!(
            read_frame::<_, Message>(&mut b).await,
            Err(TransferError::Truncated)
        ));
    }
}
