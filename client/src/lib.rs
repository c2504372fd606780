//! Typed async clients of an aof-cluster: [`Client`] for the node HTTP API
//! (cluster, triggers, events, queue stats and dead-letter queue) and
//! [`Worker`] for the gRPC work queue (jobs as [`Lease`] handles with
//! automatic heartbeats; see the [`worker`] module).
//!
//! ```no_run
//! # async fn demo() -> Result<(), aof_client::ClientError> {
//! use aof_client::{Client, Consistency};
//! let client = Client::builder(vec!["http://127.0.0.1:5001".into(), "http://127.0.0.1:5002".into()])
//!     .token(std::env::var("AOF_TOKEN").unwrap_or_default())
//!     .try_build()?;
//! let status = client.cluster_status(Consistency::Linearizable).await?;
//! println!("leader: {:?}", status.leader_id);
//! # Ok(()) }
//! ```
//!
//! **Endpoints** are the nodes' API listeners (`spec.cluster.api_addr`; 5001-5003
//! in the local configs), which serve `/v1/*` and `/metrics` behind bearer tokens.
//! [`Client::health`] and [`Client::ready`] also work against the public listener
//! (`spec.server`), which serves nothing else.
//!
//! **Authentication.** With [`ClientBuilder::token`] every request carries
//! `Authorization: Bearer <token>`: a `read` token for reads and `/metrics`, an
//! `admin` token for changes. A refused token is a 401/403 [`ClientError::Api`]
//! whose message says what to do ([`ClientError::is_unauthenticated`],
//! [`ClientError::is_forbidden`]). Every mutating request (`PUT`, `POST`,
//! `DELETE`) carries a JSON or YAML `Content-Type`, even without a body, as the
//! API requires.
//!
//! **TLS.** `https://` endpoints are verified against the system's root
//! certificates, or only against the CA given with [`ClientBuilder::ca_file`] /
//! [`ClientBuilder::ca_pem`] (e.g. the cluster CA when the API listener has a
//! node certificate, `spec.cluster.api_tls`). rustls, no OpenSSL.
//!
//! **Failover.** A [`Client`] holds several endpoints (base URLs of nodes). Each
//! request goes to the endpoint that last answered; if it cannot be reached
//! (connection error or timeout) the request is sent to the next one, and so on
//! once around the list. An HTTP answer is final: 4xx errors are never retried
//! elsewhere. The only exception are reads under `/v1/` (which any node can
//! serve): a 502/503/504 from one node (e.g. a node cut off from the leader
//! cannot linearize) is retried on the next one. Writes (`PUT`/`POST`/`DELETE`)
//! are retried only on connection errors and timeouts; after a timeout the
//! first node may already have committed the write, which is harmless for the
//! idempotent operations of this API but can make an `If-Match` write report a
//! `revision_mismatch` for its own earlier success.
//!
//! Proxies from the environment are not used.

mod callbacks;
mod controls;
mod error;
mod events;
mod github;
mod lease;
mod pool;
mod queue;
mod types;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;

pub use callbacks::*;
pub use controls::*;
pub use error::{ClientError, WorkerError};
use error::Hints;
pub use events::*;
pub use github::*;
pub use lease::{FailOutcome, Lease, Target};
pub use queue::*;
pub use types::*;
pub use worker::{Worker, WorkerBuilder};

/// Default time allowed to open a TCP connection to one endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default time allowed for one request to one endpoint, answer included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Async client of one cluster (cheap to clone; clones share connections).
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `Err`: the configuration was unusable (e.g. an unreadable CA file); every
    /// request reports it (see [`ClientBuilder::try_build`] to learn it at once).
    http: Result<reqwest::Client, String>,
    endpoints: Vec<Endpoint>,
    /// Index of the endpoint that answered last; requests start there.
    preferred: AtomicUsize,
    /// Whether requests carry a bearer token (for the hints of 401 errors).
    has_token: bool,
}

#[derive(Debug)]
struct Endpoint {
    /// As given (normalized), for messages.
    display: String,
    url: Result<Url, String>,
}

