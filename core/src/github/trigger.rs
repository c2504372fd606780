//! AOF `Trigger` documents: parsing, validation and compilation into a [`Trigger`]
//! that the [matcher](super::matcher) can run.
//!
//! Users write the same YAML they write for AOF (`apiVersion: aof.dev/v1`,
//! `kind: Trigger`). [`parse_trigger`] takes the document already decoded into a
//! `serde_json::Value` and either returns a compiled [`Trigger`] or a
//! [`TriggerError`] naming the offending path, e.g.
//! `spec.config.repositories[1]: invalid glob pattern: ...`.
//!
//! # Accepted format
//!
//! ```yaml
//! apiVersion: aof.dev/v1          # optional; must be aof.dev/v1 when present
//! kind: Trigger                   # optional; must be Trigger when present
//! metadata:
//!   name: backend-pr-bot          # optional; must equal the registry name when present
//!   labels: {team: backend}       # optional string map (namespace, annotations too)
//! spec:
//!   type: GitHub                  # required, case-insensitive
//!   enabled: true                 # default true
//!   priority: high                # critical | high | normal | low (default normal)
//!   config:
//!     webhook_secret: ${GITHUB_WEBHOOK_SECRET}
//!     github_events: [pull_request, issue_comment.created]
//!     actions: [opened, synchronize]
//!     repositories: ["myorg/api-*", "myorg/auth-service"]   # alias: allowed_repos
//!     branches: [main, "release/*"]
//!     allowed_users: [alice, "dependabot[bot]"]
//!     labels: [self-hosted, gpu]
//!     rate_limit: {per: repo, events_per_minute: 60, burst: 10}
//!     commands: {...}             # same as spec.commands
//!     default_agent: helper       # or default_fleet / default_flow
//!   commands:
//!     /review:            {fleet: backend-review-fleet, description: "Review the PR"}
//!     /deploy production: {flow: deploy-prod, params: {require_approval: true}}
//!     pull_request.opened: {fleet: backend-review-fleet}
//!     push:               {flow: deploy-flow}
//!   default_agent: backend-helper # also defaultAgent, default_fleet/defaultFleet,
//!                                 # default_flow/defaultFlow
//!   callback:                     # optional: signed completion notices (sm::outbox)
//!     url: https://ci.example/aof-done        # http:// or https://
//!     secret_env: AOF_CALLBACK_SECRET         # env var on the nodes with the HMAC key
//! ```
//!
//! # Validation rules
//!
//! * Unknown keys are errors — at the document's top level, in `spec`, in
//!   `spec.config`, in a command entry and in `rate_limit` — so a typo such as
//!   `repositores` is reported (with a "did you mean" hint) instead of silently
//!   matching everything. `metadata` is not checked beyond `name`, `labels` and
//!   `annotations`: it never changes behaviour.
//! * A YAML `null` (e.g. `config:` with nothing under it) counts as absent.
//! * Filter lists must be lists of non-empty strings; an empty list is the same as
//!   an absent one (no filter). `repositories` and `allowed_repos` (the spelling in
//!   AOF's security docs) are the same filter; set one of them.
//! * `github_events` entries are `event` or `event.action` (`[a-z0-9_]`, lowercased),
//!   or `*` for every event. `actions` entries are single action names.
//! * `repositories` entries are `owner/name` globs (`myorg/api`, `myorg/*`,
//!   `myorg/prefix-*`, `*/docs`); `*` alone means every repository.
//! * `branches` entries are branch-name globs (`main`, `release/*`, `release/**`); a
//!   leading `refs/heads/` is stripped, any other `refs/...` is an error (tag pushes
//!   have no branch).
//! * Globs use `*`, `?`, `[...]`, `{a,b}` and `**`; `*` does not cross `/` (as in
//!   GitHub Actions' branch filters); `**` does. Repository globs are
//!   case-insensitive (like GitHub), branch globs are case-sensitive (like git).
//! * `commands` keys are slash commands (`/review`, `/deploy staging`: inner
//!   whitespace is normalized, compared case-insensitively) or event keys (`push`,
//!   `pull_request.opened`). `spec.commands` and `spec.config.commands` are merged;
//!   the same key in both (or twice, differing only in case or spacing) is an error.
//!   Each entry names exactly one of `agent`, `fleet`, `flow`, plus an optional
//!   `description` (string) and `params` (any value, kept as canonical JSON).
//! * Each default kind may be set in one place only (`spec.default_agent`,
//!   `spec.defaultAgent` or `spec.config.default_agent`); when several kinds are set
//!   the default route is the agent, else the fleet, else the flow.
//! * `priority` may be set in `spec` or in `spec.config`, not both.
//! * `rate_limit.per` is `org` or `repo` (default `repo`), `events_per_minute` is a
//!   required positive integer, `burst` a positive integer (default
//!   `events_per_minute`). The cluster enforces it; this module only parses it.
//!
//! # Other AOF trigger types
//!
//! The registry is shared with AOF's other trigger types (Slack, Telegram, Jira, …),
//! so those documents parse successfully: `spec.type` must be a known AOF type and
//! `spec` may only hold AOF's keys, `spec.enabled` is read, and everything else
//! (their `config` has a different schema) is left alone. Such a trigger reports
//! [`Trigger::is_github`] `false` and never matches a GitHub event.
//!
//! Everything here is pure: no IO, no clock, no environment. `webhook_secret` is kept
//! raw (e.g. `${GITHUB_WEBHOOK_SECRET}`); the edge expands it with
//! [`expand_env`](super::secrets::expand_env).

