//! The status page (`/ui`, `/v1/watch`) on a real three-node cluster, driven in a
//! headless Chromium through the Chrome DevTools Protocol (`tests/ui/cdp_driver.py`,
//! Python standard library only, Chromium over `--remote-debugging-pipe`).
//!
//! Without Chromium (or Python) the browser test prints SKIP, unless
//! `AOF_REQUIRE_BROWSER=1` (set by `.ci/run`), where it fails. `AOF_CHROMIUM` picks
//! the browser binary. Screenshots go to `target/ui-screenshots/<test>-<step>.png`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aof_node::config::{DaemonConfig, ExecutorConfig, GithubConfig};
use common::{client_with_token, fixture, wait_status, TestCluster, ADMIN_TOKEN, READ_TOKEN};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SECRET: &str = "ui-secret";

fn find_in_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The browser and Python, or why they are missing.
fn tools() -> Result<(PathBuf, PathBuf), String> {
    let chromium = match std::env::var_os("AOF_CHROMIUM") {
        Some(p) => PathBuf::from(p),
        None => find_in_path(&[
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
        ])
        .ok_or("no chromium in PATH (apt-get install -y chromium, or set AOF_CHROMIUM)")?,
    };
    let python = find_in_path(&["python3"]).ok_or("no python3 in PATH")?;
    Ok((chromium, python))
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A headless Chromium behind `cdp_driver.py` (one JSON command per line).
struct Browser {
    test: &'static str,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None`: no browser here, and none required.
    async fn start(test: &'static str) -> Option<Browser> {
        let (chromium, python) = match tools() {
            Ok(t) => t,
            Err(why) if std::env::var("AOF_REQUIRE_BROWSER").as_deref() == Ok("1") => {
                panic!("AOF_REQUIRE_BROWSER=1 but the status page cannot be tested in a browser: {why}")
            }
            Err(why) => {
                eprintln!("SKIP {test}: {why}");
                return None;
            }
        };
        let profile = tempfile::tempdir().unwrap();
        let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui/cdp_driver.py");
        let mut child = tokio::process::Command::new(python)
            .arg(driver)
            .arg(&chromium)
            .arg(profile.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start python3 tests/ui/cdp_driver.py");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut b = Browser {
            test,
            child,
            stdin,
            lines,
            _profile: profile,
        };
        let hello = b
            .read_reply()
            .await
            .unwrap_or_else(|e| panic!("{} did not start: {e}", chromium.display()));
        assert_eq!(hello["ready"], true, "{hello}");
        Some(b)
    }

    async fn read_reply(&mut self) -> Result<Value, String> {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .map_err(|_| "the CDP driver did not answer within 60 s".to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("the CDP driver exited")?;
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
        if v["ok"] == true {
            Ok(v)
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_string())
        }
    }

    async fn cmd(&mut self, c: Value) -> Result<Value, String> {
        let mut line = c.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        self.read_reply().await
    }

    async fn goto(&mut self, url: &str) {
        self.cmd(json!({"op": "goto", "url": url}))
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    async fn eval(&mut self, js: &str) -> Value {
        match self.cmd(json!({"op": "eval", "expr": js})).await {
            Ok(v) => v["value"].clone(),
            Err(e) => self.fail(&format!("eval {js}: {e}")).await,
        }
    }

    /// Save `target/ui-screenshots/<test>-<step>.png` and print its path.
    async fn screenshot(&mut self, step: &str) -> PathBuf {
        let path = screenshot_dir().join(format!("{}-{step}.png", self.test));
        match self.cmd(json!({"op": "screenshot", "path": path})).await {
            Ok(_) => println!("screenshot: {}", path.display()),
            Err(e) => println!("screenshot {step} failed: {e}"),
        }
        path
    }

    /// Poll `js` (a boolean expression) every 200 ms until true, at most `secs`.
    async fn wait_for(&mut self, what: &str, js: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.eval(js).await == Value::Bool(true) {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("timed out after {secs}s waiting for: {what}"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Screenshot, browser console and page text into the panic message.
    async fn fail(&mut self, why: &str) -> ! {
        let shot = self.screenshot("failure").await;
        let logs = self
            .cmd(json!({"op": "logs"}))
            .await
            .map(|v| v["value"].clone())
            .unwrap_or_default();
        let text = self
            .cmd(json!({"op": "eval", "expr": "document.body ? document.body.innerText.slice(0, 4000) : ''"}))
            .await
            .map(|v| v["value"].clone())
            .unwrap_or_default();
        panic!(
            "{why}\nscreenshot: {}\nconsole: {logs}\npage text:\n{}",
            shot.display(),
            text.as_str().unwrap_or("")
        );
    }

    async fn quit(mut self) {
        let _ = self.cmd(json!({"op": "quit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }
}

/// A JavaScript string literal.
fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Three secured nodes; trigger `issues` runs the command executor `done` (`true`),
/// trigger `comments` runs `flaky`, which fails until the file `ok` exists in `dir`;
/// no retries, so its first failure dead-letters the job; trigger `held` sends
/// pull requests to `nobody`, which no worker runs (its jobs wait, ready).
async fn cluster(dir: &Path) -> TestCluster {
    let certs = tempfile::tempdir().unwrap();
    let mut opts = aof_node::tls::CertsInit::new(certs.path());
    opts.nodes = 9;
    aof_node::tls::init_certs(&opts).unwrap();
    let path = certs.path().to_path_buf();
    let ok_file = dir.join("ok");
    let mut c = TestCluster::start_with(3, 10_000, move |cfg: &mut DaemonConfig| {
        common::secure(cfg, &path);
        let gh: GithubConfig =
            serde_yaml::from_str(&format!("enabled: true\nwebhook_secret: {SECRET}\n")).unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.queue.max_retries = 0;
        cfg.spec.runtime.executors.insert(
            "done".into(),
            ExecutorConfig::Command {
                command: vec!["true".into()],
                timeout_secs: None,
            },
        );
        cfg.spec.runtime.executors.insert(
            "flaky".into(),
            ExecutorConfig::Command {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    format!(
                        "test -e {} || {{ echo not yet >&2; exit 1; }}",
                        ok_file.display()
                    ),
                ],
                timeout_secs: None,
            },
        );
    })
    .await;
    c.http = client_with_token(ADMIN_TOKEN);
    c.certs = Some(certs);
    c.wait_ready(30).await;
    for (name, doc) in [
        ("issues", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {github_events: [issues]}\n  default_agent: done\n"),
        ("comments", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {github_events: [issue_comment]}\n  default_agent: flaky\n"),
        ("held", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {github_events: [pull_request]}\n  default_agent: nobody\n"),
    ] {
        let r = c.http.put(c.nodes[0].url(&format!("/v1/triggers/{name}"))).header("content-type", "application/yaml").body(doc).send().await.unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }
    c
}

async fn post(c: &TestCluster, i: usize, event: &str, delivery: &str, body: &[u8]) {
    let r = common::signed_webhook(
        &c.http,
        &c.nodes[i].url("/webhook/github"),
        event,
        delivery,
        body,
        SECRET,
    )
    .await;
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
}

async fn sign_in(b: &mut Browser, token: &str) {
    b.wait_for(
        "the sign-in form",
        "!document.getElementById('login').hidden",
        15,
    )
    .await;
    b.eval(&format!(
        "document.getElementById('token').value = {}; document.getElementById('login-form').requestSubmit(); true",
        js_str(token)
    ))
    .await;
    b.wait_for(
        "the page after sign-in",
        "!document.getElementById('app').hidden",
        15,
    )
    .await;
}

/// The whole page in a browser: sign-in with the read token, three members and the
/// leader, a webhook appearing live, a dead-lettered job shown without actions and a
/// refused redrive; then the admin token redrives it; then losing quorum shows a
/// banner and keeps the last data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_page_shows_the_cluster_live_and_redrives_with_an_admin_token() {
    const TEST: &str = "status_page";
    let Some(mut b) = Browser::start(TEST).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = cluster(dir.path()).await;
    let leader = c.wait_ready(30).await;
    let ui = format!("http://{}/ui", c.nodes[0].api);

    // Read token: the cluster with its three members and the leader.
    b.goto(&ui).await;
    sign_in(&mut b, READ_TOKEN).await;
    b.wait_for(
        "three members and the leader",
        &format!(
            "(() => {{ const rows = [...document.querySelectorAll('#members tbody tr[data-member]')];
                const leaders = rows.filter(r => r.cells[2].textContent === 'leader').map(r => r.dataset.member);
                return rows.length === 3 && leaders.length === 1 && leaders[0] === '{leader}'
                    && document.getElementById('live').textContent === 'live'; }})()"
        ),
        20,
    )
    .await;
    assert_eq!(
        b.eval("document.getElementById('whoami').textContent")
            .await,
        "token role: read"
    );
    b.screenshot("read-cluster").await;

    // A webhook appears in the recent events without a reload.
    b.eval("window.__notReloaded = true").await;
    post(
        &c,
        1,
        "issues",
        "ui-live-1",
        &fixture("issues/00-edited.json"),
    )
    .await;
    b.wait_for(
        "the new delivery in recent events, live",
        "window.__notReloaded === true && !!document.querySelector('#recent tbody tr[data-delivery=\"ui-live-1\"]')",
        15,
    )
    .await;
    b.screenshot("live-event").await;

    // A dead-lettered job: listed, without redrive/purge buttons for a read token;
    // a redrive attempt is refused with a clear message and changes nothing.
    post(
        &c,
        2,
        "issue_comment",
        "ui-dead-1",
        &fixture("issue_comment/00-created.json"),
    )
    .await;
    let ev = wait_status(&c, 0, "ui-dead-1", "failed", 30).await;
    let job_id = ev["jobs"][0]["job_id"].as_str().unwrap().to_string();
    assert_eq!(ev["jobs"][0]["state"], "dead", "{ev}");
    let row = format!("#dlq tbody tr[data-job=\"{job_id}\"]");
    b.wait_for(
        "the dead job in the DLQ table",
        &format!("!!document.querySelector('{row}')"),
        15,
    )
    .await;
    assert_eq!(
        b.eval("document.querySelectorAll('#dlq button, #dlq-actions button').length")
            .await,
        0,
        "read token: no DLQ buttons"
    );
    let status = b
        .eval(&format!("window.aofStatus.redrive({})", js_str(&job_id)))
        .await;
    assert_eq!(status, 403);
    b.wait_for(
        "the refusal message",
        "(() => { const f = document.getElementById('flash'); return !f.hidden && f.textContent.includes('Refused (403)') && f.textContent.includes('admin'); })()",
        5,
    )
    .await;
    b.screenshot("read-refused").await;
    let (_, dlq) = c.get_json(0, "/v1/dlq").await;
    assert_eq!(
        dlq["items"][0]["job_id"],
        job_id.as_str(),
        "the refused redrive changed nothing: {dlq}"
    );

    // Event detail: trigger, jobs and their history, the last error.
    b.eval(
        "document.querySelector('#recent tbody tr[data-delivery=\"ui-dead-1\"]')?.click(); true",
    )
    .await;
    b.wait_for(
        "the event detail with the job's history and error",
        &format!(
            "(() => {{ const d = document.getElementById('event-detail'); const t = d.textContent;
                return !!d.querySelector('[data-job=\"{job_id}\"]') && t.includes('comments') && t.includes('not yet') && t.includes('dead'); }})()"
        ),
        15,
    )
    .await;
    assert_eq!(
        b.eval("document.querySelectorAll('#event-detail button, #limits button, #limits-form:not([hidden])').length")
            .await,
        0,
        "read token: no cancel, re-run or limit controls"
    );

    // Admin token: the redrive button moves the job back; the API agrees.
    b.eval("document.getElementById('logout').click(); true")
        .await;
    sign_in(&mut b, ADMIN_TOKEN).await;
    let button = format!("{row} button.redrive");
    b.wait_for(
        "the redrive button (admin)",
        &format!("!!document.querySelector('{button}')"),
        15,
    )
    .await;
    std::fs::write(dir.path().join("ok"), b"").unwrap();
    b.screenshot("admin-dlq").await;
    b.eval(&format!("document.querySelector('{button}').click(); true"))
        .await;
    let ev = wait_status(&c, 0, "ui-dead-1", "completed", 30).await;
    let states: Vec<&str> = ev["jobs"][0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert!(
        states.ends_with(&["dead", "ready", "leased", "completed"]),
        "{states:?}"
    );
    let (_, dlq) = c.get_json(0, "/v1/dlq").await;
    assert_eq!(dlq["items"], json!([]), "{dlq}");
    b.wait_for(
        "the DLQ table empty again",
        &format!("!document.querySelector('{row}')"),
        15,
    )
    .await;
    b.screenshot("admin-redriven").await;

    // Cancel a waiting job from its event's detail: two clicks; the API agrees.
    post(
        &c,
        2,
        "pull_request",
        "ui-held-1",
        &fixture("pull_request/00-opened.json"),
    )
    .await;
    let ev = wait_status(&c, 0, "ui-held-1", "queued", 30).await;
    let held = ev["jobs"][0]["job_id"].as_str().unwrap().to_string();
    assert_eq!(ev["jobs"][0]["state"], "ready", "{ev}");
    b.wait_for(
        "the held delivery in recent events",
        "!!document.querySelector('#recent tbody tr[data-delivery=\"ui-held-1\"]')",
        15,
    )
    .await;
    b.eval("document.querySelector('#recent tbody tr[data-delivery=\"ui-held-1\"]').click(); true")
        .await;
    let cancel = format!("#event-detail button.cancel-job[data-job=\"{held}\"]");
    b.wait_for(
        "the cancel button (admin, ready job)",
        &format!("!!document.querySelector('{cancel}')"),
        15,
    )
    .await;
    b.eval(&format!("document.querySelector('{cancel}').click(); true"))
        .await;
    assert_eq!(
        b.eval(&format!("document.querySelector('{cancel}').textContent"))
            .await,
        "Confirm cancel",
        "the first click only arms the button"
    );
    let (_, ev) = c.get_json(1, "/v1/deliveries/ui-held-1").await;
    assert_eq!(ev["jobs"][0]["state"], "ready", "one click changes nothing: {ev}");
    b.eval(&format!("document.querySelector('{cancel}').click(); true"))
        .await;
    b.wait_for(
        "the cancel confirmed on the page",
        &format!(
            "(() => {{ const f = document.getElementById('flash');
                return !f.hidden && f.textContent.includes('Cancelled job {held} (was ready)')
                    && !document.querySelector('{cancel}'); }})()"
        ),
        15,
    )
    .await;
    let (_, ev) = c.get_json(2, "/v1/deliveries/ui-held-1").await;
    let job = &ev["jobs"][0];
    assert_eq!(job["state"], "cancelled", "{ev}");
    let note = job["history"].as_array().unwrap().last().unwrap()["note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(note.contains("cancelled on the status page"), "{note}");
    b.screenshot("admin-cancelled").await;

    // Re-run a finished event: a new job, run by the built-in worker again.
    b.eval("document.querySelector('#recent tbody tr[data-delivery=\"ui-live-1\"]').click(); true")
        .await;
    let (_, ev) = c.get_json(0, "/v1/deliveries/ui-live-1").await;
    let event_id = ev["event_id"].as_u64().unwrap();
    let rerun = format!("#rerun-event[data-event=\"{event_id}\"]");
    b.wait_for(
        "the re-run button (admin)",
        &format!("!!document.querySelector('{rerun}')"),
        15,
    )
    .await;
    for _ in 0..2 {
        b.eval(&format!("document.querySelector('{rerun}').click(); true"))
            .await;
    }
    b.wait_for(
        "the re-run confirmed on the page",
        &format!(
            "(() => {{ const f = document.getElementById('flash');
                return !f.hidden && f.textContent.includes('Re-running event {event_id}: new job(s) {event_id}-1'); }})()"
        ),
        15,
    )
    .await;
    c.eventually("the re-run job completes", 30, || async {
        let (_, ev) = c.get_json(1, "/v1/deliveries/ui-live-1").await;
        ev["jobs"].as_array().is_some_and(|j| j.len() == 2 && j[1]["state"] == "completed")
            && ev["status"] == "completed"
    })
    .await;
    b.screenshot("admin-rerun").await;

    // Target limits: set from the form (two clicks), then cleared from the table.
    b.eval("document.getElementById('limit-target').value = 'nobody'; document.getElementById('limit-max').value = '2'; document.getElementById('limit-ttl').value = '1h'; true").await;
    for _ in 0..2 {
        b.eval("document.getElementById('limits-form').requestSubmit(); true")
            .await;
    }
    b.wait_for(
        "the limits in the table",
        "(() => { const r = document.querySelector('#limits tbody tr[data-target=\"nobody\"]');
            return !!r && r.cells[1].textContent === '2' && r.cells[2].textContent === '1h'; })()",
        15,
    )
    .await;
    let (_, limits) = c.get_json(2, "/v1/queue/limits").await;
    assert_eq!(
        (&limits["items"][0]["target"], &limits["items"][0]["max_in_flight"], &limits["items"][0]["ttl"]),
        (&json!("nobody"), &json!(2), &json!("1h")),
        "{limits}"
    );
    b.screenshot("admin-limits").await;
    for _ in 0..2 {
        b.eval("document.querySelector('#limits button.clear-limits[data-target=\"nobody\"]').click(); true")
            .await;
    }
    b.wait_for(
        "the limits cleared",
        "!document.querySelector('#limits tbody tr[data-target]')",
        15,
    )
    .await;
    let (_, limits) = c.get_json(0, "/v1/queue/limits").await;
    assert_eq!(limits["items"], json!([]), "{limits}");

    // Search by delivery id.
    b.eval("document.getElementById('q-delivery').value = 'ui-live-1'; document.getElementById('search').requestSubmit(); true").await;
    b.wait_for(
        "the search result",
        "!!document.querySelector('#results tbody tr[data-delivery=\"ui-live-1\"]')",
        15,
    )
    .await;

    // Quorum lost: a banner says so and the last data stays.
    c.stop(1).await;
    c.stop(2).await;
    b.wait_for(
        "the no-leader banner over the last data",
        "(() => { const bn = document.getElementById('banner');
            return !bn.hidden && bn.textContent.includes('cannot reach a leader') && bn.textContent.includes('Showing the last data')
                && document.querySelectorAll('#recent tbody tr[data-delivery]').length >= 2; })()",
        40,
    )
    .await;
    b.screenshot("no-leader").await;
    b.quit().await;
}

