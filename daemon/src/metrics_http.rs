//! The metrics' HTTP side (`--metrics-listen`): `GET /metrics` answered with the
//! registry's text (`metrics.rs`) by hyper's HTTP/1 server on the daemon's runtime. A
//! scraper that opens many connections or sends nothing is bounded: at most
//! [`MAX_CONNECTIONS`] at once (more are closed at once), [`HEADER_TIMEOUT`] to send a
//! request head, one request per connection and [`CONNECTION_TIMEOUT`] in all.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::metrics::Snapshot;
use crate::state::Shared;
use crate::DaemonError;

/// Scrape connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a connection has to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection is served in all (one request: no keep-alive), so a client that
/// never reads its answer frees its slot.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The OpenMetrics text format `prometheus-client` writes (Prometheus reads it).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the metrics listener (start-up fails on an address that cannot be bound).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| DaemonError::io(format!("metrics listen address {addr}"), e))
}

/// Accepts scrapes until the daemon stops; samples the byte totals every second for the
/// rate gauges meanwhile.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics at http://{addr}/metrics");
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let (stream, peer) = tokio::select! {
            _ = tick.tick() => {
                shared.net.metrics.sample(std::time::Instant::now());
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    warn!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "metrics: too many connections; closed");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, &req)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, "metrics connection: {e}"),
                Err(_) => debug!(%peer, "metrics connection: timed out"),
            }
        });
    }
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "not found: try /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
    }
    match shared.net.metrics.render(&snapshot(shared)) {
        Ok(text) => {
            let mut r = reply(StatusCode::OK, text);
            if let Ok(v) = hyper::header::HeaderValue::from_str(CONTENT_TYPE) {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            r
        }
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {e}\n"),
        ),
    }
}

fn snapshot(shared: &Shared) -> Snapshot {
    let operations = shared
        .lock()
        .operations
        .iter()
        .map(|(_, op)| (op.kind.as_str(), 1))
        .collect();
    Snapshot {
        operations,
        peers: shared.peers.linked_count(),
        games_ready: shared.advert.borrow().len(),
        limits: (
            shared.net.upload_limit.mib_per_s(),
            shared.net.download_limit.mib_per_s(),
        ),
        waited: [
            shared.net.upload_limit.waited(),
            shared.net.download_limit.waited(),
        ],
    }
}
