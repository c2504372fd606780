//! The worker against fake `WorkQueue` servers (tonic, loopback): reconnects,
//! heartbeats, fencing errors, failover of unary calls.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aof_proto::v1 as pb;
use aof_proto::v1::work_queue_server::{WorkQueue, WorkQueueServer};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::*;
use crate::lease::now_ms;
use crate::FailOutcome;

/// How the fake answers.
#[derive(Clone)]
struct Fake {
    name: &'static str,
    /// Leases sent per Claim stream before it ends (`None`: stay open after them).
    per_stream: usize,
    end_stream: bool,
    /// Lease / extension length, ms.
    lease_ms: u64,
    /// Status returned by Extend / Complete / Fail instead of OK.
    unary_error: Option<tonic::Code>,
    /// Status returned by Claim instead of a stream.
    claim_error: Option<tonic::Code>,
    log: Arc<Mutex<Vec<String>>>,
    streams: Arc<AtomicUsize>,
}

impl Fake {
    fn new(name: &'static str) -> Fake {
        Fake {
            name,
            per_stream: 1,
            end_stream: true,
            lease_ms: 30_000,
            unary_error: None,
            claim_error: None,
            log: Arc::default(),
            streams: Arc::default(),
        }
    }
    fn record(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
    fn calls(&self, prefix: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.starts_with(prefix))
            .cloned()
            .collect()
    }
    /// Records the call's `authorization` metadata as "auth <call> <value>".
    fn record_auth<T>(&self, call: &str, req: &Request<T>) {
        let v = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| "-".into());
        self.record(format!("auth {call} {v}"));
    }
    fn check(&self) -> Result<(), Status> {
        match self.unary_error {
            Some(code) => Err(Status::new(code, format!("{} says no", self.name))),
            None => Ok(()),
        }
    }
}

type LeaseStream = Pin<Box<dyn Stream<Item = Result<pb::Lease, Status>> + Send>>;

#[tonic::async_trait]
impl WorkQueue for Fake {
    type ClaimStream = LeaseStream;

    async fn claim(&self, req: Request<pb::ClaimRequest>) -> Result<Response<LeaseStream>, Status> {
        self.record_auth("claim", &req);
        if let Some(code) = self.claim_error {
            return Err(Status::new(code, format!("{} refuses the token", self.name)));
        }
        let r = req.into_inner();
        let n = self.streams.fetch_add(1, Ordering::SeqCst);
        self.record(format!(
            "claim {} {:?} {}",
            r.worker_id, r.targets, r.max_in_flight
        ));
        let leases: Vec<Result<pb::Lease, Status>> = (0..self.per_stream)
            .map(|k| {
                Ok(pb::Lease {
                    job_id: format!("{}-{n}-{k}", self.name),
                    event_id: 7,
                    delivery_id: "d-7".into(),
                    target: Some(pb::Target {
                        kind: "agent".into(),
                        name: "helper".into(),
                    }),
                    params_json: r#"{"x":1}"#.into(),
                    context: [("repo_full_name".to_string(), "acme/api".to_string())].into(),
                    payload: b"{\"hello\":true}".to_vec(),
                    attempt: 1,
                    deadline_ms: now_ms() + self.lease_ms,
                    fencing_token: 100 + k as u64,
                    event: "push".into(),
                    trigger: "all".into(),
                    traceparent: String::new(),
                })
            })
            .collect();
        let s = futures::stream::iter(leases);
        if self.end_stream {
            Ok(Response::new(Box::pin(s)))
        } else {
            Ok(Response::new(Box::pin(futures::StreamExt::chain(
                s,
                futures::stream::pending(),
            ))))
        }
    }

