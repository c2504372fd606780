//! The `aof` executor: run an agent, fleet or flow with the real AOF runtime by
//! invoking AOF's own CLI, once per job:
//!
//! ```text
//! <aof_cli> run <agent|fleet|flow> <FILE or NAME> --input <PROMPT> [--output <FORMAT>]
//! ```
//!
//! This is the invocation of AOF's `aofctl run` (`run <resource_type>
//! <name_or_config> --input … --output …`). AOF's `run` reads the resource from a
//! file, so the target is looked up in the DaemonConfig's resource directory
//! (`spec.agents.directory`, `spec.fleets.directory`, `spec.flows.directory`):
//! `<dir>/<NAME>.yaml`, `<dir>/<NAME>.yml`, else the YAML document of that
//! directory whose `metadata.name` is NAME (AOF's daemon indexes agents the same
//! way). With no directory configured, NAME is passed as given.
//!
//! # The prompt
//!
//! The `--input` text is what AOF's daemon hands the agent for that delivery
//! ([`prompt`]):
//!
//! - a **slash-command** route (`/review …` in a comment): the text after the
//!   command on the comment's command line; when there is none, the daemon's
//!   constructed context — `Review the PR at: <url>` (or `Review the PR/issue at:
//!   <url>`), `Title: <title>`, one per line — or `Execute <command> command`;
//! - any other route (an event key such as `pull_request.opened`, or the
//!   trigger's `default_agent` / `default_fleet` / `default_flow`): the event
//!   summary AOF's GitHub adapter makes ([`event_summary`]), e.g.
//!   `pr:opened:main:feature #2 Title - first line of the body`.
//!
//! AOF's CLI has no flag for the event's metadata: the context variables reach
//! the agent's tools as `AOF_CTX_*` environment variables, the webhook payload on
//! stdin.
//!
//! Everything else is the `command` executor's ([`super::command::run`]): a
//! cleared environment with the allow-list and the `AOF_*` job variables (never
//! the node's GitHub token or webhook secrets), its own process group killed on
//! timeout or when the job is abandoned, stdout (bounded) as the job's result,
//! a non-zero exit a retryable failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aof_contract::jobenv::EnvPolicy;
use serde_json::Value;

use super::{command, ExecError, JobInput};

/// AOF's CLI when `aof_cli` is not set: the name AOF installs it under, looked up
/// in the job's `PATH`. aof-cluster's own CLI has the same name, so on a machine
/// with both set `aof_cli` to the path of AOF's.
pub const DEFAULT_AOF_CLI: &str = "aofctl";

/// The `aof` executor of one target.
#[derive(Clone, Debug)]
pub struct AofExecutor {
    /// AOF's CLI (a path, or a name looked up in `PATH`).
    pub cli: String,
    /// Where AOF resource files are, by target kind (`agent`, `fleet`, `flow`).
    pub dirs: BTreeMap<String, PathBuf>,
    /// `--output` format, when set (AOF's default is `text`).
    pub output: Option<String>,
    pub timeout: Duration,
}

impl AofExecutor {
    /// Run `job` with AOF's CLI.
    pub async fn run(&self, job: &JobInput, env: &EnvPolicy) -> Result<String, ExecError> {
        let argv = self.argv(job)?;
        command::run(&argv, job, self.timeout, env).await
    }

    /// The command line for `job`.
    pub fn argv(&self, job: &JobInput) -> Result<Vec<String>, ExecError> {
        let kind = match job.target_kind.as_str() {
            k @ ("agent" | "fleet" | "flow") => k,
            other => {
                return Err(ExecError::permanent(format!(
                    "the aof executor runs agent, fleet and flow targets, not {other:?}: route this target to another executor"
                )))
            }
        };
        let resource = match self.dirs.get(kind) {
            Some(dir) => resolve(dir, &job.target)?.display().to_string(),
            None => job.target.clone(),
        };
        let mut argv = vec![
            self.cli.clone(),
            "run".into(),
            kind.into(),
            resource,
            "--input".into(),
            prompt(job),
        ];
        if let Some(o) = &self.output {
            argv.extend(["--output".into(), o.clone()]);
        }
        Ok(argv)
    }
}

