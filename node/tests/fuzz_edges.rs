//! Property tests of the edges on a real node: the webhook intake (headers,
//! signatures, bodies) and the WorkQueue's request validation. Whatever arrives, the
//! node answers with a clear 4xx / gRPC status (never a 5xx other than 503, never
//! `INTERNAL`/`UNKNOWN`), stays healthy, and stores nothing for what it refused.
//!
//! Case counts stay modest for CI; run longer with e.g.
//! `PROPTEST_CASES=20000 cargo test -p aof-node --test fuzz_edges`.

mod common;

use std::time::Duration;

use aof_node::config::GithubConfig;
use aof_node::github::signature::sign;
use aof_proto::v1 as pb;
use aof_proto::v1::work_queue_client::WorkQueueClient;
use common::TestCluster;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const SECRET: &str = "fuzz-secret";

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One delivery attempt: headers (each maybe absent or odd), a body, and how it is signed.
#[derive(Clone, Debug)]
struct Attempt {
    event: Option<String>,
    delivery: Option<String>,
    body: Vec<u8>,
    signature: Signature,
}

#[derive(Clone, Debug)]
enum Signature {
    None,
    Good,
    WrongSecret,
    Garbage(String),
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let fixture = prop::sample::select(vec![
        r#"{"action":"opened","issue":{"number":1},"repository":{"full_name":"o/r","owner":{"login":"o"}},"sender":{"login":"u"}}"#,
        r#"{"ref":"refs/heads/main","repository":{"full_name":"o/r","owner":{"login":"o"}}}"#,
        r#"{"zen":"ok","hook_id":1}"#,
        "[]",
        "null",
        "{",
    ]);
    prop_oneof![
        fixture.prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..300),
        // A fixture with some bytes flipped.
        (prop::sample::select(vec![r#"{"action":"opened","repository":{"full_name":"o/r"}}"#]), any::<u64>()).prop_map(|(s, seed)| {
            let mut b = s.as_bytes().to_vec();
            let i = (seed as usize) % b.len();
            b[i] ^= (seed >> 8) as u8 | 1;
            b
        }),
        "\\PC{0,200}".prop_map(|s| s.into_bytes()),
    ]
}

fn header_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        "[a-z_]{1,20}".prop_map(Some),
        "[ -~]{0,140}".prop_map(Some),
        prop::sample::select(vec!["issues", "push", "ping", "pull_request", "", " ", "ISSUES", "a/b"]).prop_map(|s| Some(s.to_string())),
    ]
}

fn attempt() -> impl Strategy<Value = Attempt> {
    let signature = prop_oneof![
        Just(Signature::None),
        Just(Signature::Good),
        Just(Signature::WrongSecret),
        "[ -~]{0,80}".prop_map(Signature::Garbage),
        "sha256=[0-9a-fA-F]{0,70}".prop_map(Signature::Garbage),
    ];
    (header_value(), header_value(), body(), signature).prop_map(|(event, delivery, body, signature)| Attempt { event, delivery, body, signature })
}

#[test]
fn the_webhook_intake_answers_every_input_with_a_clear_status() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let c = rt.block_on(async {
        let c = TestCluster::start_with(1, 10_000, |cfg| {
            let gh: GithubConfig = serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\n")).unwrap();
            cfg.spec.platforms.github = Some(gh);
        })
        .await;
        c.wait_ready(30).await;
        c
    });
    let http = reqwest::Client::new();
    let url = c.nodes[0].url("/webhook/github");
    let mut runner = TestRunner::new(Config { cases: cases(400), failure_persistence: None, ..Config::default() });
    let refused_unsigned = std::sync::atomic::AtomicU32::new(0);
    // Delivery ids some earlier case got accepted (stored legitimately).
    let accepted = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
    runner
        .run(&attempt(), |a| {
            let (status, stored) = rt.block_on(async {
                let mut req = http.post(&url).body(a.body.clone());
                if let Some(e) = &a.event {
                    req = req.header("x-github-event", e.as_str());
                }
                if let Some(d) = &a.delivery {
                    req = req.header("x-github-delivery", d.as_str());
                }
                match &a.signature {
                    Signature::None => {}
                    Signature::Good => req = req.header("x-hub-signature-256", sign(SECRET.as_bytes(), &a.body)),
                    Signature::WrongSecret => req = req.header("x-hub-signature-256", sign(b"other", &a.body)),
                    Signature::Garbage(g) => req = req.header("x-hub-signature-256", g.as_str()),
                }
                // Header values reqwest itself refuses never leave the client.
                let Ok(r) = req.send().await else { return (0u16, false) };
                let status = r.status().as_u16();
                let fresh = |d: &str| !accepted.lock().unwrap().contains(d.trim());
                if status == 200 || status == 202 {
                    if let Some(d) = &a.delivery {
                        accepted.lock().unwrap().insert(d.trim().to_string());
                    }
                }
                let stored = match a.delivery.as_deref().filter(|d| !d.trim().is_empty() && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')) {
                    Some(d) if status != 202 && status != 200 && fresh(d) => {
                        let (s, _) = c.get_json(0, &format!("/v1/deliveries/{d}?consistency=stale")).await;
                        s == 200
                    }
                    _ => false,
                };
                (status, stored)
            });
            if status == 0 {
                return Ok(());
            }
            prop_assert!([200, 202, 400, 401, 408, 413, 503].contains(&status), "status {} for {:?}", status, a);
            if !matches!(a.signature, Signature::Good) {
                prop_assert!(status != 200 && status != 202, "an unsigned or badly signed delivery was accepted: {:?}", a);
                refused_unsigned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            prop_assert!(!stored, "a refused delivery was stored: {:?}", a);
            Ok(())
        })
        .unwrap();
    assert!(refused_unsigned.into_inner() > 0);
    rt.block_on(async {
        assert_eq!(c.get_json(0, "/health").await.0, 200, "the node is still healthy");
    });
}

