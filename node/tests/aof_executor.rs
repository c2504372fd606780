//! The built-in `aof` executor on a real three-node cluster: a stub standing in
//! for AOF's CLI records its argv, environment and stdin; signed fixture webhooks
//! are routed by a slash command and by a trigger's default agent; the stub must
//! be called as AOF's `aofctl run agent <file> --input <prompt>` with the prompt
//! AOF's daemon would give, the `AOF_*` environment and none of the node's
//! secrets, the payload on stdin, and its stdout becomes the job's result. A
//! stub that exits 1 is retried, then dead-lettered.

mod common;

use std::path::Path;

use aof_node::config::{DaemonConfig, ExecutorConfig, GithubConfig};
use common::{fixture, put_trigger, wait_status, TestCluster};
use serde_json::Value;

const SECRET: &str = "s3cret-webhook-for-aof-test";
const TOKEN: &str = "ghp_node_token_for_the_aof_test";

async fn post(c: &TestCluster, i: usize, event: &str, delivery: &str, body: &[u8]) {
    let r = common::signed_webhook(&c.http, &c.nodes[i].url("/webhook/github"), event, delivery, body, SECRET).await;
    assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
}

/// A stand-in for AOF's CLI: records argv (NUL-separated), environment
/// (`env -0`) and stdin under `<record>/<delivery>-<attempt>/`, prints a result,
/// and exits with `exit_code`.
fn stub(dir: &Path, name: &str, record: &Path, exit_code: i32) -> String {
    let path = dir.join(name);
    let script = format!(
        "#!/bin/sh\n\
         d=\"{rec}/$AOF_DELIVERY_ID-$AOF_ATTEMPT\"\n\
         mkdir -p \"$d\"\n\
         for a in \"$0\" \"$@\"; do printf '%s\\0' \"$a\"; done > \"$d/argv\"\n\
         env -0 > \"$d/env\"\n\
         cat > \"$d/stdin\"\n\
         echo \"agent $3 ran for $AOF_DELIVERY_ID\"\n\
         if [ {exit_code} -ne 0 ]; then echo 'model quota exceeded' >&2; fi\n\
         exit {exit_code}\n",
        rec = record.display()
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

struct Recorded {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
}

impl Recorded {
    fn read(record: &Path, delivery: &str, attempt: u32) -> Recorded {
        let d = record.join(format!("{delivery}-{attempt}"));
        let split = |b: Vec<u8>| -> Vec<String> {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let argv = split(
            std::fs::read(d.join("argv"))
                .unwrap_or_else(|e| panic!("the stub never ran for {delivery}-{attempt}: {e}")),
        );
        let env = split(std::fs::read(d.join("env")).unwrap())
            .into_iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        Recorded {
            argv,
            env,
            stdin: std::fs::read(d.join("stdin")).unwrap(),
        }
    }

    fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The AOF_* variables are there, and no secret of the node is.
    fn assert_job_environment(&self, delivery: &str, event: &str, target: &str) {
        assert_eq!(
            self.var("AOF_DELIVERY_ID"),
            Some(delivery),
            "{:?}",
            self.env
        );
        assert_eq!(self.var("AOF_EVENT"), Some(event));
        assert_eq!(self.var("AOF_TARGET"), Some(target));
        assert_eq!(self.var("AOF_TARGET_KIND"), Some("agent"));
        assert_eq!(self.var("AOF_REPO"), Some("Codertocat/Hello-World"));
        assert_eq!(
            self.var("AOF_CTX_REPO_FULL_NAME"),
            Some("Codertocat/Hello-World")
        );
        for name in [
            "AOF_JOB_ID",
            "AOF_ATTEMPT",
            "AOF_WORKER_ID",
            "AOF_FENCING_TOKEN",
            "AOF_TRIGGER",
            "PATH",
        ] {
            assert!(self.var(name).is_some(), "{name} missing: {:?}", self.env);
        }
        for never in ["GITHUB_TOKEN", "GITHUB_WEBHOOK_SECRET", "AOF_ADMIN_TOKEN"] {
            assert!(self.var(never).is_none(), "{never} reached AOF's CLI");
        }
        let all = format!("{:?}", self.env);
        assert!(
            !all.contains(TOKEN) && !all.contains(SECRET),
            "a node secret reached AOF's CLI: {all}"
        );
    }
}

fn with_comment(body: &str) -> Vec<u8> {
    let mut p: Value = serde_json::from_slice(&fixture("issue_comment/00-created.json")).unwrap();
    p["comment"]["body"] = body.into();
    serde_json::to_vec(&p).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_aof_executor_runs_aofs_cli_like_aofs_daemon() {
    // Secrets in the node's environment: the job must see none of them.
    std::env::set_var("GITHUB_TOKEN", TOKEN);
    std::env::set_var("GITHUB_WEBHOOK_SECRET", SECRET);
    std::env::set_var("AOF_ADMIN_TOKEN", "admin-token-for-the-aof-test");

    let tmp = tempfile::tempdir().unwrap();
    let (bin, record, agents) = (
        tmp.path().join("bin"),
        tmp.path().join("record"),
        tmp.path().join("agents"),
    );
    for d in [&bin, &record, &agents] {
        std::fs::create_dir_all(d).unwrap();
    }
    let good = stub(&bin, "aof-cli", &record, 0);
    let failing = stub(&bin, "aof-cli-failing", &record, 1);
    std::fs::write(agents.join("reviewer.yaml"), "apiVersion: aof.dev/v1\nkind: Agent\nmetadata: {name: reviewer}\nspec: {model: google:gemini-2.5-flash}\n").unwrap();
    // Found by metadata.name, as AOF's daemon indexes agents.
    std::fs::write(agents.join("assistant.yml"), "apiVersion: aof.dev/v1\nkind: Agent\nmetadata: {name: github-assistant}\nspec: {model: google:gemini-2.5-flash}\n").unwrap();
    std::fs::write(
        agents.join("broken.yaml"),
        "apiVersion: aof.dev/v1\nkind: Agent\nmetadata: {name: broken}\nspec: {model: none}\n",
    )
    .unwrap();

    let (agents_dir, good_cli) = (agents.clone(), good.clone());
    let c = TestCluster::start_with(3, 10_000, move |cfg: &mut DaemonConfig| {
        let gh: GithubConfig = serde_yaml::from_str(
            "enabled: true\nwebhook_secret_env: GITHUB_WEBHOOK_SECRET\ntoken_env: GITHUB_TOKEN\n",
        )
        .unwrap();
        cfg.spec.platforms.github = Some(gh);
        cfg.spec.agents.directory = Some(agents_dir.clone());
        cfg.spec.queue.max_retries = 2;
        cfg.spec.queue.retry_delay_ms = 100;
        cfg.spec.queue.max_retry_delay_ms = 200;
        let aof = |cli: &str| ExecutorConfig::Aof {
            aof_cli: Some(cli.to_string()),
            output: None,
            timeout_secs: Some(60),
        };
        cfg.spec
            .runtime
            .executors
            .insert("reviewer".into(), aof(&good_cli));
        cfg.spec
            .runtime
            .executors
            .insert("github-assistant".into(), aof(&good_cli));
        cfg.spec
            .runtime
            .executors
            .insert("broken".into(), aof(&failing));
    })
    .await;
    c.wait_ready(30).await;
    put_trigger(
        &c,
        "comments",
        "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {github_events: [issue_comment]}\n  commands:\n    /review: {agent: reviewer, description: Review}\n    /break: {agent: broken}\n",
    )
    .await;
    put_trigger(&c, "prs", "apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config: {github_events: [pull_request]}\n  default_agent: github-assistant\n").await;

    let with_text = with_comment("/review please check the spelling\nthanks!");
    let bare = with_comment("/review");
    let pr = fixture("pull_request/00-opened.json");
    post(&c, 0, "issue_comment", "aof-slash", &with_text).await;
    post(&c, 1, "issue_comment", "aof-bare", &bare).await;
    post(&c, 2, "pull_request", "aof-default", &pr).await;
    post(
        &c,
        0,
        "issue_comment",
        "aof-broken",
        &with_comment("/break it"),
    )
    .await;

    let reviewer = agents.join("reviewer.yaml").display().to_string();
    let assistant = agents.join("assistant.yml").display().to_string();

    // Slash command with text: the text after the command is the prompt.
    let ev = wait_status(&c, 1, "aof-slash", "completed", 60).await;
    assert_eq!(
        ev["jobs"][0]["result"],
        format!("agent {reviewer} ran for aof-slash\n"),
        "{ev}"
    );
    let r = Recorded::read(&record, "aof-slash", 1);
    assert_eq!(
        r.argv,
        [
            good.as_str(),
            "run",
            "agent",
            &reviewer,
            "--input",
            "please check the spelling"
        ]
    );
    r.assert_job_environment("aof-slash", "issue_comment", "reviewer");
    assert_eq!(r.var("AOF_CTX_COMMAND"), Some("/review"));
    assert_eq!(
        r.var("AOF_CTX_COMMENT_BODY"),
        Some("/review please check the spelling\nthanks!")
    );
    assert_eq!(
        r.stdin, with_text,
        "the payload reaches stdin byte for byte"
    );

    // A bare slash command: the context AOF's daemon constructs.
    wait_status(&c, 1, "aof-bare", "completed", 60).await;
    let r = Recorded::read(&record, "aof-bare", 1);
    let expected = "Review the PR/issue at: https://github.com/Codertocat/Hello-World/issues/1\nTitle: Spelling error in the README file";
    assert_eq!(
        r.argv,
        [
            good.as_str(),
            "run",
            "agent",
            &reviewer,
            "--input",
            expected
        ]
    );
    assert_eq!(r.stdin, bare);

    // The trigger's default agent: AOF's event summary.
    let ev = wait_status(&c, 1, "aof-default", "completed", 60).await;
    assert_eq!(
        ev["jobs"][0]["result"],
        format!("agent {assistant} ran for aof-default\n"),
        "{ev}"
    );
    let r = Recorded::read(&record, "aof-default", 1);
    let summary = "pr:opened:master:changes #2 Update the README with new information. - This is a pretty simple change that we need to pull into master.";
    assert_eq!(
        r.argv,
        [
            good.as_str(),
            "run",
            "agent",
            &assistant,
            "--input",
            summary
        ]
    );
    r.assert_job_environment("aof-default", "pull_request", "github-assistant");
    assert_eq!(r.var("AOF_ACTION"), Some("opened"));
    assert_eq!(r.var("AOF_CTX_PR_NUMBER"), Some("2"));
    assert!(
        r.var("AOF_CTX_COMMAND").is_none(),
        "a default route has no command"
    );
    assert_eq!(r.stdin, pr);

    // Exit 1: retried (max_retries 2 → three attempts), then dead-lettered with
    // the CLI's stderr.
    let ev = wait_status(&c, 1, "aof-broken", "failed", 60).await;
    let job = &ev["jobs"][0];
    assert_eq!(job["state"], "dead", "{ev}");
    assert_eq!(job["attempts"], 3, "{ev}");
    assert!(
        job["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("exit status 1")
            && job["last_error"]
                .as_str()
                .unwrap()
                .contains("model quota exceeded"),
        "{ev}"
    );
    for attempt in 1..=3 {
        let r = Recorded::read(&record, "aof-broken", attempt);
        assert_eq!(
            r.argv[1..],
            [
                "run",
                "agent",
                &agents.join("broken.yaml").display().to_string(),
                "--input",
                "it"
            ]
        );
        assert_eq!(r.var("AOF_ATTEMPT"), Some(attempt.to_string().as_str()));
    }
    assert!(!record.join("aof-broken-4").exists(), "no fourth attempt");
    let (_, dlq) = c.get_json(0, "/v1/dlq").await;
    assert!(dlq.to_string().contains("broken"), "{dlq}");
}