use std::collections::BTreeMap;
use std::fmt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only `apiVersion` accepted.
pub const API_VERSION: &str = "aof.dev/v1";
/// The only `kind` accepted.
pub const KIND: &str = "Trigger";

/// AOF's trigger types (`spec.type`), in their canonical spelling.
pub const AOF_TRIGGER_TYPES: &[&str] = &[
    "GitHub",
    "GitLab",
    "Bitbucket",
    "Slack",
    "Telegram",
    "Discord",
    "WhatsApp",
    "HTTP",
    "Schedule",
    "PagerDuty",
    "Jira",
    "Manual",
];

/// Path of `spec.config` in error messages.
const CONFIG: &str = "spec.config";
const DOC_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const SPEC_KEYS: &[&str] = &[
    "type",
    "enabled",
    "priority",
    "config",
    "commands",
    "default_agent",
    "defaultAgent",
    "default_fleet",
    "defaultFleet",
    "default_flow",
    "defaultFlow",
    "callback",
];
const CONFIG_KEYS: &[&str] = &[
    "webhook_secret",
    "github_events",
    "actions",
    "repositories",
    "allowed_repos",
    "branches",
    "allowed_users",
    "labels",
    "commands",
    "default_agent",
    "default_fleet",
    "default_flow",
    "priority",
    "rate_limit",
];
const COMMAND_KEYS: &[&str] = &["agent", "fleet", "flow", "description", "params"];
const RATE_LIMIT_KEYS: &[&str] = &["per", "events_per_minute", "burst"];
const CALLBACK_KEYS: &[&str] = &["url", "secret_env"];
/// Longest `spec.callback.url`.
pub const MAX_CALLBACK_URL_LEN: usize = 2048;
/// Longest `spec.callback.secret_env`.
pub const MAX_CALLBACK_ENV_LEN: usize = 128;

/// `spec.callback`: where the cluster POSTs a signed notice when a job of this
/// trigger completes or is dead-lettered (see `sm::outbox`). The secret itself is
/// never stored: the sending node reads the variable `secret_env` at send time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Name of the environment variable holding the HMAC secret.
    pub secret_env: String,
}

/// How urgent a trigger's deliveries are. `Ord`: `Low < Normal < High < Critical`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

impl Priority {
    /// The spelling used in Trigger documents: `low`, `normal`, `high`, `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Parse `low`/`normal`/`high`/`critical`, ignoring ASCII case.
    pub fn parse(s: &str) -> Option<Priority> {
        [Priority::Low, Priority::Normal, Priority::High, Priority::Critical]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a route starts: an AOF Agent, Fleet or Flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetKind {
    Agent,
    Fleet,
    Flow,
}

impl TargetKind {
    /// The key used in Trigger documents: `agent`, `fleet`, `flow`.
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetKind::Agent => "agent",
            TargetKind::Fleet => "fleet",
            TargetKind::Flow => "flow",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a matched delivery goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub kind: TargetKind,
    pub name: String,
    /// The command's `params` as canonical JSON (object keys sorted, no whitespace);
    /// `"{}"` when the command has none.
    pub params_json: String,
}

/// What a rate limit counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RateLimitScope {
    /// One bucket per organization (the repository owner for user repositories).
    Org,
    /// One bucket per repository.
    Repo,
}

/// `spec.config.rate_limit`: a token bucket refilled at `events_per_minute` with room
/// for `burst` deliveries. Parsed here, enforced by the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per: RateLimitScope,
    pub events_per_minute: u32,
    pub burst: u32,
}

/// A Trigger document that failed validation: `path` locates the problem
/// (`spec.config.repositories[1]`, `spec.commands["/deploy staging"].agent`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TriggerError {
    pub path: String,
    pub message: String,
}

/// One entry of `commands`, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandRoute {
    /// The key as routed and reported in [`MatchResult::command`](super::MatchResult):
    /// slash commands with whitespace normalized (`/deploy staging`), event keys
    /// lowercased (`pull_request.opened`).
    pub key: String,
    pub route: Route,
    pub description: Option<String>,
    pub(super) pattern: CommandPattern,
}

/// How a command key is matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CommandPattern {
    /// Words of a slash command, lowercased: `["/deploy", "staging"]`.
    Slash(Vec<String>),
    /// `event` or `event.action`, lowercased.
    Event(EventPattern),
}

/// A `github_events` entry or an event command key, lowercased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct EventPattern {
    /// Event name, or `*` for any event.
    pub(super) event: String,
    pub(super) action: Option<String>,
}

/// Compiled globs plus their source patterns (for `Debug`: a `GlobSet`'s own `Debug`
/// dumps regex automata).
#[derive(Clone)]
pub(super) struct Globs {
    pub(super) set: GlobSet,
    patterns: Vec<String>,
}

impl Globs {
    pub(super) fn is_match(&self, candidate: &str) -> bool {
        self.set.is_match(candidate)
    }
}

impl fmt::Debug for Globs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.patterns).finish()
    }
}

/// The compiled filters of a GitHub trigger; empty / `None` means "no filter".
#[derive(Clone, Debug, Default)]
pub(super) struct Filters {
    pub(super) events: Vec<EventPattern>,
    /// Lowercased.
    pub(super) actions: Vec<String>,
    pub(super) repositories: Option<Globs>,
    pub(super) branches: Option<Globs>,
    /// Lowercased logins.
    pub(super) allowed_users: Vec<String>,
    /// Lowercased runner labels.
    pub(super) labels: Vec<String>,
}

