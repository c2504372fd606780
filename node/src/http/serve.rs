//! The accept loop of an HTTP listener: `run(listener, app, options, shutdown)`.
//!
//! Each accepted connection gets TCP_NODELAY, an optional TLS handshake, and
//! HTTP/1.1 or HTTP/2 (hyper's auto builder) with bounded waits:
//!
//! - the request head must arrive within `header_timeout` (hyper's
//!   `header_read_timeout`; a slow-loris sender is cut off);
//! - a request body must arrive within `body_timeout` (tower-http's
//!   `RequestBodyTimeoutLayer`; handlers that read a body see an error after it, and
//!   the webhook intake bounds its own read the same way, so a stalled sender cannot
//!   hold an in-flight permit);
//! - a TLS handshake must finish within `header_timeout`.
//!
//! On shutdown the loop stops accepting, asks every open connection to finish its
//! request in flight (graceful), and waits for them at most [`DRAIN_TIMEOUT`].

use std::io;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How long shutdown waits for open connections to finish their requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Per-listener settings.
#[derive(Clone)]
pub struct ServeOptions {
    /// Bound of receiving a request head (and of a TLS handshake).
    pub header_timeout: Duration,
    /// Bound of receiving a request body.
    pub body_timeout: Duration,
    /// Serve HTTPS with this acceptor.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl ServeOptions {
    /// Both timeouts `timeout` (`spec.server.timeout_secs`), plain HTTP.
    pub fn with_timeout(timeout: Duration) -> Self {
        ServeOptions { header_timeout: timeout, body_timeout: timeout, tls: None }
    }
}

/// Disable Nagle's algorithm on an accepted connection. Without it, a response written
/// in several small pieces (HTTP/2 headers, data, trailers) waits for the peer's
/// delayed ACK — up to 40 ms per round trip on Linux.
pub fn set_no_delay(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY not set on an accepted connection: {e}");
    }
}

/// Serve `app` on `listener` until `shutdown` turns true, then drain.
pub async fn run(listener: TcpListener, app: Router, opts: ServeOptions, mut shutdown: watch::Receiver<bool>) -> io::Result<()> {
    let app = app.layer(RequestBodyTimeoutLayer::new(opts.body_timeout));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(opts.header_timeout);
    builder.http2().timer(TokioTimer::new());
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed on {:?}: {e}; retrying in 100 ms", listener.local_addr().ok());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        set_no_delay(&tcp);
        let svc = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match opts.tls.clone() {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc).into_owned();
                tokio::spawn(async move {
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!("HTTP connection ended: {e}");
                    }
                });
            }
            Some(acceptor) => {
                let handshake_timeout = opts.header_timeout;
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => return tracing::debug!("TLS handshake did not finish within {handshake_timeout:?}"),
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!("HTTPS connection ended: {e}");
                    }
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("HTTP connections still open {DRAIN_TIMEOUT:?} after shutdown; closing them");
    }
    Ok(())
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Accept errors that concern one connection only (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted)
}
