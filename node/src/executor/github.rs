//! The `github` executor: comment, label and check-run actions through the GitHub
//! REST API with octocrab. The API base URL is `spec.platforms.github.api_url`, so
//! tests point it at a local fake server.
//!
//! **Scope.** The executor acts on one repository: the delivery's own
//! (`repository` of the webhook payload), and only when that repository passes
//! the `repositories` patterns of the trigger the job came from (looked up again
//! when the job runs; a trigger without patterns allows its delivery's own
//! repository, never another). Everything else is refused as a permanent failure
//! before any API call:
//!
//! - a payload whose repository fields disagree (`full_name` vs `owner.login` /
//!   `name`), or with a context `repo_full_name` that differs from the payload;
//! - owner or repository names outside GitHub's characters (owner: letters,
//!   digits, `-`, `_`; repository: letters, digits, `.`, `-`, `_`; never `.` or
//!   `..`), so `../`, `%2F` or `?` cannot steer the request elsewhere;
//! - issue / pull request numbers that are not plain numbers, head SHAs that are
//!   not hexadecimal.
//!
//! API paths are built only from those checked values, each segment
//! percent-encoded; comment bodies, labels and check-run texts (templates, which
//! may quote payload text) are sent as JSON values, never put in a path.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use octocrab::Octocrab;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::template::render;
use super::{ExecError, JobInput};
use crate::config::CheckRunConfig;
use crate::github::trigger::Trigger;

/// What to do for one target.
#[derive(Clone, Debug, Default)]
pub struct GithubActions {
    pub comment: Option<String>,
    pub labels: Vec<String>,
    pub check_run: Option<CheckRunConfig>,
}

/// Finds a trigger of the registry by name: `Ok(None)` when there is none,
/// `Err` when the registry cannot be read now (the job is retried).
pub type TriggerLookup = Arc<dyn Fn(&str) -> BoxFuture<'static, Result<Option<Arc<Trigger>>, String>> + Send + Sync>;

/// A GitHub API client for executors.
#[derive(Clone)]
pub struct GithubExecutor {
    crab: Octocrab,
    triggers: TriggerLookup,
}

/// The repository a job may act on, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repo {
    pub owner: String,
    pub name: String,
}

impl Repo {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// `/repos/{owner}/{name}` with both segments percent-encoded.
    fn path(&self) -> String {
        format!("/repos/{}/{}", segment(&self.owner), segment(&self.name))
    }
}

/// Characters kept as they are in a path segment: RFC 3986 unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// Whether `owner` is a GitHub user or organisation login (letters, digits, `-`;
/// `_` for enterprise managed users), 1 to 100 characters.
pub fn valid_owner(owner: &str) -> bool {
    (1..=100).contains(&owner.len())
        && !owner.starts_with('-')
        && owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `name` is a GitHub repository name (letters, digits, `.`, `-`, `_`),
/// 1 to 100 characters, not `.` or `..`.
pub fn valid_repo_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn refuse(msg: impl Into<String>) -> ExecError {
    ExecError::permanent(msg)
}

/// The delivery's own repository, from its payload, checked (see the module docs).
pub fn delivery_repo(job: &JobInput) -> Result<Repo, ExecError> {
    let payload: Value = serde_json::from_slice(&job.payload)
        .map_err(|e| refuse(format!("the payload of delivery {} is not JSON ({e}); not acting on GitHub", job.delivery_id)))?;
    let full_name = payload
        .pointer("/repository/full_name")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(format!("{} has no repository; a github executor cannot act on it", job.event)))?;
    let Some((owner, name)) = full_name.split_once('/') else {
        return Err(refuse(format!("repository {full_name:?} is not owner/name; refusing to act on it")));
    };
    if !valid_owner(owner) || !valid_repo_name(name) {
        return Err(refuse(format!(
            "repository {full_name:?} is not a valid GitHub owner/name (owner: letters, digits, '-', '_'; name: \
             letters, digits, '.', '-', '_'); refusing to act on it"
        )));
    }
    let agrees = |pointer: &str, want: &str| payload.pointer(pointer).and_then(Value::as_str).is_none_or(|v| v == want);
    if !agrees("/repository/owner/login", owner) || !agrees("/repository/name", name) {
        return Err(refuse(format!(
            "the payload's repository fields disagree with its full_name {full_name:?}; refusing to act on it"
        )));
    }
    if let Some(ctx) = job.context.get("repo_full_name") {
        if ctx != full_name {
            return Err(refuse(format!(
                "the job's repo_full_name {ctx:?} is not its delivery's repository {full_name:?}; refusing to act on it"
            )));
        }
    }
    Ok(Repo { owner: owner.to_string(), name: name.to_string() })
}

