//! Tests of the client against small axum servers on 127.0.0.1:0.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::*;

/// Serves `app` on an ephemeral port; returns its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    format!("http://{addr}")
}

/// A base URL where nothing listens (connection refused).
async fn dead_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn cluster_json(node_id: u64) -> Value {
    json!({
        "node_id": node_id, "leader_id": 2, "term": 3, "commit_index": 42, "last_applied": 42,
        "members": [
            {"id":1,"grpc_addr":"127.0.0.1:4001","http_addr":"127.0.0.1:3001","role":"voter","is_leader":false,"matched_index":42},
            {"id":2,"grpc_addr":"127.0.0.1:4002","http_addr":"127.0.0.1:3002","role":"voter","is_leader":true,"matched_index":42},
        ]
    })
}

/// A node that counts the requests it gets.
fn counting_node(node_id: u64, hits: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/health",
            get(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async move { Json(json!({"status":"ok","node_id":node_id})) }
            }),
        )
        .route(
            "/v1/cluster",
            get(move || async move { Json(cluster_json(node_id)) }),
        )
}

#[tokio::test]
async fn fails_over_from_a_dead_endpoint_and_then_sticks_to_the_live_one() {
    let hits = Arc::new(AtomicUsize::new(0));
    let live = serve(counting_node(7, hits.clone())).await;
    let dead = dead_endpoint().await;
    let client = Client::new(vec![dead.clone(), live.clone()]);

    let h = client.health().await.unwrap();
    assert_eq!(
        h,
        Health {
            status: "ok".into(),
            node_id: 7
        }
    );
    let s = client
        .cluster_status(Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(s.node_id, 7);
    assert_eq!(s.leader_id, Some(2));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The live endpoint is now preferred.
    assert_eq!(client.inner.preferred.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn all_endpoints_dead_is_unreachable_naming_them() {
    let a = dead_endpoint().await;
    let b = dead_endpoint().await;
    let client = Client::new(vec![a.clone(), b.clone()]);
    let err = client
        .list_triggers(Consistency::Linearizable)
        .await
        .unwrap_err();
    match &err {
        ClientError::Unreachable {
            endpoints,
            last_error,
        } => {
            assert_eq!(endpoints, &vec![a.clone(), b.clone()]);
            assert!(last_error.contains("connection"), "{last_error}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&a) && msg.contains(&b), "{msg}");
}

#[tokio::test]
async fn endpoint_without_scheme_gets_http() {
    let live = serve(counting_node(1, Arc::default())).await;
    let client = Client::new(vec![live.trim_start_matches("http://").to_string() + "/"]);
    assert_eq!(client.endpoints(), vec![live]);
    assert_eq!(client.health().await.unwrap().node_id, 1);
}

#[tokio::test]
async fn invalid_endpoint_is_skipped_with_a_reason() {
    let live = serve(counting_node(3, Arc::default())).await;
    let client = Client::new(vec!["http://[::1".into(), live]);
    assert_eq!(client.health().await.unwrap().node_id, 3);

    let client = Client::new(vec!["ftp://127.0.0.1:1".into()]);
    let err = client.health().await.unwrap_err();
    assert!(err.to_string().contains("use http:// or https://"), "{err}");

    let err = Client::new(vec![]).health().await.unwrap_err();
    assert_eq!(err.to_string(), "no endpoint configured");
}

#[tokio::test]
async fn times_out_on_a_hung_node_and_fails_over() {
    // Accepts connections but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (c, _) = listener.accept().await.unwrap();
            conns.push(c);
        }
    });
    let live = serve(counting_node(2, Arc::default())).await;

    let client = Client::builder(vec![hung.clone()])
        .request_timeout(Duration::from_millis(300))
        .build();
    let err = client.health().await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");

    let client = Client::builder(vec![hung, live])
        .request_timeout(Duration::from_millis(300))
        .build();
    assert_eq!(client.health().await.unwrap().node_id, 2);
}

fn not_found_node(hits: Arc<AtomicUsize>) -> Router {
    Router::new().route(
        "/v1/triggers/{name}",
        get(move |Path(name): Path<String>| {
            hits.fetch_add(1, Ordering::SeqCst);
            async move {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({"error":"not_found","message":format!("trigger {name:?} does not exist")})),
                )
            }
        }),
    )
}

#[tokio::test]
async fn no_failover_on_4xx_and_the_message_is_the_servers() {
    let hits1 = Arc::new(AtomicUsize::new(0));
    let hits2 = Arc::new(AtomicUsize::new(0));
    let n1 = serve(not_found_node(hits1.clone())).await;
    let n2 = serve(not_found_node(hits2.clone())).await;
    let client = Client::new(vec![n1, n2]);
    let err = client
        .get_trigger("nope", Consistency::Linearizable)
        .await
        .unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.code(), Some("not_found"));
    assert_eq!(err.to_string(), r#"trigger "nope" does not exist"#);
    assert_eq!(
        (hits1.load(Ordering::SeqCst), hits2.load(Ordering::SeqCst)),
        (1, 0)
    );
}

fn unavailable_node(hits: Arc<AtomicUsize>) -> Router {
    let unavailable = || async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error":"unavailable","message":"no leader; retry later"})),
        )
    };
    let h = hits.clone();
    Router::new()
        .route(
            "/v1/triggers",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                unavailable()
            }),
        )
        .route(
            "/v1/triggers/{name}",
            put(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                unavailable()
            }),
        )
}

