//! Writes the seed corpora into `fuzz/libfuzzer/corpus/<target>/` (valid inputs the
//! fuzzer mutates from): `cargo run -p lanspread-fuzz --example seeds`.

use std::path::Path;

use lanspread_catalog::{FileManifest, GameId, Manifest, RelPath, Version};
use lanspread_proto::{
    encode_frame, ChunkRange, GameAd, Hello, Message, PeerRequest, PeerResponse,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("libfuzzer/corpus");
    let put = |target: &str, name: &str, data: &[u8]| -> std::io::Result<()> {
        let dir = base.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), data)
    };
    let game = GameId::new("cod5")?;
    let version = Version::parse("20250101")?;
    let path = RelPath::new("data/cod5.eti")?;
    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "hello",
            encode_frame(&Message::Hello(Hello {
                peer_id: lanspread_proto::PeerId::from_spki(b"seed key"),
                listen: "192.0.2.1:41741".parse()?,
                protocol: lanspread_proto::PROTOCOL_VERSION,
                agent: "lanspread/0.1.0".into(),
                proof: Some([7; 32]),
            }))?,
        ),
        (
            "library",
            encode_frame(&Message::Library(vec![GameAd {
                id: game.clone(),
                version,
                size: 1 << 30,
            }]))?,
        ),
        (
            "files-request",
            encode_frame(&PeerRequest::Files {
                game: game.clone(),
                version,
            })?,
        ),
        (
            "chunk-request",
            encode_frame(&PeerRequest::Chunks {
                game,
                version,
                ranges: vec![
                    ChunkRange {
                        path: path.clone(),
                        offset: 32 << 20,
                        len: 32 << 20,
                    },
                    ChunkRange {
                        path: path.clone(),
                        offset: 0,
                        len: 9,
                    },
                ],
            })?,
        ),
        (
            "files",
            encode_frame(&PeerResponse::Files(Manifest {
                files: vec![FileManifest::from_pieces(
                    path,
                    40 << 20,
                    0o644,
                    vec![[1; 32]; 40],
                )],
                folders: vec![RelPath::new("saves")?],
            }))?,
        ),
        (
            "refused",
            encode_frame(&PeerResponse::Refused {
                reason: "not ready".into(),
            })?,
        ),
    ];
    for (name, f) in frames {
        put("wire_frame", name, &f)?;
    }
    for (name, line) in [
        ("status", r#"{"cmd":"status"}"#),
        (
            "download",
            r#"{"cmd":"download","game":"cod5","install":true}"#,
        ),
        ("connect", r#"{"cmd":"connect","addr":"127.0.0.1:41741"}"#),
        (
            "error",
            r#"{"error":{"message":"no peers have game cod5"}}"#,
        ),
        (
            "event",
            r#"{"event":"download-begin","ts_ms":1,"game_id":"cod5","version":"20250101","bytes":9,"files":1,"chunks":1,"resumed_chunks":0,"resumed_bytes":0}"#,
        ),
    ] {
        put("control_json", name, line.as_bytes())?;
    }
    for (name, text) in [
        ("version", "20250101\n"),
        ("catalog", "# ids\ncod5 Call of Duty 5\nggoo\n"),
        ("paths", "a/b.eti\n../x\nlocal/y\n.lanspread/z\n/abs\n"),
    ] {
        put("catalog_text", name, text.as_bytes())?;
    }
    put(
        "rar5_roundtrip",
        "two",
        b"\x05setup\x02hello world, this is a body\x08dir/f.txt\x01abc",
    )?;
    Ok(())
}
