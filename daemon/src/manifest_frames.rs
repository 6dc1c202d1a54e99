//! The `Files` frames this daemon answers manifest requests with, encoded once and shared.
//!
//! A file server at a LAN party is asked for the same manifest by every client within
//! seconds, and each answer sits in its connection's send buffer until that client has
//! taken it (a 100 GiB game's manifest is about 3.3 MiB: a thousand clients would hold
//! 3.3 GB). Every answer of one manifest is the same bytes: they are encoded once and
//! handed to quinn as one reference-counted buffer (`SendStream::write_chunk` keeps the
//! `Bytes`, no copy: `serve::answer`'s `Answer::encoded`), so a thousand answers hold one copy.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use lanspread_catalog::{ChunkHash, Manifest};
use lanspread_proto::{encode_frame, folders_digest, manifest_digest, PeerResponse, ProtoError};

/// An encoded frame, owned by every `Bytes` handed out for it.
struct Owner(Arc<Vec<u8>>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The frames some answer still holds, each named by the digests of its manifest's
/// files and empty folders (together they cover everything the frame says). A frame
/// lives as long as an answer holds it (quinn keeps the `Bytes` until the peer has
/// acknowledged them): nothing is kept for later, nothing to expire.
#[derive(Default)]
pub struct ManifestFrames {
    held: Mutex<Vec<(FrameKey, Weak<Vec<u8>>)>>,
}

/// The digests of a manifest's files and of its empty folders.
type FrameKey = (ChunkHash, ChunkHash);

impl ManifestFrames {
    /// The `Files` frame (length prefix included) of `manifest`: the one an answer still
    /// holds if there is one, else encoded now.
    pub fn frame(&self, manifest: Manifest) -> Result<Bytes, ProtoError> {
        // Everything the frame says (a new field of `Manifest` fails to compile here).
        let Manifest { files, folders } = &manifest;
        let key = (manifest_digest(files), folders_digest(folders));
        // Encoded under the lock (a few ms for megabytes, on a blocking thread): the
        // burst of requests a party's start makes, all waiting on one hashing, wakes
        // together, and each must find the frame the first one encoded.
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|(_, f)| f.strong_count() > 0);
        if let Some(frame) = held
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, f)| f.upgrade())
        {
            return Ok(Bytes::from_owner(Owner(frame)));
        }
        let frame = Arc::new(encode_frame(&PeerResponse::Files(manifest))?);
        held.push((key, Arc::downgrade(&frame)));
        Ok(Bytes::from_owner(Owner(frame)))
    }

    /// Frames some answer holds now.
    #[cfg(test)]
    fn len(&self) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().filter(|(_, f)| f.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanspread_catalog::{FileManifest, RelPath};
    use lanspread_proto::decode_frame;

    fn manifest(size: u64, folders: &[&str]) -> Manifest {
        let file = |path: &str, size: u64| {
            let pieces = vec![[size as u8; 32]; lanspread_catalog::piece_count(size) as usize];
            FileManifest::from_pieces(RelPath::new(path).unwrap(), size, 0o644, pieces)
        };
        Manifest {
            files: vec![file("version.ini", 8), file("g.eti", size)],
            folders: folders.iter().map(|d| RelPath::new(d).unwrap()).collect(),
        }
    }

    #[test]
    fn the_same_manifest_is_one_shared_frame_that_decodes_to_it() {
        let frames = ManifestFrames::default();
        let a = frames.frame(manifest(3 << 20, &["saves"])).unwrap();
        let b = frames.frame(manifest(3 << 20, &["saves"])).unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "one buffer for both answers");
        let (decoded, used): (PeerResponse, usize) = decode_frame(&a).unwrap().unwrap();
        assert_eq!(used, a.len());
        assert!(
            matches!(decoded, PeerResponse::Files(m) if m == manifest(3 << 20, &["saves"])),
            "the frame is the manifest's"
        );
        // Other folders or other files: another frame.
        let c = frames.frame(manifest(3 << 20, &[])).unwrap();
        let d = frames.frame(manifest(2 << 20, &["saves"])).unwrap();
        assert_ne!(c, a);
        assert_ne!(d, a);
        assert_eq!(frames.len(), 3);
    }

    #[test]
    fn a_burst_of_requests_shares_one_frame() {
        let frames = ManifestFrames::default();
        let start = std::sync::Barrier::new(8);
        let got: Vec<Bytes> = std::thread::scope(|s| {
            let each: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        frames.frame(manifest(16 << 30, &["saves"])).unwrap()
                    })
                })
                .collect();
            each.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(
            got.iter().all(|f| f.as_ptr() == got[0].as_ptr()),
            "one buffer"
        );
    }

    #[test]
    fn any_field_changed_is_another_frame_of_its_own() {
        let frames = ManifestFrames::default();
        let base = manifest(3 << 20, &["saves"]);
        let mut changed = Vec::new();
        for change in 0..4 {
            let mut m = base.clone();
            let f = &mut m.files[1];
            match change {
                0 => f.mode = 0o755,
                1 => f.pieces[2][0] ^= 1,
                2 => f.chunks[0][0] ^= 1,
                _ => f.path = RelPath::new("h.eti").unwrap(),
            }
            changed.push(m);
        }
        let first = frames.frame(base.clone()).unwrap();
        for m in changed {
            let frame = frames.frame(m.clone()).unwrap();
            assert_ne!(frame.as_ptr(), first.as_ptr());
            let (decoded, _): (PeerResponse, usize) = decode_frame(&frame).unwrap().unwrap();
            assert!(matches!(decoded, PeerResponse::Files(d) if d == m));
        }
    }

    #[test]
    fn a_frame_lives_as_long_as_an_answer_holds_it() {
        let frames = ManifestFrames::default();
        let a = frames.frame(manifest(1, &[])).unwrap();
        let b = frames.frame(manifest(1, &[])).unwrap();
        drop(a);
        // One answer still holds it: shared.
        let c = frames.frame(manifest(1, &[])).unwrap();
        assert_eq!(b.as_ptr(), c.as_ptr());
        drop((b, c));
        assert_eq!(frames.len(), 0, "nothing kept once every answer is gone");
        // (A slice of a held frame holds it too.)
        let d = frames.frame(manifest(1, &[])).unwrap().slice(4..);
        assert_eq!(frames.len(), 1);
        drop(d);
        assert_eq!(frames.len(), 0);
    }
}