/// A Trigger document compiled and ready to match. Build it with [`parse_trigger`].
#[derive(Clone, Debug)]
pub struct Trigger {
    /// The registry name.
    pub name: String,
    /// `spec.enabled` (default true). [`match_event`](super::match_event) skips
    /// disabled triggers.
    pub enabled: bool,
    /// `spec.priority` or `spec.config.priority` (default normal).
    pub priority: Priority,
    /// `spec.config.webhook_secret` as written, possibly `${ENV}`; expand it at the
    /// edge with [`expand_env`](super::secrets::expand_env), never in `apply`.
    pub webhook_secret: Option<String>,
    /// `spec.config.rate_limit`.
    pub rate_limit: Option<RateLimit>,
    /// `spec.callback`.
    pub callback: Option<Callback>,
    /// `spec.type` in AOF's canonical spelling (`GitHub`, `Slack`, ...).
    pub trigger_type: String,
    pub(super) filters: Filters,
    pub(super) commands: Vec<CommandRoute>,
    pub(super) default_route: Option<Route>,
}

impl Trigger {
    /// Whether this is a GitHub trigger; other AOF types never match a GitHub event.
    pub fn is_github(&self) -> bool {
        self.trigger_type == "GitHub"
    }

    /// The `commands` entries, sorted by key.
    pub fn commands(&self) -> &[CommandRoute] {
        &self.commands
    }

    /// The route for deliveries no command routes (`default_agent` / `default_fleet`
    /// / `default_flow`).
    pub fn default_route(&self) -> Option<&Route> {
        self.default_route.as_ref()
    }
}

type Res<T> = Result<T, TriggerError>;

fn fail<T>(path: impl Into<String>, message: impl Into<String>) -> Res<T> {
    Err(TriggerError { path: path.into(), message: message.into() })
}

/// `base.key`, or `base["key"]` when the key is not a plain identifier.
fn child(base: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (base.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{base}.{key}"),
        (_, false) => format!("{base}[{}]", serde_json::Value::from(key)),
    }
}

fn index(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// A key of `obj`, treating YAML `null` as absent.
fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn as_object<'a>(v: &'a Value, path: &str) -> Res<&'a Map<String, Value>> {
    v.as_object().map_or_else(|| fail(path, format!("expected a mapping, found {}", type_name(v))), Ok)
}

fn as_string<'a>(v: &'a Value, path: &str) -> Res<&'a str> {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => fail(path, "must not be empty"),
        None => fail(path, format!("expected a string, found {}", type_name(v))),
    }
}

fn as_bool(v: &Value, path: &str) -> Res<bool> {
    v.as_bool().map_or_else(|| fail(path, format!("expected true or false, found {}", type_name(v))), Ok)
}

/// A list of non-empty strings, each with its path.
fn string_list<'a>(v: &'a Value, path: &str) -> Res<Vec<(String, &'a str)>> {
    let Some(items) = v.as_array() else {
        return fail(path, format!("expected a list of strings, found {}", type_name(v)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let p = index(path, i);
            as_string(item, &p).map(|s| (p, s.trim()))
        })
        .collect()
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn suggestion(key: &str, known: &[&str]) -> Option<String> {
    let special = match key {
        "events" => Some("github_events"),
        "users" | "allowed_user" => Some("allowed_users"),
        "repos" | "repository" => Some("repositories"),
        "secret" => Some("webhook_secret"),
        _ => None,
    };
    if let Some(s) = special.filter(|s| known.contains(s)) {
        return Some(s.to_string());
    }
    known
        .iter()
        .map(|k| (edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k.to_string())
}

/// Reject keys of `obj` that are not in `known`.
fn check_keys(obj: &Map<String, Value>, base: &str, known: &[&str], what: &str) -> Res<()> {
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            let hint = suggestion(key, known).map(|s| format!("did you mean {s:?}? ")).unwrap_or_default();
            return fail(child(base, key), format!("unknown key in {what}; {hint}known keys: {}", known.join(", ")));
        }
    }
    Ok(())
}

/// Canonical JSON: object keys sorted, no insignificant whitespace. Independent of
/// `serde_json`'s `preserve_order` feature, so every replica stores the same bytes.
pub(crate) fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<(&String, &Value)> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, val)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::from(k.as_str()).to_string());
                    out.push(':');
                    write(val, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn is_event_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Parse `event` / `event.action` (lowercased); `allow_star` admits `*`.
fn event_pattern(raw: &str, path: &str, allow_star: bool) -> Res<EventPattern> {
    let s = raw.trim().to_ascii_lowercase();
    if allow_star && s == "*" {
        return Ok(EventPattern { event: s, action: None });
    }
    let (event, action) = match s.split_once('.') {
        Some((e, a)) => (e.to_string(), Some(a.to_string())),
        None => (s.clone(), None),
    };
    if !is_event_word(&event) || action.as_deref().is_some_and(|a| !is_event_word(a)) {
        return fail(
            path,
            format!(
                "{raw:?} is not a GitHub event: use the X-GitHub-Event name, optionally with an action \
                 (\"push\", \"pull_request\", \"pull_request.opened\"){}",
                if allow_star { " or \"*\"" } else { "" }
            ),
        );
    }
    Ok(EventPattern { event, action })
}

fn compile_globs(pats: &[(String, String)], case_insensitive: bool) -> Res<Option<Globs>> {
    if pats.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for (path, pat) in pats {
        let glob = GlobBuilder::new(pat)
            .case_insensitive(case_insensitive)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| TriggerError { path: path.clone(), message: format!("invalid glob pattern: {e}") })?;
        set.add(glob);
    }
    match set.build() {
        Ok(set) => Ok(Some(Globs { set, patterns: pats.iter().map(|(_, p)| p.clone()).collect() })),
        Err(e) => fail(pats[0].0.clone(), format!("invalid glob patterns: {e}")),
    }
}