/// What a fake node saw: (name or method, query, content-type, if-match, body).
type Seen = Arc<
    Mutex<
        Vec<(
            String,
            HashMap<String, String>,
            Option<String>,
            Option<String>,
            String,
        )>,
    >,
>;

fn triggers_node(seen: Seen) -> Router {
    let seen_put = seen.clone();
    Router::new()
        .route(
            "/v1/triggers",
            get(move |Query(q): Query<HashMap<String, String>>| {
                seen.lock().unwrap().push(("GET".into(), q, None, None, String::new()));
                async {
                    Json(json!({"items":[{"name":"a","revision":5,"created_revision":3,"updated_ms":1000,
                        "trigger":{"kind":"Trigger","metadata":{"name":"a"}}}]}))
                }
            }),
        )
        .route(
            "/v1/triggers/{name}",
            put(move |Path(name): Path<String>, headers: HeaderMap, body: String| {
                let h = |k: &str| headers.get(k).map(|v| v.to_str().unwrap().to_string());
                seen_put.lock().unwrap().push((name.clone(), HashMap::new(), h("content-type"), h("if-match"), body));
                async move { (StatusCode::CREATED, Json(json!({"name":name,"revision":17,"result":"created"}))) }
            }),
        )
}

#[tokio::test]
async fn reads_fail_over_on_503_but_writes_do_not() {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sick = serve(unavailable_node(hits.clone())).await;
    let good = serve(triggers_node(seen.clone())).await;
    let client = Client::new(vec![sick.clone(), good]);

    let items = client
        .list_triggers(Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].revision, 5);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A write goes to the node that answered last (the good one) ...
    let r = client
        .put_trigger("a", "{}", "application/json", None)
        .await
        .unwrap();
    assert_eq!(r.result, PutOutcome::Created);
    // ... and a write that meets a 503 is not sent elsewhere.
    let client = Client::new(vec![sick, dead_endpoint().await]);
    let err = client
        .put_trigger("a", "{}", "application/json", None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.to_string(), "no leader; retry later");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn when_every_node_is_unavailable_the_nodes_message_wins() {
    let hits = Arc::new(AtomicUsize::new(0));
    let sick = serve(unavailable_node(hits.clone())).await;
    let client = Client::new(vec![dead_endpoint().await, sick]);
    let err = client
        .list_triggers(Consistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("unavailable"));
}

