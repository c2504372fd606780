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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(WorkQueueServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("grpc://{addr}")
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
        ..Fake::new("a")
    };
    let mut w = fast(Worker::builder([serve(a.clone()).await]))
        .max_in_flight(2)
        .start()
        .unwrap();
    let l1 = next(&mut w).await;
    let l2 = next(&mut w).await;
    // The stream ended, but both slots are held: no new stream.
    tokio::time::sleep(Duration::from_millis(400)).await;
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
        ..Fake::new("a")
    };
    let mut w = fast(Worker::builder([serve(a.clone()).await]))
        .start()
        .unwrap();
    let l = next(&mut w).await;
    // 600 ms leases: an extension about every 200 ms.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let n = a.calls("extend").len();
    assert!(
        (3..=8).contains(&n),
        "{n} extensions in 1.1 s: {:?}",
        a.calls("extend")
    );
    assert!(
        a.calls("extend").iter().all(|c| c == "extend a-0-0 100 0"),
        "{:?}",
        a.calls("extend")
    );
    let before = l.deadline_ms();
    assert!(before > now_ms(), "the deadline follows the extensions");
    l.complete("done").await.unwrap();
    let after = a.calls("extend").len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        a.calls("extend").len(),
        after,
        "no heartbeat after complete"
    );
}

#[tokio::test]
async fn dropping_a_lease_stops_its_heartbeat() {
    let a = Fake {
        lease_ms: 300,
        end_stream: false,
        ..Fake::new("a")
    };
    let mut w = fast(Worker::builder([serve(a.clone()).await]))
        .extend_by(Duration::from_millis(900))
        .start()
        .unwrap();
    let l = next(&mut w).await;
    eventually("a first extension", || !a.calls("extend").is_empty()).await;
    assert_eq!(a.calls("extend")[0], "extend a-0-0 100 900");
    drop(l);
    let n = a.calls("extend").len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.calls("extend").len() <= n + 1);
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
