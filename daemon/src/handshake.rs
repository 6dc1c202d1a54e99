//! The hello exchange on a QUIC connection, one implementation for links and data
//! connections: the session binding, our hello, and the peer's first announce frame read
//! within [`HELLO_TIMEOUT`] and judged by `lanspread_proto::Handshake` (identity bound to
//! the TLS key, protocol version, LAN secret proof for this session and role).

use std::net::SocketAddr;
use std::time::Duration;

use lanspread_peer::Direction;
use lanspread_proto::{
    close_code, Handshake, Hello, LanSecret, Message, PeerId, Refusal, MAX_HELLO_LEN,
};
use lanspread_transfer::{read_frame_within, session_binding, write_frame};
use quinn::{Connection, RecvStream, VarInt};

/// How long a peer has to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Who we are in every hello: our id, where we listen, our LAN secret.
#[derive(Debug)]
pub struct LocalPeer {
    /// Our peer id.
    pub id: PeerId,
    /// Our QUIC listen address.
    pub listen: SocketAddr,
    /// The LAN secret, if configured; reload may replace it (each hello exchange takes
    /// the one current when it starts; links already made stay).
    secret: std::sync::RwLock<Option<LanSecret>>,
}

impl LocalPeer {
    /// Our id, address and LAN secret.
    pub fn new(id: PeerId, listen: SocketAddr, secret: Option<LanSecret>) -> Self {
        Self {
            id,
            listen,
            secret: std::sync::RwLock::new(secret),
        }
    }

    /// The LAN secret now.
    pub fn secret(&self) -> Option<LanSecret> {
        self.secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the LAN secret for the hello exchanges that start from now on.
    pub fn set_secret(&self, secret: Option<LanSecret>) {
        *self.secret.write().unwrap_or_else(|p| p.into_inner()) = secret;
    }
}

/// One connection's hello exchange from our side.
pub struct Exchange<'a> {
    local: &'a LocalPeer,
    secret: Option<LanSecret>,
    binding: [u8; 32],
    direction: Direction,
}

impl<'a> Exchange<'a> {
    /// Binds the exchange to this connection's TLS session.
    pub fn new(
        local: &'a LocalPeer,
        conn: &Connection,
        direction: Direction,
    ) -> Result<Self, Refusal> {
        let binding = session_binding(conn).map_err(|e| Refusal::protocol(e.to_string()))?;
        Ok(Self {
            local,
            secret: local.secret(),
            binding,
            direction,
        })
    }

    fn rules(&self) -> Handshake<'_> {
        Handshake {
            secret: self.secret.as_ref(),
            binding: &self.binding,
            we_dialled: self.direction == Direction::Outbound,
        }
    }

    /// Our hello for this connection.
    pub fn hello(&self) -> Message {
        Message::Hello(self.rules().hello(self.local.id.clone(), self.local.listen))
    }

    /// Sends our hello alone on a fresh unidirectional stream (a data connection's).
    pub async fn send_hello(&self, conn: &Connection) -> Result<(), Refusal> {
        let fail = |e: String| Refusal::protocol(e);
        let mut send = conn.open_uni().await.map_err(|e| fail(e.to_string()))?;
        write_frame(&mut send, &self.hello())
            .await
            .map_err(|e| fail(e.to_string()))?;
        send.finish().map_err(|e| fail(e.to_string()))
    }

    /// Accepts the peer's announce stream and reads its hello within [`HELLO_TIMEOUT`],
    /// checked against the id its TLS key proves (`proven`); the stream is returned for
    /// the frames that follow.
    pub async fn receive_hello(
        &self,
        conn: &Connection,
        proven: &PeerId,
    ) -> Result<(RecvStream, Hello), Refusal> {
        let first = tokio::time::timeout(HELLO_TIMEOUT, async {
            let mut recv = conn.accept_uni().await.map_err(|e| e.to_string())?;
            let first: Option<Message> = read_frame_within(&mut recv, MAX_HELLO_LEN)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((recv, first))
        })
        .await;
        match first {
            Ok(Ok((recv, first))) => Ok((recv, self.rules().accept(first, proven)?)),
            Ok(Err(e)) => Err(Refusal::protocol(refused_by_peer(conn).unwrap_or(e))),
            Err(_) => Err(Refusal::protocol("no hello in time")),
        }
    }
}

/// Closes a connection whose hello exchange failed, with the refusal's code and reason.
pub fn close(conn: &Connection, refusal: &Refusal) {
    conn.close(VarInt::from_u32(refusal.code), refusal.why.as_bytes());
}

/// Why the peer closed the connection, when it refused us on purpose.
fn refused_by_peer(conn: &Connection) -> Option<String> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code != VarInt::from_u32(close_code::GOODBYE) =>
        {
            Some(format!(
                "refused by the peer: {}",
                lanspread_proto::peer_text(&String::from_utf8_lossy(&c.reason))
            ))
        }
        _ => None,
    }
}