/// Where the CA certificates of `https://` endpoints come from.
#[derive(Clone, Debug)]
enum Ca {
    File(PathBuf),
    Pem(Vec<u8>),
}

/// Configures a [`Client`]; see [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    token: Option<String>,
    ca: Option<Ca>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoints", &self.endpoints)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca)
            .finish()
    }
}

impl ClientBuilder {
    /// Time allowed to open a connection to one endpoint before trying the next.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed for one request to one endpoint before trying the next.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The bearer token sent with every request (`Authorization: Bearer <token>`):
    /// one of the nodes' `spec.auth.tokens` (role `read` for reads, `admin` for
    /// changes). An empty string means no token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let t: String = token.into();
        self.token = Some(t.trim().to_string()).filter(|t| !t.is_empty());
        self
    }

    /// Like [`ClientBuilder::token`], for an optional token.
    pub fn token_opt(self, token: Option<impl Into<String>>) -> Self {
        match token {
            Some(t) => self.token(t),
            None => ClientBuilder { token: None, ..self },
        }
    }

    /// Verify `https://` endpoints against the CA certificate(s) in this PEM file
    /// only (instead of the system's roots).
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.ca = Some(Ca::File(path.as_ref().to_path_buf()));
        self
    }

    /// Like [`ClientBuilder::ca_file`], with the PEM text itself.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Ca::Pem(pem.into()));
        self
    }

    /// Builds the client. A configuration that cannot work (an unreadable CA
    /// file, a token that is not a valid header value) is reported by every
    /// request; use [`ClientBuilder::try_build`] to learn it at once.
    pub fn build(self) -> Client {
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| {
                let display = normalize_endpoint(e);
                let url = Url::parse(&display)
                    .map_err(|err| err.to_string())
                    .and_then(|u| {
                        if u.cannot_be_a_base() || u.host().is_none() {
                            Err("not a base URL like http://127.0.0.1:5001".to_string())
                        } else if u.scheme() != "http" && u.scheme() != "https" {
                            Err(format!(
                                "unsupported scheme {:?}: use http:// or https://",
                                u.scheme()
                            ))
                        } else {
                            Ok(u)
                        }
                    });
                Endpoint { display, url }
            })
            .collect();
        let has_token = self.token.is_some();
        Client {
            inner: Arc::new(Inner {
                http: self.http_client(),
                endpoints,
                preferred: AtomicUsize::new(0),
                has_token,
            }),
        }
    }

    /// Builds the client, or says why its configuration cannot work
    /// ([`ClientError::Config`]). Endpoints are checked when used.
    pub fn try_build(self) -> Result<Client, ClientError> {
        let client = self.build();
        if let Err(e) = &client.inner.http {
            return Err(ClientError::Config(e.clone()));
        }
        Ok(client)
    }

    fn http_client(&self) -> Result<reqwest::Client, String> {
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.token {
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                "the API token contains characters that cannot be sent in an HTTP header;                  check the value of the token (--token, $AOF_TOKEN or the context's token)"
                    .to_string()
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .user_agent(concat!("aof-client/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers);
        if let Some(ca) = &self.ca {
            let (pem, from) = match ca {
                Ca::File(path) => (
                    std::fs::read(path).map_err(|e| {
                        format!("cannot read the CA file {}: {e}", path.display())
                    })?,
                    path.display().to_string(),
                ),
                Ca::Pem(pem) => (pem.clone(), "the CA PEM".to_string()),
            };
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{from} holds no usable PEM certificate: {e}"))?;
            if certs.is_empty() {
                return Err(format!("{from} holds no PEM certificate"));
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        b.build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", root_cause(&e)))
    }
}

/// The innermost cause of an error, as text.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(inner) = source.source() {
        source = inner;
    }
    source.to_string()
}

/// `127.0.0.1:3001` → `http://127.0.0.1:3001`; trailing `/` removed.
fn normalize_endpoint(e: &str) -> String {
    let e = e.trim().trim_end_matches('/');
    if e.contains("://") {
        e.to_string()
    } else {
        format!("http://{e}")
    }
}

/// Whether a request may be retried on another node after an HTTP 5xx.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failover {
    /// Only when the node cannot be reached.
    Transport,
    /// Also after 502/503/504 (cluster reads).
    TransportAndUnavailable,
}

struct Request<'a> {
    method: Method,
    path: &'a [&'a str],
    consistency: Consistency,
    body: Option<(Vec<u8>, &'a str)>,
    if_match: Option<u64>,
    failover: Failover,
    /// Query parameters besides `consistency`.
    query: Vec<(&'static str, String)>,
}

impl<'a> Request<'a> {
    fn get(path: &'a [&'a str]) -> Self {
        Request {
            method: Method::GET,
            path,
            consistency: Consistency::Linearizable,
            body: None,
            if_match: None,
            failover: Failover::TransportAndUnavailable,
            query: Vec::new(),
        }
    }

    fn write(method: Method, path: &'a [&'a str]) -> Self {
        Request {
            method,
            failover: Failover::Transport,
            ..Request::get(path)
        }
    }
}

