//! A control-socket client: one JSON line out, one JSON line back.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::{ControlError, ErrorKind, Reply, Request};

/// How long a request that could not be sent waits for the daemon's refusal.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// A connection to the daemon's control socket.
pub struct Client {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Client {
    /// Connects; failure means the daemon is unreachable (exit 3).
    pub async fn connect(path: &Path) -> Result<Self, ControlError> {
        let stream = UnixStream::connect(path).await.map_err(|e| {
            ControlError::Unreachable(format!(
                "cannot reach lanspreadd at {}: {e} (is the daemon running? use --socket or $LANSPREAD_SOCKET)",
                path.display()
            ))
        })?;
        let (read, write) = stream.into_split();
        Ok(Self {
            lines: BufReader::new(read).lines(),
            write,
        })
    }

    /// Sends a request without waiting for the reply.
    pub async fn send(&mut self, request: &Request) -> Result<(), ControlError> {
        let mut line = serde_json::to_vec(request)
            .map_err(|e| ControlError::failed(ErrorKind::Internal, e.to_string()))?;
        line.push(b'\n');
        let Err(e) = self.write.write_all(&line).await else {
            return Ok(());
        };
        // A daemon that refused the connection at once (a full socket: `busy`) wrote
        // why and closed it, perhaps before our request went out: its reply comes first.
        let said = tokio::time::timeout(REFUSAL_WAIT, self.lines.next_line()).await;
        if let Ok(Ok(Some(reply))) = said {
            if let Ok(Reply::Error { message, kind }) = serde_json::from_str(&reply) {
                return Err(ControlError::failed(kind, message));
            }
        }
        Err(ControlError::Unreachable(format!("control socket: {e}")))
    }

    /// The next reply; `None` when the daemon closed the connection.
    pub async fn next(&mut self) -> Result<Option<Reply>, ControlError> {
        match self.lines.next_line().await {
            Ok(Some(line)) => serde_json::from_str(&line).map(Some).map_err(|e| {
                ControlError::failed(
                    ErrorKind::Internal,
                    format!("malformed reply from the daemon: {e}"),
                )
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(ControlError::Unreachable(format!("control socket: {e}"))),
        }
    }

    /// Sends a request and returns its reply; a daemon refusal becomes [`ControlError::Failed`].
    pub async fn request(&mut self, request: &Request) -> Result<Reply, ControlError> {
        self.send(request).await?;
        match self.next().await? {
            Some(Reply::Error { message, kind }) => Err(ControlError::failed(kind, message)),
            Some(reply) => Ok(reply),
            None => Err(ControlError::Unreachable(
                "the daemon closed the connection".into(),
            )),
        }
    }

    /// Waits (boundedly) until the daemon closes this connection.
    pub async fn wait_closed(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while let Ok(Some(_)) = self.lines.next_line().await {}
        })
        .await;
    }
}
