//! Typed async clients of an aof-cluster: [`Client`] for the node HTTP API
//! (cluster, triggers, events, queue stats and dead-letter queue) and
//! [`Worker`] for the gRPC work queue (jobs as [`Lease`] handles with
//! automatic heartbeats; see the [`worker`] module).
//!
//! ```no_run
//! # async fn demo() -> Result<(), aof_client::ClientError> {
//! use aof_client::{Client, Consistency};
//! let client = Client::new(vec!["http://127.0.0.1:3001".into(), "http://127.0.0.1:3002".into()]);
//! let status = client.cluster_status(Consistency::Linearizable).await?;
//! println!("leader: {:?}", status.leader_id);
//! # Ok(()) }
//! ```
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
//! Plain `http://` only (the cluster API listens on loopback/private addresses);
//! proxies from the environment are not used.

mod error;
mod events;
mod lease;
mod pool;
mod queue;
mod types;
pub mod worker;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Url};
use serde::de::DeserializeOwned;

pub use error::{ClientError, WorkerError};
pub use events::*;
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
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    /// Index of the endpoint that answered last; requests start there.
    preferred: AtomicUsize,
}

#[derive(Debug)]
struct Endpoint {
    /// As given (normalized), for messages.
    display: String,
    url: Result<Url, String>,
}

/// Configures a [`Client`]; see [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
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

    pub fn build(self) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .user_agent(concat!("aof-client/", env!("CARGO_PKG_VERSION")))
            .build()
            // Only fails when a TLS backend cannot be initialised; this crate uses none.
            .unwrap_or_else(|_| reqwest::Client::new());
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| {
                let display = normalize_endpoint(e);
                let url = Url::parse(&display)
                    .map_err(|err| err.to_string())
                    .and_then(|u| {
                        if u.cannot_be_a_base() || u.host().is_none() {
                            Err("not a base URL like http://127.0.0.1:3001".to_string())
                        } else if u.scheme() != "http" {
                            Err(format!(
                                "unsupported scheme {:?}: only http:// is supported",
                                u.scheme()
                            ))
                        } else {
                            Ok(u)
                        }
                    });
                Endpoint { display, url }
            })
            .collect();
        Client {
            inner: Arc::new(Inner {
                http,
                endpoints,
                preferred: AtomicUsize::new(0),
            }),
        }
    }
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
    body: String,
}

impl Client {
    /// A client of the nodes at `endpoints` (base URLs such as
    /// `http://127.0.0.1:3001`; a missing `http://` is added). Invalid URLs are
    /// reported when a request is made (as unreachable endpoints).
    pub fn new(endpoints: Vec<String>) -> Self {
        Self::builder(endpoints).build()
    }

    /// A builder, to change timeouts.
    pub fn builder(endpoints: Vec<String>) -> ClientBuilder {
        ClientBuilder {
            endpoints,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
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
        Ok(self.send(Request { failover: Failover::Transport, ..Request::get(&["metrics"]) }).await?.body)
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

    /// `POST /v1/cluster/learners`: add a learner; returns once the membership
    /// change is committed (replication to it continues in the background).
    pub async fn add_learner(
        &self,
        node_id: NodeId,
        grpc_addr: &str,
        http_addr: &str,
    ) -> Result<MembershipResult, ClientError> {
        let body = AddLearnerRequest {
            node_id,
            grpc_addr: grpc_addr.to_string(),
            http_addr: http_addr.to_string(),
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
        serde_json::from_str(&answer.body).map_err(|e| ClientError::Decode {
            endpoint: answer.endpoint,
            message: e.to_string(),
        })
    }

    /// Sends `req`, failing over as described in the crate docs.
    async fn send(&self, req: Request<'_>) -> Result<Answer, ClientError> {
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
            let mut rb = self.inner.http.request(req.method.clone(), url);
            if let Some((body, content_type)) = &req.body {
                rb = rb
                    .header(reqwest::header::CONTENT_TYPE, *content_type)
                    .body(body.clone());
            }
            if let Some(rev) = req.if_match {
                rb = rb.header(reqwest::header::IF_MATCH, rev.to_string());
            }
            let result = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    resp.text().await.map(|text| (status, text))
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
                body,
            );
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
    let mut source: &dyn std::error::Error = e;
    while let Some(inner) = source.source() {
        source = inner;
    }
    let root = source.to_string();
    if e.is_connect() {
        format!("connection failed: {root}")
    } else if e.is_body() || e.is_decode() {
        format!("error reading the answer: {root}")
    } else if e.is_builder() {
        format!("invalid request: {root}")
    } else {
        root
    }
}

#[cfg(test)]
mod tests;
