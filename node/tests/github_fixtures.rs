//! Real GitHub webhook payloads (`shared/fixtures/github-webhooks/<event>/NN-<action>.json`,
//! from `@octokit/webhooks-examples`) through `aof_node::github`: fact extraction,
//! matching and signatures.
//!
//! Expected values are read from each payload with JSON pointers, never hard-coded.
//! The fixture directory is `$AOF_FIXTURES_DIR` when set (it must exist), else
//! `shared/fixtures/github-webhooks` two or one levels above this crate; if none
//! exists the tests fail (they must not pass vacuously).

mod common;

use std::path::{Path, PathBuf};

use common::fixtures_dir;

use aof_node::github::{
    extract, match_event, parse_trigger, sign, verify, CtxValue, EventFacts, MatchOutcome, COMMENT_EVENTS,
};
use serde_json::{json, Value};

struct Fixture {
    path: PathBuf,
    event: String,
    /// The `ACTION` of `NN-ACTION.json`; `None` for `none`.
    action: Option<String>,
    body: Vec<u8>,
    payload: Value,
}

fn load_fixtures() -> Vec<Fixture> {
    let dir = fixtures_dir();
    let mut out = Vec::new();
    let mut events: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    events.sort();
    for event_dir in events {
        let event = event_dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&event_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let (_, action) =
                stem.split_once('-').unwrap_or_else(|| panic!("{}: expected NN-ACTION.json", path.display()));
            let body = std::fs::read(&path).unwrap();
            let payload: Value =
                serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            out.push(Fixture {
                event: event.clone(),
                action: (action != "none").then(|| action.to_string()),
                path,
                body,
                payload,
            });
        }
    }
    assert!(out.len() >= 100, "expected the full fixture set in {}, found {} files", dir.display(), out.len());
    out
}

fn s(p: &Value, ptr: &str) -> CtxValue {
    CtxValue::Str(
        p.pointer(ptr).and_then(Value::as_str).unwrap_or_else(|| panic!("payload has no string at {ptr}")).into(),
    )
}

fn i(p: &Value, ptr: &str) -> CtxValue {
    CtxValue::Int(p.pointer(ptr).and_then(Value::as_i64).unwrap_or_else(|| panic!("payload has no integer at {ptr}")))
}

fn opt_str(p: &Value, ptr: &str) -> Option<String> {
    p.pointer(ptr).and_then(Value::as_str).map(String::from)
}

#[test]
fn every_fixture_extracts_event_and_action() {
    let fixtures = load_fixtures();
    assert_eq!(fixtures.len(), 181, "the fixture README lists 181 files");
    for fx in &fixtures {
        let at = fx.path.display();
        let facts = extract(&fx.event, &fx.payload);
        assert_eq!(facts.event, fx.event, "{at}");
        assert_eq!(facts.action, fx.action, "{at}");
        assert_eq!(facts.context.get("event_type"), Some(&CtxValue::Str(fx.event.clone())), "{at}");
        assert_eq!(facts.context.get("action").cloned(), fx.action.clone().map(CtxValue::Str), "{at}");
        assert_eq!(facts.repo_full_name, opt_str(&fx.payload, "/repository/full_name"), "{at}");
        assert_eq!(facts.sender, opt_str(&fx.payload, "/sender/login"), "{at}");
        let org =
            opt_str(&fx.payload, "/organization/login").or_else(|| opt_str(&fx.payload, "/repository/owner/login"));
        assert_eq!(facts.org, org, "{at}");
        if COMMENT_EVENTS.contains(&fx.event.as_str()) {
            assert_eq!(facts.comment_body, opt_str(&fx.payload, "/comment/body"), "{at}");
        } else {
            assert_eq!(facts.comment_body, None, "{at}");
        }
        // Deterministic, and survives the Raft log's encoding.
        assert_eq!(extract(&fx.event, &fx.payload), facts, "{at}");
        let bytes = bincode::serialize(&facts).unwrap();
        assert_eq!(bincode::deserialize::<EventFacts>(&bytes).unwrap(), facts, "{at}");
    }
}

#[test]
fn push_context() {
    let fixtures = load_fixtures();
    let pushes: Vec<&Fixture> = fixtures.iter().filter(|f| f.event == "push").collect();
    assert!(!pushes.is_empty());
    for fx in pushes {
        let (p, at) = (&fx.payload, fx.path.display());
        let facts = extract("push", p);
        let git_ref = opt_str(p, "/ref").unwrap();
        assert_eq!(facts.context["ref"], s(p, "/ref"), "{at}");
        assert_eq!(facts.context["after_sha"], s(p, "/after"), "{at}");
        assert_eq!(facts.context["before_sha"], s(p, "/before"), "{at}");
        let commits = p.pointer("/commits").and_then(Value::as_array).unwrap().len();
        assert_eq!(facts.context["commit_count"], CtxValue::Int(commits as i64), "{at}");
        let branch = git_ref.strip_prefix("refs/heads/").map(String::from);
        assert_eq!(facts.branch, branch, "{at}");
        assert_eq!(facts.context.get("branch").cloned(), branch.map(CtxValue::Str), "{at}");
        if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
            assert_eq!(facts.context["tag"], CtxValue::Str(tag.into()), "{at}");
        }
    }
}

