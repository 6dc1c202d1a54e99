//! The hello exchange, decided without IO: the first frame a peer sends on a link or a
//! data connection must be a `Hello` whose id is the one its TLS key proves, whose
//! protocol version is ours and whose LAN secret proof (if either side has a secret)
//! is valid for this TLS session and the peer's role in it.

use std::net::SocketAddr;

use crate::PROTOCOL_VERSION;
use crate::{close_code, secret_proof, Hello, LanSecret, Message, PeerId, SecretCheck};

/// Software name and version put in our hellos, for the peer's logs.
pub const AGENT: &str = concat!("lanspread/", env!("CARGO_PKG_VERSION"));

/// A refused hello: the QUIC close code to send and the reason both sides log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Application close code (see [`close_code`]).
    pub code: u32,
    /// Why, for logs and the user.
    pub why: String,
}

impl Refusal {
    /// A protocol violation.
    pub fn protocol(why: impl Into<String>) -> Self {
        Self {
            code: close_code::PROTOCOL_ERROR,
            why: why.into(),
        }
    }
}

/// One side of a connection's hello exchange: who we are, what the TLS session proves
/// and whether we dialled.
#[derive(Debug, Clone, Copy)]
pub struct Handshake<'a> {
    /// Our LAN secret, if one is configured.
    pub secret: Option<&'a LanSecret>,
    /// The session's exported keying material the secret proofs are bound to.
    pub binding: &'a [u8; 32],
    /// Whether we dialled this connection (are its TLS client).
    pub we_dialled: bool,
}

impl Handshake<'_> {
    /// Our hello for this connection, with the secret proof for our role.
    pub fn hello(&self, peer_id: PeerId, listen: SocketAddr) -> Hello {
        Hello {
            peer_id,
            listen,
            protocol: PROTOCOL_VERSION,
            agent: AGENT.into(),
            proof: self.secret.map(|s| s.prove(self.binding, self.we_dialled)),
        }
    }

    /// The peer's first frame, which must be a hello passing every check against the id
    /// its TLS key proves (`proven`). `None`: the stream ended before a frame.
    pub fn accept(&self, first: Option<Message>, proven: &PeerId) -> Result<Hello, Refusal> {
        let hello = match first {
            Some(Message::Hello(h)) => h,
            Some(other) => {
                return Err(Refusal::protocol(format!(
                    "expected hello, got {}",
                    other.kind()
                )))
            }
            None => return Err(Refusal::protocol("expected hello, the stream ended")),
        };
        if hello.protocol != PROTOCOL_VERSION {
            return Err(Refusal {
                code: close_code::VERSION_MISMATCH,
                why: format!(
                    "protocol version {} (we speak {PROTOCOL_VERSION})",
                    hello.protocol
                ),
            });
        }
        if &hello.peer_id != proven {
            return Err(Refusal::protocol(format!(
                "hello claims peer id {} but the TLS key proves {proven}",
                hello.peer_id
            )));
        }
        let they_dialled = !self.we_dialled;
        match secret_proof(
            self.secret,
            self.binding,
            they_dialled,
            hello.proof.as_ref(),
        ) {
            SecretCheck::Refused(why) => Err(Refusal {
                code: close_code::SECRET_MISMATCH,
                why,
            }),
            SecretCheck::Accepted => Ok(hello),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PeerId {
        PeerId::from_spki(&[n])
    }

    fn side<'a>(
        secret: Option<&'a LanSecret>,
        binding: &'a [u8; 32],
        dialled: bool,
    ) -> Handshake<'a> {
        Handshake {
            secret,
            binding,
            we_dialled: dialled,
        }
    }

    const LISTEN: &str = "127.0.0.1:41741";

    #[test]
    fn a_matching_hello_passes_both_ways() {
        let s = LanSecret::from_bytes(b"correct horse battery staple").unwrap();
        let ekm = [9u8; 32];
        for secret in [None, Some(&s)] {
            let dialler = side(secret, &ekm, true);
            let acceptor = side(secret, &ekm, false);
            let hello = dialler.hello(id(1), LISTEN.parse().unwrap());
            assert_eq!(hello.agent, AGENT);
            let got = acceptor.accept(Some(Message::Hello(hello.clone())), &id(1));
            assert_eq!(got, Ok(hello));
            let back = acceptor.hello(id(2), LISTEN.parse().unwrap());
            assert!(dialler.accept(Some(Message::Hello(back)), &id(2)).is_ok());
        }
    }

    #[test]
    fn each_failed_check_has_its_close_code() {
        let ekm = [1u8; 32];
        let s = LanSecret::from_bytes(b"correct horse battery staple").unwrap();
        let other = LanSecret::from_bytes(b"another secret of some length").unwrap();
        let listen = LISTEN.parse().unwrap();
        let us = side(Some(&s), &ekm, false);

        let ended = us.accept(None, &id(1)).unwrap_err();
        assert_eq!(ended.code, close_code::PROTOCOL_ERROR);
        let not_hello = us.accept(Some(Message::Library(Vec::new())), &id(1));
        assert_eq!(not_hello.unwrap_err().code, close_code::PROTOCOL_ERROR);

        let mut old = side(Some(&s), &ekm, true).hello(id(1), listen);
        old.protocol = PROTOCOL_VERSION - 1;
        let e = us.accept(Some(Message::Hello(old)), &id(1)).unwrap_err();
        assert_eq!(e.code, close_code::VERSION_MISMATCH);
        assert!(e.why.contains("protocol version"), "{}", e.why);

        let borrowed = side(Some(&s), &ekm, true).hello(id(3), listen);
        let e = us
            .accept(Some(Message::Hello(borrowed)), &id(1))
            .unwrap_err();
        assert_eq!(e.code, close_code::PROTOCOL_ERROR);
        assert!(e.why.contains("TLS key proves"), "{}", e.why);

        for (theirs, dialled) in [(Some(&other), true), (None, true), (Some(&s), false)] {
            // Another secret, none at all, or our own role's proof reflected back.
            let hello = side(theirs, &ekm, dialled).hello(id(1), listen);
            let e = us.accept(Some(Message::Hello(hello)), &id(1)).unwrap_err();
            assert_eq!(e.code, close_code::SECRET_MISMATCH, "{}", e.why);
        }
        // A proof from another session.
        let hello = side(Some(&s), &[2u8; 32], true).hello(id(1), listen);
        let e = us.accept(Some(Message::Hello(hello)), &id(1)).unwrap_err();
        assert_eq!(e.code, close_code::SECRET_MISMATCH);
        // We have no secret, they do.
        let hello = side(Some(&s), &ekm, true).hello(id(1), listen);
        let e = side(None, &ekm, false)
            .accept(Some(Message::Hello(hello)), &id(1))
            .unwrap_err();
        assert_eq!(e.code, close_code::SECRET_MISMATCH);
    }
}
