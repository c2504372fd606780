//! The alert rules (deploy/prometheus/alerts.yaml) and the Grafana dashboard
//! (deploy/grafana/aof-cluster.json) name only metrics — and label names — that the
//! nodes export: a secured three-node cluster gets one webhook per path the series
//! need (a job retried, a job dead-lettered, a job left ready, a badly signed
//! delivery), then every node's `/metrics` (API listener, read token) is read and each
//! name a PromQL expression uses must be a series there.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aof_node::config::GithubConfig;
use aof_proto::v1 as pb;
use aof_proto::v1::work_queue_client::WorkQueueClient;
use common::{client_with_token, TestCluster, READ_TOKEN, WORKER_TOKEN};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

const SECRET: &str = "contract-secret";
const TRIGGER: &str = "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {github_events: [issues]}\n  default_agent: ext\n";
/// Series Prometheus itself adds for every scrape target.
const PROMETHEUS_SERIES: &[&str] = &["up"];
/// Labels Prometheus (or its Kubernetes discovery) attaches to every series.
const TARGET_LABELS: &[&str] = &["job", "instance", "namespace", "pod", "cluster", "le"];

fn repo_file(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every PromQL expression of the rule file (`groups[].rules[].expr`).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(yaml).expect("alerts.yaml is YAML");
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            out.push(r["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

/// Every `expr` field of the dashboard, at any depth.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

/// Operators, and aggregations (which may be followed by `by (...)` before their `(`).
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "inf", "nan", "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile",
];

/// The metric names an expression selects, each with the label names its matchers use.
/// A small PromQL scanner: string literals, `[range]`s and `offset` durations are
/// skipped; an identifier followed by `(` is a function or aggregation (whose
/// `by (...)`/`on (...)` clause holds label names, not metrics); `{...}` after a name
/// holds its matchers.
fn selected(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |i: usize| c[i].is_ascii_alphabetic() || c[i] == '_' || c[i] == ':';
    let skip_ws = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // Skip a balanced `(...)` starting at `i` (which is '('); returns the index after it.
    let skip_parens = |mut i: usize| {
        let mut depth = 0;
        while i < c.len() {
            match c[i] {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' || ch == '\'' || ch == '`' {
            i += 1;
            while i < c.len() && c[i] != ch {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '[' {
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch.is_ascii_digit() || ch == '.' {
            // Numbers and durations (1e3, 0.99, 15m).
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch == '$' {
            // A Grafana variable outside a matcher or range.
            i += 1;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ident(i) {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&lower.as_str()) {
                // Label lists.
                if next < c.len() && c[next] == '(' {
                    i = skip_parens(next);
                }
            } else if lower == "offset" {
                i = next;
                while i < c.len() && c[i].is_ascii_alphanumeric() {
                    i += 1;
                }
            } else if KEYWORDS.contains(&lower.as_str()) || (next < c.len() && c[next] == '(') {
                // An operator keyword, a function or an aggregation.
            } else {
                let mut labels = BTreeSet::new();
                if next < c.len() && c[next] == '{' {
                    let end = (next..c.len()).find(|&j| c[j] == '}').expect("closing }");
                    let body: String = c[next + 1..end].iter().collect();
                    labels = matcher_labels(&body);
                    i = end + 1;
                }
                out.push((word, labels));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Label names of a matcher list `a="x", b=~"y|z"`.
fn matcher_labels(body: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_str = false;
    let mut name = String::new();
    for ch in body.chars() {
        if in_str {
            if ch == '"' {
                in_str = false;
            }
            continue;
        }
        match ch {
            '"' => in_str = true,
            '=' | '!' | '~' => {
                if !name.trim().is_empty() {
                    out.insert(name.trim().to_string());
                }
                name.clear();
            }
            ',' => name.clear(),
            c => name.push(c),
        }
    }
    out
}

/// Sample names of an exposition, each with the label names its samples carry.
fn exported(text: &str, into: &mut BTreeMap<String, BTreeSet<String>>) {
    for l in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let name_end = l.find(['{', ' ']).unwrap_or(l.len());
        let labels = into.entry(l[..name_end].to_string()).or_default();
        if l[name_end..].starts_with('{') {
            let body = &l[name_end + 1..l.rfind('}').expect("closing }")];
            labels.extend(matcher_labels(body));
        }
    }
}

/// What `exprs` use that `series` lacks: unknown names, and label names a name lacks.
fn missing(exprs: &[String], series: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for e in exprs {
        for (name, labels) in selected(e) {
            if PROMETHEUS_SERIES.contains(&name.as_str()) {
                continue;
            }
            let Some(have) = series.get(&name) else {
                problems.push(format!("{name} (in `{e}`) is not exported"));
                continue;
            };
            for l in labels.iter().filter(|l| !TARGET_LABELS.contains(&l.as_str()) && !have.contains(*l)) {
                problems.push(format!("{name} has no label {l} (in `{e}`)"));
            }
        }
    }
    problems
}

#[test]
fn the_scanner_finds_metrics_and_skips_functions_labels_and_ranges() {
    let e = r#"histogram_quantile(0.99, sum by (le, instance) (rate(aof_log_flush_seconds_bucket{job=~"$job"}[$__rate_interval]))) / on (job) group_left aof_x{state="a,b", target!="q"} offset 15m and up == 0"#;
    let got: Vec<(String, Vec<String>)> = selected(e).into_iter().map(|(n, l)| (n, l.into_iter().collect())).collect();
    assert_eq!(
        got,
        vec![
            ("aof_log_flush_seconds_bucket".into(), vec!["job".into()]),
            ("aof_x".into(), vec!["state".into(), "target".into()]),
            ("up".into(), vec![]),
        ]
    );
    let mut series = BTreeMap::new();
    exported("# TYPE aof_x gauge\naof_x{state=\"a\"} 1\naof_log_flush_seconds_bucket{le=\"0.1\"} 3\n", &mut series);
    assert_eq!(missing(&[e.to_string()], &series), vec![format!("aof_x has no label target (in `{e}`)")]);
}

async fn queue_client(c: &TestCluster, i: usize) -> WorkQueueClient<tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>> {
    let ch = Endpoint::from_shared(format!("http://{}", c.nodes[i].grpc)).unwrap().connect().await.unwrap();
    let header: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = format!("Bearer {WORKER_TOKEN}").parse().unwrap();
    WorkQueueClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", header.clone());
        Ok(req)
    })
}

async fn webhook(c: &TestCluster, delivery: &str, secret: &str) -> u16 {
    let body = br#"{"action":"opened","repository":{"full_name":"acme/api","owner":{"login":"acme"}}}"#;
    common::signed_webhook(&reqwest::Client::new(), &c.nodes[0].url("/webhook/github"), "issues", delivery, body, secret)
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_and_alert_rules_use_only_exported_metrics() {
    let certs = tempfile::tempdir().unwrap();
    let mut opts = aof_node::tls::CertsInit::new(certs.path());
    opts.nodes = 9;
    aof_node::tls::init_certs(&opts).unwrap();
    let path = certs.path().to_path_buf();
    let mut c = TestCluster::start_with(3, 10_000, |cfg| {
        common::secure(cfg, &path);
        let gh: GithubConfig = serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
    })
    .await;
    c.http = client_with_token(common::ADMIN_TOKEN);
    c.certs = Some(certs);
    c.wait_ready(30).await;
    let r = c.http.put(c.nodes[0].url("/v1/triggers/contract")).header("content-type", "application/yaml").body(TRIGGER).send().await.unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);

    // Two jobs leased by a worker: one fails for good (dead letter), one is retried later.
    assert_eq!(webhook(&c, "contract-dead", SECRET).await, 202);
    assert_eq!(webhook(&c, "contract-retry", SECRET).await, 202);
    let mut wq = queue_client(&c, 1).await;
    let mut stream = wq.claim(pb::ClaimRequest { worker_id: "contract".into(), targets: vec!["ext".into()], max_in_flight: 2 }).await.unwrap().into_inner();
    let mut leases = Vec::new();
    for _ in 0..2 {
        leases.push(tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("a lease in time").unwrap().expect("a lease"));
    }
    drop(stream);
    for l in &leases {
        let retryable = l.delivery_id == "contract-retry";
        let fail = pb::FailRequest { job_id: l.job_id.clone(), fencing_token: l.fencing_token, error: "contract".into(), retryable, delay_ms: 600_000 };
        let reply = wq.fail(fail).await.unwrap().into_inner();
        assert_eq!(reply.outcome, if retryable { "retrying" } else { "dead" });
    }
    // One job left ready (oldest-ready age), one delivery refused with 401.
    assert_eq!(webhook(&c, "contract-ready", SECRET).await, 202);
    assert_eq!(webhook(&c, "contract-forged", "not-the-secret").await, 401);

    let mut exprs = rule_exprs(&repo_file("deploy/prometheus/alerts.yaml"));
    let n_rules = exprs.len();
    let dashboard: Value = serde_json::from_str(&repo_file("deploy/grafana/aof-cluster.json")).expect("the dashboard is JSON");
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(n_rules >= 7 && exprs.len() > n_rules + 20, "{n_rules} rules, {} expressions in all", exprs.len());
    // The dashboard's variables query metrics too.
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(d) = v["definition"].as_str() {
            let inner = d.trim_start_matches("label_values(").split(',').next().unwrap().trim();
            exprs.push(inner.to_string());
        }
    }

    // Every node's /metrics with the read token; gauges follow each node's applied
    // state, so poll (bounded) until the union has every series or time is up.
    let read = client_with_token(READ_TOKEN);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut problems;
    let mut series;
    loop {
        series = BTreeMap::new();
        for n in &c.nodes {
            let r = read.get(n.url("/metrics")).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "/metrics with the read token");
            exported(&r.text().await.unwrap(), &mut series);
        }
        problems = missing(&exprs, &series);
        if problems.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(problems.is_empty(), "the dashboard or the alert rules use series no node exports:\n{}", problems.join("\n"));
    // Prometheus conventions: timestamps in seconds, retries and dead letters by target.
    let unix_ms: Vec<&String> = series.keys().filter(|n| n.contains("unix_ms")).collect();
    assert!(unix_ms.is_empty(), "{unix_ms:?}");
    assert!(series.contains_key("aof_last_webhook_timestamp_seconds"));
    for name in ["aof_job_retries_total", "aof_job_dead_letters_total"] {
        assert!(series[name].contains("target"), "{name} has no target label: {:?}", series[name]);
    }
}