#[tokio::test]
async fn put_sends_content_type_if_match_and_body_and_stale_reads_say_so() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let node = serve(triggers_node(seen.clone())).await;
    let client = Client::new(vec![node]);

    let r = client
        .put_trigger("my trigger", "kind: Trigger\n", "application/yaml", Some(0))
        .await
        .unwrap();
    assert_eq!(
        r,
        PutResult {
            name: "my trigger".into(),
            revision: 17,
            result: PutOutcome::Created
        }
    );
    client.list_triggers(Consistency::Stale).await.unwrap();
    client
        .list_triggers(Consistency::Linearizable)
        .await
        .unwrap();

    let seen = seen.lock().unwrap();
    let (name, _, ct, if_match, body) = &seen[0];
    assert_eq!(name, "my trigger");
    assert_eq!(ct.as_deref(), Some("application/yaml"));
    assert_eq!(if_match.as_deref(), Some("0"));
    assert_eq!(body, "kind: Trigger\n");
    assert_eq!(
        seen[1].1.get("consistency").map(String::as_str),
        Some("stale")
    );
    assert!(seen[2].1.is_empty());
}

#[tokio::test]
async fn revision_mismatch_exposes_the_current_revision() {
    let app = Router::new().route(
        "/v1/triggers/{name}",
        put(|| async {
            (
                StatusCode::PRECONDITION_FAILED,
                Json(json!({"error":"revision_mismatch","message":"trigger a is at revision 16, not 3","current_revision":16})),
            )
        }),
    );
    let client = Client::new(vec![serve(app).await]);
    let err = client
        .put_trigger("a", "{}", "application/json", Some(3))
        .await
        .unwrap_err();
    assert!(err.is_revision_mismatch());
    assert_eq!(err.current_revision(), Some(16));
    assert_eq!(err.to_string(), "trigger a is at revision 16, not 3");
}

#[tokio::test]
async fn membership_calls_hit_the_contract_paths() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
    let app = Router::new()
        .route(
            "/v1/cluster/learners",
            post(move |Json(b): Json<AddLearnerRequest>| {
                s1.lock().unwrap().push(format!(
                    "learner {} {} {} {} {}",
                    b.node_id, b.peer_addr, b.grpc_addr, b.api_addr, b.http_addr
                ));
                async move { Json(json!({"node_id":b.node_id,"log_index":50})) }
            }),
        )
        .route(
            "/v1/cluster/voters/{id}",
            post(move |Path(id): Path<u64>| {
                s2.lock().unwrap().push(format!("voter {id}"));
                async move { Json(json!({"node_id":id,"log_index":51})) }
            }),
        )
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(move |Path(id): Path<u64>| {
                s3.lock().unwrap().push(format!("remove {id}"));
                async move { Json(json!({"node_id":id,"log_index":52})) }
            }),
        );
    let client = Client::new(vec![serve(app).await]);
    let addrs = MemberAddrs {
        peer_addr: "127.0.0.1:6004".into(),
        grpc_addr: "127.0.0.1:4004".into(),
        api_addr: "127.0.0.1:5004".into(),
        http_addr: "127.0.0.1:3004".into(),
    };
    assert_eq!(
        client.add_learner(4, &addrs).await.unwrap(),
        MembershipResult {
            node_id: 4,
            log_index: 50
        }
    );
    assert_eq!(client.promote_voter(4).await.unwrap().log_index, 51);
    assert_eq!(client.remove_member(4).await.unwrap().log_index, 52);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            "learner 4 127.0.0.1:6004 127.0.0.1:4004 127.0.0.1:5004 127.0.0.1:3004".to_string(),
            "voter 4".into(),
            "remove 4".into()
        ]
    );
}

#[tokio::test]
async fn success_with_a_foreign_body_is_a_decode_error() {
    let app = Router::new().route("/health", get(|| async { "OK" }));
    let node = serve(app).await;
    let client = Client::new(vec![node.clone()]);
    let err = client.health().await.unwrap_err();
    assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("unexpected response from {node}")),
        "{err}"
    );
}

#[tokio::test]
async fn not_ready_is_an_api_error() {
    let app = Router::new().route(
        "/ready",
        get(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error":"not_ready","message":"node 1 has no leader yet"})),
            )
        }),
    );
    let client = Client::new(vec![serve(app).await]);
    let err = client.ready().await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.to_string(), "node 1 has no leader yet");
}