fn repository_patterns(list: Vec<(String, &str)>) -> Res<Vec<(String, String)>> {
    list.into_iter()
        .map(|(path, pat)| {
            if pat == "*" {
                return Ok((path, "*/*".to_string()));
            }
            if pat.matches('/').count() != 1 || pat.starts_with('/') || pat.ends_with('/') {
                return fail(
                    path,
                    format!(
                        "{pat:?} is not an owner/name pattern: write \"myorg/api\", \"myorg/*\", \
                         \"myorg/prefix-*\", or \"*\" for every repository"
                    ),
                );
            }
            Ok((path, pat.to_string()))
        })
        .collect()
}

fn branch_patterns(list: Vec<(String, &str)>) -> Res<Vec<(String, String)>> {
    list.into_iter()
        .map(|(path, pat)| {
            let pat = pat.strip_prefix("refs/heads/").unwrap_or(pat);
            if pat.starts_with("refs/") {
                return fail(
                    path,
                    format!(
                        "{pat:?}: branches are matched by branch name (\"main\", \"release/*\"); \
                         tag pushes have no branch, so a branches filter never matches them"
                    ),
                );
            }
            if pat.is_empty() {
                return fail(path, "must not be empty");
            }
            Ok((path, pat.to_string()))
        })
        .collect()
}

fn login_list(list: Vec<(String, &str)>, what: &str) -> Res<Vec<String>> {
    list.into_iter()
        .map(|(path, s)| {
            if s.chars().any(char::is_whitespace) {
                return fail(path, format!("{s:?}: a {what} has no whitespace"));
            }
            Ok(s.to_lowercase())
        })
        .collect()
}

/// Parse one command entry `{agent|fleet|flow: NAME, description?, params?}`.
fn command_route(v: &Value, path: &str) -> Res<(Route, Option<String>)> {
    let obj = as_object(v, path)?;
    check_keys(obj, path, COMMAND_KEYS, "a command")?;
    let mut target: Option<(TargetKind, &str)> = None;
    for (key, kind) in [("agent", TargetKind::Agent), ("fleet", TargetKind::Fleet), ("flow", TargetKind::Flow)] {
        if let Some(v) = get(obj, key) {
            let p = child(path, key);
            let name = as_string(v, &p)?;
            if let Some((prev, _)) = &target {
                return fail(p, format!("a command routes to exactly one target, but both {prev} and {key} are set"));
            }
            target = Some((kind, name.trim()));
        }
    }
    let Some((kind, name)) = target else {
        return fail(path, "a command needs exactly one of agent, fleet or flow");
    };
    let description = match get(obj, "description") {
        Some(v) => Some(
            v.as_str()
                .map_or_else(
                    || fail(child(path, "description"), format!("expected a string, found {}", type_name(v))),
                    Ok,
                )?
                .to_string(),
        ),
        None => None,
    };
    let params_json = get(obj, "params").map_or_else(|| "{}".to_string(), canonical_json);
    Ok((Route { kind, name: name.to_string(), params_json }, description))
}

/// Parse a `commands` mapping found at `path`, adding to `out` (keyed by the
/// lowercased normalized key, to catch duplicates across both places).
fn commands_into(v: &Value, path: &str, out: &mut BTreeMap<String, (String, CommandRoute)>) -> Res<()> {
    let obj = as_object(v, path)?;
    for (raw_key, entry) in obj {
        let p = child(path, raw_key);
        let trimmed = raw_key.trim();
        let (key, pattern) = if trimmed.starts_with('/') {
            let words: Vec<&str> = trimmed.split_whitespace().collect();
            if words[0].len() < 2 {
                return fail(p, "a slash command needs a name after '/', e.g. \"/review\"");
            }
            let pattern = CommandPattern::Slash(words.iter().map(|w| w.to_lowercase()).collect());
            (words.join(" "), pattern)
        } else {
            let ev = event_pattern(trimmed, &p, false).map_err(|_| TriggerError {
                path: p.clone(),
                message: format!(
                    "{raw_key:?} is neither a slash command (\"/review\", \"/deploy staging\") nor an event \
                     (\"push\", \"pull_request.opened\")"
                ),
            })?;
            let key = match &ev.action {
                Some(a) => format!("{}.{a}", ev.event),
                None => ev.event.clone(),
            };
            (key, CommandPattern::Event(ev))
        };
        let (route, description) = command_route(entry, &p)?;
        let dedup = key.to_lowercase();
        if let Some((first, _)) = out.get(&dedup) {
            return fail(p, format!("duplicate command: {first} already defines {key:?}"));
        }
        out.insert(dedup, (p, CommandRoute { key, route, description, pattern }));
    }
    Ok(())
}