    async fn extend(
        &self,
        req: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ExtendReply>, Status> {
        let r = req.into_inner();
        self.record(format!(
            "extend {} {} {}",
            r.job_id, r.fencing_token, r.extend_ms
        ));
        self.check()?;
        Ok(Response::new(pb::ExtendReply {
            deadline_ms: now_ms() + self.lease_ms,
        }))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteReply>, Status> {
        self.record_auth("complete", &req);
        let r = req.into_inner();
        self.record(format!(
            "complete {} {} {}",
            r.job_id, r.fencing_token, r.result
        ));
        self.check()?;
        Ok(Response::new(pb::CompleteReply {}))
    }

    async fn fail(&self, req: Request<pb::FailRequest>) -> Result<Response<pb::FailReply>, Status> {
        let r = req.into_inner();
        self.record(format!(
            "fail {} {} {} {} {}",
            r.job_id, r.fencing_token, r.error, r.retryable, r.delay_ms
        ));
        self.check()?;
        Ok(Response::new(pb::FailReply {
            outcome: "retrying".into(),
            ready_at_ms: 12345,
        }))
    }

    async fn stats(
        &self,
        _req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsReply>, Status> {
        Ok(Response::new(pb::StatsReply { depths: vec![] }))
    }
}

async fn serve(fake: Fake) -> String {
    serve_with(fake, None).await
}

/// Serves `fake`, over TLS with `(cert, key)` PEMs when given (`grpcs://` URL).
async fn serve_with(fake: Fake, tls: Option<(&str, &str)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key)))
            .unwrap();
    }
    tokio::spawn(async move {
        builder
            .add_service(WorkQueueServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("{}://{addr}", if tls.is_some() { "grpcs" } else { "grpc" })
}

/// An address nothing listens on.
async fn dead_endpoint() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("grpc://{addr}")
}

fn fast(b: WorkerBuilder) -> WorkerBuilder {
    b.reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .connect_timeout(Duration::from_millis(500))
        .call_timeout(Duration::from_secs(2))
        .finish_retry_for(Duration::from_secs(2))
}

async fn next(w: &mut Worker) -> Lease {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a lease within 10 s")
        .expect("worker running")
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Waits (bounded) until `job` has had `n` more extensions than now: a witness
/// that the worker's heartbeat timers have run that long, so a check that something
/// did *not* happen meanwhile (another lease's heartbeat, a reconnect) is not a
/// guess about how long to sleep.
async fn witness_extensions(fake: &Fake, job: &str, n: usize) {
    let prefix = format!("extend {job} ");
    let start = fake.calls(&prefix).len();
    eventually(&format!("{n} more extensions of {job}"), || {
        fake.calls(&prefix).len() >= start + n
    })
    .await;
}

#[tokio::test]
async fn a_lease_carries_the_jobs_data() {
    let a = Fake::new("a");
    let ep = serve(Fake {
        end_stream: false,
        ..a.clone()
    })
    .await;
    let mut w = fast(Worker::builder([ep.clone()]))
        .worker_id("w-1")
        .targets(["helper"])
        .max_in_flight(3)
        .start()
        .unwrap();
    let l = next(&mut w).await;
    assert_eq!(l.job_id(), "a-0-0");
    assert_eq!(
        (l.event_id(), l.delivery_id(), l.event(), l.trigger()),
        (7, "d-7", "push", "all")
    );
    assert_eq!(l.target().to_string(), "agent/helper");
    assert_eq!(l.params()["x"], 1);
    assert_eq!(l.context()["repo_full_name"], "acme/api");
    assert_eq!(l.payload(), b"{\"hello\":true}");
    assert_eq!((l.attempt(), l.fencing_token()), (1, 100));
    assert!(l.deadline_ms() > now_ms());
    assert_eq!(w.connected_endpoint().as_deref(), Some(ep.as_str()));
    assert_eq!(
        a.calls("claim"),
        vec!["claim w-1 [\"helper\"] 3".to_string()]
    );
    l.complete("ok").await.unwrap();
    assert_eq!(
        a.calls("complete"),
        vec!["complete a-0-0 100 ok".to_string()]
    );
}

#[tokio::test]
async fn stream_end_moves_to_the_next_endpoint_and_dead_ones_are_skipped() {
    let a = Fake::new("a");
    let b = Fake::new("b");
    let eps = vec![
        dead_endpoint().await,
        serve(a.clone()).await,
        serve(b.clone()).await,
    ];
    let mut w = fast(Worker::builder(eps)).max_in_flight(8).start().unwrap();
    // Dead endpoint → a (one lease, stream ends) → b (one lease, ends) → dead → a ...
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(next(&mut w).await.job_id().to_string());
    }
    assert_eq!(ids, vec!["a-0-0", "b-0-0", "a-1-0", "b-1-0"]);
}

#[tokio::test]
async fn no_reconnect_while_every_slot_is_taken() {
    let a = Fake {
        per_stream: 2,
        lease_ms: 300,
        ..Fake::new("a")
    };
    let mut w = fast(Worker::builder([serve(a.clone()).await]))
        .max_in_flight(2)
        .start()
        .unwrap();
    let l1 = next(&mut w).await;
    let l2 = next(&mut w).await;
    // The stream ended, but both slots are held: no new stream, for as long as four
    // heartbeats of a held lease took (far beyond the 20–100 ms reconnect backoff).
    witness_extensions(&a, "a-0-1", 4).await;
    assert_eq!(a.streams.load(Ordering::SeqCst), 1);
    l1.complete("").await.unwrap();
    eventually("a second stream once a slot is free", || {
        a.streams.load(Ordering::SeqCst) == 2
    })
    .await;
    drop(l2);
}

#[tokio::test]
async fn heartbeat_extends_at_a_third_of_the_lease_and_stops_on_complete() {
    let a = Fake {
        lease_ms: 600,
        end_stream: false,
        per_stream: 2,
        ..Fake::new("a")
    };
    let mut w = fast(Worker::builder([serve(a.clone()).await]))
        .max_in_flight(2)
        .start()
        .unwrap();
    let l = next(&mut w).await;
    let started = std::time::Instant::now();
    let _witness = next(&mut w).await;
    // 600 ms leases: an extension about every 200 ms — so three of them take at
    // least ~600 ms (timers never fire early; the bound only catches a heartbeat
    // that runs far too often), and arrive within the wait's bound.
    witness_extensions(&a, "a-0-0", 3).await;
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "3 extensions after {:?}: {:?}",
        started.elapsed(),
        a.calls("extend a-0-0 ")
    );
    assert!(
        a.calls("extend a-0-0 ").iter().all(|c| c == "extend a-0-0 100 0"),
        "{:?}",
        a.calls("extend")
    );
    let before = l.deadline_ms();
    assert!(before > now_ms(), "the deadline follows the extensions");
    l.complete("done").await.unwrap();
    let after = a.calls("extend a-0-0 ").len();
    // No heartbeat after complete: none while the other lease was extended 3 times.
    witness_extensions(&a, "a-0-1", 3).await;
    assert_eq!(
        a.calls("extend a-0-0 ").len(),
        after,
        "no heartbeat after complete"
    );
}