#[tokio::test]
async fn status_calls_hit_the_contract_paths_with_their_queries_and_bodies() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let event =
        json!({"event_id":12,"delivery_id":"d/1 x","event":"push","status":"queued","jobs":[]});
    let (s1, s2, s3, s4, s5, s6) = (
        seen.clone(),
        seen.clone(),
        seen.clone(),
        seen.clone(),
        seen.clone(),
        seen.clone(),
    );
    let (e1, e2, e3) = (event.clone(), event.clone(), event.clone());
    let app = Router::new()
        .route(
            "/v1/events",
            get(move |Query(q): Query<std::collections::BTreeMap<String, String>>| {
                s1.lock().unwrap().push(format!("events {q:?}"));
                async move { Json(json!({"items":[e1],"next_after":12})) }
            }),
        )
        .route(
            "/v1/events/{id}",
            get(move |Path(id): Path<String>| {
                s2.lock().unwrap().push(format!("event {id}"));
                async move { Json(e2) }
            }),
        )
        .route(
            "/v1/deliveries/{id}",
            get(move |Path(id): Path<String>| {
                s3.lock().unwrap().push(format!("delivery {id}"));
                async move { Json(e3) }
            }),
        )
        .route(
            "/v1/queue/stats",
            get(move || {
                s4.lock().unwrap().push("stats".into());
                async { Json(json!({"items":[{"target_kind":"agent","target":"a","priority":"normal","ready":1,"delayed":0,"leased":0,"dead":0,"oldest_ready_age_ms":5}]})) }
            }),
        )
        .route(
            "/v1/dlq",
            get(move |Query(q): Query<HashMap<String, String>>| {
                s5.lock().unwrap().push(format!("dlq {:?}", q.get("limit")));
                async { Json(json!({"items":[]})) }
            }),
        )
        .route(
            "/v1/dlq/{op}",
            post(move |Path(op): Path<String>, body: String| {
                s6.lock().unwrap().push(format!("{op} {body}"));
                async { Json(json!({"jobs":["12-0"]})) }
            }),
        );
    let client = Client::new(vec![serve(app).await]);
    let filter = EventFilter {
        repo: Some("acme/api".into()),
        status: Some(EventStatus::Completed),
        event: Some("push".into()),
        limit: Some(3),
        after: Some(9),
    };
    let page = client
        .list_events(&filter, Consistency::Stale)
        .await
        .unwrap();
    assert_eq!((page.items.len(), page.next_after), (1, Some(12)));
    assert_eq!(
        client
            .get_event(12, Consistency::Linearizable)
            .await
            .unwrap()
            .delivery_id,
        "d/1 x"
    );
    client
        .get_delivery("d/1 x", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        client
            .queue_stats(Consistency::Linearizable)
            .await
            .unwrap()
            .items[0]
            .oldest_ready_age_ms,
        Some(5)
    );
    assert!(client
        .list_dlq(Some(7), Consistency::Linearizable)
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        client.redrive_dlq(&DlqSelector::All).await.unwrap().jobs,
        vec!["12-0".to_string()]
    );
    client
        .purge_dlq(&DlqSelector::Job("12-0".into()))
        .await
        .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            r#"events {"after": "9", "consistency": "stale", "event": "push", "limit": "3", "repo": "acme/api", "status": "completed"}"#.to_string(),
            "event 12".into(),
            // The delivery id is one path segment, escaped on the wire.
            "delivery d/1 x".into(),
            "stats".into(),
            "dlq Some(\"7\")".into(),
            r#"redrive {"all":true}"#.into(),
            r#"purge {"job_id":"12-0"}"#.into(),
        ]
    );
}

/// What a node saw of each request: "METHOD path auth=<Authorization> ct=<Content-Type>".
type Requests = Arc<Mutex<Vec<String>>>;

