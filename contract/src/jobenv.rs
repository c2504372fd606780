//! The environment of a job's command: the documented `AOF_*` variables that
//! describe the job, and the few variables of the runner's own environment a job
//! may see.
//!
//! Both runners of commands — the node's built-in `command` executor and
//! `aofctl worker` — build the environment here, so a job sees the same thing
//! wherever it runs (docs/WORKERS.md, "The job environment", lists every variable).
//!
//! # The job's variables
//!
//! [`variables`] turns a [`Job`] into `AOF_EVENT`, `AOF_ACTION`, `AOF_REPO`,
//! `AOF_DELIVERY_ID`, `AOF_EVENT_ID`, `AOF_JOB_ID`, `AOF_ATTEMPT`, `AOF_TARGET`,
//! `AOF_TARGET_KIND`, `AOF_TRIGGER`, `AOF_PARAMS`, `AOF_WORKER_ID`,
//! `AOF_FENCING_TOKEN`, `TRACEPARENT` (only when known) and `AOF_CTX_<NAME>` for
//! each context variable ([`env_name`] makes the name). Values come from webhook
//! payloads, so they are sanitized ([`env_value`]: NUL bytes, which no environment
//! can hold, are removed).
//!
//! # What else a job sees
//!
//! A job starts from an **empty** environment. [`EnvPolicy`] lets through only the
//! variables a program needs to run at all ([`DEFAULT_ALLOWED`]: `PATH`, `HOME`,
//! `USER`, `LOGNAME`, `SHELL`, `LANG`, `LANGUAGE`, `LC_*`, `TZ`, `TMPDIR`) plus
//! the names an operator adds (`spec.runtime.pass_env`, `aofctl worker
//! --pass-env`). Whatever the lists say, these never reach a job ([`is_denied`]):
//! `GITHUB_TOKEN`, `GH_TOKEN`, `GITHUB_ENTERPRISE_TOKEN`, `GH_ENTERPRISE_TOKEN`,
//! any name containing `WEBHOOK_SECRET`, every `AOF_*` name of the runner's own
//! environment (`AOF_ADMIN_TOKEN`, `AOF_WORKER_TOKEN`, … — a job's `AOF_*` are
//! the ones [`variables`] sets), and the names the runner knows hold its secrets
//! ([`EnvPolicy::deny`]: the node's `token_env`, the variables its
//! `webhook_secret`s read).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};

/// What a job's environment describes. Borrowed, so that a runner can build it
/// from whatever holds the lease.
#[derive(Clone, Copy, Debug)]
pub struct Job<'a> {
    /// The GitHub event (`X-GitHub-Event`): `push`, `pull_request`, …
    pub event: &'a str,
    pub delivery_id: &'a str,
    pub event_id: u64,
    pub job_id: &'a str,
    /// 1 for the first try.
    pub attempt: u32,
    /// The agent, fleet or flow the job is for.
    pub target: &'a str,
    /// `agent`, `fleet` or `flow`.
    pub target_kind: &'a str,
    pub trigger: &'a str,
    /// The route's params, JSON; empty means none.
    pub params_json: &'a str,
    pub worker_id: &'a str,
    pub fencing_token: u64,
    /// W3C traceparent of the delivery; empty when unknown.
    pub traceparent: &'a str,
    /// AOF context variables (`action`, `repo_full_name`, `pr_number`, …).
    pub context: &'a BTreeMap<String, String>,
}

/// The context variable behind `AOF_ACTION`.
pub const ACTION_KEY: &str = "action";
/// The context variable behind `AOF_REPO`.
pub const REPO_KEY: &str = "repo_full_name";
/// Prefix of the context variables' names.
pub const CTX_PREFIX: &str = "AOF_CTX_";

