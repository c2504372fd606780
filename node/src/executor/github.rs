//! The `github` executor: comment, label and check-run actions through the GitHub
//! REST API with octocrab. The API base URL is `spec.platforms.github.api_url`, so
//! tests point it at a local fake server.

use std::collections::BTreeMap;

use octocrab::Octocrab;
use serde_json::{json, Value};

use super::template::render;
use super::{ExecError, JobInput};
use crate::config::CheckRunConfig;

/// What to do for one target.
#[derive(Clone, Debug, Default)]
pub struct GithubActions {
    pub comment: Option<String>,
    pub labels: Vec<String>,
    pub check_run: Option<CheckRunConfig>,
}

/// A GitHub API client for executors.
#[derive(Clone)]
pub struct GithubExecutor {
    crab: Octocrab,
}

impl GithubExecutor {
    pub fn new(api_url: &str, token: &str) -> Result<Self, String> {
        let crab = Octocrab::builder()
            .base_uri(api_url)
            .map_err(|e| format!("spec.platforms.github.api_url {api_url:?}: {e}"))?
            .personal_token(token.to_string())
            .build()
            .map_err(|e| format!("cannot build the GitHub client: {e}"))?;
        Ok(GithubExecutor { crab })
    }

    /// Run the actions for a job; returns a summary of what was done.
    pub async fn run(&self, actions: &GithubActions, job: &JobInput) -> Result<String, ExecError> {
        let ctx = &job.context;
        let repo = ctx.get("repo_full_name").ok_or_else(|| ExecError::permanent("the event has no repository; a github executor cannot act on it"))?;
        let mut done = Vec::new();
        let number = ctx.get("pr_number").or_else(|| ctx.get("issue_number"));
        if actions.comment.is_some() || !actions.labels.is_empty() {
            let Some(number) = number else {
                return Err(ExecError::permanent(format!("{} has no issue or pull request number to comment on / label", job.event)));
            };
            if let Some(body) = &actions.comment {
                self.post(&format!("/repos/{repo}/issues/{number}/comments"), json!({ "body": render(body, ctx) })).await?;
                done.push(format!("commented on {repo}#{number}"));
            }
            if !actions.labels.is_empty() {
                let labels: Vec<String> = actions.labels.iter().map(|l| render(l, ctx)).collect();
                self.post(&format!("/repos/{repo}/issues/{number}/labels"), json!({ "labels": labels })).await?;
                done.push(format!("labelled {repo}#{number} with {}", labels.join(",")));
            }
        }
        if let Some(cr) = &actions.check_run {
            let sha = head_sha(ctx).ok_or_else(|| ExecError::permanent(format!("{} has no commit to attach a check run to", job.event)))?;
            let summary = render(cr.summary.as_deref().unwrap_or("Processed by aof-cluster"), ctx);
            let body = json!({
                "name": render(&cr.name, ctx),
                "head_sha": sha,
                "status": "completed",
                "conclusion": cr.conclusion,
                "output": { "title": render(&cr.name, ctx), "summary": summary },
            });
            self.post(&format!("/repos/{repo}/check-runs"), body).await?;
            done.push(format!("check run {:?} on {sha}", cr.name));
        }
        Ok(done.join("; "))
    }

    async fn post(&self, route: &str, body: Value) -> Result<Value, ExecError> {
        self.crab.post::<_, Value>(route, Some(&body)).await.map_err(classify)
    }
}

fn head_sha(ctx: &BTreeMap<String, String>) -> Option<&String> {
    ["pr_head_sha", "after_sha", "check_suite_head_sha", "workflow_run_head_sha", "head_sha"].iter().find_map(|k| ctx.get(*k))
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