/// Records every request (any path) and answers 200 `{"node_id":1,...}`-ish JSON
/// fitting the call.
fn recording_node(seen: Requests) -> Router {
    Router::new().fallback(move |req: axum::extract::Request| {
        let seen = seen.clone();
        async move {
            let h = |k: &str| {
                req.headers()
                    .get(k)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_else(|| "-".into())
            };
            seen.lock().unwrap().push(format!(
                "{} {} auth={} ct={}",
                req.method(),
                req.uri().path(),
                h("authorization"),
                h("content-type")
            ));
            Json(json!({"node_id":4,"log_index":9,"name":"t","revision":3,"result":"created",
                        "status":"ok","jobs":[],"items":[]}))
        }
    })
}

#[tokio::test]
async fn the_token_goes_with_every_request_and_changes_carry_a_json_content_type() {
    let seen: Requests = Arc::default();
    let node = serve(recording_node(seen.clone())).await;
    let client = Client::builder(vec![node.clone()]).token("s3cret-token").try_build().unwrap();
    client.health().await.unwrap();
    client.list_triggers(Consistency::Linearizable).await.unwrap();
    client.put_trigger("t", "kind: Trigger\n", "application/yaml", None).await.unwrap();
    client.promote_voter(4).await.unwrap();
    client.remove_member(4).await.unwrap();
    client.delete_trigger("t", None).await.unwrap();
    client.redrive_dlq(&DlqSelector::All).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            "GET /health auth=Bearer s3cret-token ct=-".to_string(),
            "GET /v1/triggers auth=Bearer s3cret-token ct=-".into(),
            "PUT /v1/triggers/t auth=Bearer s3cret-token ct=application/yaml".into(),
            // Bodiless changes carry a JSON content type too: the API refuses any
            // change without one (415).
            "POST /v1/cluster/voters/4 auth=Bearer s3cret-token ct=application/json".into(),
            "DELETE /v1/cluster/members/4 auth=Bearer s3cret-token ct=application/json".into(),
            "DELETE /v1/triggers/t auth=Bearer s3cret-token ct=application/json".into(),
            "POST /v1/dlq/redrive auth=Bearer s3cret-token ct=application/json".into(),
        ]
    );
    // No token: no header (and an empty token is no token).
    seen.lock().unwrap().clear();
    Client::builder(vec![node]).token("  ").build().health().await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec!["GET /health auth=- ct=-".to_string()]);
    // The token never shows in debug output.
    let b = Client::builder(vec![]).token("s3cret-token");
    assert!(!format!("{b:?}").contains("s3cret"), "{b:?}");
}

/// Answers like the API listener's auth layer: 401 without the right token, 403
/// for the read token on a change, else 200.
fn guarded_node() -> Router {
    Router::new().fallback(|req: axum::extract::Request| async move {
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
        let (code, body) = match auth {
            "" => (StatusCode::UNAUTHORIZED, json!({"error":"unauthenticated","message":"no Authorization header: send `Authorization: Bearer <token>`"})),
            "Bearer read" if req.method() != axum::http::Method::GET => (
                StatusCode::FORBIDDEN,
                json!({"error":"forbidden","message":"token \"read\" has role read; changes need an admin token"}),
            ),
            "Bearer read" | "Bearer admin" => (StatusCode::OK, json!({"items":[],"node_id":1,"log_index":2})),
            _ => (StatusCode::UNAUTHORIZED, json!({"error":"unauthenticated","message":"the bearer token is not one this node accepts"})),
        };
        (code, Json(body))
    })
}

