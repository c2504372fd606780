//! The trust boundary, end to end on real nodes: each listener serves only its
//! role, every API call and work-queue call needs the right token, the peer port
//! needs a cluster certificate of a member, and hostile input is refused before it
//! costs anything (no parse before the HMAC, bounded bodies and fields, scoped secrets).

mod common;

use std::time::{Duration, Instant};

use aof_node::config::GithubConfig;
use aof_proto::v1 as pb;
use aof_proto::v1::cluster_service_client::ClusterServiceClient;
use aof_proto::v1::work_queue_client::WorkQueueClient;
use common::{client_with_token, TestCluster, ADMIN_TOKEN, READ_TOKEN, WORKER_A_TOKEN, WORKER_TOKEN};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const SECRET: &str = "daemon-secret";

fn with_daemon_secret(cfg: &mut aof_node::config::DaemonConfig) {
    let gh: GithubConfig = serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\n")).unwrap();
    cfg.spec.platforms.github = Some(gh);
}

async fn secured(n: u64) -> TestCluster {
    let certs = tempfile::tempdir().unwrap();
    let mut opts = aof_node::tls::CertsInit::new(certs.path());
    opts.nodes = 9;
    aof_node::tls::init_certs(&opts).unwrap();
    let path = certs.path().to_path_buf();
    let mut c = TestCluster::start_with(n, 10_000, |cfg| {
        common::secure(cfg, &path);
        with_daemon_secret(cfg);
    })
    .await;
    c.http = client_with_token(ADMIN_TOKEN);
    c.certs = Some(certs);
    c.wait_ready(30).await;
    c
}

fn api(c: &TestCluster, i: usize, path: &str) -> String {
    format!("http://{}{}", c.nodes[i].api, path)
}

fn public(c: &TestCluster, i: usize, path: &str) -> String {
    format!("http://{}{}", c.nodes[i].http, path)
}

async fn status(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.unwrap().status().as_u16()
}

const TRIGGER_AB: &str = "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config:\n    github_events: [issues]\n    commands:\n      issues.opened: { agent: a }\n      issues.closed: { agent: b }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_listener_serves_only_its_role_and_the_api_needs_tokens() {
    let c = secured(3).await;
    let plain = reqwest::Client::new();
    // The public listener: intake and health only; every API path is 404 there, even
    // with an admin token.
    assert_eq!(status(plain.get(public(&c, 0, "/health"))).await, 200);
    assert_eq!(status(plain.get(public(&c, 0, "/ready"))).await, 200);
    for (method, path) in [
        ("GET", "/v1/cluster"),
        ("GET", "/v1/events"),
        ("GET", "/v1/triggers"),
        ("PUT", "/v1/triggers/x"),
        ("POST", "/v1/cluster/learners"),
        ("DELETE", "/v1/cluster/members/2"),
        ("POST", "/v1/dlq/purge"),
        ("GET", "/metrics"),
        ("GET", "/ui"),
        ("GET", "/ui/app.js"),
        ("GET", "/v1/watch"),
    ] {
        let req = c.http.request(method.parse().unwrap(), public(&c, 0, path)).header("content-type", "application/json").body("{}");
        assert_eq!(status(req).await, 404, "{method} {path} on the public listener");
    }
    // The API listener: no token 401 (and says how), unknown token 401, read token
    // reads but cannot write, worker tokens cannot use the API, admin does both.
    let r = plain.get(api(&c, 1, "/v1/cluster")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("Bearer"), "{body}");
    assert_eq!(status(client_with_token("not-a-token").get(api(&c, 1, "/v1/cluster"))).await, 401);
    let read = client_with_token(READ_TOKEN);
    assert_eq!(status(read.get(api(&c, 1, "/v1/cluster"))).await, 200);
    assert_eq!(status(read.get(api(&c, 1, "/metrics"))).await, 200);
    assert_eq!(status(plain.get(api(&c, 1, "/metrics"))).await, 401, "/metrics is not public unless configured");
    let put = |cl: &reqwest::Client| cl.put(api(&c, 2, "/v1/triggers/ab")).header("content-type", "application/yaml").body(TRIGGER_AB);
    assert_eq!(status(put(&read)).await, 403);
    assert_eq!(status(put(&client_with_token(WORKER_TOKEN))).await, 403);
    assert_eq!(status(client_with_token(WORKER_TOKEN).get(api(&c, 1, "/v1/triggers"))).await, 403);
    assert_eq!(status(put(&plain)).await, 401);
    // Nothing was written by the refused calls.
    assert_eq!(status(c.http.get(api(&c, 0, "/v1/triggers/ab"))).await, 404);
    // A cross-site "simple" request (a form post, text/plain) cannot write, even
    // with a token; JSON or YAML with the admin token can.
    let form = c.http.put(api(&c, 2, "/v1/triggers/ab")).header("content-type", "text/plain").body(TRIGGER_AB);
    assert_eq!(status(form).await, 415);
    let bodiless = c.http.post(api(&c, 2, "/v1/dlq/redrive"));
    assert_eq!(status(bodiless).await, 415);
    assert_eq!(status(put(&c.http)).await, 201);
    assert_eq!(status(read.get(api(&c, 0, "/v1/triggers/ab"))).await, 200);
}

