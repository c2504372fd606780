//! The gRPC endpoints of the work queue, shared by a [`crate::Worker`] and its
//! [`crate::Lease`]s: parsing (`grpc://host:port`, `grpcs://host:port` for TLS),
//! lazily connected channels, the worker's token on every call
//! (`authorization: Bearer` metadata), unary calls with failover, and the bounded
//! backoff between attempts.
//!
//! **Failover.** A unary call (Extend, Complete, Fail) goes to the endpoint that
//! answered last; on a transport error, `UNAVAILABLE`, a timeout or another
//! transient status it is sent to the next endpoint, once around the list, then
//! again after a backoff pause, until its retry window is used up. Every node
//! serves the work queue (it forwards to the leader), and the calls are fenced by
//! the lease's token, so resending one is safe: a call that already took effect
//! is answered `FAILED_PRECONDITION` ([`WorkerError::StaleLease`]) the second time.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aof_proto::v1::work_queue_client::WorkQueueClient;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::WorkerError;

/// Largest gRPC message accepted (a lease carries the webhook payload; the nodes
/// use the same limit).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Bounded exponential backoff: `min`, `2·min`, `4·min`, ... up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The pause before the next attempt; each call doubles the following one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// After a success: the next pause is `min` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Which endpoint a claim stream uses, and how long to wait before the next one.
/// Pure (no IO), so the reconnect policy is unit-tested on its own.
#[derive(Clone, Debug)]
pub(crate) struct Rotation {
    n: usize,
    current: usize,
    backoff: Backoff,
}

impl Rotation {
    pub(crate) fn new(n: usize, backoff: Backoff) -> Self {
        Rotation {
            n: n.max(1),
            current: 0,
            backoff,
        }
    }

    /// The endpoint to use now.
    pub(crate) fn current(&self) -> usize {
        self.current
    }

    /// The connection was healthy (a lease arrived, or the stream stayed open a
    /// while): the next reconnect is quick again.
    pub(crate) fn healthy(&mut self) {
        self.backoff.reset();
    }

    /// The connection failed or the stream ended: move to the next endpoint and
    /// return the pause before connecting to it.
    pub(crate) fn failed(&mut self) -> Duration {
        self.current = (self.current + 1) % self.n;
        self.backoff.next_delay()
    }
}

/// A parsed gRPC endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParsedEndpoint {
    /// As shown in messages (`grpc://h:p`, `grpcs://h:p`, or as given).
    pub display: String,
    /// The URI tonic dials (`http://h:p`, or `https://h:p` for TLS).
    pub uri: String,
    pub tls: bool,
}

/// `grpc://h:p`, `http://h:p` or `h:p` (plain text); `grpcs://h:p` or
/// `https://h:p` (TLS).
pub(crate) fn parse_endpoint(e: &str) -> Result<ParsedEndpoint, String> {
    let e = e.trim().trim_end_matches('/');
    if e.is_empty() {
        return Err("empty endpoint".into());
    }
    let (display, rest, tls) = match e.split_once("://") {
        Some(("grpc" | "http", rest)) => (e.to_string(), rest, false),
        Some(("grpcs" | "https", rest)) => (e.to_string(), rest, true),
        Some((scheme, _)) => {
            return Err(format!(
                "{e:?}: unsupported scheme {scheme:?}; use grpc://HOST:PORT (plain-text gRPC, e.g. \
                 grpc://127.0.0.1:4001) or grpcs://HOST:PORT (TLS)"
            ))
        }
        None => (format!("grpc://{e}"), e, false),
    };
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(format!(
            "{e:?} is not a gRPC endpoint like grpc://127.0.0.1:4001 (host and port of a node's spec.cluster.grpc_addr)"
        ));
    }
    let uri = format!("{}://{rest}", if tls { "https" } else { "http" });
    Endpoint::from_shared(uri.clone()).map_err(|err| format!("{e:?}: {err}"))?;
    Ok(ParsedEndpoint { display, uri, tls })
}

/// Adds the worker's `authorization: Bearer <token>` metadata to every call.
#[derive(Clone)]
pub(crate) struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.header.is_some() { "Auth(<token>)" } else { "Auth(none)" })
    }
}