/// A value that may be set in exactly one of several places.
fn one_of<'a>(places: &[(&'a Map<String, Value>, &str, &str)]) -> Res<Option<(String, &'a Value)>> {
    let mut found: Option<(String, &'a Value)> = None;
    for (obj, base, key) in places {
        if let Some(v) = get(obj, key) {
            let p = child(base, key);
            if let Some((prev, _)) = &found {
                return fail(p, format!("also set at {prev}; set it in one place"));
            }
            found = Some((p, v));
        }
    }
    Ok(found)
}

fn positive_u32(v: &Value, path: &str) -> Res<u32> {
    match v.as_u64() {
        Some(n) if n >= 1 => u32::try_from(n).map_or_else(|_| fail(path, "too large (at most 4294967295)"), Ok),
        _ => fail(
            path,
            format!(
                "expected a positive integer, found {}",
                if v.is_number() { v.to_string() } else { type_name(v).to_string() }
            ),
        ),
    }
}

fn rate_limit(v: &Value, path: &str) -> Res<RateLimit> {
    let obj = as_object(v, path)?;
    check_keys(obj, path, RATE_LIMIT_KEYS, "rate_limit")?;
    let per = match get(obj, "per") {
        None => RateLimitScope::Repo,
        Some(v) => {
            let p = child(path, "per");
            match as_string(v, &p)?.trim().to_ascii_lowercase().as_str() {
                "org" | "organization" => RateLimitScope::Org,
                "repo" | "repository" => RateLimitScope::Repo,
                other => return fail(p, format!("{other:?}: expected org or repo")),
            }
        }
    };
    let Some(epm) = get(obj, "events_per_minute") else {
        return fail(child(path, "events_per_minute"), "required");
    };
    let events_per_minute = positive_u32(epm, &child(path, "events_per_minute"))?;
    let burst = match get(obj, "burst") {
        Some(v) => positive_u32(v, &child(path, "burst"))?,
        None => events_per_minute,
    };
    Ok(RateLimit { per, events_per_minute, burst })
}

fn parse_callback(v: &Value, path: &str) -> Res<Callback> {
    let obj = as_object(v, path)?;
    check_keys(obj, path, CALLBACK_KEYS, "callback")?;
    let (url_path, env_path) = (child(path, "url"), child(path, "secret_env"));
    let Some(url) = get(obj, "url") else {
        return fail(url_path, "required: the http:// or https:// URL notices are POSTed to");
    };
    let url = as_string(url, &url_path)?.trim();
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    if host.is_none_or(|h| h.is_empty() || h.starts_with(':')) {
        return fail(url_path, format!("{url:?}: expected an http:// or https:// URL with a host"));
    }
    if url.len() > MAX_CALLBACK_URL_LEN || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail(url_path, format!("at most {MAX_CALLBACK_URL_LEN} characters, without spaces or control characters"));
    }
    let Some(env) = get(obj, "secret_env") else {
        return fail(env_path, "required: the environment variable (on every node) holding the HMAC secret notices are signed with");
    };
    let env = as_string(env, &env_path)?.trim();
    let ok = env.len() <= MAX_CALLBACK_ENV_LEN
        && env.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return fail(env_path, format!("{env:?}: expected an environment variable name (A-Z, a-z, 0-9, _; not starting with a digit; at most {MAX_CALLBACK_ENV_LEN})"));
    }
    Ok(Callback { url: url.to_string(), secret_env: env.to_string() })
}

/// The `spec.callback` of a stored (already validated) Trigger document, if any.
pub fn callback_of(doc_json: &str) -> Option<Callback> {
    let doc: Value = serde_json::from_str(doc_json).ok()?;
    parse_callback(doc.get("spec")?.get("callback").filter(|v| !v.is_null())?, "spec.callback").ok()
}

fn string_map(v: &Value, path: &str) -> Res<()> {
    for (k, val) in as_object(v, path)? {
        if !val.is_string() {
            return fail(child(path, k), format!("expected a string, found {}", type_name(val)));
        }
    }
    Ok(())
}