#[tokio::test]
async fn dropping_a_lease_stops_its_heartbeat() {
    let a = Fake {
        lease_ms: 300,
        end_stream: false,
        per_stream: 2,
        ..Fake::new("a")
    };
    let mut w = fast(Worker::builder([serve(a.clone()).await]))
        .extend_by(Duration::from_millis(900))
        .max_in_flight(2)
        .start()
        .unwrap();
    let l = next(&mut w).await;
    let _witness = next(&mut w).await;
    eventually("a first extension", || !a.calls("extend a-0-0 ").is_empty()).await;
    assert_eq!(a.calls("extend a-0-0 ")[0], "extend a-0-0 100 900");
    drop(l);
    let n = a.calls("extend a-0-0 ").len();
    // At most the one in flight at the drop, while the other lease was extended 3 times.
    witness_extensions(&a, "a-0-1", 3).await;
    assert!(a.calls("extend a-0-0 ").len() <= n + 1, "{:?}", a.calls("extend"));
}

#[tokio::test]
async fn failed_precondition_is_a_stale_lease_and_the_lease_is_lost() {
    let a = Fake {
        lease_ms: 300,
        end_stream: false,
        unary_error: Some(tonic::Code::FailedPrecondition),
        ..Fake::new("a")
    };
    let mut w = fast(Worker::builder([serve(a.clone()).await]))
        .start()
        .unwrap();
    let l = next(&mut w).await;
    let reason = tokio::time::timeout(Duration::from_secs(5), l.lost())
        .await
        .expect("lost within 5 s");
    assert!(reason.contains("a says no"), "{reason}");
    assert!(l.is_lost());
    let err = l.complete("late").await.unwrap_err();
    assert_eq!(
        err,
        WorkerError::StaleLease {
            reason: "a says no".into()
        }
    );
}