fn ca_pem(c: &TestCluster) -> Certificate {
    Certificate::from_pem(std::fs::read(c.certs_dir().join("ca.crt")).unwrap())
}

async fn node_info(ch: Channel) -> Result<pb::NodeInfoReply, tonic::Status> {
    ClusterServiceClient::new(ch).node_info(pb::NodeInfoRequest {}).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_peer_port_needs_a_cluster_certificate_of_a_member() {
    let c = secured(3).await;
    let peer = c.nodes[0].peer;
    let short = Duration::from_secs(5);
    // A member's certificate works (node 2 calling node 1).
    let dir = c.certs_dir();
    let node2 = aof_node::tls::PeerTls::load(dir.join("ca.crt"), dir.join("node2.crt"), dir.join("node2.key")).unwrap();
    let ch = node2.endpoint(1, &peer.to_string()).unwrap().connect_timeout(short).connect().await.unwrap();
    assert_eq!(node_info(ch).await.unwrap().node_id, 1);
    // No client certificate: the handshake fails, nothing is served.
    let no_cert = ClientTlsConfig::new().ca_certificate(ca_pem(&c)).domain_name("aof-node-1");
    let ep = Endpoint::from_shared(format!("https://{peer}")).unwrap().tls_config(no_cert).unwrap().connect_timeout(short);
    match ep.connect().await {
        Err(_) => {}
        Ok(ch) => assert!(node_info(ch).await.is_err(), "a client without a certificate got an answer"),
    }
    // Plain HTTP/2 to the peer port: refused.
    let ep = Endpoint::from_shared(format!("http://{peer}")).unwrap().connect_timeout(short);
    match ep.connect().await {
        Err(_) => {}
        Ok(ch) => assert!(node_info(ch).await.is_err(), "plaintext reached the peer service"),
    }
    // A certificate of another CA: refused.
    let other = tempfile::tempdir().unwrap();
    aof_node::tls::init_certs(&aof_node::tls::CertsInit::new(other.path())).unwrap();
    let foreign = aof_node::tls::PeerTls::load(dir.join("ca.crt"), other.path().join("node2.crt"), other.path().join("node2.key"));
    if let Ok(foreign) = foreign {
        let ep = foreign.endpoint(1, &peer.to_string()).unwrap().connect_timeout(short);
        match ep.connect().await {
            Err(_) => {}
            Ok(ch) => assert!(node_info(ch).await.is_err(), "a foreign certificate got an answer"),
        }
    }
    // A cluster certificate of a node that is not a member (7) may ask who a node is
    // (discovery) and to join (as itself), but Raft and forwarding are refused, so it
    // cannot forward anything — not even an `IngestWebhook` that skipped the HMAC.
    let node7 = aof_node::tls::PeerTls::load(dir.join("ca.crt"), dir.join("node7.crt"), dir.join("node7.key")).unwrap();
    let ch = node7.endpoint(1, &peer.to_string()).unwrap().connect_timeout(short).connect().await.unwrap();
    assert_eq!(node_info(ch.clone()).await.unwrap().node_id, 1);
    let e = aof_proto::v1::raft_service_client::RaftServiceClient::new(ch.clone())
        .vote(pb::RaftPayload { data: vec![1] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // Replication from a non-member reaches Raft only as the committed leader of a term
    // no older than this node's vote (a member whose membership predates its leader):
    // a campaign's vote, a committed vote relayed for another node, or a stale term is
    // refused before Raft sees it.
    for (vote, what) in [
        (aof_node::types::Vote::new(1000, 7), "an uncommitted vote"),
        (aof_node::types::Vote::new_committed(1000, 2), "another node's vote"),
        (aof_node::types::Vote::new_committed(0, 7), "a stale term"),
    ] {
        let rpc = openraft::raft::AppendEntriesRequest::<aof_node::types::TypeConfig> { vote, prev_log_id: None, entries: vec![], leader_commit: None };
        let e = aof_proto::v1::raft_service_client::RaftServiceClient::new(ch.clone())
            .append_entries(pb::RaftPayload { data: aof_node::codec::encode(&rpc) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{what}: {e:?}");
    }
    let e = ClusterServiceClient::new(ch.clone())
        .join(pb::JoinRequest { node_id: 2, peer_addr: "x:1".into(), grpc_addr: "x:2".into(), api_addr: "x:3".into(), http_addr: "x:4".into(), max_voters: 5 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "node 7 asked to join as node 2: {e:?}");
    let forged = aof_node::node::LeaderOp::Write(aof_node::types::Command::Purge { job_id: None });
    let e = ClusterServiceClient::new(ch)
        .forward(pb::RaftPayload { data: aof_node::codec::encode(&forged) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // Raft and forwarding are not served on the workers' port at all.
    let ch = Endpoint::from_shared(format!("http://{}", c.nodes[0].grpc)).unwrap().connect().await.unwrap();
    let e = node_info(ch).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
}

/// A gRPC work-queue client sending `token` (or none).
async fn queue_client(c: &TestCluster, i: usize, token: Option<&str>) -> WorkQueueClient<tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>> {
    let ch = Endpoint::from_shared(format!("http://{}", c.nodes[i].grpc)).unwrap().connect().await.unwrap();
    let header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    WorkQueueClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    })
}

async fn webhook(c: &TestCluster, i: usize, event: &str, delivery: &str, body: &[u8], secret: &str) -> reqwest::Response {
    common::signed_webhook(&reqwest::Client::new(), &public(c, i, "/webhook/github"), event, delivery, body, secret).await
}

fn issue(action: &str, repo: &str) -> Vec<u8> {
    let owner = repo.split('/').next().unwrap();
    serde_json::to_vec(&json!({
        "action": action,
        "issue": {"number": 1, "title": "t"},
        "repository": {"full_name": repo, "name": repo.split('/').nth(1).unwrap(), "owner": {"login": owner}},
        "sender": {"login": "someone"}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_tokens_are_scoped_to_their_targets() {
    let c = secured(3).await;
    let r = c.http.put(api(&c, 0, "/v1/triggers/ab")).header("content-type", "application/yaml").body(TRIGGER_AB).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(webhook(&c, 0, "issues", "job-a", &issue("opened", "o/r"), SECRET).await.status().as_u16(), 202);
    assert_eq!(webhook(&c, 1, "issues", "job-b", &issue("closed", "o/r"), SECRET).await.status().as_u16(), 202);
    let claim = |targets: &[&str]| pb::ClaimRequest { worker_id: "w".into(), targets: targets.iter().map(|t| t.to_string()).collect(), max_in_flight: 4 };
    // No token, a read token: refused.
    let e = queue_client(&c, 0, None).await.claim(claim(&[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = queue_client(&c, 0, Some(READ_TOKEN)).await.claim(claim(&[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // The token scoped to `a` cannot ask for `b`.
    let mut scoped = queue_client(&c, 1, Some(WORKER_A_TOKEN)).await;
    let e = scoped.claim(claim(&["b"])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // Asking for everything, it gets a's job only.
    let mut stream = scoped.claim(claim(&[])).await.unwrap().into_inner();
    let lease_a = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(lease_a.target.as_ref().unwrap().name, "a");
    // An unscoped worker token gets b's job.
    let mut all = queue_client(&c, 2, Some(WORKER_TOKEN)).await;
    let mut stream_b = all.claim(claim(&["b"])).await.unwrap().into_inner();
    let lease_b = tokio::time::timeout(Duration::from_secs(10), stream_b.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(lease_b.target.as_ref().unwrap().name, "b");
    // The scoped token cannot settle b's job, even with its fencing token.
    let complete = |l: &pb::Lease| pb::CompleteRequest { job_id: l.job_id.clone(), fencing_token: l.fencing_token, result: "done".into() };
    for i in 0..3 {
        let mut scoped = queue_client(&c, i, Some(WORKER_A_TOKEN)).await;
        let e = scoped.complete(complete(&lease_b)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "node {i}: {e:?}");
        let e = scoped.extend(pb::ExtendRequest { job_id: lease_b.job_id.clone(), fencing_token: lease_b.fencing_token, extend_ms: 1000 }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "node {i}: {e:?}");
    }
    let (_, v) = c.get_json(0, &format!("/v1/events/{}", lease_b.event_id)).await;
    assert_eq!(v["jobs"][0]["state"], "leased", "the refused completion changed nothing: {v}");
    // Each token settles its own job.
    scoped.complete(complete(&lease_a)).await.unwrap();
    all.complete(complete(&lease_b)).await.unwrap();
}

async fn counter(c: &TestCluster, i: usize, name: &str) -> f64 {
    let text = c.http.get(api(c, i, "/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bodies_are_refused_before_they_cost_anything() {
    let c = secured(3).await;
    let r = c.http.put(api(&c, 0, "/v1/triggers/ab")).header("content-type", "application/yaml").body(TRIGGER_AB).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // A good delivery is parsed (the counter moves), so the counter is real.
    let before = counter(&c, 0, "aof_webhook_json_parses_total").await;
    assert_eq!(webhook(&c, 0, "issues", "good-1", &issue("opened", "o/r"), SECRET).await.status().as_u16(), 202);
    let after_good = counter(&c, 0, "aof_webhook_json_parses_total").await;
    assert_eq!(after_good, before + 1.0);
    // 20 MiB of JSON signed with the wrong secret: 401, and it was never parsed.
    let big = format!("[{}0]", "0,".repeat(10 << 20)).into_bytes();
    assert!(big.len() > 20 << 20);
    let r = webhook(&c, 0, "issues", "big-1", &big, "wrong-secret").await;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(counter(&c, 0, "aof_webhook_json_parses_total").await, after_good, "a badly signed body was parsed");
    // An unsigned delivery: 401 too, not parsed.
    let r = reqwest::Client::new()
        .post(public(&c, 0, "/webhook/github"))
        .header("x-github-event", "issues")
        .header("x-github-delivery", "unsigned-1")
        .body(issue("opened", "o/r"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(counter(&c, 0, "aof_webhook_json_parses_total").await, after_good);
    // Nothing was stored for the refused deliveries.
    for d in ["big-1", "unsigned-1"] {
        assert_eq!(c.get_json(1, &format!("/v1/deliveries/{d}")).await.0, 404, "{d}");
    }

    // A 1 MiB Complete.result is refused at the edge and the log does not grow.
    let mut w = queue_client(&c, 1, Some(WORKER_TOKEN)).await;
    let mut stream = w.claim(pb::ClaimRequest { worker_id: "w".into(), targets: vec![], max_in_flight: 1 }).await.unwrap().into_inner();
    let lease = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    // Background commands (a tick when something is due) may commit meanwhile, so
    // the check is: in some of five tries the commit index did not move at all.
    let mut unmoved = 0;
    for _ in 0..5 {
        let (_, before) = c.get_json(0, "/v1/cluster").await;
        let e = w
            .complete(pb::CompleteRequest { job_id: lease.job_id.clone(), fencing_token: lease.fencing_token, result: "x".repeat(1 << 20) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("result"), "{e:?}");
        let (_, after) = c.get_json(0, "/v1/cluster").await;
        if before["commit_index"] == after["commit_index"] {
            unmoved += 1;
        }
    }
    assert!(unmoved > 0, "the log grew each time a refused completion was sent: it reached the log");
    w.complete(pb::CompleteRequest { job_id: lease.job_id, fencing_token: lease.fencing_token, result: "ok".into() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_body_is_cut_off_and_frees_its_permit() {
    let c = TestCluster::start_with(1, 10_000, |cfg| {
        with_daemon_secret(cfg);
        cfg.spec.gateway.max_in_flight = 1;
        cfg.spec.server.timeout_secs = 2;
    })
    .await;
    c.wait_ready(30).await;
    // A sender announces 1000 bytes, sends 10, and stalls: it holds the only permit.
    let mut slow = tokio::net::TcpStream::connect(c.nodes[0].http).await.unwrap();
    slow.write_all(b"POST /webhook/github HTTP/1.1\r\nhost: x\r\nx-github-event: issues\r\nx-github-delivery: slow-1\r\nx-hub-signature-256: sha256=00\r\ncontent-length: 1000\r\n\r\n0123456789").await.unwrap();
    let started = Instant::now();
    let body = issue("opened", "o/r");
    // While it stalls, the node is at its limit.
    let mut saw_503 = false;
    for _ in 0..20 {
        let s = webhook(&c, 0, "issues", "while-stalled", &body, SECRET).await.status().as_u16();
        if s == 503 {
            saw_503 = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_503, "the stalled sender never held the in-flight permit");
    // After the timeout the stalled request is answered 408 and its connection ends.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut answer)).await.expect("the stalled sender was not cut off").unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // And the permit is free again.
    assert_eq!(webhook(&c, 0, "issues", "after-stall", &body, SECRET).await.status().as_u16(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_authenticates_only_its_own_scope() {
    // The organisation's secret comes from an environment variable of this test only.
    std::env::set_var("AOF_TEST_SECURITY_ACME_SECRET", "acme-secret");
    let c = TestCluster::start_with(3, 10_000, |cfg| {
        let gh: GithubConfig = serde_yaml::from_str(
            "enabled: true\nwebhook_secret: daemon-secret\norgs:\n  acme:\n    webhook_secret_env: AOF_TEST_SECURITY_ACME_SECRET\n",
        )
        .unwrap();
        cfg.spec.platforms.github = Some(gh);
    })
    .await;
    c.wait_ready(30).await;
    // Two tenants' triggers. `a-catch-all` sorts first and would take everything; the
    // `tenant` trigger has its own secret and only matches tenant/*.
    let catch_all = "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config:\n    github_events: [issues]\n    default_agent: other\n";
    let tenant = "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config:\n    webhook_secret: tenant-secret\n    github_events: [issues]\n    repositories: [tenant/*]\n    default_agent: mine\n";
    for (name, doc) in [("a-catch-all", catch_all), ("tenant", tenant)] {
        let r = c.http.put(c.nodes[0].url(&format!("/v1/triggers/{name}"))).header("content-type", "application/yaml").body(doc).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    c.wait_ready(30).await;
    // acme's secret authenticates acme's repositories ...
    assert_eq!(webhook(&c, 0, "issues", "acme-1", &issue("opened", "acme/app"), "acme-secret").await.status().as_u16(), 202);
    // ... not another owner's, even when the payload claims to be acme's organisation.
    let r = webhook(&c, 1, "issues", "acme-2", &issue("opened", "victim/app"), "acme-secret").await;
    assert_eq!(r.status().as_u16(), 401);
    let mut forged: Value = serde_json::from_slice(&issue("opened", "victim/app")).unwrap();
    forged["organization"] = json!({"login": "acme"});
    let forged = serde_json::to_vec(&forged).unwrap();
    assert_eq!(webhook(&c, 2, "issues", "acme-3", &forged, "acme-secret").await.status().as_u16(), 401);
    // A trigger's secret reaches that trigger only: its own repository routes to it
    // (although the catch-all sorts first) ...
    let r = webhook(&c, 0, "issues", "tenant-1", &issue("opened", "tenant/app"), "tenant-secret").await;
    assert_eq!(r.status().as_u16(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["trigger"], "tenant", "{v}");
    // ... and another tenant's repository does not reach the catch-all with it.
    let r = webhook(&c, 0, "issues", "tenant-2", &issue("opened", "victim/app"), "tenant-secret").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "unmatched", "{v}");
    assert_eq!(v["trigger"], Value::Null, "{v}");
    // The daemon secret still reaches every trigger.
    let v: Value = webhook(&c, 1, "issues", "daemon-1", &issue("opened", "victim/app"), "daemon-secret").await.json().await.unwrap();
    assert_eq!(v["trigger"], "a-catch-all", "{v}");
    for d in ["acme-2", "acme-3"] {
        assert_eq!(c.get_json(0, &format!("/v1/deliveries/{d}")).await.0, 404, "{d} was stored");
    }
}