/// Parse and validate a Trigger document (already decoded from YAML/JSON) registered
/// under `name`, and compile it for matching. See the module docs for the format.
///
/// # Errors
///
/// A [`TriggerError`] whose `path` locates the first problem found: an unknown key,
/// a value of the wrong type, a bad glob, a command with zero or two targets, ...
pub fn parse_trigger(name: &str, doc: &Value) -> Result<Trigger, TriggerError> {
    let Some(root) = doc.as_object() else {
        return fail(
            "document",
            format!(
                "a Trigger document must be a mapping with apiVersion, kind, metadata and spec, found {}",
                type_name(doc)
            ),
        );
    };
    check_keys(root, "", DOC_KEYS, "a Trigger document")?;
    if let Some(v) = get(root, "apiVersion") {
        if v.as_str() != Some(API_VERSION) {
            return fail("apiVersion", format!("expected {API_VERSION:?}, found {v}"));
        }
    }
    if let Some(v) = get(root, "kind") {
        if v.as_str() != Some(KIND) {
            return fail("kind", format!("expected {KIND:?}, found {v}"));
        }
    }
    if let Some(meta) = get(root, "metadata") {
        let meta = as_object(meta, "metadata")?;
        if let Some(v) = get(meta, "name") {
            if v.as_str() != Some(name) {
                return fail("metadata.name", format!("{v} does not match the trigger's registry name {name:?}"));
            }
        }
        for key in ["labels", "annotations"] {
            if let Some(v) = get(meta, key) {
                string_map(v, &child("metadata", key))?;
            }
        }
    }
    let Some(spec) = get(root, "spec") else {
        return fail("spec", "required: a mapping with at least `type: GitHub`");
    };
    let spec = as_object(spec, "spec")?;
    check_keys(spec, "spec", SPEC_KEYS, "spec")?;

    let Some(ty) = get(spec, "type") else {
        return fail("spec.type", "required (e.g. `type: GitHub`)");
    };
    let ty = as_string(ty, "spec.type")?.trim();
    let Some(trigger_type) = AOF_TRIGGER_TYPES.iter().find(|t| t.eq_ignore_ascii_case(ty)) else {
        return fail(
            "spec.type",
            format!(
                "unknown trigger type {ty:?}; AOF's types are {} (aof-cluster serves GitHub)",
                AOF_TRIGGER_TYPES.join(", ")
            ),
        );
    };
    let enabled = get(spec, "enabled").map_or(Ok(true), |v| as_bool(v, "spec.enabled"))?;
    let callback = get(spec, "callback").map(|v| parse_callback(v, "spec.callback")).transpose()?;

    let mut trigger = Trigger {
        name: name.to_string(),
        enabled,
        priority: Priority::Normal,
        webhook_secret: None,
        rate_limit: None,
        callback,
        trigger_type: trigger_type.to_string(),
        filters: Filters::default(),
        commands: Vec::new(),
        default_route: None,
    };
    if !trigger.is_github() {
        return Ok(trigger);
    }

    let empty = Map::new();
    let config = match get(spec, "config") {
        Some(v) => as_object(v, "spec.config")?,
        None => &empty,
    };
    check_keys(config, "spec.config", CONFIG_KEYS, "spec.config of a GitHub trigger")?;
    let list = |key: &str| -> Res<Vec<(String, &str)>> {
        get(config, key).map_or(Ok(Vec::new()), |v| string_list(v, &child(CONFIG, key)))
    };

    if let Some(v) = get(config, "webhook_secret") {
        trigger.webhook_secret = Some(as_string(v, &child(CONFIG, "webhook_secret"))?.to_string());
    }

    let filters = &mut trigger.filters;
    filters.events = list("github_events")?.into_iter().map(|(p, s)| event_pattern(s, &p, true)).collect::<Res<_>>()?;
    filters.actions = list("actions")?
        .into_iter()
        .map(|(p, s)| {
            let a = s.to_ascii_lowercase();
            if is_event_word(&a) {
                Ok(a)
            } else {
                fail(p, format!("{s:?} is not an action name (e.g. opened, synchronize, created)"))
            }
        })
        .collect::<Res<_>>()?;
    let repos = match one_of(&[(config, CONFIG, "repositories"), (config, CONFIG, "allowed_repos")])? {
        Some((p, v)) => string_list(v, &p)?,
        None => Vec::new(),
    };
    filters.repositories = compile_globs(&repository_patterns(repos)?, true)?;
    filters.branches = compile_globs(&branch_patterns(list("branches")?)?, false)?;
    filters.allowed_users = login_list(list("allowed_users")?, "GitHub login")?;
    filters.labels = login_list(list("labels")?, "runner label")?;

    let mut commands = BTreeMap::new();
    if let Some(v) = get(spec, "commands") {
        commands_into(v, "spec.commands", &mut commands)?;
    }
    if let Some(v) = get(config, "commands") {
        commands_into(v, &child(CONFIG, "commands"), &mut commands)?;
    }
    trigger.commands = commands.into_values().map(|(_, c)| c).collect();

    let defaults = [
        (TargetKind::Agent, "default_agent", "defaultAgent"),
        (TargetKind::Fleet, "default_fleet", "defaultFleet"),
        (TargetKind::Flow, "default_flow", "defaultFlow"),
    ];
    for (kind, snake, camel) in defaults {
        let found = one_of(&[(spec, "spec", snake), (spec, "spec", camel), (config, CONFIG, snake)])?;
        if let Some((p, v)) = found {
            let target = as_string(v, &p)?.trim().to_string();
            if trigger.default_route.is_none() {
                trigger.default_route = Some(Route { kind, name: target, params_json: "{}".into() });
            }
        }
    }

    if let Some((p, v)) = one_of(&[(spec, "spec", "priority"), (config, CONFIG, "priority")])? {
        let s = as_string(v, &p)?;
        trigger.priority = Priority::parse(s)
            .map_or_else(|| fail(&p, format!("{s:?}: expected critical, high, normal or low")), Ok)?;
    }
    if let Some(v) = get(config, "rate_limit") {
        trigger.rate_limit = Some(rate_limit(v, &child(CONFIG, "rate_limit"))?);
    }
    Ok(trigger)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn yaml(s: &str) -> Value {
        serde_yaml::from_str(s).expect("test YAML parses")
    }

    fn parse_err(doc: Value) -> TriggerError {
        parse_trigger("t", &doc).expect_err("should fail")
    }

    fn spec(config: Value) -> Value {
        json!({"apiVersion": "aof.dev/v1", "kind": "Trigger", "metadata": {"name": "t"}, "spec": {"type": "GitHub", "config": config}})
    }

    #[test]
    fn parses_the_seed_backend_example() {
        let doc = yaml(
            r#"
apiVersion: aof.dev/v1
kind: Trigger
metadata:
  name: backend-pr-bot
  labels:
    team: backend
spec:
  type: GitHub
  config:
    webhook_secret: ${GITHUB_WEBHOOK_SECRET}
    repositories:
      - "myorg/api-server"
      - "myorg/data-pipeline"
    allowed_users: ["alice", "bob", "charlie"]
    commands:
      pull_request.opened:
        fleet: backend-review-fleet
      /review:
        fleet: backend-review-fleet
      /deploy staging:
        flow: deploy-backend-staging
      /deploy production:
        flow: deploy-backend-prod
        params:
          require_approval: true
          approvers: ["platform-lead", "sre-oncall"]
    default_agent: backend-helper
"#,
        );
        let t = parse_trigger("backend-pr-bot", &doc).unwrap();
        assert!(t.enabled && t.is_github());
        assert_eq!(t.priority, Priority::Normal);
        assert_eq!(t.webhook_secret.as_deref(), Some("${GITHUB_WEBHOOK_SECRET}"));
        let keys: Vec<&str> = t.commands().iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["/deploy production", "/deploy staging", "/review", "pull_request.opened"]);
        let prod = &t.commands()[0].route;
        assert_eq!(prod.kind, TargetKind::Flow);
        assert_eq!(prod.params_json, r#"{"approvers":["platform-lead","sre-oncall"],"require_approval":true}"#);
        assert_eq!(t.commands()[2].route.params_json, "{}");
        assert_eq!(
            t.default_route(),
            Some(&Route { kind: TargetKind::Agent, name: "backend-helper".into(), params_json: "{}".into() })
        );
    }

    #[test]
    fn spec_level_commands_and_camel_case_defaults() {
        let doc = yaml(
            "spec:\n  type: github\n  enabled: false\n  priority: Critical\n  config:\n    github_events: [push]\n  commands:\n    push: {flow: deploy}\n  defaultFleet: helpers\n",
        );
        let t = parse_trigger("t", &doc).unwrap();
        assert!(!t.enabled);
        assert_eq!(t.trigger_type, "GitHub");
        assert_eq!(t.priority, Priority::Critical);
        assert_eq!(t.commands()[0].key, "push");
        assert_eq!(t.default_route().unwrap().kind, TargetKind::Fleet);
    }

    #[test]
    fn default_precedence_is_agent_fleet_flow() {
        let doc = spec(json!({"default_flow": "f", "default_fleet": "fl"}));
        assert_eq!(parse_trigger("t", &doc).unwrap().default_route().unwrap().name, "fl");
    }

    #[test]
    fn empty_config_and_null_values_are_fine() {
        let t = parse_trigger("t", &yaml("spec:\n  type: GitHub\n  config:\n")).unwrap();
        assert!(t.filters.events.is_empty() && t.filters.repositories.is_none() && t.commands.is_empty());
        let t = parse_trigger("t", &spec(json!({"github_events": null, "repositories": []}))).unwrap();
        assert!(t.filters.events.is_empty() && t.filters.repositories.is_none());
    }

    #[test]
    fn other_aof_types_parse_but_are_not_github() {
        let doc = yaml("spec:\n  type: Slack\n  config:\n    bot_token: x\n    channels: [prod]\n");
        let t = parse_trigger("t", &doc).unwrap();
        assert!(!t.is_github());
        assert_eq!(t.trigger_type, "Slack");
        assert_eq!(parse_err(yaml("spec:\n  type: Githb\n")).path, "spec.type");
    }

    #[test]
    fn callback_parses_and_is_validated() {
        let with = |cb: Value| {
            json!({"apiVersion": "aof.dev/v1", "kind": "Trigger", "spec": {"type": "GitHub", "callback": cb}})
        };
        let t = parse_trigger("t", &with(json!({"url": "https://ci.example/hooks/aof", "secret_env": "AOF_CB_SECRET"}))).unwrap();
        let cb = Callback { url: "https://ci.example/hooks/aof".into(), secret_env: "AOF_CB_SECRET".into() };
        assert_eq!(t.callback, Some(cb.clone()));
        assert_eq!(callback_of(&with(json!({"url": cb.url, "secret_env": cb.secret_env})).to_string()), Some(cb));
        assert_eq!(parse_trigger("t", &spec(json!({}))).unwrap().callback, None);
        assert_eq!(callback_of(&spec(json!({})).to_string()), None);
        for (cb, path, want) in [
            (json!({"url": "ftp://x/y", "secret_env": "S"}), "spec.callback.url", "http"),
            (json!({"url": "https://", "secret_env": "S"}), "spec.callback.url", "host"),
            (json!({"url": "http://a b/", "secret_env": "S"}), "spec.callback.url", "spaces"),
            (json!({"url": "http://a/"}), "spec.callback.secret_env", "required"),
            (json!({"secret_env": "S"}), "spec.callback.url", "required"),
            (json!({"url": "http://a/", "secret_env": "1BAD"}), "spec.callback.secret_env", "variable name"),
            (json!({"url": "http://a/", "secret_env": "A-B"}), "spec.callback.secret_env", "variable name"),
            (json!({"url": "http://a/", "secret_env": "S", "secret": "x"}), "spec.callback.secret", "unknown key"),
            (json!("http://a/"), "spec.callback", "mapping"),
        ] {
            let e = parse_err(with(cb.clone()));
            assert_eq!(e.path, path, "{cb}: {e}");
            assert!(e.message.contains(want), "{cb}: {e}");
        }
    }

    #[test]
    fn rate_limit_parses_with_defaults() {
        let t = parse_trigger("t", &spec(json!({"rate_limit": {"per": "org", "events_per_minute": 30, "burst": 5}})))
            .unwrap();
        assert_eq!(t.rate_limit, Some(RateLimit { per: RateLimitScope::Org, events_per_minute: 30, burst: 5 }));
        let t = parse_trigger("t", &spec(json!({"rate_limit": {"events_per_minute": 60}}))).unwrap();
        assert_eq!(t.rate_limit, Some(RateLimit { per: RateLimitScope::Repo, events_per_minute: 60, burst: 60 }));
    }

    #[test]
    fn error_paths_are_exact() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (spec(json!({"repositores": ["a/b"]})), "spec.config.repositores", "did you mean \"repositories\""),
            (spec(json!({"events": ["push"]})), "spec.config.events", "github_events"),
            (
                spec(json!({"commands": {"/deploy": {"agent": "a", "flow": "f"}}})),
                "spec.config.commands[\"/deploy\"].flow",
                "exactly one target",
            ),
            (
                spec(json!({"commands": {"/deploy": {"description": "x"}}})),
                "spec.config.commands[\"/deploy\"]",
                "exactly one",
            ),
            (
                spec(json!({"commands": {"/deploy": {"agnet": "a"}}})),
                "spec.config.commands[\"/deploy\"].agnet",
                "did you mean \"agent\"",
            ),
            (
                spec(json!({"commands": {"deploy now": {"agent": "a"}}})),
                "spec.config.commands[\"deploy now\"]",
                "neither a slash command",
            ),
            (spec(json!({"repositories": ["myorg/api", "myorg/[web"]})), "spec.config.repositories[1]", "invalid glob"),
            (spec(json!({"repositories": ["myorg"]})), "spec.config.repositories[0]", "owner/name"),
            (spec(json!({"branches": ["main", "release/{a,b"]})), "spec.config.branches[1]", "invalid glob"),
            (spec(json!({"branches": ["refs/tags/v*"]})), "spec.config.branches[0]", "tag pushes"),
            (spec(json!({"priority": "urgent"})), "spec.config.priority", "expected critical, high, normal or low"),
            (
                spec(json!({"github_events": ["push", "pull request"]})),
                "spec.config.github_events[1]",
                "not a GitHub event",
            ),
            (spec(json!({"github_events": "push"})), "spec.config.github_events", "expected a list"),
            (spec(json!({"allowed_users": ["alice", 7]})), "spec.config.allowed_users[1]", "expected a string"),
            (
                spec(json!({"rate_limit": {"per": "team", "events_per_minute": 1}})),
                "spec.config.rate_limit.per",
                "org or repo",
            ),
            (spec(json!({"rate_limit": {"per": "org"}})), "spec.config.rate_limit.events_per_minute", "required"),
            (
                spec(json!({"rate_limit": {"events_per_minute": 0}})),
                "spec.config.rate_limit.events_per_minute",
                "positive",
            ),
            (
                spec(json!({"repositories": ["a/b"], "allowed_repos": ["a/c"]})),
                "spec.config.allowed_repos",
                "one place",
            ),
            (spec(json!({"webhook_secret": ""})), "spec.config.webhook_secret", "empty"),
            (json!({"spec": {"type": "GitHub", "filters": {}}}), "spec.filters", "unknown key in spec"),
            (
                json!({"spec": {"type": "GitHub", "default_agent": "a", "defaultAgent": "b"}}),
                "spec.defaultAgent",
                "one place",
            ),
            (
                json!({"spec": {"type": "GitHub", "priority": "high", "config": {"priority": "low"}}}),
                "spec.config.priority",
                "one place",
            ),
            (json!({"spec": {"type": "GitHub", "enabled": "yes"}}), "spec.enabled", "true or false"),
            (json!({"spec": {"config": {}}}), "spec.type", "required"),
            (json!({"kind": "Trigger"}), "spec", "required"),
            (json!({"kind": "Agent", "spec": {"type": "GitHub"}}), "kind", "Trigger"),
            (json!({"apiVersion": "v2", "spec": {"type": "GitHub"}}), "apiVersion", "aof.dev/v1"),
            (json!({"metadata": {"name": "other"}, "spec": {"type": "GitHub"}}), "metadata.name", "registry name"),
            (json!({"specs": {}}), "specs", "did you mean \"spec\""),
            (json!([1]), "document", "mapping"),
        ];
        for (doc, path, msg) in cases {
            let e = parse_err(doc);
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains(msg), "{e} should mention {msg:?}");
        }
    }

    #[test]
    fn duplicate_commands_across_places_are_rejected() {
        let doc = json!({"spec": {"type": "GitHub",
            "commands": {"/Deploy  staging": {"agent": "a"}},
            "config": {"commands": {"/deploy staging": {"agent": "b"}}}}});
        let e = parse_err(doc);
        assert_eq!(e.path, "spec.config.commands[\"/deploy staging\"]");
        assert!(e.message.contains("duplicate"), "{e}");
    }

    #[test]
    fn command_keys_are_normalized() {
        let doc =
            spec(json!({"commands": {"  /deploy   staging ": {"agent": "a"}, "Pull_Request.Opened": {"agent": "b"}}}));
        let t = parse_trigger("t", &doc).unwrap();
        let keys: Vec<&str> = t.commands().iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["/deploy staging", "pull_request.opened"]);
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v = json!({"b": [{"z": 1, "a": null}], "a": "x\"y", "c": 1.5});
        assert_eq!(canonical_json(&v), r#"{"a":"x\"y","b":[{"a":null,"z":1}],"c":1.5}"#);
    }

    #[test]
    fn priority_orders_critical_highest() {
        assert!(
            Priority::Critical > Priority::High
                && Priority::High > Priority::Normal
                && Priority::Normal > Priority::Low
        );
        assert_eq!(Priority::parse(" HIGH "), Some(Priority::High));
        assert_eq!(Priority::default(), Priority::Normal);
    }
}
