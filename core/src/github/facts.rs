//! What the matcher needs from a GitHub delivery: [`EventFacts`], extracted once at
//! the edge by [`extract`] and then carried through the Raft log (bincode), so that
//! `apply` never has to look at the raw payload.
//!
//! [`extract`] is total: it never panics and never fails, whatever the JSON (a
//! missing field, a field of an unexpected type or a non-object payload just leaves
//! the corresponding fact out). It is pure and deterministic: the same `(event,
//! payload)` gives the same `EventFacts` on every machine (`context` is a `BTreeMap`).
//!
//! # Facts
//!
//! | Field | Source |
//! |---|---|
//! | `event` | the `X-GitHub-Event` header, as given |
//! | `action` | `action` |
//! | `repo_full_name` | `repository.full_name` |
//! | `org` | `organization.login`, else `repository.owner.login` |
//! | `branch` | `push`: `ref` `refs/heads/X` → `X` (`None` for tags); `pull_request*` events: `pull_request.base.ref` |
//! | `sender` | `sender.login` |
//! | `labels` | `workflow_job.labels` (strings only) |
//! | `comment_body` | `comment.body` for `issue_comment`, `pull_request_review_comment`, `commit_comment` |
//!
//! # Context variables (`context`)
//!
//! AOF's context variables, handed to the agent as metadata. A key is present only
//! when the payload has the value with the expected JSON type (a `null` is absent).
//! `command` is not set here: the caller adds it once a delivery has been routed.
//!
//! | Key | Type | Source |
//! |---|---|---|
//! | `event_type` | string | the event name (always present) |
//! | `action` | string | `action` |
//! | `repo_id`, `repo_full_name`, `repo_name`, `repo_owner`, `repo_private` | int, string, string, string, bool | `repository.{id, full_name, name, owner.login, private}` |
//! | `org` | string | as the `org` fact |
//! | `sender_id`, `sender_login`, `sender_type` | int, string, string | `sender.{id, login, type}` (`type` is `User` or `Bot`) |
//! | `installation_id` | int | `installation.id` |
//! | `pr_number`, `pr_title`, `pr_state`, `pr_draft`, `pr_merged`, `pr_author` | int, string, string, bool, bool, string | `pull_request.{number, title, state, draft, merged, user.login}` |
//! | `pr_base_ref`, `pr_head_ref`, `pr_head_sha`, `pr_html_url` | string | `pull_request.{base.ref, head.ref, head.sha, html_url}` |
//! | `pr_additions`, `pr_deletions`, `pr_changed_files` | int | `pull_request.{additions, deletions, changed_files}` |
//! | `issue_number`, `issue_title`, `issue_state`, `issue_html_url` | int, string, string, string | `issue.{number, title, state, html_url}` |
//! | `issue_is_pull_request` | bool | whether `issue.pull_request` exists (a comment on a PR arrives as `issue_comment`; `issue_number` is then the PR number) |
//! | `issue_labels` | list | `issue.labels[].name` |
//! | `comment_body`, `comment_id`, `comment_html_url` | string, int, string | `comment.{body, id, html_url}` |
//! | `review_id`, `review_state` | int, string | `review.{id, state}` |
//! | `ref`, `ref_type` | string | `ref` (full ref for `push`, short name for `create`/`delete`), `ref_type` |
//! | `branch` | string | as the `branch` fact (for pull requests: the base branch) |
//! | `tag` | string | `push` of `refs/tags/X`: `X` |
//! | `before_sha`, `after_sha` | string | `before`, `after` |
//! | `commit_count` | int | length of `commits` |
//! | `workflow_job_id`, `workflow_job_name`, `workflow_job_status`, `workflow_job_conclusion`, `workflow_job_head_sha` | int, string… | `workflow_job.{id, name, status, conclusion, head_sha}` |
//! | `workflow_job_labels` | list | `workflow_job.labels` |
//! | `workflow_run_id` | int | `workflow_job.run_id`, else `workflow_run.id` |
//! | `workflow_run_name`, `workflow_run_status`, `workflow_run_conclusion`, `workflow_run_head_branch`, `workflow_run_head_sha`, `workflow_run_html_url` | string | `workflow_run.*` |
//! | `check_run_id`, `check_run_name`, `check_run_status`, `check_run_conclusion`, `check_run_head_sha` | int, string… | `check_run.*` |
//! | `check_suite_id`, `check_suite_status`, `check_suite_conclusion`, `check_suite_head_branch`, `check_suite_head_sha` | int, string… | `check_suite.*` |
//! | `release_id`, `release_tag_name`, `release_name`, `release_draft`, `release_prerelease`, `release_html_url` | int, string, string, bool, bool, string | `release.*` |
//! | `deployment_id`, `deployment_environment`, `deployment_status_state` | int, string, string | `deployment.{id, environment}`, `deployment_status.state` |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Events whose `comment.body` becomes [`EventFacts::comment_body`] and may carry a
/// slash command.
pub const COMMENT_EVENTS: &[&str] = &["issue_comment", "pull_request_review_comment", "commit_comment"];