/// `/ui` needs no token but carries the security headers and no inline script; the
/// live feed needs a read token, sends snapshots, and at most `MAX_STREAMS` run at
/// once (the next is refused with 429 and counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assets_are_static_and_the_live_feed_is_bounded() {
    let c = TestCluster::start_secure(1, 10_000).await;
    c.wait_ready(30).await;
    let api = c.nodes[0].api;
    let plain = reqwest::Client::new();
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = plain
            .get(format!("http://{api}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}: {:?}",
            h["content-type"]
        );
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .starts_with("default-src 'self'"),
            "{path}"
        );
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        if path == "/ui" {
            let html = r.text().await.unwrap();
            assert_eq!(
                html.matches("<script").count(),
                html.matches("<script src=\"/ui/").count(),
                "no inline script"
            );
            assert!(
                !html.contains(" style=") && !html.contains("<style"),
                "no inline style"
            );
        }
    }
    assert_eq!(
        plain
            .get(format!("http://{api}/ui/nope.js"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401,
        "unknown /ui/* paths are not open"
    );
    assert_eq!(
        plain
            .post(format!("http://{api}/ui"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        plain
            .get(format!("http://{}/ui", c.nodes[0].http))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        404,
        "public listener"
    );

    // The feed: 401 without a token, snapshots with a read token.
    let watch = format!("http://{api}/v1/watch?interval_ms=250");
    assert_eq!(
        plain.get(&watch).send().await.unwrap().status().as_u16(),
        401
    );
    let read = client_with_token(READ_TOKEN);
    let mut r = read.get(&watch).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while text.matches("event: snapshot").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "two snapshots within 15 s: {text}"
        );
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .expect("a chunk within 10 s")
            .unwrap()
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let first = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let snap: Value = serde_json::from_str(first).unwrap();
    assert_eq!(snap["role"], "read", "{snap}");
    assert_eq!(
        snap["cluster"]["members"].as_array().unwrap().len(),
        1,
        "{snap}"
    );
    for k in ["queue", "dlq", "events", "local", "at_ms"] {
        assert!(snap.get(k).is_some(), "{k} in {snap}");
    }

    // The cap: `r` holds one slot; fill the rest, the next is refused and counted.
    let max = aof_node::http::ui::MAX_STREAMS;
    let mut open = vec![r];
    for _ in 1..max {
        let r = read.get(&watch).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        open.push(r);
    }
    let refused = read.get(&watch).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let metrics = c
        .http
        .get(c.nodes[0].url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "aof_ui_stream_refusals_total 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("aof_ui_streams {max}")),
        "{metrics}"
    );
    // Closing feeds frees their slots.
    drop(open);
    c.eventually("the slots freed", 15, || async {
        let r = read.get(&watch).send().await.unwrap();
        r.status().as_u16() == 200
    })
    .await;
}