/// A context variable's name in the environment: `pr_number` → `PR_NUMBER`
/// (ASCII letters and digits upper-cased, everything else `_`).
pub fn env_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A value safe for the environment: NUL bytes removed (no environment can hold
/// them; `execve` would cut the value there or refuse).
pub fn env_value(v: &str) -> String {
    v.replace('\0', "")
}

/// The job's variables, in the documented order (`AOF_CTX_*` last, by name).
/// `AOF_ACTION` and `AOF_REPO` are always set (empty when the event has no action
/// or no repository); `AOF_PARAMS` is `null` when the route has no params;
/// `TRACEPARENT` only when known.
pub fn variables(job: &Job<'_>) -> Vec<(String, String)> {
    let ctx = |k: &str| job.context.get(k).cloned().unwrap_or_default();
    let params = if job.params_json.trim().is_empty() {
        "null"
    } else {
        job.params_json
    };
    let mut env: Vec<(String, String)> = vec![
        ("AOF_EVENT".into(), job.event.into()),
        ("AOF_ACTION".into(), ctx(ACTION_KEY)),
        ("AOF_REPO".into(), ctx(REPO_KEY)),
        ("AOF_DELIVERY_ID".into(), job.delivery_id.into()),
        ("AOF_EVENT_ID".into(), job.event_id.to_string()),
        ("AOF_JOB_ID".into(), job.job_id.into()),
        ("AOF_ATTEMPT".into(), job.attempt.to_string()),
        ("AOF_TARGET".into(), job.target.into()),
        ("AOF_TARGET_KIND".into(), job.target_kind.into()),
        ("AOF_TRIGGER".into(), job.trigger.into()),
        ("AOF_PARAMS".into(), params.into()),
        ("AOF_WORKER_ID".into(), job.worker_id.into()),
        ("AOF_FENCING_TOKEN".into(), job.fencing_token.to_string()),
    ];
    if !job.traceparent.is_empty() {
        env.push(("TRACEPARENT".into(), job.traceparent.into()));
    }
    env.extend(
        job.context
            .iter()
            .map(|(k, v)| (format!("{CTX_PREFIX}{}", env_name(k)), v.clone())),
    );
    env.into_iter().map(|(k, v)| (k, env_value(&v))).collect()
}

/// The runner's variables a job may see when nothing else is configured.
/// `LC_*` is a prefix: every locale category.
pub const DEFAULT_ALLOWED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR",
];

/// Names that hold credentials of the runner; never passed, whatever is allowed.
const DENIED_EXACT: &[&str] = &[
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "GITHUB_ENTERPRISE_TOKEN",
    "GH_ENTERPRISE_TOKEN",
];

/// Whether `name` may never reach a job, whatever the allow-list says (the names
/// listed in the module docs; case-insensitive).
pub fn is_denied(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    DENIED_EXACT.contains(&upper.as_str())
        || upper.contains("WEBHOOK_SECRET")
        || upper.starts_with("AOF_")
}

/// An allow-list entry: a name, or a prefix ending in `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(n) => n == name,
            Pattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// Why an allow-list entry was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "{0:?} is not an environment variable name: use letters, digits and '_' (not starting with a digit), \
         optionally ending in '*' for a prefix (e.g. \"LC_*\")"
    )]
    BadName(String),
    #[error(
        "{0:?} is never passed to jobs: it names one of the runner's credentials (GitHub tokens, webhook \
         secrets, AOF_* tokens); give the job its own credential another way (e.g. a file it reads)"
    )]
    Denied(String),
}

/// Which variables of the runner's environment a job gets: [`DEFAULT_ALLOWED`],
/// plus the operator's names, minus everything [`is_denied`] and the runner's own
/// secret names ([`EnvPolicy::deny`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvPolicy {
    allow: Vec<Pattern>,
    deny: Vec<String>,
}

impl Default for EnvPolicy {
    fn default() -> Self {
        EnvPolicy {
            allow: DEFAULT_ALLOWED
                .iter()
                .map(|p| parse_pattern(p).expect("valid default"))
                .collect(),
            deny: Vec::new(),
        }
    }
}

fn parse_pattern(entry: &str) -> Result<Pattern, PolicyError> {
    let bad = || PolicyError::BadName(entry.to_string());
    let (name, prefix) = match entry.strip_suffix('*') {
        Some(p) => (p, true),
        None => (entry, false),
    };
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad());
    }
    if is_denied(name)
        || (prefix
            && DENIED_EXACT
                .iter()
                .any(|d| d.starts_with(&name.to_ascii_uppercase())))
    {
        return Err(PolicyError::Denied(entry.to_string()));
    }
    Ok(if prefix {
        Pattern::Prefix(name.to_string())
    } else {
        Pattern::Exact(name.to_string())
    })
}

/// Check one operator-given entry (`NAME` or `PREFIX*`), e.g. while validating a
/// config, without building a policy.
pub fn check_entry(entry: &str) -> Result<(), PolicyError> {
    parse_pattern(entry).map(|_| ())
}

impl EnvPolicy {
    /// The default list plus `extra` entries (`NAME` or `PREFIX*`). An entry that
    /// is not a variable name, or that names a credential ([`is_denied`]), is an
    /// error: better to refuse the configuration than to pass a secret.
    pub fn new<S: AsRef<str>>(extra: &[S]) -> Result<Self, PolicyError> {
        let mut policy = EnvPolicy::default();
        for e in extra {
            let p = parse_pattern(e.as_ref())?;
            if !policy.allow.contains(&p) {
                policy.allow.push(p);
            }
        }
        Ok(policy)
    }