#[tokio::test]
async fn refused_tokens_are_errors_that_say_what_to_set() {
    let node = serve(guarded_node()).await;
    let none = Client::new(vec![node.clone()]);
    let err = none.list_triggers(Consistency::Linearizable).await.unwrap_err();
    assert!(err.is_unauthenticated() && !err.is_forbidden(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.starts_with("no Authorization header"), "{msg}");
    assert!(msg.contains("no token was sent") && msg.contains("$AOF_TOKEN"), "{msg}");

    let wrong = Client::builder(vec![node.clone()]).token("nope").build();
    let msg = wrong.list_triggers(Consistency::Linearizable).await.unwrap_err().to_string();
    assert!(msg.contains("the token was refused") && msg.contains("AOF_ADMIN_TOKEN"), "{msg}");

    let read = Client::builder(vec![node.clone()]).token("read").build();
    read.list_triggers(Consistency::Linearizable).await.unwrap();
    let err = read.promote_voter(2).await.unwrap_err();
    assert!(err.is_forbidden(), "{err:?}");
    assert!(err.to_string().contains("admin for changes"), "{err}");

    let admin = Client::builder(vec![node]).token("admin").build();
    admin.promote_voter(2).await.unwrap();
}

#[tokio::test]
async fn the_public_listener_is_named_as_the_wrong_endpoint() {
    // The public listener answers /v1/* with a bare 404.
    let public = serve(Router::new().route("/health", get(|| async { Json(json!({"status":"ok","node_id":1})) }))).await;
    let client = Client::new(vec![public.clone()]);
    client.health().await.unwrap();
    let err = client.cluster_status(Consistency::Linearizable).await.unwrap_err();
    assert!(err.is_not_found());
    let msg = err.to_string();
    assert!(msg.contains(&format!("{public} does not serve the API")), "{msg}");
    assert!(msg.contains("spec.cluster.api_addr"), "{msg}");
}

/// Serves `app` over TLS (rustls, the given certificate) on 127.0.0.1:0; its
/// `https://` base URL.
async fn serve_tls(app: Router, cert_pem: &str, key_pem: &str) -> String {
    use rustls::pki_types::pem::PemObject as _;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(app),
                    )
                    .await;
            });
        }
    });
    format!("https://{addr}")
}

#[tokio::test]
async fn https_endpoints_are_verified_against_the_given_ca() {
    let pki = crate::test_pki::pki();
    let seen: Requests = Arc::default();
    let node = serve_tls(recording_node(seen.clone()), &pki.cert_pem, &pki.key_pem).await;

    // The CA that signed the node's certificate: the request goes through, token included.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let client = Client::builder(vec![node.clone()]).token("t0k").ca_file(&ca_file).try_build().unwrap();
    assert_eq!(client.health().await.unwrap().node_id, 4);
    assert_eq!(seen.lock().unwrap().as_slice(), ["GET /health auth=Bearer t0k ct=-"]);
    let client = Client::builder(vec![node.clone()]).ca_pem(pki.ca_pem.clone()).build();
    assert_eq!(client.health().await.unwrap().status, "ok");

    // Another CA (or only the system's roots): the handshake fails, nothing is sent,
    // and the error says what to give the client.
    for client in [
        Client::builder(vec![node.clone()]).ca_pem(crate::test_pki::other_ca_pem()).build(),
        Client::new(vec![node.clone()]),
    ] {
        let err = client.health().await.unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert!(err.to_string().contains("give the client the CA that signed it"), "{err}");
    }
    assert_eq!(seen.lock().unwrap().len(), 2);

    // A CA file that cannot be used is a configuration error, before anything is sent.
    let err = Client::builder(vec![node.clone()]).ca_file(dir.join("missing.crt")).try_build().unwrap_err();
    assert!(matches!(&err, ClientError::Config(m) if m.contains("cannot read the CA file")), "{err:?}");
    let err = Client::builder(vec![node.clone()]).ca_file(dir.join("missing.crt")).build().health().await.unwrap_err();
    assert!(matches!(err, ClientError::Config(_)), "{err:?}");
    std::fs::write(dir.join("junk.crt"), "not a certificate").unwrap();
    let err = Client::builder(vec![node]).ca_file(dir.join("junk.crt")).try_build().unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}

#[tokio::test]
async fn a_token_that_cannot_be_a_header_is_a_configuration_error() {
    let err = Client::builder(vec!["http://127.0.0.1:1".into()]).token("a\nb").try_build().unwrap_err();
    assert!(matches!(&err, ClientError::Config(m) if m.contains("token")), "{err:?}");
}