/// A successful answer.
struct Answer {
    endpoint: String,
    body: Vec<u8>,
}

impl Client {
    /// A client of the nodes at `endpoints` (base URLs of their API listeners,
    /// such as `http://127.0.0.1:5001`; a missing `http://` is added), without a
    /// token. Invalid URLs are reported when a request is made (as unreachable
    /// endpoints).
    pub fn new(endpoints: Vec<String>) -> Self {
        Self::builder(endpoints).build()
    }

    /// A builder, to set a token, a CA or timeouts.
    pub fn builder(endpoints: Vec<String>) -> ClientBuilder {
        ClientBuilder {
            endpoints,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            token: None,
            ca: None,
        }
    }

    /// The endpoints, normalized, in configured order.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|e| e.display.clone())
            .collect()
    }

    /// `GET /v1/snapshot` (admin token): a backup file of the whole replicated state,
    /// including every write acknowledged before the call (see `aofctl snapshot
    /// save`). Verify it with the SHA-256 it ends with.
    pub async fn snapshot(&self) -> Result<Vec<u8>, ClientError> {
        Ok(self.send(Request { failover: Failover::TransportAndUnavailable, ..Request::get(&["v1", "snapshot"]) }).await?.body)
    }

    /// `GET /health`: the answering node is up.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(Request {
            failover: Failover::Transport,
            ..Request::get(&["health"])
        })
        .await
    }

    /// `GET /metrics`: the answering node's Prometheus exposition, as text.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let body = self.send(Request { failover: Failover::Transport, ..Request::get(&["metrics"]) }).await?.body;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET /ready`: the answering node is part of a cluster with a leader.
    /// A not-ready node answers 503, returned as [`ClientError::Api`].
    pub async fn ready(&self) -> Result<Ready, ClientError> {
        self.json(Request {
            failover: Failover::Transport,
            ..Request::get(&["ready"])
        })
        .await
    }

    /// `GET /v1/cluster`: membership, leader, term, indexes.
    pub async fn cluster_status(
        &self,
        consistency: Consistency,
    ) -> Result<ClusterStatus, ClientError> {
        self.json(Request {
            consistency,
            ..Request::get(&["v1", "cluster"])
        })
        .await
    }

    /// `POST /v1/cluster/learners`: add a learner with the four addresses it
    /// advertises; returns once the membership change is committed (replication
    /// to it continues in the background). The leader first checks that the node
    /// answers on `peer_addr` with a cluster certificate naming `node_id`.
    pub async fn add_learner(
        &self,
        node_id: NodeId,
        addrs: &MemberAddrs,
    ) -> Result<MembershipResult, ClientError> {
        let body = AddLearnerRequest {
            node_id,
            peer_addr: addrs.peer_addr.clone(),
            grpc_addr: addrs.grpc_addr.clone(),
            api_addr: addrs.api_addr.clone(),
            http_addr: addrs.http_addr.clone(),
        };
        let body = serde_json::to_vec(&body).expect("a struct of strings and numbers serializes");
        self.json(Request {
            body: Some((body, "application/json")),
            ..Request::write(Method::POST, &["v1", "cluster", "learners"])
        })
        .await
    }

    /// `POST /v1/cluster/voters/{id}`: promote a learner to voter.
    pub async fn promote_voter(&self, node_id: NodeId) -> Result<MembershipResult, ClientError> {
        let id = node_id.to_string();
        self.json(Request::write(
            Method::POST,
            &["v1", "cluster", "voters", &id],
        ))
        .await
    }

    /// `DELETE /v1/cluster/members/{id}`: remove a voter or learner (the leader too).
    pub async fn remove_member(&self, node_id: NodeId) -> Result<MembershipResult, ClientError> {
        let id = node_id.to_string();
        self.json(Request::write(
            Method::DELETE,
            &["v1", "cluster", "members", &id],
        ))
        .await
    }

    /// `PUT /v1/triggers/{name}` with a Trigger document as YAML or JSON
    /// (`content_type` `application/yaml` or `application/json`). With
    /// `if_match`, the write happens only if the current revision equals it
    /// (`Some(0)`: only if the trigger does not exist); otherwise 412
    /// (see [`ClientError::current_revision`]).
    pub async fn put_trigger(
        &self,
        name: &str,
        body: impl Into<Vec<u8>>,
        content_type: &str,
        if_match: Option<u64>,
    ) -> Result<PutResult, ClientError> {
        self.json(Request {
            body: Some((body.into(), content_type)),
            if_match,
            ..Request::write(Method::PUT, &["v1", "triggers", name])
        })
        .await
    }

    /// `PUT /v1/triggers/{name}?dry_run=true`: the node validates the document
    /// (and `if_match`) exactly as for a real PUT and answers what it would do;
    /// nothing is proposed or stored.
    pub async fn put_trigger_dry_run(
        &self,
        name: &str,
        body: impl Into<Vec<u8>>,
        content_type: &str,
        if_match: Option<u64>,
    ) -> Result<DryRunResult, ClientError> {
        self.json(Request {
            body: Some((body.into(), content_type)),
            if_match,
            query: vec![("dry_run", "true".to_string())],
            ..Request::write(Method::PUT, &["v1", "triggers", name])
        })
        .await
    }

    /// `GET /v1/triggers/{name}`; 404 [`ClientError::Api`] if absent.
    pub async fn get_trigger(
        &self,
        name: &str,
        consistency: Consistency,
    ) -> Result<TriggerItem, ClientError> {
        self.json(Request {
            consistency,
            ..Request::get(&["v1", "triggers", name])
        })
        .await
    }

    /// `GET /v1/triggers`: all triggers, in name order.
    pub async fn list_triggers(
        &self,
        consistency: Consistency,
    ) -> Result<Vec<TriggerItem>, ClientError> {
        let list: TriggerList = self
            .json(Request {
                consistency,
                ..Request::get(&["v1", "triggers"])
            })
            .await?;
        Ok(list.items)
    }

    /// `DELETE /v1/triggers/{name}`, optionally only at revision `if_match`.
    pub async fn delete_trigger(
        &self,
        name: &str,
        if_match: Option<u64>,
    ) -> Result<DeleteResult, ClientError> {
        self.json(Request {
            if_match,
            ..Request::write(Method::DELETE, &["v1", "triggers", name])
        })
        .await
    }

    async fn json<T: DeserializeOwned>(&self, req: Request<'_>) -> Result<T, ClientError> {
        let answer = self.send(req).await?;
        serde_json::from_slice(&answer.body).map_err(|e| ClientError::Decode {
            endpoint: answer.endpoint,
            message: e.to_string(),
        })
    }

    /// Sends `req`, failing over as described in the crate docs.
    async fn send(&self, req: Request<'_>) -> Result<Answer, ClientError> {
        let http = self
            .inner
            .http
            .as_ref()
            .map_err(|e| ClientError::Config(e.clone()))?;
        let endpoints = &self.inner.endpoints;
        let n = endpoints.len();
        if n == 0 {
            return Err(ClientError::Unreachable {
                endpoints: vec![],
                last_error: "no endpoint configured".into(),
            });
        }
        let start = self.inner.preferred.load(Ordering::Relaxed) % n;
        let mut tried = Vec::with_capacity(n);
        let mut last_error = String::new();
        let mut last_unavailable: Option<ClientError> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let ep = &endpoints[i];
            tried.push(ep.display.clone());
            let base = match &ep.url {
                Ok(u) => u,
                Err(e) => {
                    last_error = format!("invalid endpoint {:?}: {e}", ep.display);
                    continue;
                }
            };
            let mut url = base.clone();
            url.path_segments_mut()
                .expect("checked: a base URL")
                .pop_if_empty()
                .extend(req.path);
            if let Some(q) = req.consistency.query() {
                url.query_pairs_mut().append_pair("consistency", q);
            }
            for (k, v) in &req.query {
                url.query_pairs_mut().append_pair(k, v);
            }
            let mut rb = http.request(req.method.clone(), url);
            if let Some((body, content_type)) = &req.body {
                rb = rb.header(CONTENT_TYPE, *content_type).body(body.clone());
            } else if req.method != Method::GET && req.method != Method::HEAD {
                // The API refuses changes without a JSON/YAML content type (so no
                // cross-site form can make one), bodiless ones included.
                rb = rb.header(CONTENT_TYPE, "application/json");
            }
            if let Some(rev) = req.if_match {
                rb = rb.header(reqwest::header::IF_MATCH, rev.to_string());
            }
            let result = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    resp.bytes().await.map(|body| (status, body.to_vec()))
                }
                Err(e) => Err(e),
            };
            let (status, body) = match result {
                Ok(r) => r,
                Err(e) => {
                    last_error = describe_transport_error(&e);
                    tracing::debug!(endpoint = %ep.display, error = %last_error, "endpoint unreachable; trying the next one");
                    continue;
                }
            };
            if status.is_success() {
                self.inner.preferred.store(i, Ordering::Relaxed);
                return Ok(Answer {
                    endpoint: ep.display.clone(),
                    body,
                });
            }
            let err = ClientError::from_response(
                status.as_u16(),
                status.canonical_reason(),
                &ep.display,
                String::from_utf8_lossy(&body).into_owned(),
            )
            .with_hint(&Hints {
                token_sent: self.inner.has_token,
                api_path: matches!(req.path.first(), Some(&"v1") | Some(&"metrics")),
                endpoint: &ep.display,
            });
            let unavailable = matches!(status.as_u16(), 502..=504);
            if unavailable && req.failover == Failover::TransportAndUnavailable {
                tracing::debug!(endpoint = %ep.display, error = %err, "node cannot serve the read; trying the next one");
                last_unavailable = Some(err);
                continue;
            }
            // The node is alive and gave a definitive answer.
            self.inner.preferred.store(i, Ordering::Relaxed);
            return Err(err);
        }
        // Prefer a node's own explanation over a transport error.
        Err(last_unavailable.unwrap_or(ClientError::Unreachable {
            endpoints: tried,
            last_error,
        }))
    }
}

/// A short description of a transport error: its innermost cause, without the
/// URL (the endpoint is named by the caller).
fn describe_transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return if e.is_connect() {
            "timed out connecting".into()
        } else {
            "timed out waiting for the answer".into()
        };
    }
    let root = root_cause(e);
    if e.is_connect() {
        let hint = if root.contains("certificate") || root.contains("UnknownIssuer") {
            "; the node's certificate is not trusted: give the client the CA that signed it \
             (ClientBuilder::ca_file; aofctl: --ca-file or the context's ca_file)"
        } else if root.contains("InvalidContentType") || root.contains("corrupt message") {
            "; the node does not speak TLS there: use http:// for a listener without a \
             certificate (spec.cluster.api_tls unset)"
        } else {
            ""
        };
        format!("connection failed: {root}{hint}")
    } else if e.is_body() || e.is_decode() {
        format!("error reading the answer: {root}")
    } else if e.is_builder() {
        format!("invalid request: {root}")
    } else {
        root
    }
}

#[cfg(test)]
mod test_pki;
#[cfg(test)]
mod tests;