    /// Never pass these names either (the runner's own secrets: the variable its
    /// GitHub token is read from, those its webhook secrets are read from).
    pub fn deny<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.deny.extend(
            names
                .into_iter()
                .map(|n| n.as_ref().to_string())
                .filter(|n| !n.is_empty()),
        );
        self
    }

    /// Whether a job may see the runner's variable `name`.
    pub fn allows(&self, name: &str) -> bool {
        !is_denied(name)
            && !self.deny.iter().any(|d| d.eq_ignore_ascii_case(name))
            && self.allow.iter().any(|p| p.matches(name))
    }

    /// The allowed part of `vars` (the runner's environment). Names that are not
    /// UTF-8 are dropped: no allowed name is.
    pub fn filter(
        &self,
        vars: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Vec<(OsString, OsString)> {
        vars.into_iter()
            .filter(|(k, _)| k.to_str().is_some_and(|k| self.allows(k)))
            .collect()
    }

    /// The complete environment of `job`'s command: the allowed part of this
    /// process's environment, then the job's [`variables`] (which win).
    pub fn environment(&self, job: &Job<'_>) -> Vec<(OsString, OsString)> {
        self.environment_from(std::env::vars_os(), job)
    }

    /// [`EnvPolicy::environment`] with the runner's environment given.
    pub fn environment_from(
        &self,
        runner: impl IntoIterator<Item = (OsString, OsString)>,
        job: &Job<'_>,
    ) -> Vec<(OsString, OsString)> {
        let job_vars = variables(job);
        let mut env: Vec<(OsString, OsString)> = self
            .filter(runner)
            .into_iter()
            .filter(|(k, _)| !job_vars.iter().any(|(j, _)| OsStr::new(j) == k))
            .collect();
        env.extend(job_vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn job<'a>(context: &'a BTreeMap<String, String>) -> Job<'a> {
        Job {
            event: "issues",
            delivery_id: "d-1",
            event_id: 12,
            job_id: "12-0",
            attempt: 2,
            target: "helper",
            target_kind: "agent",
            trigger: "all",
            params_json: "",
            worker_id: "w-1",
            fencing_token: 99,
            traceparent: "",
            context,
        }
    }

    #[test]
    fn context_names_become_environment_names() {
        assert_eq!(env_name("pr_number"), "PR_NUMBER");
        assert_eq!(env_name("a-b.c"), "A_B_C");
        assert_eq!(env_name("é1"), "_1");
    }

    #[test]
    fn a_job_is_described_in_the_environment() {
        let c = ctx(&[
            ("action", "opened"),
            ("repo_full_name", "acme/api"),
            ("issue_labels", "[\"bug\"]"),
            ("comment_body", "a\0b"),
        ]);
        let env: BTreeMap<String, String> = variables(&job(&c)).into_iter().collect();
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("AOF_EVENT"), Some("issues"));
        assert_eq!(get("AOF_ACTION"), Some("opened"));
        assert_eq!(get("AOF_REPO"), Some("acme/api"));
        assert_eq!(get("AOF_DELIVERY_ID"), Some("d-1"));
        assert_eq!(get("AOF_EVENT_ID"), Some("12"));
        assert_eq!(get("AOF_JOB_ID"), Some("12-0"));
        assert_eq!(get("AOF_ATTEMPT"), Some("2"));
        assert_eq!(get("AOF_TARGET"), Some("helper"));
        assert_eq!(get("AOF_TARGET_KIND"), Some("agent"));
        assert_eq!(get("AOF_TRIGGER"), Some("all"));
        assert_eq!(get("AOF_PARAMS"), Some("null"));
        assert_eq!(get("AOF_WORKER_ID"), Some("w-1"));
        assert_eq!(get("AOF_FENCING_TOKEN"), Some("99"));
        assert_eq!(get("AOF_CTX_ISSUE_LABELS"), Some("[\"bug\"]"));
        assert_eq!(
            get("AOF_CTX_COMMENT_BODY"),
            Some("ab"),
            "NUL bytes are removed"
        );
        assert_eq!(get("AOF_CTX_REPO_FULL_NAME"), Some("acme/api"));
        assert_eq!(get("TRACEPARENT"), None);
        assert_eq!(env.len(), 13 + 4);

        // A push has no action: the variable is set, empty.
        let empty = BTreeMap::new();
        let push = Job {
            event: "push",
            params_json: "{\"a\":1}",
            traceparent: "00-x",
            ..job(&empty)
        };
        let env = variables(&push);
        assert!(env.contains(&("AOF_ACTION".into(), String::new())));
        assert!(env.contains(&("AOF_REPO".into(), String::new())));
        assert!(env.contains(&("AOF_PARAMS".into(), "{\"a\":1}".into())));
        assert!(env.contains(&("TRACEPARENT".into(), "00-x".into())));
    }

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn only_allowed_variables_of_the_runner_pass() {
        let runner = os(&[
            ("PATH", "/usr/bin"),
            ("HOME", "/home/aof"),
            ("LC_ALL", "C.UTF-8"),
            ("GITHUB_TOKEN", "ghp_secret"),
            ("GH_TOKEN", "ghp_secret"),
            ("GITHUB_WEBHOOK_SECRET", "whsec"),
            ("ACME_WEBHOOK_SECRET", "whsec"),
            ("AOF_ADMIN_TOKEN", "adm"),
            ("AOF_WORKER_TOKEN", "wrk"),
            ("AOF_CTX_STALE", "from the runner"),
            ("AOF_EVENT", "from the runner"),
            ("AWS_SECRET_ACCESS_KEY", "aws"),
            ("MY_TOOL_HOME", "/opt/tool"),
            ("MY_GH_TOKEN", "custom"),
        ]);
        let c = ctx(&[("action", "opened")]);
        let names = |p: &EnvPolicy| -> Vec<String> {
            p.environment_from(runner.clone(), &job(&c))
                .into_iter()
                .map(|(k, _)| k.into_string().unwrap())
                .collect()
        };
        let default = names(&EnvPolicy::default());
        for must in ["PATH", "HOME", "LC_ALL", "AOF_EVENT", "AOF_CTX_ACTION"] {
            assert!(
                default.contains(&must.to_string()),
                "{must} missing: {default:?}"
            );
        }
        for never in [
            "GITHUB_TOKEN",
            "GH_TOKEN",
            "GITHUB_WEBHOOK_SECRET",
            "ACME_WEBHOOK_SECRET",
            "AOF_ADMIN_TOKEN",
            "AOF_WORKER_TOKEN",
            "AOF_CTX_STALE",
            "AWS_SECRET_ACCESS_KEY",
            "MY_TOOL_HOME",
            "MY_GH_TOKEN",
        ] {
            assert!(
                !default.contains(&never.to_string()),
                "{never} leaked: {default:?}"
            );
        }
        let env = EnvPolicy::default().environment_from(runner.clone(), &job(&c));
        assert_eq!(
            env.iter().filter(|(k, _)| k == "AOF_EVENT").count(),
            1,
            "the job's AOF_EVENT replaces the runner's"
        );
        assert!(env.contains(&("AOF_EVENT".into(), "issues".into())));

        // The operator adds names; a runner secret named by the caller stays out.
        let extra = EnvPolicy::new(&["MY_TOOL_*", "MY_GH_TOKEN"]).unwrap();
        let with_extra = names(&extra);
        assert!(
            with_extra.contains(&"MY_TOOL_HOME".to_string())
                && with_extra.contains(&"MY_GH_TOKEN".to_string())
        );
        let denied = names(&extra.deny(["MY_GH_TOKEN"]));
        assert!(
            denied.contains(&"MY_TOOL_HOME".to_string())
                && !denied.contains(&"MY_GH_TOKEN".to_string())
        );
    }

    #[test]
    fn credentials_and_bad_names_cannot_be_allowed() {
        for entry in [
            "GITHUB_TOKEN",
            "github_token",
            "GH_TOKEN",
            "GITHUB_*",
            "GH*",
            "AOF_ADMIN_TOKEN",
            "AOF_*",
            "X_WEBHOOK_SECRET",
        ] {
            assert_eq!(
                EnvPolicy::new(&[entry]),
                Err(PolicyError::Denied(entry.into())),
                "{entry}"
            );
        }
        for entry in ["", "*", "1ABC", "A-B", "A B", "A=B", "A*B"] {
            assert_eq!(
                EnvPolicy::new(&[entry]),
                Err(PolicyError::BadName(entry.into())),
                "{entry}"
            );
        }
        assert!(check_entry("SSL_CERT_FILE").is_ok() && check_entry("NPM_*").is_ok());
        // A prefix the operator allowed still never lets a credential through.
        let p = EnvPolicy::new(&["GITHUB_A*"]).unwrap();
        assert!(p.allows("GITHUB_API_URL") && !p.allows("PATHX"));
    }
}
