//! Delivery recovery against a fake GitHub (an axum stub on 127.0.0.1): the hook's
//! delivery log lists deliveries the cluster saw and some it never saw (GitHub
//! recorded them as failed while every node was down), across two pages, with a
//! rate-limit answer on the way. After the cluster starts, the leader's sweep
//! ingests exactly the missing ones, each once; later sweeps change nothing; the
//! replicated checkpoint survives a leader change (the new leader reads only the
//! first page); a dry run changes nothing. A GitHub App's hook
//! (`/app/hook/deliveries`) is read with an App JWT (RS256, `iss` = the App id) that
//! the fake verifies with the App's public key.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aof_node::config::{DaemonConfig, GithubConfig};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{fixture, signed_webhook, TestCluster};
use serde_json::{json, Value};

const SECRET: &str = "recovery-secret";
const TOKEN_ENV: &str = "AOF_TEST_RECOVERY_GITHUB_TOKEN";
const TOKEN: &str = "ghs_recovery_test_token";
const PER_PAGE: usize = 4;

#[derive(Clone)]
struct FakeDelivery {
    id: u64,
    guid: String,
    event: String,
    action: Option<String>,
    delivered_at: String,
    status_code: u16,
    redelivery: bool,
    payload: Value,
}

#[derive(Default)]
struct Fake {
    /// Newest first, as GitHub lists them.
    deliveries: Vec<FakeDelivery>,
    /// Every request: `GET /path?query`.
    log: Vec<String>,
    /// Answer the first request for a later page with a rate-limit 403.
    rate_limit_pending: bool,
    redeliveries: Vec<u64>,
    base: String,
}

type Shared = Arc<Mutex<Fake>>;

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

async fn list(
    State(f): State<Shared>,
    Path((owner, repo, hook)): Path<(String, String, u64)>,
    Query(q): Query<BTreeMap<String, String>>,
    h: HeaderMap,
) -> Response {
    let mut f = f.lock().unwrap();
    let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    f.log.push(format!(
        "GET /repos/{owner}/{repo}/hooks/{hook}/deliveries?{}",
        query.join("&")
    ));
    if !authorized(&h) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    let start: usize = q
        .get("cursor")
        .and_then(|c| c.strip_prefix('c'))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if start > 0 && f.rate_limit_pending {
        f.rate_limit_pending = false;
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 1;
        return (
            StatusCode::FORBIDDEN,
            [
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", reset.to_string()),
            ],
            Json(json!({"message": "API rate limit exceeded"})),
        )
            .into_response();
    }
    let per_page: usize = q.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30);
    let page: Vec<Value> = f
        .deliveries
        .iter()
        .skip(start)
        .take(per_page)
        .map(|d| {
            json!({
                "id": d.id, "guid": d.guid, "delivered_at": d.delivered_at, "redelivery": d.redelivery,
                "duration": 0.1, "status": if d.status_code < 300 { "OK" } else { "failed" }, "status_code": d.status_code,
                "event": d.event, "action": d.action, "installation_id": null, "repository_id": 1,
            })
        })
        .collect();
    let mut resp = Json(Value::Array(page)).into_response();
    if start + per_page < f.deliveries.len() {
        let next = format!(
            "<{}/repos/{owner}/{repo}/hooks/{hook}/deliveries?per_page={per_page}&cursor=c{}>; rel=\"next\"",
            f.base,
            start + per_page
        );
        resp.headers_mut().insert("link", next.parse().unwrap());
    }
    resp
}