/// The issue or pull request number of the job, checked to be a number.
fn issue_number(job: &JobInput) -> Result<Option<u64>, ExecError> {
    match job.context.get("pr_number").or_else(|| job.context.get("issue_number")) {
        None => Ok(None),
        // Digits only, as GitHub writes them (no sign, no leading zero, no spaces).
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n.to_string() == *s => Ok(Some(n)),
            _ => Err(refuse(format!("issue or pull request number {s:?} is not a number; refusing to act on it"))),
        },
    }
}

fn head_sha(ctx: &BTreeMap<String, String>) -> Option<&String> {
    ["pr_head_sha", "after_sha", "check_suite_head_sha", "workflow_run_head_sha", "head_sha"].iter().find_map(|k| ctx.get(*k))
}

impl GithubExecutor {
    pub fn new(api_url: &str, token: &str, triggers: TriggerLookup) -> Result<Self, String> {
        let crab = Octocrab::builder()
            .base_uri(api_url)
            .map_err(|e| format!("spec.platforms.github.api_url {api_url:?}: {e}"))?
            .personal_token(token.to_string())
            .build()
            .map_err(|e| format!("cannot build the GitHub client: {e}"))?;
        Ok(GithubExecutor { crab, triggers })
    }

    /// The repository `job` may act on: its delivery's own, if the job's trigger
    /// (as the registry holds it now) allows it.
    pub async fn scope(&self, job: &JobInput) -> Result<Repo, ExecError> {
        let repo = delivery_repo(job)?;
        let trigger = (self.triggers)(&job.trigger)
            .await
            .map_err(|e| ExecError::retryable(format!("cannot read trigger {:?}: {e}", job.trigger)))?
            .ok_or_else(|| refuse(format!("trigger {:?} no longer exists; not acting on {}", job.trigger, repo.full_name())))?;
        match trigger.allows_repository(&repo.full_name()) {
            Some(false) => Err(refuse(format!(
                "repository {} does not match the repositories of trigger {:?}; refusing to act on it",
                repo.full_name(),
                job.trigger
            ))),
            Some(true) | None => Ok(repo),
        }
    }

    /// Run the actions for a job; returns a summary of what was done.
    pub async fn run(&self, actions: &GithubActions, job: &JobInput) -> Result<String, ExecError> {
        let ctx = &job.context;
        let repo = self.scope(job).await?;
        let (full, base) = (repo.full_name(), repo.path());
        let mut done = Vec::new();
        if actions.comment.is_some() || !actions.labels.is_empty() {
            let Some(number) = issue_number(job)? else {
                return Err(ExecError::permanent(format!("{} has no issue or pull request number to comment on / label", job.event)));
            };
            if let Some(body) = &actions.comment {
                self.post(&format!("{base}/issues/{number}/comments"), json!({ "body": render(body, ctx) })).await?;
                done.push(format!("commented on {full}#{number}"));
            }
            if !actions.labels.is_empty() {
                let labels: Vec<String> = actions.labels.iter().map(|l| render(l, ctx)).collect();
                self.post(&format!("{base}/issues/{number}/labels"), json!({ "labels": labels })).await?;
                done.push(format!("labelled {full}#{number} with {}", labels.join(",")));
            }
        }
        if let Some(cr) = &actions.check_run {
            let sha = head_sha(ctx).ok_or_else(|| ExecError::permanent(format!("{} has no commit to attach a check run to", job.event)))?;
            if !(sha.len() == 40 || sha.len() == 64) || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(refuse(format!("head commit {sha:?} is not a SHA; refusing to create a check run")));
            }
            let summary = render(cr.summary.as_deref().unwrap_or("Processed by aof-cluster"), ctx);
            let body = json!({
                "name": render(&cr.name, ctx),
                "head_sha": sha,
                "status": "completed",
                "conclusion": cr.conclusion,
                "output": { "title": render(&cr.name, ctx), "summary": summary },
            });
            self.post(&format!("{base}/check-runs"), body).await?;
            done.push(format!("check run {:?} on {sha}", cr.name));
        }
        Ok(done.join("; "))
    }

    async fn post(&self, route: &str, body: Value) -> Result<Value, ExecError> {
        self.crab.post::<_, Value>(route, Some(&body)).await.map_err(classify)
    }
}