#[tokio::test]
async fn finishing_calls_fail_over_to_a_node_that_answers() {
    let sick = Fake {
        unary_error: Some(tonic::Code::Unavailable),
        end_stream: false,
        ..Fake::new("sick")
    };
    let good = Fake::new("good");
    let eps = vec![serve(sick.clone()).await, serve(good.clone()).await];
    let mut w = fast(Worker::builder(eps)).start().unwrap();
    let l = next(&mut w).await;
    assert_eq!(l.job_id(), "sick-0-0");
    let out = l
        .fail("exit status 3", true, Some(Duration::from_millis(5)))
        .await
        .unwrap();
    assert_eq!(out, FailOutcome::Retrying { ready_at_ms: 12345 });
    assert_eq!(sick.calls("fail").len(), 1);
    assert_eq!(
        good.calls("fail"),
        vec!["fail sick-0-0 100 exit status 3 true 5".to_string()]
    );
}

#[tokio::test]
async fn unreachable_everywhere_is_reported_after_the_retry_window() {
    let eps = vec![dead_endpoint().await, dead_endpoint().await];
    let pool = Pool::new(
        &eps,
        PoolOptions {
            connect_timeout: Duration::from_millis(200),
            call_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            auth: crate::pool::Auth::new(None).unwrap(),
            ca_pem: None,
        },
    )
    .unwrap();
    let started = Instant::now();
    let err = pool
        .call("Complete", Duration::from_millis(300), |mut c| async move {
            c.complete(pb::CompleteRequest::default()).await
        })
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    let WorkerError::Unavailable {
        endpoints,
        last_error,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(endpoints, &eps);
    assert!(last_error.starts_with(&eps[1]), "{last_error}");
}

#[tokio::test]
async fn stop_ends_the_stream_of_leases() {
    let a = Fake {
        end_stream: false,
        ..Fake::new("a")
    };
    let mut w = fast(Worker::builder([serve(a.clone()).await]))
        .start()
        .unwrap();
    let l = next(&mut w).await;
    w.stop();
    let end = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("ends");
    assert!(end.is_none());
    // A lease in hand still works after the stop.
    l.complete("after stop").await.unwrap();
    assert_eq!(a.calls("complete").len(), 1);
}

#[tokio::test]
async fn bad_configuration_is_refused_before_starting() {
    let err = Worker::builder(Vec::<String>::new()).start().unwrap_err();
    assert!(err.to_string().contains("no gRPC endpoint"), "{err}");
    let err = Worker::builder(["grpc://a:1"])
        .max_in_flight(0)
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("max_in_flight"), "{err}");
    let err = Worker::builder(["grpc://a:1"])
        .worker_id("x".repeat(300))
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("at most 256"), "{err}");
}

#[tokio::test]
async fn the_token_goes_with_the_claim_and_every_lease_call() {
    let a = Fake { end_stream: false, ..Fake::new("a") };
    let mut w = fast(Worker::builder([serve(a.clone()).await])).token("w0rker").start().unwrap();
    let l = next(&mut w).await;
    l.complete("ok").await.unwrap();
    assert_eq!(
        a.calls("auth"),
        vec!["auth claim Bearer w0rker".to_string(), "auth complete Bearer w0rker".into()]
    );
    assert!(!format!("{:?}", Worker::builder(["grpc://a:1"]).token("w0rker")).contains("w0rker"));
    // Without a token: no metadata.
    let b = Fake { end_stream: false, ..Fake::new("b") };
    let mut w = fast(Worker::builder([serve(b.clone()).await])).start().unwrap();
    next(&mut w).await;
    assert_eq!(b.calls("auth"), vec!["auth claim -".to_string()]);
}

