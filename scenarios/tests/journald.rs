//! Under systemd (`JOURNAL_STREAM` names the daemon's stderr) logs go to the journal in
//! its native protocol, with the peer and download spans as fields; nothing goes to
//! stderr. The test enters a private mount namespace, mounts a tmpfs on /run and listens
//! on /run/systemd/journal/socket there, so the host's journal is never touched (needs
//! root; runs without the test harness so the process is single-threaded for unshare).

use std::ffi::CString;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use lanspread_fixtures::{Content, GameSpec};
use lanspread_scenarios::{skip_privileged, Node, NodeOptions};

fn main() {
    if skip_privileged("journald_gets_structured_logs_under_systemd") {
        return;
    }
    let socket = private_journal_socket();
    // Drained from the start: a datagram socket queues only a few messages
    // (net.unix.max_dgram_qlen, 10 by default) and the daemon's journal writes block
    // once they are queued.
    let (tx, journal) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("journal socket: {e}"),
            }
        }
    });
    let src = tempfile::tempdir().unwrap();
    GameSpec::new("cod5", "20250101")
        .file("cod5.eti", 0o644, Content::Sparse { size: 3 << 20 })
        .write(src.path())
        .unwrap();
    let s = Node::start("src", src.path());
    let games = tempfile::tempdir().unwrap();
    let c = Node::start_with(
        "client",
        games.path(),
        NodeOptions {
            journal: true,
            ..NodeOptions::default()
        },
    );
    c.connect(&s);
    c.download_ok("cod5", &["--no-install"]);

    let mut seen: Vec<Entry> = Vec::new();
    let want = |e: &Entry, msg: &str, span: &str| e.has("MESSAGE", msg) && e.has("SPAN_NAME", span);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen.iter().any(|e| want(e, "peer connected", "peer"))
        && seen
            .iter()
            .any(|e| want(e, "download finished", "download")))
    {
        assert!(
            Instant::now() < deadline,
            "no peer/download span entries in the journal; got:\n{}",
            seen.iter()
                .map(|e| format!("{:?}", e.0))
                .collect::<Vec<_>>()
                .join("\n")
        );
        if let Ok(datagram) = journal.recv_timeout(Duration::from_millis(200)) {
            seen.push(Entry::parse(&datagram));
        }
    }
    let entry = seen
        .iter()
        .find(|e| want(e, "download finished", "download"))
        .unwrap();
    assert!(entry.has("SYSLOG_IDENTIFIER", "lanspreadd"), "{entry:?}");
    assert!(entry.has("PRIORITY", "5"), "info maps to notice: {entry:?}");
    assert!(
        entry.has("F_GAME", "cod5"),
        "the span's game field: {entry:?}"
    );
    assert!(entry.has("F_VERSION", "20250101"), "{entry:?}");
    let peer = seen
        .iter()
        .find(|e| want(e, "peer connected", "peer"))
        .unwrap();
    assert!(peer.has("F_DIR", "out"), "{peer:?}");
    assert!(peer.has("F_ID", &s.peer_id[..12]), "{peer:?}");
    let log = c.log();
    assert!(
        !log.contains("download finished") && !log.contains("peer connected"),
        "logs went to stderr as well:\n{log}"
    );
    // The source was not started under systemd: it logs to stderr.
    assert!(s.log().contains("peer connected"), "{}", s.log());
    println!("journald_gets_structured_logs_under_systemd ... ok");
}

/// Private mount namespace, tmpfs on /run, a datagram socket where journald listens.
fn private_journal_socket() -> UnixDatagram {
    // SAFETY: plain syscalls with valid NUL-terminated arguments; the process has one
    // thread (no harness), as unshare(CLONE_NEWNS) requires.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "make / private: {}",
            std::io::Error::last_os_error()
        );
        let opts = CString::new("size=16m,mode=0755").unwrap();
        assert_eq!(
            libc::mount(
                c"tmpfs".as_ptr(),
                c"/run".as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast()
            ),
            0,
            "mount tmpfs on /run: {}",
            std::io::Error::last_os_error()
        );
    }
    std::fs::create_dir_all("/run/systemd/journal").unwrap();
    let sock = UnixDatagram::bind("/run/systemd/journal/socket").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sock
}

/// One journal entry in the native protocol: `KEY=value\n`, or `KEY\n` + little-endian
/// u64 length + value + `\n` for values that may hold newlines.
#[derive(Debug)]
struct Entry(Vec<(String, String)>);

impl Entry {
    fn parse(mut b: &[u8]) -> Entry {
        let mut fields = Vec::new();
        while !b.is_empty() {
            let nl = b.iter().position(|&c| c == b'\n').expect("field ends");
            let line = &b[..nl];
            if let Some(eq) = line.iter().position(|&c| c == b'=') {
                let key = String::from_utf8_lossy(&line[..eq]).into_owned();
                fields.push((key, String::from_utf8_lossy(&line[eq + 1..]).into_owned()));
                b = &b[nl + 1..];
            } else {
                let key = String::from_utf8_lossy(line).into_owned();
                let rest = &b[nl + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                let value = String::from_utf8_lossy(&rest[8..8 + len]).into_owned();
                fields.push((key, value));
                b = &rest[8 + len + 1..];
            }
        }
        Entry(fields)
    }

    fn has(&self, key: &str, value: &str) -> bool {
        self.0.iter().any(|(k, v)| k == key && v == value)
    }
}