impl Auth {
    /// `None` or an empty token: no metadata.
    pub(crate) fn new(token: Option<&str>) -> Result<Auth, WorkerError> {
        let header = match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(format!("Bearer {t}").parse::<MetadataValue<Ascii>>().map_err(|_| {
                WorkerError::Config(
                    "the worker token contains characters that cannot be sent as gRPC metadata; \
                     check its value (--token / $AOF_WORKER_TOKEN)"
                        .into(),
                )
            })?),
        };
        Ok(Auth { header })
    }

    pub(crate) fn is_set(&self) -> bool {
        self.header.is_some()
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// A work-queue client that sends the worker's token.
pub(crate) type QueueClient = WorkQueueClient<InterceptedService<Channel, Auth>>;

/// Options of a [`Pool`].
#[derive(Clone, Debug)]
pub(crate) struct PoolOptions {
    pub connect_timeout: Duration,
    /// Bound of one call to one endpoint (opening a claim stream included).
    pub call_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Sent with every call.
    pub auth: Auth,
    /// PEM CA certificate(s) for `grpcs://` endpoints; `None` = the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug)]
struct GrpcEndpoint {
    display: String,
    channel: Channel,
}

/// The endpoints, with lazily connected channels (tonic reconnects them).
#[derive(Debug)]
pub(crate) struct Pool {
    endpoints: Vec<GrpcEndpoint>,
    /// The endpoint that answered last; unary calls start there.
    preferred: AtomicUsize,
    pub(crate) opts: PoolOptions,
}

/// Whether a failed call may be sent to another endpoint.
pub(crate) fn is_transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
    )
}

/// A status in a few words, for logs and [`WorkerError::Unavailable`].
pub(crate) fn describe_status(s: &tonic::Status) -> String {
    let msg = s.message();
    let msg = if msg.is_empty() {
        s.code().description()
    } else {
        msg
    };
    // tonic's transport errors hide the root cause in `source`.
    let mut root = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(s);
    while let Some(e) = src {
        root = e.to_string();
        src = e.source();
    }
    if root.is_empty() || msg.contains(&root) {
        msg.to_string()
    } else {
        format!("{msg}: {root}")
    }
}

