//! `aofctl` features that need a real cluster: `apply --dry-run` (the node
//! validates as for a real PUT and changes nothing) and `get events --watch`
//! (a webhook sent while watching appears as a new line). Three `aofctl serve`
//! nodes on loopback with tokens and peer certificates made for this run.

use std::io::{BufRead as _, BufReader};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aof_client::{Client, Consistency};

mod common;
use common::{aofctl_cmd, sign, start_three, wait_until, Creds, Node};

const SECRET: &str = "cli-cluster-webhook-secret";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn trigger(name: &str, events: &str) -> String {
    format!(
        "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: {name}\nspec:\n  type: GitHub\n  config:\n    github_events: [{events}]\n  default_agent: helper\n"
    )
}

struct Cluster {
    dir: tempfile::TempDir,
    creds: Creds,
    nodes: Vec<Node>,
}

impl Cluster {
    fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(Node::api_url)
            .collect::<Vec<_>>()
            .join(",")
    }
    fn client(&self) -> Client {
        self.creds
            .admin_client(self.nodes.iter().map(Node::api_url).collect())
    }
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = aofctl_cmd(self.dir.path());
        cmd.args(args)
            .args(["--endpoint", &self.endpoints()])
            .env("AOF_TOKEN", &self.creds.admin);
        cmd
    }
    async fn aofctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.cmd(args);
        tokio::task::spawn_blocking(move || cmd.output().expect("run aofctl"))
            .await
            .unwrap()
    }
    fn file(&self, name: &str, body: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    }
    fn dump(&self) {
        for n in &self.nodes {
            n.proc.dump();
        }
    }
    /// A signed `push` delivery to node 1's public listener (retrying 503s while a
    /// leader is elected).
    async fn webhook(&self, delivery: &str) {
        let body = br#"{"ref":"refs/heads/main","repository":{"full_name":"myorg/api"},"sender":{"login":"alice"}}"#;
        let http = reqwest::Client::new();
        for _ in 0..100 {
            let r = http
                .post(format!("{}/webhook/github", self.nodes[0].public_url()))
                .header("content-type", "application/json")
                .header("x-github-event", "push")
                .header("x-github-delivery", delivery)
                .header("x-hub-signature-256", sign(SECRET.as_bytes(), body))
                .body(body.to_vec())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    return;
                }
                if r.status().as_u16() != 503 {
                    self.dump();
                    panic!(
                        "webhook {delivery}: {} {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.dump();
        panic!("webhook {delivery} was not accepted");
    }
}

async fn start() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let creds = Creds::new(dir.path());
    let spec = format!(
        "  platforms:\n    github:\n      enabled: true\n      webhook_secret: \"{SECRET}\"\n"
    );
    let nodes = start_three(dir.path(), "cli-cluster", &spec, &creds);
    let c = Cluster { dir, creds, nodes };
    let urls: Vec<String> = c.nodes.iter().map(Node::public_url).collect();
    wait_until(
        "three nodes ready",
        60,
        || c.dump(),
        || common::all_ready(urls.clone()),
    )
    .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_dry_run_changes_nothing_and_watch_shows_new_events() {
    let c = start().await;
    let client = c.client();

    // ---- apply --dry-run ----
    let alpha = c.file("alpha.yaml", &trigger("alpha", "push"));
    let out = c.aofctl(&["apply", "-f", &alpha]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "trigger/alpha created\n");
    let before = client
        .get_trigger("alpha", Consistency::Linearizable)
        .await
        .unwrap();

    let out = c.aofctl(&["apply", "--dry-run", "-f", &alpha]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "trigger/alpha unchanged (dry run)\n");

    let changed = c.file("alpha2.yaml", &trigger("alpha", "push, pull_request"));
    let out = c.aofctl(&["apply", "--dry-run", "-f", &changed]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "trigger/alpha configured (dry run)\n--- trigger/alpha (revision {})\n+++ trigger/alpha (dry run; a new revision on apply)\n@@ ",
            before.revision
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("\n     - push\n+    - pull_request\n"),
        "{stdout}"
    );

    let beta = c.file("beta.yaml", &trigger("beta", "push"));
    let out = c.aofctl(&["apply", "--dry-run", "-f", &beta]).await;
    assert_eq!(
        text(&out.stdout),
        "trigger/beta created (dry run)\n",
        "{}",
        text(&out.stderr)
    );

    // Nothing changed: same revision and document, no beta.
    let after = client
        .get_trigger("alpha", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(after, before);
    let names: Vec<String> = client
        .list_triggers(Consistency::Linearizable)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["alpha"]);

    // An invalid document fails the dry run with the real PUT's error.
    let bad = c.file("bad.yaml", "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: bad\nspec:\n  type: GitHub\n  config:\n    github_evnts: [push]\n");
    let real = c.aofctl(&["apply", "-f", &bad]).await;
    let dry = c.aofctl(&["apply", "--dry-run", "-f", &bad]).await;
    assert_eq!((real.status.code(), dry.status.code()), (Some(1), Some(1)));
    let first_line = |o: &Output| text(&o.stderr).lines().next().unwrap_or("").to_string();
    assert!(
        first_line(&real).contains("github_events"),
        "{}",
        text(&real.stderr)
    );
    assert_eq!(first_line(&dry), first_line(&real));
    assert!(
        text(&dry.stderr).contains("1 of 1 triggers would not be applied"),
        "{}",
        text(&dry.stderr)
    );
    assert!(client
        .get_trigger("bad", Consistency::Linearizable)
        .await
        .is_err());

    // ---- get events --watch ----
    c.webhook("watch-before").await;
    let mut watch = c.cmd(&[
        "get",
        "events",
        "-w",
        "--interval",
        "200ms",
        "--watch-timeout",
        "120s",
    ]);
    let mut child = watch
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let has = |needle: &str| lines.lock().unwrap().iter().any(|l| l.contains(needle));
    wait_until(
        "the first listing shows the earlier event",
        60,
        || c.dump(),
        || async { has("watch-before") },
    )
    .await;
    c.webhook("watch-during").await;
    wait_until(
        "the watch prints the new event",
        60,
        || c.dump(),
        || async { has("watch-during") },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    let lines = lines.lock().unwrap().clone();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("ID ")).count(),
        1,
        "one header: {lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("watch-before")).count(),
        1,
        "old events are not repeated: {lines:?}"
    );
    assert!(lines.last().unwrap().contains("push"), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_jobs_cancel_and_rerun_against_a_cluster() {
    let c = start().await;
    let t = c.file("jobs.yaml", &trigger("jobs", "push"));
    let out = c.aofctl(&["apply", "-f", &t]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    c.webhook("jobs-1").await;
    c.webhook("jobs-2").await;

    // get jobs: names, table, JSON, filters.
    let out = c
        .aofctl(&["get", "jobs", "--state", "ready", "--target", "helper", "-o", "name"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let names: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let first = names[0].strip_prefix("job/").unwrap().to_string();
    let out = c.aofctl(&["get", "jobs", "--event", "push"]).await;
    let table = text(&out.stdout);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["JOB", "EVENT", "TYPE", "TARGET", "STATE", "ATTEMPTS", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[2], row[3], row[4]),
        (first.as_str(), "push", "agent/helper", "ready"),
        "{table}"
    );
    let out = c.aofctl(&["get", "jobs", "--event", "issues"]).await;
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("No jobs found."));

    // cancel job: once, then 409 with the reason.
    let out = c
        .aofctl(&["cancel", "job", &first, "--reason", "superseded"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("job {first} cancelled (was ready)\n")
    );
    let out = c.aofctl(&["cancel", "job", &first]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("already cancelled") && err.contains("nothing changed"),
        "{err}"
    );
    let out = c
        .aofctl(&["get", "jobs", "--state", "cancelled", "-o", "json"])
        .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"][0]["job_id"], first.as_str(), "{v}");
    let note = v["items"][0]["history"][1]["note"].as_str().unwrap();
    assert!(note.ends_with(": superseded"), "{note}");

    // rerun event: a new job of the same event.
    let event_id = v["items"][0]["event_id"].as_u64().unwrap().to_string();
    let out = c.aofctl(&["rerun", "event", &event_id, "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["jobs"][0], format!("{event_id}-1").as_str(), "{r}");

    // queue set-limits / limits.
    let out = c
        .aofctl(&["queue", "set-limits", "helper", "--max-in-flight", "2", "--ttl", "1h"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "target helper: max in flight 2, ttl 1h\n"
    );
    let out = c.aofctl(&["queue", "limits"]).await;
    assert_eq!(
        text(&out.stdout),
        "TARGET   MAX IN FLIGHT   LEASED   TTL\nhelper   2               0        1h\n"
    );
}