/// The file of resource `name` in `dir`: `NAME.yaml`, `NAME.yml`, else the file
/// holding a document with `metadata.name: NAME`.
fn resolve(dir: &Path, name: &str) -> Result<PathBuf, ExecError> {
    let plain = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    if plain {
        for ext in ["yaml", "yml"] {
            let p = dir.join(format!("{name}.{ext}"));
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let (docs, _) = aof_contract::yamldir::load_each(dir);
    if let Some(d) = docs.iter().find(|d| d.name() == Some(name)) {
        return Ok(PathBuf::from(&d.file));
    }
    Err(ExecError::retryable(format!(
        "no AOF resource {name:?} in {}: add {name}.yaml there (or a file whose metadata.name is {name:?}), or fix the trigger's route",
        dir.display()
    )))
}

/// The `--input` text for `job`, as AOF's daemon would give it to the agent.
pub fn prompt(job: &JobInput) -> String {
    let ctx = |k: &str| {
        job.context
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let payload: Value = serde_json::from_slice(&job.payload).unwrap_or(Value::Null);
    match ctx("command").filter(|c| c.starts_with('/')) {
        Some(command) => {
            let body = ctx("comment_body").unwrap_or("");
            let rest = after_command(body, command);
            if !rest.is_empty() {
                return rest.to_string();
            }
            let mut parts = Vec::new();
            if let Some(url) = ctx("pr_html_url") {
                parts.push(format!("Review the PR at: {url}"));
            } else if let Some(url) = ctx("issue_html_url") {
                parts.push(format!("Review the PR/issue at: {url}"));
            }
            if let Some(t) = ctx("pr_title").or(ctx("issue_title")) {
                parts.push(format!("Title: {t}"));
            }
            if parts.is_empty() {
                format!("Execute {} command", command.trim_start_matches('/'))
            } else {
                parts.join("\n")
            }
        }
        None => event_summary(&job.event, &payload).trim().to_string(),
    }
}

/// The text after the slash command `command` (`/deploy production`) on the
/// comment's command line (its first non-blank line), trimmed.
fn after_command<'a>(body: &'a str, command: &str) -> &'a str {
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut rest = line;
    for _ in command.split_whitespace() {
        rest = rest.trim_start();
        rest = rest.find(char::is_whitespace).map_or("", |i| &rest[i..]);
    }
    rest.trim()
}

/// AOF's one-line summary of a GitHub event (its GitHub adapter's message text):
/// `push:pushed 3 commits to refs/heads/main - msg`, `pr:opened:main:feature #2
/// Title - body`, `issue:opened:#5 Title - body`, `comment:created:#5 text` (or
/// the comment's slash command line itself), `workflow:completed:CI success on
/// main`, `check:completed:build success`, else `<event>:<action>`.
pub fn event_summary(event: &str, p: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let first_line = |v: &Value| {
        v.as_str()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let action = p["action"].as_str();
    let act = action.unwrap_or("");
    match event {
        "push" => format!(
            "push:{} {} commits to {} - {}",
            action.unwrap_or("pushed"),
            p["commits"].as_array().map_or(0, Vec::len),
            p["ref"].as_str().unwrap_or("unknown"),
            first_line(&p["head_commit"]["message"])
        ),
        "pull_request" => {
            let pr = &p["pull_request"];
            format!(
                "pr:{act}:{}:{} #{} {} - {}",
                s(&pr["base"]["ref"]),
                s(&pr["head"]["ref"]),
                pr["number"].as_u64().unwrap_or(0),
                s(&pr["title"]),
                first_line(&pr["body"])
            )
        }
        "issues" => {
            let i = &p["issue"];
            format!(
                "issue:{act}:#{} {} - {}",
                i["number"].as_u64().unwrap_or(0),
                s(&i["title"]),
                first_line(&i["body"])
            )
        }
        "issue_comment" => {
            let line = first_line(&p["comment"]["body"]);
            let line = line.trim();
            if line.starts_with('/') {
                line.to_string()
            } else {
                format!(
                    "comment:{act}:#{} {line}",
                    p["issue"]["number"].as_u64().unwrap_or(0)
                )
            }
        }
        "workflow_run" => {
            let r = &p["workflow_run"];
            let outcome = r["conclusion"]
                .as_str()
                .unwrap_or(r["status"].as_str().unwrap_or(""));
            format!(
                "workflow:{act}:{} {outcome} on {}",
                s(&r["name"]),
                s(&r["head_branch"])
            )
        }
        "check_run" => {
            let c = &p["check_run"];
            let outcome = c["conclusion"]
                .as_str()
                .unwrap_or(c["status"].as_str().unwrap_or(""));
            format!("check:{act}:{} {outcome}", s(&c["name"]))
        }
        _ => format!("{event}:{act}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(event: &str, context: &[(&str, &str)], payload: Value) -> JobInput {
        JobInput {
            event: event.into(),
            target_kind: "agent".into(),
            target: "reviewer".into(),
            context: context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            payload: serde_json::to_vec(&payload).unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn slash_command_text_after_the_command_is_the_prompt() {
        let body = "\n  /review   focus on the README  \nsecond line";
        let j = job(
            "issue_comment",
            &[("command", "/review"), ("comment_body", body)],
            json!({}),
        );
        assert_eq!(prompt(&j), "focus on the README");
        let j = job(
            "issue_comment",
            &[
                ("command", "/deploy production"),
                ("comment_body", "/deploy production now"),
            ],
            json!({}),
        );
        assert_eq!(prompt(&j), "now");
    }

    #[test]
    fn a_bare_slash_command_gets_the_daemons_constructed_context() {
        let ctx = [
            ("command", "/review"),
            ("comment_body", "/review"),
            ("issue_html_url", "https://github.com/o/r/issues/1"),
            ("issue_title", "Spelling"),
        ];
        assert_eq!(
            prompt(&job("issue_comment", &ctx, json!({}))),
            "Review the PR/issue at: https://github.com/o/r/issues/1\nTitle: Spelling"
        );
        let pr = [
            ("command", "/review"),
            ("comment_body", "/review"),
            ("pr_html_url", "https://x/pull/2"),
            ("pr_title", "T"),
            ("issue_title", "I"),
        ];
        assert_eq!(
            prompt(&job("pull_request_review_comment", &pr, json!({}))),
            "Review the PR at: https://x/pull/2\nTitle: T"
        );
        assert_eq!(
            prompt(&job(
                "issue_comment",
                &[("command", "/lgtm"), ("comment_body", "/lgtm")],
                json!({})
            )),
            "Execute lgtm command"
        );
    }

    #[test]
    fn other_routes_get_aofs_event_summary() {
        let pr = json!({"action": "opened", "pull_request": {"number": 2, "title": "Update", "body": "First\nsecond", "base": {"ref": "main"}, "head": {"ref": "feat"}}});
        assert_eq!(
            prompt(&job(
                "pull_request",
                &[("command", "pull_request.opened")],
                pr
            )),
            "pr:opened:main:feat #2 Update - First"
        );
        let push = json!({"ref": "refs/heads/main", "commits": [{}, {}], "head_commit": {"message": "Fix\n\nbody"}});
        assert_eq!(
            prompt(&job("push", &[], push)),
            "push:pushed 2 commits to refs/heads/main - Fix"
        );
        let issue =
            json!({"action": "opened", "issue": {"number": 5, "title": "Bug", "body": null}});
        assert_eq!(prompt(&job("issues", &[], issue)), "issue:opened:#5 Bug -");
        let c = json!({"action": "created", "issue": {"number": 5}, "comment": {"body": "thanks!\nmore"}});
        assert_eq!(
            prompt(&job("issue_comment", &[], c)),
            "comment:created:#5 thanks!"
        );
        let wf = json!({"action": "completed", "workflow_run": {"name": "CI", "status": "completed", "conclusion": null, "head_branch": "main"}});
        assert_eq!(
            prompt(&job("workflow_run", &[], wf)),
            "workflow:completed:CI completed on main"
        );
        assert_eq!(
            prompt(&job("star", &[], json!({"action": "created"}))),
            "star:created"
        );
        assert_eq!(prompt(&job("ping", &[], json!({}))), "ping:");
    }

    /// A real process: the prompt as argument, the payload on stdin, stdout as
    /// the result; past the timeout the whole process group is killed.
    #[tokio::test]
    async fn runs_the_cli_and_kills_its_group_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let cli = dir.path().join("aof");
        let pidfile = dir.path().join("child");
        let script = format!(
            "#!/bin/sh\nif [ \"$5\" = slow ]; then sleep 300 & echo $! > {}; wait; fi\nprintf '%s|%s|' \"$1 $2 $3\" \"$5\"; cat\n",
            pidfile.display()
        );
        std::fs::write(&cli, script).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
        let ex = AofExecutor {
            cli: cli.display().to_string(),
            dirs: BTreeMap::new(),
            output: None,
            timeout: Duration::from_secs(30),
        };
        let policy = EnvPolicy::default();
        let j = job(
            "issue_comment",
            &[("command", "/review"), ("comment_body", "/review fast")],
            json!({"a": 1}),
        );
        assert_eq!(
            ex.run(&j, &policy).await.unwrap(),
            "run agent reviewer|fast|{\"a\":1}"
        );
        let slow = job(
            "issue_comment",
            &[("command", "/review"), ("comment_body", "/review slow")],
            json!({}),
        );
        let ex = AofExecutor {
            timeout: Duration::from_millis(500),
            ..ex
        };
        let e = ex.run(&slow, &policy).await.unwrap_err();
        assert!(e.retryable && e.message.contains("killed"), "{e:?}");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        };
        for _ in 0..500 {
            if gone() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone(), "the CLI's child {pid} outlived the timeout");
    }

    #[test]
    fn argv_names_the_resource_file_and_the_prompt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("reviewer.yml"),
            "kind: Agent\nmetadata: {name: reviewer}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("other.yaml"),
            "kind: AgentFleet\nmetadata: {name: review-team}\n",
        )
        .unwrap();
        let ex = AofExecutor {
            cli: "/opt/aof/bin/aofctl".into(),
            dirs: [
                ("agent".to_string(), dir.path().to_path_buf()),
                ("fleet".to_string(), dir.path().to_path_buf()),
            ]
            .into(),
            output: None,
            timeout: Duration::from_secs(5),
        };
        let j = job(
            "issue_comment",
            &[("command", "/review"), ("comment_body", "/review now")],
            json!({}),
        );
        let file = dir.path().join("reviewer.yml").display().to_string();
        assert_eq!(
            ex.argv(&j).unwrap(),
            [
                "/opt/aof/bin/aofctl",
                "run",
                "agent",
                &file,
                "--input",
                "now"
            ]
        );
        let fleet = JobInput {
            target_kind: "fleet".into(),
            target: "review-team".into(),
            ..j.clone()
        };
        assert_eq!(
            ex.argv(&fleet).unwrap()[3],
            dir.path().join("other.yaml").display().to_string()
        );
        let missing = JobInput {
            target: "../reviewer".into(),
            ..j.clone()
        };
        assert!(ex
            .argv(&missing)
            .unwrap_err()
            .message
            .contains("no AOF resource"));
        let flow = JobInput {
            target_kind: "flow".into(),
            target: "deploy".into(),
            ..j.clone()
        };
        let ex = AofExecutor {
            output: Some("json".into()),
            ..ex
        };
        assert_eq!(
            ex.argv(&flow).unwrap(),
            [
                "/opt/aof/bin/aofctl",
                "run",
                "flow",
                "deploy",
                "--input",
                "now",
                "--output",
                "json"
            ]
        );
        let odd = JobInput {
            target_kind: "job".into(),
            ..j
        };
        assert!(!ex.argv(&odd).unwrap_err().retryable);
    }
}