impl Pool {
    /// Parses the endpoints; an empty list or a bad URL is a [`WorkerError::Config`].
    /// Must be called inside a Tokio runtime (the channels are created lazily).
    pub(crate) fn new(endpoints: &[String], opts: PoolOptions) -> Result<Pool, WorkerError> {
        if endpoints.is_empty() {
            return Err(WorkerError::Config(
                "no gRPC endpoint given; pass at least one node's grpc://HOST:PORT".into(),
            ));
        }
        let mut out = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let ParsedEndpoint { display, uri, tls } = parse_endpoint(e).map_err(WorkerError::Config)?;
            let mut endpoint = Endpoint::from_shared(uri)
                .map_err(|err| WorkerError::Config(format!("{e:?}: {err}")))?;
            if tls {
                let cfg = match &opts.ca_pem {
                    Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                    None => ClientTlsConfig::new().with_native_roots(),
                };
                endpoint = endpoint
                    .tls_config(cfg)
                    .map_err(|err| WorkerError::Config(format!("{e:?}: TLS: {err}")))?;
            }
            let channel = endpoint
                .connect_timeout(opts.connect_timeout)
                .tcp_nodelay(true)
                // Notice a dead peer on an idle claim stream within seconds.
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .connect_lazy();
            out.push(GrpcEndpoint { display, channel });
        }
        Ok(Pool {
            endpoints: out,
            preferred: AtomicUsize::new(0),
            opts,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub(crate) fn display(&self, i: usize) -> &str {
        &self.endpoints[i % self.endpoints.len()].display
    }

    pub(crate) fn displays(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.display.clone()).collect()
    }

    /// A client of endpoint `i`, sending the worker's token.
    pub(crate) fn client(&self, i: usize) -> QueueClient {
        let channel = self.endpoints[i % self.endpoints.len()].channel.clone();
        WorkQueueClient::with_interceptor(channel, self.opts.auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Whether calls carry a token.
    pub(crate) fn token_sent(&self) -> bool {
        self.opts.auth.is_set()
    }

    /// Runs a unary call with failover (see the module docs), retrying transient
    /// failures for at most `retry_for` (at least one round over all endpoints).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        what: &str,
        retry_for: Duration,
        mut f: F,
    ) -> Result<T, WorkerError>
    where
        F: FnMut(QueueClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let n = self.endpoints.len();
        let deadline = Instant::now() + retry_for;
        let mut backoff = Backoff::new(self.opts.backoff_min, self.opts.backoff_max);
        let mut last_error = String::new();
        loop {
            let start = self.preferred.load(Ordering::Relaxed) % n;
            for k in 0..n {
                let i = (start + k) % n;
                match tokio::time::timeout(self.opts.call_timeout, f(self.client(i))).await {
                    Ok(Ok(resp)) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok(resp.into_inner());
                    }
                    Ok(Err(status)) if is_transient(status.code()) => {
                        last_error = format!("{}: {}", self.display(i), describe_status(&status));
                    }
                    Ok(Err(status)) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Err(WorkerError::from_status(&status, self.token_sent()));
                    }
                    Err(_) => {
                        last_error = format!(
                            "{}: no answer within {} ms",
                            self.display(i),
                            self.opts.call_timeout.as_millis()
                        );
                    }
                }
                tracing::debug!(call = what, error = %last_error, "work-queue call failed; trying the next endpoint");
            }
            let pause = backoff.next_delay();
            if Instant::now() + pause > deadline {
                return Err(WorkerError::Unavailable {
                    endpoints: self.displays(),
                    last_error,
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(display: &str, uri: &str, tls: bool) -> ParsedEndpoint {
        ParsedEndpoint { display: display.into(), uri: uri.into(), tls }
    }

    #[test]
    fn endpoints_accept_grpc_http_grpcs_https_and_bare_addresses() {
        assert_eq!(
            parse_endpoint("grpc://127.0.0.1:4001/").unwrap(),
            parsed("grpc://127.0.0.1:4001", "http://127.0.0.1:4001", false)
        );
        assert_eq!(
            parse_endpoint("http://node-2:4002").unwrap(),
            parsed("http://node-2:4002", "http://node-2:4002", false)
        );
        assert_eq!(
            parse_endpoint(" 10.0.0.3:4003 ").unwrap(),
            parsed("grpc://10.0.0.3:4003", "http://10.0.0.3:4003", false)
        );
        assert_eq!(
            parse_endpoint("grpcs://aof-0.aof:4000").unwrap(),
            parsed("grpcs://aof-0.aof:4000", "https://aof-0.aof:4000", true)
        );
        assert_eq!(
            parse_endpoint("https://127.0.0.1:4001").unwrap(),
            parsed("https://127.0.0.1:4001", "https://127.0.0.1:4001", true)
        );
        let e = parse_endpoint("ftp://a:1").unwrap_err();
        assert!(e.contains("unsupported scheme \"ftp\""), "{e}");
        let e = parse_endpoint("grpc://a").unwrap_err();
        assert!(
            e.contains("not a gRPC endpoint like grpc://127.0.0.1:4001"),
            "{e}"
        );
        assert!(parse_endpoint("grpc://a:1/x").is_err());
        assert!(parse_endpoint("").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_its_bound_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let seen: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(
            seen,
            vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        // Many failures never overflow.
        for _ in 0..100 {
            assert!(b.next_delay() <= ms(1000));
        }
    }

    #[test]
    fn rotation_moves_to_the_next_endpoint_with_growing_pauses() {
        let ms = Duration::from_millis;
        let mut r = Rotation::new(3, Backoff::new(ms(50), ms(300)));
        assert_eq!(r.current(), 0);
        let steps: Vec<(Duration, usize)> = (0..5).map(|_| (r.failed(), r.current())).collect();
        assert_eq!(
            steps,
            vec![
                (ms(50), 1),
                (ms(100), 2),
                (ms(200), 0),
                (ms(300), 1),
                (ms(300), 2)
            ]
        );
        // A healthy connection makes the next reconnect quick; the endpoint stays.
        r.healthy();
        assert_eq!(r.current(), 2);
        assert_eq!(r.failed(), ms(50));
        assert_eq!(r.current(), 0);
        // One endpoint: always the same one.
        let mut one = Rotation::new(1, Backoff::new(ms(10), ms(10)));
        one.failed();
        assert_eq!(one.current(), 0);
    }

    #[test]
    fn tokens_become_bearer_metadata_and_bad_ones_are_refused() {
        use tonic::service::Interceptor as _;
        let mut auth = Auth::new(Some(" s3cret ")).unwrap();
        assert!(auth.is_set());
        assert!(!format!("{auth:?}").contains("s3cret"));
        let req = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer s3cret");
        let mut none = Auth::new(Some("  ")).unwrap();
        assert!(!none.is_set());
        assert!(none.call(tonic::Request::new(())).unwrap().metadata().get("authorization").is_none());
        assert!(matches!(Auth::new(Some("a\nb")), Err(WorkerError::Config(_))));
    }

    #[tokio::test]
    async fn pool_rejects_empty_and_bad_lists() {
        let opts = PoolOptions {
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
            auth: Auth::new(None).unwrap(),
            ca_pem: None,
        };
        assert!(matches!(Pool::new(&[], opts.clone()), Err(WorkerError::Config(_))));
        assert!(matches!(
            Pool::new(&["grpc://a:1".into(), "ftp://b:2".into()], opts.clone()),
            Err(WorkerError::Config(m)) if m.contains("ftp")
        ));
        let p = Pool::new(&["127.0.0.1:1".into()], opts).unwrap();
        assert_eq!(p.displays(), vec!["grpc://127.0.0.1:1".to_string()]);
    }
}