#[derive(Clone, Debug)]
enum QueueCall {
    Claim { worker_id: String, targets: Vec<String>, max: u32 },
    Extend { job_id: String, token: u64, ms: u64 },
    Complete { job_id: String, token: u64, result: String },
    Fail { job_id: String, token: u64, error: String, retryable: bool, delay: u64 },
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{0,20}".boxed(),
        "\\PC{0,40}".boxed(),
        (0usize..3).prop_map(move |k| "x".repeat([max + 1, max * 2, 1 << 20][k])).boxed(),
    ]
}

fn queue_call() -> impl Strategy<Value = QueueCall> {
    let job = prop_oneof![Just("1-0".to_string()), Just("99999999-0".to_string()), text(64)];
    prop_oneof![
        (text(256), prop::collection::vec(text(253), 0..70), any::<u32>()).prop_map(|(worker_id, targets, max)| QueueCall::Claim { worker_id, targets, max }),
        (job.clone(), any::<u64>(), any::<u64>()).prop_map(|(job_id, token, ms)| QueueCall::Extend { job_id, token, ms }),
        (job.clone(), any::<u64>(), text(64 << 10)).prop_map(|(job_id, token, result)| QueueCall::Complete { job_id, token, result }),
        (job, any::<u64>(), text(64 << 10), any::<bool>(), any::<u64>())
            .prop_map(|(job_id, token, error, retryable, delay)| QueueCall::Fail { job_id, token, error, retryable, delay }),
    ]
}

#[test]
fn the_work_queue_refuses_bad_requests_with_a_reason_and_no_log_growth() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let c = rt.block_on(async {
        let c = TestCluster::start(1, 10_000).await;
        c.wait_ready(30).await;
        c
    });
    let channel = rt.block_on(async { tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[0].grpc)).unwrap().connect().await.unwrap() });
    let commit = || rt.block_on(async { c.get_json(0, "/v1/cluster").await.1["commit_index"].as_u64().unwrap() });
    let mut runner = TestRunner::new(Config { cases: cases(300), failure_persistence: None, ..Config::default() });
    runner
        .run(&queue_call(), |call| {
            let before = commit();
            let mut w = WorkQueueClient::new(channel.clone()).max_decoding_message_size(64 << 20);
            let res: Result<(), tonic::Status> = rt.block_on(async {
                match call.clone() {
                    QueueCall::Claim { worker_id, targets, max } => {
                        // A claim stream that is accepted is closed again at once.
                        let r = w.claim(pb::ClaimRequest { worker_id, targets, max_in_flight: max }).await;
                        r.map(drop)
                    }
                    QueueCall::Extend { job_id, token, ms } => w.extend(pb::ExtendRequest { job_id, fencing_token: token, extend_ms: ms }).await.map(drop),
                    QueueCall::Complete { job_id, token, result } => {
                        w.complete(pb::CompleteRequest { job_id, fencing_token: token, result }).await.map(drop)
                    }
                    QueueCall::Fail { job_id, token, error, retryable, delay } => {
                        w.fail(pb::FailRequest { job_id, fencing_token: token, error, retryable, delay_ms: delay }).await.map(drop)
                    }
                }
            });
            if let Err(e) = &res {
                prop_assert!(!matches!(e.code(), tonic::Code::Internal | tonic::Code::Unknown), "{:?} for {:?}", e, call);
                prop_assert!(!e.message().is_empty(), "a status without a reason for {:?}", call);
                if e.code() == tonic::Code::InvalidArgument || e.code() == tonic::Code::OutOfRange {
                    prop_assert_eq!(commit(), before, "a refused request reached the log: {:?}", call);
                }
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(c.get_json(0, "/health").await.0, 200);
    });
}