/// GitHub's answer to `GET …/deliveries/{id}`: the delivery with its request.
fn delivery_detail(deliveries: &[FakeDelivery], id: u64) -> Response {
    match deliveries.iter().find(|d| d.id == id) {
        Some(d) => Json(json!({
            "id": d.id, "guid": d.guid, "delivered_at": d.delivered_at, "event": d.event, "action": d.action,
            "status_code": d.status_code,
            "request": {
                "headers": {"X-GitHub-Event": d.event, "X-GitHub-Delivery": d.guid, "Content-Type": "application/json"},
                "payload": d.payload,
            },
            "response": {"headers": {}, "payload": "upstream unreachable"},
        }))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn detail(
    State(f): State<Shared>,
    Path((owner, repo, hook, id)): Path<(String, String, u64, u64)>,
    h: HeaderMap,
) -> Response {
    let mut f = f.lock().unwrap();
    f.log.push(format!(
        "GET /repos/{owner}/{repo}/hooks/{hook}/deliveries/{id}"
    ));
    if !authorized(&h) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    delivery_detail(&f.deliveries, id)
}

async fn redeliver(
    State(f): State<Shared>,
    Path((_o, _r, _h, id)): Path<(String, String, u64, u64)>,
) -> StatusCode {
    let mut f = f.lock().unwrap();
    f.log.push(format!("POST attempts {id}"));
    f.redeliveries.push(id);
    StatusCode::ACCEPTED
}

async fn fake_github() -> Shared {
    let shared: Shared = Arc::default();
    let app = Router::new()
        .route("/repos/{owner}/{repo}/hooks/{hook}/deliveries", get(list))
        .route(
            "/repos/{owner}/{repo}/hooks/{hook}/deliveries/{id}",
            get(detail),
        )
        .route(
            "/repos/{owner}/{repo}/hooks/{hook}/deliveries/{id}/attempts",
            post(redeliver),
        )
        .with_state(shared.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    shared.lock().unwrap().base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    shared
}

fn rfc3339(minutes_ago: u64) -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - minutes_ago * 60;
    time::OffsetDateTime::from_unix_timestamp(t as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn config(api_url: String, enabled: bool) -> impl Fn(&mut DaemonConfig) {
    move |cfg: &mut DaemonConfig| {
        let yaml = format!(
            "enabled: true\nwebhook_secret: \"{SECRET}\"\napi_url: \"{api_url}\"\nrecovery:\n  enabled: {enabled}\n  interval: 1s\n  since: 2h\n  per_page: {PER_PAGE}\n  max_rate_limit_wait: 10s\n  hooks:\n    - {{ repo: acme/api, hook_id: 42, token_env: {TOKEN_ENV} }}\n"
        );
        let gh: GithubConfig = serde_yaml::from_str(&yaml).unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.gateway.ack_timeout_ms = 4000;
    }
}

/// Delivery ids of all events, each with how often it occurs.
async fn event_ids(c: &TestCluster, i: usize) -> BTreeMap<String, usize> {
    let (s, v) = c.get_json(i, "/v1/events?limit=1000").await;
    assert_eq!(s, 200, "{v}");
    let mut out = BTreeMap::new();
    for e in v["items"].as_array().unwrap() {
        *out.entry(e["delivery_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    out
}

/// A metric summed over the running nodes.
async fn metric_sum(c: &TestCluster, name: &str) -> f64 {
    let mut sum = 0.0;
    for i in (0..c.nodes.len()).filter(|&i| c.nodes[i].is_running()) {
        let Ok(r) = c.http.get(c.nodes[i].url("/metrics")).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = l.rsplit_once(' ') {
                if k.split('{').next() == Some(name) {
                    sum += v.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
    }
    sum
}

fn log_since(f: &Shared, from: usize) -> Vec<String> {
    f.lock().unwrap().log[from..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missed_deliveries_are_recovered_once_and_the_checkpoint_survives_a_leader_change() {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let fake = fake_github().await;
    let base = fake.lock().unwrap().base.clone();
    let issues = fixture("issues/00-edited.json");
    let assigned = fixture("issues/02-assigned.json");
    let comment = fixture("issue_comment/00-created.json");
    let push = fixture("push/00-none.json");
    let js = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
    let d = |id: u64,
             guid: &str,
             event: &str,
             action: Option<&str>,
             ago: u64,
             status: u16,
             redelivery: bool,
             body: &[u8]| FakeDelivery {
        id,
        guid: guid.into(),
        event: event.into(),
        action: action.map(str::to_string),
        delivered_at: rfc3339(ago),
        status_code: status,
        redelivery,
        payload: js(body),
    };
    // GitHub's log, newest first; g-1 and g-3 reached the cluster, the rest failed
    // (g-2 twice: a failed redelivery shares its GUID). Two pages of 4.
    fake.lock().unwrap().deliveries = vec![
        d(
            107,
            "g-2",
            "issue_comment",
            Some("created"),
            10,
            502,
            true,
            &comment,
        ),
        d(
            106,
            "g-6",
            "issues",
            Some("assigned"),
            20,
            502,
            false,
            &assigned,
        ),
        d(
            105,
            "g-5",
            "ping",
            None,
            30,
            502,
            false,
            b"{\"zen\":\"Keep it logically awesome.\",\"hook_id\":42}",
        ),
        d(104, "g-4", "push", None, 40, 0, false, &push),
        d(
            103,
            "g-3",
            "issues",
            Some("edited"),
            50,
            202,
            false,
            &issues,
        ),
        d(
            102,
            "g-2",
            "issue_comment",
            Some("created"),
            60,
            502,
            false,
            &comment,
        ),
        d(
            101,
            "g-1",
            "issues",
            Some("edited"),
            70,
            202,
            false,
            &issues,
        ),
    ];

    // The cluster runs without the periodic sweep and receives g-1 and g-3.
    let mut c = TestCluster::start_with(3, 10_000, config(base.clone(), false)).await;
    c.wait_ready(30).await;
    for (guid, body) in [("g-1", &issues), ("g-3", &issues)] {
        let r = signed_webhook(
            &c.http,
            &c.nodes[0].url("/webhook/github"),
            "issues",
            guid,
            body,
            SECRET,
        )
        .await;
        assert_eq!(r.status().as_u16(), 202, "{guid}");
    }
    let seen: BTreeMap<String, usize> = [("g-1".to_string(), 1), ("g-3".to_string(), 1)].into();
    assert_eq!(event_ids(&c, 0).await, seen);

    // Dry run: lists exactly the missing deliveries, changes nothing.
    fake.lock().unwrap().rate_limit_pending = false;
    let r = c
        .http
        .post(c.nodes[1].url("/v1/github/recover"))
        .json(&json!({"since": "2h", "dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let report: Value = r.json().await.unwrap();
    let mut missing: Vec<&str> = report["sources"][0]["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["guid"].as_str().unwrap())
        .collect();
    missing.sort();
    assert_eq!(missing, ["g-2", "g-4", "g-6"], "{report}");
    assert_eq!(event_ids(&c, 0).await, seen, "a dry run stores nothing");
    assert!(
        log_since(&fake, 0)
            .iter()
            .all(|l| l.contains("/deliveries?")),
        "a dry run fetches no delivery: {:?}",
        log_since(&fake, 0)
    );
    let (_, st) = c.get_json(0, "/v1/github/recovery").await;
    assert!(
        st["hooks"][0]["checkpoint"].is_null(),
        "a dry run moves no checkpoint: {st}"
    );
    let bad = c
        .http
        .post(c.nodes[1].url("/v1/github/recover"))
        .json(&json!({"since": "soon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    // Every node stops; GitHub's deliveries meanwhile fail (they are in the list
    // already). Then the cluster starts with the sweep on.
    for i in 0..3 {
        c.stop(i).await;
    }
    fake.lock().unwrap().rate_limit_pending = true;
    let mark = fake.lock().unwrap().log.len();
    for i in 0..3 {
        config(base.clone(), true)(&mut c.nodes[i].cfg);
        c.restart(i).await;
    }
    c.wait_ready(30).await;
    let want: BTreeMap<String, usize> = ["g-1", "g-2", "g-3", "g-4", "g-6"]
        .iter()
        .map(|g| (g.to_string(), 1))
        .collect();
    let mut got = BTreeMap::new();
    for _ in 0..300 {
        got = event_ids(&c, 0).await;
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        got, want,
        "exactly the missing deliveries are recovered, each once"
    );
    c.eventually("the checkpoint is at the newest delivery", 20, || async {
        c.get_json(0, "/v1/github/recovery").await.1["hooks"][0]["checkpoint"]["last_delivery_id"]
            == 107
    })
    .await;
    assert!(
        metric_sum(&c, "aof_recovery_rate_limit_waits_total").await >= 1.0,
        "the rate-limit 403 was waited out"
    );
    assert_eq!(metric_sum(&c, "aof_recovery_recovered_total").await, 3.0);
    let first = log_since(&fake, mark);
    let fetched: Vec<&String> = first
        .iter()
        .filter(|l| !l.contains("/deliveries?"))
        .collect();
    assert_eq!(
        fetched.len(),
        3,
        "one fetch per missing delivery (none for deliveries the cluster has): {first:?}"
    );
    assert!(
        fake.lock().unwrap().redeliveries.is_empty(),
        "recovery fetches, it does not ask GitHub to redeliver"
    );

    // Later sweeps stop at the checkpoint: first page only, nothing fetched, nothing stored.
    let mark = fake.lock().unwrap().log.len();
    let sweeps = metric_sum(&c, "aof_recovery_sweeps_total").await;
    c.eventually("two more sweeps", 20, || async {
        metric_sum(&c, "aof_recovery_sweeps_total").await >= sweeps + 2.0
    })
    .await;
    let later = log_since(&fake, mark);
    assert!(!later.is_empty());
    assert!(
        later
            .iter()
            .all(|l| l.contains("/deliveries?") && !l.contains("cursor")),
        "sweeps after the checkpoint read page 1 only: {later:?}"
    );
    assert_eq!(
        event_ids(&c, 0).await,
        want,
        "a second sweep changes nothing"
    );

    // The leader stops; the new one continues from the replicated checkpoint.
    let (_, cl) = c.get_json(0, "/v1/cluster").await;
    let leader = c.index_of(cl["leader_id"].as_u64().unwrap());
    c.stop(leader).await;
    let survivor = (0..3).find(|&i| i != leader).unwrap();
    let mark = fake.lock().unwrap().log.len();
    c.eventually("a new leader", 30, || async {
        let (s, v) = c.get_json(survivor, "/v1/cluster").await;
        s == 200
            && v["leader_id"]
                .as_u64()
                .is_some_and(|l| l != c.nodes[leader].id)
    })
    .await;
    // A new failed delivery: the new leader recovers it from page 1 alone.
    fake.lock().unwrap().deliveries.insert(
        0,
        d(108, "g-8", "issues", Some("edited"), 1, 502, false, &issues),
    );
    let want8: BTreeMap<String, usize> = want
        .keys()
        .cloned()
        .chain(["g-8".to_string()])
        .map(|g| (g, 1))
        .collect();
    c.eventually("g-8 recovered by the new leader", 30, || async {
        event_ids(&c, survivor).await == want8
    })
    .await;
    c.eventually("the checkpoint moves to 108", 20, || async {
        c.get_json(survivor, "/v1/github/recovery").await.1["hooks"][0]["checkpoint"]
            ["last_delivery_id"]
            == 108
    })
    .await;
    let after = log_since(&fake, mark);
    assert!(
        !after.iter().any(|l| l.contains("cursor")),
        "the new leader does not re-sweep from scratch: {after:?}"
    );
    let fetched: Vec<&String> = after
        .iter()
        .filter(|l| !l.contains("/deliveries?"))
        .collect();
    assert_eq!(
        fetched,
        [&"GET /repos/acme/api/hooks/42/deliveries/108".to_string()],
        "{after:?}"
    );
    assert_eq!(
        event_ids(&c, survivor).await,
        want8,
        "each delivery accepted once"
    );
}

// --- A GitHub App's webhook: `/app/hook/deliveries`, authenticated with an App JWT. ---

const APP_ID: u64 = 4242;
const APP_KEY_ENV: &str = "AOF_TEST_RECOVERY_APP_KEY";
/// A throwaway 2048-bit RSA key pair, made for this test only.
const APP_PRIVATE_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA82783sID5hLBTMU08afJGDitrlrrcI+z5pJHWp0FsXcNNX+D\nD319D2k6AyuwsS8eLcCdJQelfQb93G8Jsa+G9s4jFdakLWjMJ+R0cZUnFZ2TBuuv\n4OvGv0zI/e7ZDYfQPyVmyenlNhdF66SXIlLmZOjEAemOXXry6mm+bILwTIbjTndE\n+OZqLZXOs4QwULD4P//3/KAZ8MJ62M45mjDcuI05sf/M+43a+jpuS9wRJxN4Ftvq\nbFKXCA/gkkELmh/j6rCP3m5tpR0ouwR/+0DbhRdfJ7L5Z6M/DOMKoYulYa+Tnc9F\nB5sRKLyuvwg3OTn/0/ZEKQXzX2b25+ZmGO7gcwIDAQABAoIBABaMPBs/89xLXKDJ\nQjQN9MtSPwtMYmYv97UoIGugUE1id+E+kqIMXz/E4RNqtRHviaD2qDeS8HBwhaWo\nzUhdhNrdN64hDitWLruVM0OGa3/awBCrvPc24r2H/BsoYYdmaIYPNBwIsGsYF1xe\n7h0tefSn0LWJCUXXiqKzl7VCU/kQ3F2QCLvTCEVw8hZv1oav120xFGP1PtqXFoda\nKdv1RzPRfk3uJwtU7C4X4PqkkkKtcVGjXXdz5+0Nj+A12fl3+VUciVzdoWAb5CR9\nqsNUIJTSb2GpKoEjUrcs85AUbGUIVlLmMymW34UgutfmQ/E85w0w26d6JFyYMpWb\nr8dcEaECgYEA+hhLX+B2yvhXdNAiJJddvU+XPL36TrFONU1DegsQppkOD2q8MeGz\nJEtVmiyIo6GpMeElxbHlV/n4bqFv7vsoM90L7323WxRx6jY5cDhwQEbxdii5/lc4\nP2Vm7td2g/NV0+cL+pJDrmJm3rhDRY1vUZQ1/8E2XbDJkWsGM30h2OECgYEA+S5t\nuOEZQLI6yDiEAB8HoH9kAS+xFUFFInXF2TDOK61SvEQdmMlQiw8psX1GmDXaLvgm\nEKLwEyr1jdOLMc/Tm+qg5kZDybTHSWq3r2sCALDi4HGNqmvveRcTIp/OHginhFMz\nbvjIglLwyhu/8d+T5Q6G32jCigHXADS6a4oh/9MCgYEA1WgzsU2FsK73WctcxyKO\nr8Mhx4hI9itgFCWpBZQ5kh+amtc2Xc49IiRSmGuV8SM6kECSDb8+d7LrJeQF8sRI\nSvE9hRAejM7GYdgBbVwLlR20X2JjS8A7VAWALyCWlgPnYhmO5DM5I63+H+DWLpyA\nt/kjlujVLl9zsO3FbdxCLKECgYBNcyLjfgOtWjhvFzHgH8TtG+tnev1dj+X/KgAO\n296ZMMwwfDN+08PXFSVuZ3PTx5lDVBnwvdRFAOtF4+S13NT291x/doOHZEs1BJiH\nS4lZ0aETBfh0agwK5SMrdeRI7YOz23B3I5ie+UyiZTGp6kY7weIl+pfM8Xl0NO9k\nkZCzxQKBgBvAMEMP1enIR/4+lmWljA7SbnZMpA/nIMUxDJuXKOdo3zm5FO6giuFV\nBlE0bO3bZBbtmNwJAdiel+pp23uvx4GFALQVDtcrjat8EG47FkLEjAv8oUiEG070\ncKZxm6F/7eeA3iS3G3QcPKqZ4az/WfTgOuHGNIrTVqY3uekCVQ1P\n-----END RSA PRIVATE KEY-----";
const APP_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA82783sID5hLBTMU08afJ\nGDitrlrrcI+z5pJHWp0FsXcNNX+DD319D2k6AyuwsS8eLcCdJQelfQb93G8Jsa+G\n9s4jFdakLWjMJ+R0cZUnFZ2TBuuv4OvGv0zI/e7ZDYfQPyVmyenlNhdF66SXIlLm\nZOjEAemOXXry6mm+bILwTIbjTndE+OZqLZXOs4QwULD4P//3/KAZ8MJ62M45mjDc\nuI05sf/M+43a+jpuS9wRJxN4FtvqbFKXCA/gkkELmh/j6rCP3m5tpR0ouwR/+0Db\nhRdfJ7L5Z6M/DOMKoYulYa+Tnc9FB5sRKLyuvwg3OTn/0/ZEKQXzX2b25+ZmGO7g\ncwIDAQAB\n-----END PUBLIC KEY-----";

#[derive(Default)]
struct FakeApp {
    deliveries: Vec<FakeDelivery>,
    /// `(request, whether its JWT verified)`.
    log: Vec<(String, Result<(), String>)>,
}

type SharedApp = Arc<Mutex<FakeApp>>;

#[derive(serde::Deserialize)]
struct AppClaims {
    iss: u64,
    iat: u64,
    exp: u64,
}

/// Check the request's App JWT as GitHub does: RS256 under the App's public key,
/// `iss` = the App id, issued in the past, expiring within 10 minutes.
fn app_jwt_ok(h: &HeaderMap) -> Result<(), String> {
    use octocrab::jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let auth = h.get("authorization").and_then(|v| v.to_str().ok()).ok_or("no Authorization")?;
    let jwt = auth.strip_prefix("Bearer ").ok_or("not a bearer credential")?;
    let header = decode_header(jwt).map_err(|e| e.to_string())?;
    if header.alg != Algorithm::RS256 {
        return Err(format!("alg {:?}", header.alg));
    }
    let key = DecodingKey::from_rsa_pem(APP_PUBLIC_KEY.as_bytes()).map_err(|e| e.to_string())?;
    let data = decode::<AppClaims>(jwt, &key, &Validation::new(Algorithm::RS256)).map_err(|e| e.to_string())?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let c = data.claims;
    if c.iss != APP_ID {
        return Err(format!("iss {}", c.iss));
    }
    if c.iat > now || c.exp <= now || c.exp > now + 600 {
        return Err(format!("iat {} exp {} now {now}", c.iat, c.exp));
    }
    Ok(())
}

async fn app_list(State(f): State<SharedApp>, Query(q): Query<BTreeMap<String, String>>, h: HeaderMap) -> Response {
    let mut f = f.lock().unwrap();
    let ok = app_jwt_ok(&h);
    f.log.push((format!("GET /app/hook/deliveries?per_page={}", q.get("per_page").cloned().unwrap_or_default()), ok.clone()));
    if let Err(e) = ok {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": format!("A JSON web token could not be decoded: {e}")}))).into_response();
    }
    let page: Vec<Value> = f
        .deliveries
        .iter()
        .map(|d| {
            json!({
                "id": d.id, "guid": d.guid, "delivered_at": d.delivered_at, "redelivery": d.redelivery,
                "duration": 0.1, "status": if d.status_code < 300 { "OK" } else { "failed" }, "status_code": d.status_code,
                "event": d.event, "action": d.action, "installation_id": 7, "repository_id": 1,
            })
        })
        .collect();
    Json(Value::Array(page)).into_response()
}

async fn app_detail(State(f): State<SharedApp>, Path(id): Path<u64>, h: HeaderMap) -> Response {
    let mut f = f.lock().unwrap();
    let ok = app_jwt_ok(&h);
    f.log.push((format!("GET /app/hook/deliveries/{id}"), ok.clone()));
    if ok.is_err() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    delivery_detail(&f.deliveries, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_github_apps_missed_deliveries_are_recovered_with_an_app_jwt() {
    std::env::set_var(APP_KEY_ENV, APP_PRIVATE_KEY);
    let fake: SharedApp = Arc::default();
    let issues = fixture("issues/00-edited.json");
    let payload: Value = serde_json::from_slice(&issues).unwrap();
    let d = |id: u64, guid: &str, status: u16| FakeDelivery {
        id,
        guid: guid.into(),
        event: "issues".into(),
        action: Some("edited".into()),
        delivered_at: rfc3339(5),
        status_code: status,
        redelivery: false,
        payload: payload.clone(),
    };
    fake.lock().unwrap().deliveries = vec![d(202, "app-2", 502), d(201, "app-1", 202)];
    let app = Router::new()
        .route("/app/hook/deliveries", get(app_list))
        .route("/app/hook/deliveries/{id}", get(app_detail))
        .with_state(fake.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let c = TestCluster::start_with(3, 10_000, move |cfg: &mut DaemonConfig| {
        let yaml = format!(
            "enabled: true\nwebhook_secret: \"{SECRET}\"\napi_url: \"{base}\"\nrecovery:\n  interval: 1s\n  since: 2h\n  hooks:\n    - {{ app_id: {APP_ID}, private_key_env: {APP_KEY_ENV} }}\n"
        );
        let gh: GithubConfig = serde_yaml::from_str(&yaml).unwrap();
        cfg.spec.platforms.github = Some(gh);
    })
    .await;
    c.wait_ready(30).await;
    // The cluster got app-1 itself; app-2 failed at GitHub.
    let r = signed_webhook(&c.http, &c.nodes[0].url("/webhook/github"), "issues", "app-1", &issues, SECRET).await;
    assert_eq!(r.status().as_u16(), 202);
    let want: BTreeMap<String, usize> = [("app-1".to_string(), 1), ("app-2".to_string(), 1)].into();
    c.eventually("app-2 recovered", 30, || async { event_ids(&c, 1).await == want }).await;
    c.eventually("the App hook's checkpoint at 202", 20, || async {
        let (_, st) = c.get_json(2, "/v1/github/recovery").await;
        st["hooks"][0]["source"] == format!("app:{APP_ID}") && st["hooks"][0]["checkpoint"]["last_delivery_id"] == 202
    })
    .await;
    let log = fake.lock().unwrap().log.clone();
    assert!(log.iter().all(|(_, ok)| ok.is_ok()), "every request carried a valid App JWT: {log:?}");
    assert!(log.iter().any(|(r, _)| r == "GET /app/hook/deliveries/202"), "{log:?}");
    assert!(!log.iter().any(|(r, _)| r == "GET /app/hook/deliveries/201"), "what the cluster has is not fetched: {log:?}");
    assert_eq!(event_ids(&c, 0).await, want, "each accepted once");
}