#[tokio::test]
async fn a_token_refused_by_every_node_stops_the_worker_with_a_clear_error() {
    let refuse = |name, code| Fake { claim_error: Some(code), ..Fake::new(name) };
    let a = refuse("a", tonic::Code::Unauthenticated);
    let b = refuse("b", tonic::Code::Unauthenticated);
    let mut w = fast(Worker::builder([serve(a.clone()).await, serve(b.clone()).await])).start().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("the worker gives up");
    assert!(end.is_none());
    let err = w.error().expect("the reason");
    assert!(matches!(err, WorkerError::Unauthenticated { token_sent: false, .. }), "{err:?}");
    assert!(err.is_auth());
    let msg = err.to_string();
    assert!(msg.contains("refuses the token") && msg.contains("no token was sent") && msg.contains("$AOF_WORKER_TOKEN"), "{msg}");
    // Each node was asked once: giving up is not a retry loop.
    assert_eq!((a.calls("auth").len(), b.calls("auth").len()), (1, 1));

    let c = refuse("c", tonic::Code::PermissionDenied);
    let mut w = fast(Worker::builder([serve(c).await])).token("scoped").targets(["other"]).start().unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap().is_none());
    let err = w.error().unwrap();
    assert!(matches!(err, WorkerError::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("worker token allowed to serve these targets"), "{err}");
}

#[tokio::test]
async fn one_refusing_node_among_good_ones_does_not_stop_the_worker() {
    let bad = Fake { claim_error: Some(tonic::Code::Unauthenticated), ..Fake::new("bad") };
    let good = Fake::new("good");
    let mut w = fast(Worker::builder([serve(bad).await, serve(good).await])).token("t").max_in_flight(8).start().unwrap();
    for _ in 0..3 {
        assert!(next(&mut w).await.job_id().starts_with("good-"));
    }
    assert!(w.error().is_none());
}

#[tokio::test]
async fn grpcs_endpoints_are_verified_against_the_given_ca() {
    let pki = crate::test_pki::pki();
    let a = Fake { end_stream: false, ..Fake::new("a") };
    let ep = serve_with(a.clone(), Some((&pki.cert_pem, &pki.key_pem))).await;
    assert!(ep.starts_with("grpcs://127.0.0.1:"), "{ep}");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let mut w = fast(Worker::builder([ep.clone()])).token("tls-token").ca_file(&ca).start().unwrap();
    let l = next(&mut w).await;
    l.complete("over tls").await.unwrap();
    assert_eq!(a.calls("auth"), vec!["auth claim Bearer tls-token".to_string(), "auth complete Bearer tls-token".into()]);

    // A CA that did not sign the node's certificate: the handshake fails, no call
    // reaches the node, and the error names the certificate problem.
    let b = Fake { end_stream: false, ..Fake::new("b") };
    let ep = serve_with(b.clone(), Some((&pki.cert_pem, &pki.key_pem))).await;
    let pool = Pool::new(
        &[ep],
        PoolOptions {
            connect_timeout: Duration::from_millis(500),
            call_timeout: Duration::from_millis(500),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            auth: crate::pool::Auth::new(Some("tls-token")).unwrap(),
            ca_pem: Some(crate::test_pki::other_ca_pem().into_bytes()),
        },
    )
    .unwrap();
    let err = pool
        .call("Complete", Duration::from_millis(200), |mut c| async move {
            c.complete(pb::CompleteRequest::default()).await
        })
        .await
        .unwrap_err();
    let WorkerError::Unavailable { last_error, .. } = &err else { panic!("{err:?}") };
    assert!(last_error.contains("certificate") || last_error.contains("UnknownIssuer"), "{last_error}");
    assert!(b.calls("auth").is_empty());

    let err = Worker::builder(["grpcs://127.0.0.1:1"]).ca_file(dir.path().join("missing.crt")).start().unwrap_err();
    assert!(err.to_string().contains("cannot read the CA file"), "{err}");
}