/// A context variable's value. Bincode-safe (no `serde_json::Value` inside).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CtxValue {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

impl CtxValue {
    /// The value as plain JSON (`"x"`, `42`, `true`, `["a","b"]`).
    pub fn to_json(&self) -> Value {
        match self {
            CtxValue::Str(s) => Value::String(s.clone()),
            CtxValue::Int(i) => Value::from(*i),
            CtxValue::Bool(b) => Value::Bool(*b),
            CtxValue::List(items) => Value::Array(items.iter().cloned().map(Value::String).collect()),
        }
    }
}

/// What the matcher needs from one delivery, plus AOF's context variables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EventFacts {
    /// The `X-GitHub-Event` header.
    pub event: String,
    pub action: Option<String>,
    pub repo_full_name: Option<String>,
    /// `organization.login`, else `repository.owner.login`.
    pub org: Option<String>,
    /// `push`: the branch of `refs/heads/X` (`None` for tag pushes);
    /// `pull_request*` events: the base branch.
    pub branch: Option<String>,
    /// `sender.login`.
    pub sender: Option<String>,
    /// `workflow_job.labels`.
    pub labels: Vec<String>,
    /// `comment.body` for the [`COMMENT_EVENTS`].
    pub comment_body: Option<String>,
    /// AOF context variables; see the module docs for the keys.
    pub context: BTreeMap<String, CtxValue>,
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

fn int_at(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(Value::as_i64)
}

fn bool_at(v: &Value, ptr: &str) -> Option<bool> {
    v.pointer(ptr).and_then(Value::as_bool)
}

/// The string elements of the array at `ptr` (other elements skipped).
fn strings_at(v: &Value, ptr: &str) -> Option<Vec<String>> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(String::from).collect())
}

/// Whether the event's payload carries a `pull_request` whose base is its branch.
pub(super) fn is_pull_request_event(event: &str) -> bool {
    event.get(.."pull_request".len()).is_some_and(|head| head.eq_ignore_ascii_case("pull_request"))
}

struct Ctx<'a> {
    payload: &'a Value,
    map: BTreeMap<String, CtxValue>,
}

impl Ctx<'_> {
    fn put(&mut self, key: &str, value: Option<CtxValue>) {
        if let Some(value) = value {
            self.map.insert(key.to_string(), value);
        }
    }
    fn s(&mut self, key: &str, ptr: &str) {
        let v = str_at(self.payload, ptr).map(|s| CtxValue::Str(s.to_string()));
        self.put(key, v);
    }
    fn i(&mut self, key: &str, ptr: &str) {
        let v = int_at(self.payload, ptr).map(CtxValue::Int);
        self.put(key, v);
    }
    fn b(&mut self, key: &str, ptr: &str) {
        let v = bool_at(self.payload, ptr).map(CtxValue::Bool);
        self.put(key, v);
    }
    fn list(&mut self, key: &str, ptr: &str) {
        let v = strings_at(self.payload, ptr).map(CtxValue::List);
        self.put(key, v);
    }
}