#[test]
fn pull_request_context() {
    let fixtures = load_fixtures();
    let prs: Vec<&Fixture> = fixtures.iter().filter(|f| f.event.starts_with("pull_request")).collect();
    assert!(prs.iter().any(|f| f.event == "pull_request"));
    for fx in prs {
        let (p, at) = (&fx.payload, fx.path.display());
        let facts = extract(&fx.event, p);
        if p.pointer("/pull_request").is_none() {
            continue;
        }
        assert_eq!(facts.context["pr_number"], i(p, "/pull_request/number"), "{at}");
        assert_eq!(facts.context["pr_head_sha"], s(p, "/pull_request/head/sha"), "{at}");
        assert_eq!(facts.context["pr_base_ref"], s(p, "/pull_request/base/ref"), "{at}");
        assert_eq!(facts.context["pr_head_ref"], s(p, "/pull_request/head/ref"), "{at}");
        assert_eq!(facts.context["pr_title"], s(p, "/pull_request/title"), "{at}");
        assert_eq!(facts.branch, opt_str(p, "/pull_request/base/ref"), "{at}: branch is the base ref");
    }
}

#[test]
fn issue_comment_context() {
    let fixtures = load_fixtures();
    let comments: Vec<&Fixture> = fixtures.iter().filter(|f| f.event == "issue_comment").collect();
    assert!(!comments.is_empty());
    for fx in comments {
        let (p, at) = (&fx.payload, fx.path.display());
        let facts = extract("issue_comment", p);
        assert_eq!(facts.context["comment_body"], s(p, "/comment/body"), "{at}");
        assert_eq!(facts.context["comment_id"], i(p, "/comment/id"), "{at}");
        assert_eq!(facts.context["issue_number"], i(p, "/issue/number"), "{at}");
        let is_pr = p.pointer("/issue/pull_request").is_some_and(|v| !v.is_null());
        assert_eq!(facts.context["issue_is_pull_request"], CtxValue::Bool(is_pr), "{at}");
    }
}

#[test]
fn workflow_job_context() {
    let fixtures = load_fixtures();
    let jobs: Vec<&Fixture> = fixtures.iter().filter(|f| f.event == "workflow_job").collect();
    assert!(!jobs.is_empty());
    for fx in jobs {
        let (p, at) = (&fx.payload, fx.path.display());
        let facts = extract("workflow_job", p);
        let labels: Vec<String> = p
            .pointer("/workflow_job/labels")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        assert_eq!(facts.labels, labels, "{at}");
        assert_eq!(facts.context["workflow_job_labels"], CtxValue::List(labels), "{at}");
        assert_eq!(facts.context["workflow_run_id"], i(p, "/workflow_job/run_id"), "{at}");
        assert_eq!(facts.context["workflow_job_id"], i(p, "/workflow_job/id"), "{at}");
    }
}

#[test]
fn catch_all_trigger_routes_every_fixture_and_filters_narrow_it() {
    let catch_all = parse_trigger(
        "zz-catch-all",
        &json!({"apiVersion": "aof.dev/v1", "kind": "Trigger", "spec": {"type": "GitHub", "config": {}, "default_agent": "helper"}}),
    )
    .unwrap();
    let push_only = parse_trigger(
        "aa-push",
        &json!({"spec": {"type": "GitHub", "config": {"github_events": ["push"], "branches": ["master"]},
                         "commands": {"push": {"flow": "deploy"}}}}),
    )
    .unwrap();
    let triggers = [push_only, catch_all];
    for fx in load_fixtures() {
        let facts = extract(&fx.event, &fx.payload);
        let MatchOutcome::Matched(m) = match_event(&triggers, &facts) else {
            panic!("{}: the catch-all trigger must match", fx.path.display());
        };
        let pushed_to_master = fx.event == "push" && facts.branch.as_deref() == Some("master");
        let want = if pushed_to_master { ("aa-push", "deploy") } else { ("zz-catch-all", "helper") };
        assert_eq!((m.trigger.as_str(), m.route.name.as_str()), want, "{}", fx.path.display());
    }
}

#[test]
fn every_fixture_body_verifies_with_its_signature() {
    for fx in load_fixtures() {
        let header = sign(b"fixture-secret", &fx.body);
        assert_eq!(
            verify(&[b"old-secret", b"fixture-secret"], &fx.body, Some(&header)),
            Ok(1),
            "{}",
            fx.path.display()
        );
        assert!(verify(&[b"other"], &fx.body, Some(&header)).is_err());
    }
}

/// The sample triggers shipped in `cluster-configs/local/triggers` are valid, and (as
/// their comments promise) together they route every real delivery somewhere.
#[test]
fn shipped_sample_triggers_parse_and_route_every_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-configs/local/triggers");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no sample triggers in {}", dir.display());
    let mut triggers: Vec<aof_node::github::Trigger> = files
        .iter()
        .map(|path| {
            let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap().to_string();
            parse_trigger(&name, &doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect();
    triggers.sort_by(|a, b| a.name.cmp(&b.name));
    for fx in load_fixtures() {
        let out = match_event(&triggers, &extract(&fx.event, &fx.payload));
        assert!(matches!(out, MatchOutcome::Matched(_)), "{}: {out:?}", fx.path.display());
    }
}

/// Stored payloads come back byte for byte, and GitHub's JSON is stored compressed.
#[test]
fn every_fixture_payload_round_trips_through_storage_and_shrinks() {
    use aof_node::sm::payload::{pack, unpack};
    let (mut raw, mut stored) = (0usize, 0usize);
    for f in load_fixtures() {
        let packed = pack(&f.body);
        assert_eq!(unpack(&packed).unwrap(), f.body, "{}", f.event);
        raw += f.body.len();
        stored += packed.len();
    }
    // Measured 2026-12-02: 2 052 966 bytes of fixtures stored in 490 334 (4.2x).
    assert!(stored * 2 < raw, "stored {stored} of {raw} bytes: payloads should at least halve");
    eprintln!("fixtures: {raw} bytes as received, {stored} stored ({:.1}x)", raw as f64 / stored as f64);
}