/// 4xx other than 408/429 will not get better by retrying.
fn classify(e: octocrab::Error) -> ExecError {
    match &e {
        octocrab::Error::GitHub { source, .. } => {
            let code = source.status_code.as_u16();
            let msg = format!("GitHub API answered {code}: {}", source.message);
            if (400..500).contains(&code) && code != 408 && code != 429 {
                ExecError::permanent(msg)
            } else {
                ExecError::retryable(msg)
            }
        }
        other => ExecError::retryable(format!("GitHub API call failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    type Seen = Arc<Mutex<Vec<(String, Value)>>>;

    /// A fake GitHub API on 127.0.0.1 recording every request's raw path and body.
    async fn fake_github() -> (String, Seen) {
        let seen: Seen = Default::default();
        let s2 = seen.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, body: axum::body::Bytes| {
            let seen = s2.clone();
            async move {
                let raw = uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                seen.lock().unwrap().push((raw, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                (axum::http::StatusCode::CREATED, axum::Json(json!({"id": 1})))
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    /// A registry of one trigger, `t`, with these `repositories` (none: no filter).
    fn registry(repositories: Option<&[&str]>) -> TriggerLookup {
        let mut config = json!({"github_events": ["issue_comment"]});
        if let Some(r) = repositories {
            config["repositories"] = json!(r);
        }
        let doc = json!({"apiVersion": "aof.dev/v1", "kind": "Trigger", "metadata": {"name": "t"},
                         "spec": {"type": "GitHub", "config": config, "default_agent": "bot"}});
        let t = Arc::new(crate::github::trigger::parse_trigger("t", &doc).unwrap());
        Arc::new(move |name: &str| {
            let found = (name == "t").then(|| t.clone());
            Box::pin(async move { Ok(found) })
        })
    }

    fn job(full_name: &str, extra_ctx: &[(&str, &str)]) -> JobInput {
        let (owner, name) = full_name.split_once('/').unwrap_or((full_name, ""));
        let payload = json!({"action": "created", "issue": {"number": 7},
                             "comment": {"body": "please see /repos/victim/secret/issues/1 and ../../orgs/victim"},
                             "repository": {"full_name": full_name, "name": name, "owner": {"login": owner}}});
        let mut context: BTreeMap<String, String> = [
            ("repo_full_name", full_name),
            ("issue_number", "7"),
            ("comment_body", payload["comment"]["body"].as_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra_ctx {
            context.insert(k.to_string(), v.to_string());
        }
        JobInput {
            job_id: "1-0".into(),
            event: "issue_comment".into(),
            trigger: "t".into(),
            delivery_id: "d-1".into(),
            context,
            payload: serde_json::to_vec(&payload).unwrap(),
            ..Default::default()
        }
    }

    fn actions() -> GithubActions {
        GithubActions { comment: Some("You said: {{ metadata.comment_body }}".into()), labels: vec!["{{ comment_body }}".into()], check_run: None }
    }

    async fn executor(repositories: Option<&[&str]>) -> (GithubExecutor, Seen) {
        let (api, seen) = fake_github().await;
        (GithubExecutor::new(&api, "t0ken", registry(repositories)).unwrap(), seen)
    }

    #[tokio::test]
    async fn acts_on_the_deliverys_repository_with_payload_text_as_json_values() {
        let (ex, seen) = executor(Some(&["myorg/*"])).await;
        let out = ex.run(&actions(), &job("myorg/api", &[])).await.unwrap();
        assert!(out.contains("myorg/api#7"), "{out}");
        let calls = seen.lock().unwrap().clone();
        let paths: Vec<&str> = calls.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["/repos/myorg/api/issues/7/comments", "/repos/myorg/api/issues/7/labels"]);
        assert_eq!(calls[0].1["body"], "You said: please see /repos/victim/secret/issues/1 and ../../orgs/victim");
        assert_eq!(calls[1].1["labels"][0], "please see /repos/victim/secret/issues/1 and ../../orgs/victim");

        // No patterns: the delivery's own repository is allowed.
        let (ex, seen) = executor(None).await;
        ex.run(&actions(), &job("someone/else", &[])).await.unwrap();
        assert_eq!(seen.lock().unwrap()[0].0, "/repos/someone/else/issues/7/comments");
    }

    #[tokio::test]
    async fn a_repository_outside_the_triggers_patterns_is_not_touched() {
        let (ex, seen) = executor(Some(&["myorg/*"])).await;
        let e = ex.run(&actions(), &job("victim/secret", &[])).await.unwrap_err();
        assert!(!e.retryable && e.message.contains("does not match the repositories of trigger"), "{e:?}");
        // The context names the allowed repository, the payload another one.
        let mut j = job("victim/secret", &[("repo_full_name", "myorg/api")]);
        let e = ex.run(&actions(), &j).await.unwrap_err();
        assert!(!e.retryable && e.message.contains("is not its delivery's repository"), "{e:?}");
        // The payload's full_name and owner disagree.
        let mut payload: Value = serde_json::from_slice(&job("myorg/api", &[]).payload).unwrap();
        payload["repository"]["owner"]["login"] = json!("victim");
        j = job("myorg/api", &[]);
        j.payload = serde_json::to_vec(&payload).unwrap();
        let e = ex.run(&actions(), &j).await.unwrap_err();
        assert!(!e.retryable && e.message.contains("disagree"), "{e:?}");
        // The trigger is gone.
        j = job("myorg/api", &[]);
        j.trigger = "deleted".into();
        let e = ex.run(&actions(), &j).await.unwrap_err();
        assert!(!e.retryable && e.message.contains("no longer exists"), "{e:?}");
        assert!(seen.lock().unwrap().is_empty(), "the API was called: {:?}", seen.lock().unwrap());
    }

    #[tokio::test]
    async fn names_that_could_steer_the_api_path_are_refused() {
        let (ex, seen) = executor(None).await;
        for bad in [
            "myorg/../victim",
            "myorg/..",
            "myorg/.",
            "../victim",
            "myorg/api%2F..%2F..%2Fvictim",
            "myorg/api/../../victim/secret",
            "myorg/api?x=1",
            "myorg/api#frag",
            "my org/api",
            "myorg/",
            "/api",
            "-x/api",
            "myorg/ä",
            "myorg",
        ] {
            let e = ex.run(&actions(), &job(bad, &[])).await.unwrap_err();
            assert!(!e.retryable && e.message.contains("refusing"), "{bad}: {e:?}");
        }
        for bad_number in ["7/../../../victim", "7?x", "-1", "", " 7", "07"] {
            let e = ex.run(&actions(), &job("myorg/api", &[("issue_number", bad_number)])).await.unwrap_err();
            assert!(!e.retryable && e.message.contains("not a number"), "{bad_number}: {e:?}");
        }
        let check = GithubActions { check_run: Some(CheckRunConfig { name: "c".into(), conclusion: "success".into(), summary: None }), ..Default::default() };
        let e = ex.run(&check, &job("myorg/api", &[("head_sha", "../../x")])).await.unwrap_err();
        assert!(!e.retryable && e.message.contains("not a SHA"), "{e:?}");
        assert!(seen.lock().unwrap().is_empty(), "the API was called: {:?}", seen.lock().unwrap());

        // Valid unusual names pass, encoded as they are.
        ex.run(&actions(), &job("my_org-1/.github", &[])).await.unwrap();
        assert_eq!(seen.lock().unwrap()[0].0, "/repos/my_org-1/.github/issues/7/comments");
        assert_eq!(segment("a/b%2F c"), "a%2Fb%252F%20c");
    }
}