/// Extract the facts of a delivery of `event` (the `X-GitHub-Event` header) with
/// body `payload`. Never panics; see the module docs for what is extracted.
pub fn extract(event: &str, payload: &Value) -> EventFacts {
    let p = payload;
    let action = str_at(p, "/action").map(String::from);
    let git_ref = str_at(p, "/ref");
    let is_push = event.eq_ignore_ascii_case("push");

    let branch = if is_push {
        git_ref.and_then(|r| r.strip_prefix("refs/heads/")).map(String::from)
    } else if is_pull_request_event(event) {
        str_at(p, "/pull_request/base/ref").map(String::from)
    } else {
        None
    };
    let tag = if is_push { git_ref.and_then(|r| r.strip_prefix("refs/tags/")).map(String::from) } else { None };
    let org = str_at(p, "/organization/login").or_else(|| str_at(p, "/repository/owner/login")).map(String::from);
    let comment_body = if COMMENT_EVENTS.iter().any(|e| e.eq_ignore_ascii_case(event)) {
        str_at(p, "/comment/body").map(String::from)
    } else {
        None
    };

    let mut c = Ctx { payload: p, map: BTreeMap::new() };
    c.put("event_type", Some(CtxValue::Str(event.to_string())));
    c.put("action", action.clone().map(CtxValue::Str));

    c.i("repo_id", "/repository/id");
    c.s("repo_full_name", "/repository/full_name");
    c.s("repo_name", "/repository/name");
    c.s("repo_owner", "/repository/owner/login");
    c.b("repo_private", "/repository/private");
    c.put("org", org.clone().map(CtxValue::Str));
    c.i("sender_id", "/sender/id");
    c.s("sender_login", "/sender/login");
    c.s("sender_type", "/sender/type");
    c.i("installation_id", "/installation/id");

    c.i("pr_number", "/pull_request/number");
    c.s("pr_title", "/pull_request/title");
    c.s("pr_state", "/pull_request/state");
    c.b("pr_draft", "/pull_request/draft");
    c.b("pr_merged", "/pull_request/merged");
    c.s("pr_author", "/pull_request/user/login");
    c.s("pr_base_ref", "/pull_request/base/ref");
    c.s("pr_head_ref", "/pull_request/head/ref");
    c.s("pr_head_sha", "/pull_request/head/sha");
    c.s("pr_html_url", "/pull_request/html_url");
    c.i("pr_additions", "/pull_request/additions");
    c.i("pr_deletions", "/pull_request/deletions");
    c.i("pr_changed_files", "/pull_request/changed_files");

    c.i("issue_number", "/issue/number");
    c.s("issue_title", "/issue/title");
    c.s("issue_state", "/issue/state");
    c.s("issue_html_url", "/issue/html_url");
    if p.pointer("/issue").is_some_and(Value::is_object) {
        let is_pr = p.pointer("/issue/pull_request").is_some_and(|v| !v.is_null());
        c.put("issue_is_pull_request", Some(CtxValue::Bool(is_pr)));
        let labels = p
            .pointer("/issue/labels")
            .and_then(Value::as_array)
            .map(|ls| ls.iter().filter_map(|l| l.get("name").and_then(Value::as_str)).map(String::from).collect());
        c.put("issue_labels", labels.map(CtxValue::List));
    }

    c.s("comment_body", "/comment/body");
    c.i("comment_id", "/comment/id");
    c.s("comment_html_url", "/comment/html_url");
    c.i("review_id", "/review/id");
    c.s("review_state", "/review/state");

    c.s("ref", "/ref");
    c.s("ref_type", "/ref_type");
    c.put("branch", branch.clone().map(CtxValue::Str));
    c.put("tag", tag.map(CtxValue::Str));
    c.s("before_sha", "/before");
    c.s("after_sha", "/after");
    let commit_count = p.pointer("/commits").and_then(Value::as_array).and_then(|cs| i64::try_from(cs.len()).ok());
    c.put("commit_count", commit_count.map(CtxValue::Int));

    c.i("workflow_job_id", "/workflow_job/id");
    c.s("workflow_job_name", "/workflow_job/name");
    c.s("workflow_job_status", "/workflow_job/status");
    c.s("workflow_job_conclusion", "/workflow_job/conclusion");
    c.s("workflow_job_head_sha", "/workflow_job/head_sha");
    c.list("workflow_job_labels", "/workflow_job/labels");
    let run_id = int_at(p, "/workflow_job/run_id").or_else(|| int_at(p, "/workflow_run/id"));
    c.put("workflow_run_id", run_id.map(CtxValue::Int));
    c.s("workflow_run_name", "/workflow_run/name");
    c.s("workflow_run_status", "/workflow_run/status");
    c.s("workflow_run_conclusion", "/workflow_run/conclusion");
    c.s("workflow_run_head_branch", "/workflow_run/head_branch");
    c.s("workflow_run_head_sha", "/workflow_run/head_sha");
    c.s("workflow_run_html_url", "/workflow_run/html_url");

    c.i("check_run_id", "/check_run/id");
    c.s("check_run_name", "/check_run/name");
    c.s("check_run_status", "/check_run/status");
    c.s("check_run_conclusion", "/check_run/conclusion");
    c.s("check_run_head_sha", "/check_run/head_sha");
    c.i("check_suite_id", "/check_suite/id");
    c.s("check_suite_status", "/check_suite/status");
    c.s("check_suite_conclusion", "/check_suite/conclusion");
    c.s("check_suite_head_branch", "/check_suite/head_branch");
    c.s("check_suite_head_sha", "/check_suite/head_sha");

    c.i("release_id", "/release/id");
    c.s("release_tag_name", "/release/tag_name");
    c.s("release_name", "/release/name");
    c.b("release_draft", "/release/draft");
    c.b("release_prerelease", "/release/prerelease");
    c.s("release_html_url", "/release/html_url");

    c.i("deployment_id", "/deployment/id");
    c.s("deployment_environment", "/deployment/environment");
    c.s("deployment_status_state", "/deployment_status/state");

    EventFacts {
        event: event.to_string(),
        action,
        repo_full_name: str_at(p, "/repository/full_name").map(String::from),
        org,
        branch,
        sender: str_at(p, "/sender/login").map(String::from),
        labels: strings_at(p, "/workflow_job/labels").unwrap_or_default(),
        comment_body,
        context: c.map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn push_to_branch() {
        let f = extract(
            "push",
            &json!({"ref": "refs/heads/release/1.2", "before": "a", "after": "b", "commits": [{}, {}],
                    "repository": {"id": 7, "full_name": "Org/Repo", "name": "Repo", "private": false, "owner": {"login": "Org"}},
                    "sender": {"login": "alice", "id": 3, "type": "User"}}),
        );
        assert_eq!(f.event, "push");
        assert_eq!(f.action, None);
        assert_eq!(f.branch.as_deref(), Some("release/1.2"));
        assert_eq!(f.org.as_deref(), Some("Org"));
        assert_eq!(f.repo_full_name.as_deref(), Some("Org/Repo"));
        assert_eq!(f.context["ref"], CtxValue::Str("refs/heads/release/1.2".into()));
        assert_eq!(f.context["branch"], CtxValue::Str("release/1.2".into()));
        assert_eq!(f.context["commit_count"], CtxValue::Int(2));
        assert_eq!(f.context["repo_private"], CtxValue::Bool(false));
        assert_eq!(f.context["sender_id"], CtxValue::Int(3));
        assert!(!f.context.contains_key("tag") && !f.context.contains_key("action"));
    }

    #[test]
    fn tag_push_has_no_branch() {
        let f = extract(
            "push",
            &json!({"ref": "refs/tags/v1.0", "organization": {"login": "acme"}, "repository": {"owner": {"login": "x"}}}),
        );
        assert_eq!(f.branch, None);
        assert_eq!(f.context["tag"], CtxValue::Str("v1.0".into()));
        assert_eq!(f.org.as_deref(), Some("acme"));
    }

    #[test]
    fn pull_request_events_use_the_base_branch() {
        let pr = json!({"action": "submitted", "pull_request": {"number": 5, "base": {"ref": "main"}, "head": {"ref": "feat", "sha": "abc"}, "draft": true}});
        for event in ["pull_request", "pull_request_review", "pull_request_review_comment"] {
            let f = extract(event, &pr);
            assert_eq!(f.branch.as_deref(), Some("main"), "{event}");
            assert_eq!(f.context["pr_number"], CtxValue::Int(5));
            assert_eq!(f.context["pr_head_sha"], CtxValue::Str("abc".into()));
            assert_eq!(f.context["pr_draft"], CtxValue::Bool(true));
        }
        assert_eq!(extract("check_run", &pr).branch, None);
    }

    #[test]
    fn comment_body_only_for_comment_events() {
        let p = json!({"action": "created", "comment": {"body": "/review", "id": 9}, "issue": {"number": 4, "pull_request": {"url": "u"}, "labels": [{"name": "bug"}]}});
        let f = extract("issue_comment", &p);
        assert_eq!(f.comment_body.as_deref(), Some("/review"));
        assert_eq!(f.context["issue_number"], CtxValue::Int(4));
        assert_eq!(f.context["issue_is_pull_request"], CtxValue::Bool(true));
        assert_eq!(f.context["issue_labels"], CtxValue::List(vec!["bug".into()]));
        assert_eq!(extract("discussion_comment", &p).comment_body, None);
    }

    #[test]
    fn workflow_job_labels_and_run_id() {
        let f = extract(
            "workflow_job",
            &json!({"action": "queued", "workflow_job": {"id": 1, "run_id": 2, "labels": ["self-hosted", 3, "gpu"]}}),
        );
        assert_eq!(f.labels, ["self-hosted", "gpu"]);
        assert_eq!(f.context["workflow_run_id"], CtxValue::Int(2));
        assert_eq!(f.context["workflow_job_labels"].to_json(), json!(["self-hosted", "gpu"]));
    }

    #[test]
    fn never_panics_on_odd_json() {
        for p in [
            json!(null),
            json!([1, 2]),
            json!("x"),
            json!({"repository": 5, "ref": 1, "commits": "no", "workflow_job": {"labels": "x"}}),
            json!({"pull_request": []}),
        ] {
            let f = extract("push", &p);
            assert_eq!(f.event, "push");
            assert_eq!(f.context.len(), 1, "{p}: {:?}", f.context);
            extract("pull_request", &p);
            extract("issue_comment", &p);
            extract("", &p);
        }
    }

    #[test]
    fn ctx_value_to_json() {
        assert_eq!(CtxValue::Str("a".into()).to_json(), json!("a"));
        assert_eq!(CtxValue::Int(-4).to_json(), json!(-4));
        assert_eq!(CtxValue::Bool(true).to_json(), json!(true));
    }

    #[test]
    fn facts_round_trip_through_bincode() {
        let f = extract(
            "workflow_job",
            &json!({"action": "queued", "workflow_job": {"id": 1, "labels": ["a"]}, "sender": {"login": "x"}}),
        );
        let bytes = bincode::serialize(&f).unwrap();
        assert_eq!(bincode::deserialize::<EventFacts>(&bytes).unwrap(), f);
    }
}
