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
//!   `annotations`: it never changes behaviour. The unknown keys of a mapping are
//!   reported before any problem with its known keys.
//! * A YAML `null` (e.g. `config:` with nothing under it) counts as absent; a
//!   mapping is required wherever one is described (a list is not read field by
//!   field).
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
//! # How it is parsed
//!
//! The schema is a set of `#[derive(Deserialize)]` structs with
//! `deny_unknown_fields` (their field lists are the known keys, so the "did you
//! mean" hint of [`crate::suggest`] reads them from the derive); each single-field rule
//! (a glob compiles, an event name is well formed, a URL has a host) is the
//! `Deserialize` of that field's type; `serde_path_to_error` locates every error.
//! Only the rules that span fields are code in [`parse_trigger`]: one place per
//! setting (`repositories`/`allowed_repos`, `default_*` and `priority` in `spec` or
//! `spec.config`), `spec.commands` merged with `spec.config.commands` with unique
//! keys, exactly one target per command, and `metadata.name` equal to the registry
//! name.
//!
//! Everything here is pure: no IO, no clock, no environment. `webhook_secret` is kept
//! raw (e.g. `${GITHUB_WEBHOOK_SECRET}`); the edge expands it with
//! [`expand_env`](super::secrets::expand_env).

use std::collections::BTreeMap;
use std::fmt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, IgnoredAny, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

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

// ---------------------------------------------------------------------------------
// The schema, as serde derives. Every key a document may hold is a field below, so
// `deny_unknown_fields` rejects the rest and hands over the known keys for the hint;
// single-field rules (a glob compiles, a URL has a host) live in the `Deserialize`
// of the field's type, so serde_path_to_error locates them. Only the rules that span
// several fields are code, in `parse_trigger`.
// ---------------------------------------------------------------------------------

/// The whole document. `S` is [`GithubSpec`] or, for AOF's other trigger types,
/// [`OtherSpec`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a Trigger document: a mapping with apiVersion, kind, metadata and spec")]
struct Doc<S> {
    /// Checked by its type: must be `aof.dev/v1`.
    #[serde(rename = "apiVersion")]
    _api_version: Option<Exactly<ApiVersionTag>>,
    /// Checked by its type: must be `Trigger`.
    #[serde(rename = "kind")]
    _kind: Option<Exactly<KindTag>>,
    metadata: Option<Metadata>,
    spec: S,
}

/// `metadata`: only `name`, `labels` and `annotations` are read; other keys are left
/// alone (they never change behaviour).
#[derive(Deserialize)]
#[serde(expecting = "a mapping")]
struct Metadata {
    name: Option<Value>,
    #[serde(rename = "labels")]
    _labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "annotations")]
    _annotations: Option<BTreeMap<String, String>>,
}

/// `spec`, with its GitHub-only parts typed by `C` (config), `K` (commands) and `S`
/// (`priority` and the default targets): checked for GitHub triggers, skipped
/// ([`IgnoredAny`]) for AOF's other types.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with at least `type: GitHub`")]
struct Spec<C, K, S> {
    #[serde(rename = "type")]
    trigger_type: TriggerType,
    enabled: Option<Flag>,
    callback: Option<CallbackDoc>,
    config: Option<C>,
    commands: Option<K>,
    default_agent: Option<S>,
    #[serde(rename = "defaultAgent")]
    default_agent_camel: Option<S>,
    default_fleet: Option<S>,
    #[serde(rename = "defaultFleet")]
    default_fleet_camel: Option<S>,
    default_flow: Option<S>,
    #[serde(rename = "defaultFlow")]
    default_flow_camel: Option<S>,
    priority: Option<S>,
}

type GithubSpec = Spec<GithubConfig, Commands, NonEmpty>;
type OtherSpec = Spec<IgnoredAny, IgnoredAny, IgnoredAny>;

/// `spec.config` of a GitHub trigger.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping (the GitHub trigger's settings)")]
struct GithubConfig {
    /// Kept as written (not trimmed): it may be `${ENV}`.
    webhook_secret: Option<NonEmpty>,
    github_events: Option<List<EventFilter>>,
    actions: Option<List<ActionName>>,
    repositories: Option<List<RepoGlob>>,
    allowed_repos: Option<List<RepoGlob>>,
    branches: Option<List<BranchGlob>>,
    allowed_users: Option<List<Login>>,
    labels: Option<List<RunnerLabel>>,
    commands: Option<Commands>,
    default_agent: Option<NonEmpty>,
    default_fleet: Option<NonEmpty>,
    default_flow: Option<NonEmpty>,
    priority: Option<NonEmpty>,
    rate_limit: Option<RateLimitDoc>,
}

/// One `commands` entry: exactly one of `agent`, `fleet`, `flow` (checked in code).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with one of agent, fleet or flow")]
struct CommandDoc {
    agent: Option<NonEmpty>,
    fleet: Option<NonEmpty>,
    flow: Option<NonEmpty>,
    description: Option<String>,
    params: Option<Value>,
}

/// `spec.config.rate_limit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with per, events_per_minute and burst")]
struct RateLimitDoc {
    per: Option<Scope>,
    events_per_minute: Positive,
    burst: Option<Positive>,
}

/// `spec.callback`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with url and secret_env")]
struct CallbackDoc {
    url: CallbackUrl,
    secret_env: EnvName,
}

/// What a required key's "required" says it should hold.
fn required_hint(field: &str) -> &'static str {
    match field {
        "spec" => ": a mapping with at least `type: GitHub`",
        "type" => " (e.g. `type: GitHub`)",
        "url" => ": the http:// or https:// URL notices are POSTed to",
        "secret_env" => ": the environment variable (on every node) holding the HMAC secret notices are signed with",
        _ => "",
    }
}

/// Misspellings that are not near their key by edit distance.
fn synonym(key: &str) -> Option<&'static str> {
    match key {
        "events" => Some("github_events"),
        "users" | "allowed_user" => Some("allowed_users"),
        "repos" | "repository" => Some("repositories"),
        "secret" => Some("webhook_secret"),
        _ => None,
    }
}

// --- Field types: one rule each ----------------------------------------------------

/// A string that is not empty or blank (kept as written; [`NonEmpty::trimmed`]).
struct NonEmpty(String);

impl NonEmpty {
    fn trimmed(&self) -> &str {
        self.0.trim()
    }
}

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Err(de::Error::custom("must not be empty"));
        }
        Ok(NonEmpty(s))
    }
}

/// A non-empty string checked (and converted) by `check`, whose error is the message.
fn checked<'de, D: Deserializer<'de>, T>(d: D, check: impl FnOnce(&str) -> Result<T, String>) -> Result<T, D::Error> {
    let s = NonEmpty::deserialize(d)?;
    check(s.trimmed()).map_err(de::Error::custom)
}

/// A fixed string (`apiVersion`, `kind`).
trait Tag {
    const VALUE: &'static str;
}
struct ApiVersionTag;
impl Tag for ApiVersionTag {
    const VALUE: &'static str = API_VERSION;
}
struct KindTag;
impl Tag for KindTag {
    const VALUE: &'static str = KIND;
}

struct Exactly<T>(std::marker::PhantomData<T>);

impl<'de, T: Tag> Deserialize<'de> for Exactly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if v.as_str() != Some(T::VALUE) {
            return Err(de::Error::custom(format!("expected {:?}, found {v}", T::VALUE)));
        }
        Ok(Exactly(std::marker::PhantomData))
    }
}

/// `spec.type`: one of [`AOF_TRIGGER_TYPES`], any case; holds the canonical spelling.
struct TriggerType(&'static str);

impl<'de> Deserialize<'de> for TriggerType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |ty| {
            AOF_TRIGGER_TYPES.iter().find(|t| t.eq_ignore_ascii_case(ty)).map(|t| TriggerType(t)).ok_or_else(|| {
                format!(
                    "unknown trigger type {ty:?}; AOF's types are {} (aof-cluster serves GitHub)",
                    AOF_TRIGGER_TYPES.join(", ")
                )
            })
        })
    }
}

/// `true` or `false`.
struct Flag(bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Flag, E> {
                Ok(Flag(b))
            }
        }
        d.deserialize_bool(V)
    }
}

/// A list of strings, each an item of type `T`. An empty list is no filter.
struct List<T>(Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = List<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(List(items))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// A `github_events` entry: `event`, `event.action` or `*`.
struct EventFilter(EventPattern);

impl<'de> Deserialize<'de> for EventFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| event_pattern(s, true).map(EventFilter))
    }
}

/// An `actions` entry, lowercased.
struct ActionName(String);

impl<'de> Deserialize<'de> for ActionName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| {
            let a = s.to_ascii_lowercase();
            if is_event_word(&a) {
                Ok(ActionName(a))
            } else {
                Err(format!("{s:?} is not an action name (e.g. opened, synchronize, created)"))
            }
        })
    }
}

/// A glob, compiled, with its source pattern.
struct GlobItem {
    glob: globset::Glob,
    pattern: String,
}

fn glob_item(pattern: &str, case_insensitive: bool) -> Result<GlobItem, String> {
    let glob = GlobBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("invalid glob pattern: {e}"))?;
    Ok(GlobItem { glob, pattern: pattern.to_string() })
}

/// A `repositories` entry: an `owner/name` glob, case-insensitive; `*` is `*/*`.
struct RepoGlob(GlobItem);

impl<'de> Deserialize<'de> for RepoGlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |pat| {
            if pat == "*" {
                return glob_item("*/*", true).map(RepoGlob);
            }
            if pat.matches('/').count() != 1 || pat.starts_with('/') || pat.ends_with('/') {
                return Err(format!(
                    "{pat:?} is not an owner/name pattern: write \"myorg/api\", \"myorg/*\", \
                     \"myorg/prefix-*\", or \"*\" for every repository"
                ));
            }
            glob_item(pat, true).map(RepoGlob)
        })
    }
}

/// A `branches` entry: a branch-name glob, case-sensitive; `refs/heads/` is stripped.
struct BranchGlob(GlobItem);

impl<'de> Deserialize<'de> for BranchGlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |pat| {
            let pat = pat.strip_prefix("refs/heads/").unwrap_or(pat);
            if pat.starts_with("refs/") {
                return Err(format!(
                    "{pat:?}: branches are matched by branch name (\"main\", \"release/*\"); \
                     tag pushes have no branch, so a branches filter never matches them"
                ));
            }
            if pat.is_empty() {
                return Err("must not be empty".into());
            }
            glob_item(pat, false).map(BranchGlob)
        })
    }
}

fn no_whitespace(s: &str, what: &str) -> Result<String, String> {
    if s.chars().any(char::is_whitespace) {
        return Err(format!("{s:?}: a {what} has no whitespace"));
    }
    Ok(s.to_lowercase())
}

/// An `allowed_users` entry, lowercased.
struct Login(String);

impl<'de> Deserialize<'de> for Login {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| no_whitespace(s, "GitHub login").map(Login))
    }
}

/// A `labels` entry, lowercased.
struct RunnerLabel(String);

impl<'de> Deserialize<'de> for RunnerLabel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| no_whitespace(s, "runner label").map(RunnerLabel))
    }
}

/// A `commands` mapping, in document order; keys are checked in code (they are
/// normalized and must be unique across both places).
#[derive(Default)]
struct Commands(Vec<(String, CommandDoc)>);

impl<'de> Deserialize<'de> for Commands {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Commands;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of commands")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Commands, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Commands(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// `rate_limit.per`.
struct Scope(RateLimitScope);

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |s| match s.to_ascii_lowercase().as_str() {
            "org" | "organization" => Ok(Scope(RateLimitScope::Org)),
            "repo" | "repository" => Ok(Scope(RateLimitScope::Repo)),
            other => Err(format!("{other:?}: expected org or repo")),
        })
    }
}

/// An integer from 1 to `u32::MAX`.
struct Positive(u32);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Positive;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positive integer")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Positive, E> {
                match u32::try_from(n) {
                    Ok(0) => Err(E::custom("expected a positive integer, found 0")),
                    Ok(n) => Ok(Positive(n)),
                    Err(_) => Err(E::custom("too large (at most 4294967295)")),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Positive, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("expected a positive integer, found {n}"))),
                }
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Positive, E> {
                Err(E::custom(format!("expected a positive integer, found {}", Value::from(n))))
            }
        }
        d.deserialize_u64(V)
    }
}

/// `callback.url`: `http://` or `https://` with a host, no spaces, bounded.
struct CallbackUrl(String);

impl<'de> Deserialize<'de> for CallbackUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |url| {
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
            let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
            if host.is_none_or(|h| h.is_empty() || h.starts_with(':')) {
                return Err(format!("{url:?}: expected an http:// or https:// URL with a host"));
            }
            if url.len() > MAX_CALLBACK_URL_LEN || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("at most {MAX_CALLBACK_URL_LEN} characters, without spaces or control characters"));
            }
            Ok(CallbackUrl(url.to_string()))
        })
    }
}

/// `callback.secret_env`: an environment variable name.
struct EnvName(String);

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |env| {
            let ok = env.len() <= MAX_CALLBACK_ENV_LEN
                && env.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!(
                    "{env:?}: expected an environment variable name (A-Z, a-z, 0-9, _; not starting with a digit; \
                     at most {MAX_CALLBACK_ENV_LEN})"
                ));
            }
            Ok(EnvName(env.to_string()))
        })
    }
}

// --- Reading a `serde_json::Value` with typed errors ---------------------------------

/// What went wrong, as serde's derives report it — kept structured (no message
/// strings to pick apart): an unknown key comes with the keys its mapping knows.
#[derive(Debug)]
enum SchemaError {
    UnknownKey { key: String, known: &'static [&'static str] },
    Missing(&'static str),
    Invalid(String),
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemaError::UnknownKey { key, .. } => write!(f, "unknown key {key:?}"),
            SchemaError::Missing(field) => write!(f, "{field}: required"),
            SchemaError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for SchemaError {}

/// How a found value is named in messages.
fn found(u: de::Unexpected<'_>) -> String {
    use de::Unexpected as U;
    match u {
        U::Unit | U::Option => "null".into(),
        U::Bool(_) => "a boolean".into(),
        U::Unsigned(_) | U::Signed(_) | U::Float(_) => "a number".into(),
        U::Char(_) | U::Str(_) => "a string".into(),
        U::Seq => "a list".into(),
        U::Map => "a mapping".into(),
        other => other.to_string(),
    }
}

impl de::Error for SchemaError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        SchemaError::Invalid(msg.to_string())
    }
    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        SchemaError::Invalid(format!("expected {exp}, found {}", found(unexp)))
    }
    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        SchemaError::Invalid(format!("expected {exp}, found {unexp}"))
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        SchemaError::UnknownKey { key: field.to_string(), known: expected }
    }
    fn missing_field(field: &'static str) -> Self {
        SchemaError::Missing(field)
    }
    fn duplicate_field(field: &'static str) -> Self {
        SchemaError::Invalid(format!("{field} is set twice; set it once"))
    }
}

/// A `serde_json::Value` as a serde `Deserializer` whose errors are [`SchemaError`].
/// A struct's keys are read unknown ones first, then in the struct's declaration
/// order, so the first error reported does not depend on the document's key order.
/// Two rules of the format live here: a key whose value is `null` counts as absent
/// when the mapping knows it (so `config:` with nothing under it is no config, and a
/// required key set to null is "required"); and a mapping is required where a struct
/// is expected (serde's derives would otherwise take a list, field by field).
#[derive(Clone, Copy)]
struct Input<'a>(&'a Value);

impl Input<'_> {
    fn unexpected(&self) -> de::Unexpected<'_> {
        use de::Unexpected as U;
        match self.0 {
            Value::Null => U::Unit,
            Value::Bool(b) => U::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => U::Unsigned(u),
                (None, Some(i)) => U::Signed(i),
                _ => U::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => U::Str(s),
            Value::Array(_) => U::Seq,
            Value::Object(_) => U::Map,
        }
    }
}

impl<'de> IntoDeserializer<'de, SchemaError> for Input<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for Input<'de> {
    type Error = SchemaError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => visitor.visit_u64(u),
                (None, Some(i)) => visitor.visit_i64(i),
                _ => visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(Input));
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(map) => {
                let mut map = MapDeserializer::new(map.iter().map(|(k, v)| (k.as_str(), Input(v))));
                let out = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        let Value::Object(map) = self.0 else {
            return Err(de::Error::invalid_type(self.unexpected(), &visitor));
        };
        // Unknown keys first (a typo is reported before whatever its absence broke),
        // then the known ones in declaration order: the order of the checks.
        let rank = |k: &str| fields.iter().position(|f| *f == k).map_or(0, |p| p + 1);
        let mut present: Vec<(&String, &Value)> =
            map.iter().filter(|(k, v)| !(v.is_null() && fields.contains(&k.as_str()))).collect();
        present.sort_by_key(|(k, _)| rank(k));
        let mut map = MapDeserializer::new(present.into_iter().map(|(k, v)| (k.as_str(), Input(v))));
        let out = visitor.visit_map(&mut map)?;
        map.end()?;
        Ok(out)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf unit unit_struct seq tuple tuple_struct map enum identifier
    }
}

/// Deserialize `T` from `v`, found at `base`, into a [`TriggerError`] naming the
/// exact key (`spec.commands["/deploy"].agnet`) and, for an unknown key, the nearest
/// known one.
fn schema<'a, T: Deserialize<'a>>(v: &'a Value, base: &str) -> Res<T> {
    serde_path_to_error::deserialize(Input(v)).map_err(|e| {
        use serde_path_to_error::Segment;
        let (mut parent, mut path) = (String::new(), base.to_string());
        for seg in e.path().iter() {
            parent = path.clone();
            path = match seg {
                Segment::Seq { index: i } => index(&path, *i),
                Segment::Map { key } | Segment::Enum { variant: key } => child(&path, key),
                Segment::Unknown => child(&path, "?"),
            };
        }
        let located = |path: String| if path.is_empty() { "document".to_string() } else { path };
        match e.into_inner() {
            SchemaError::UnknownKey { key, known } => {
                // The path ends at the unknown key; name the mapping that holds it.
                if !path.ends_with(&child("", &key)) {
                    parent = path.clone();
                    path = child(&path, &key);
                }
                let hint = synonym(&key)
                    .filter(|s| known.contains(s))
                    .or_else(|| crate::suggest::did_you_mean(&key, known.iter().copied()))
                    .map(|s| format!("did you mean {s:?}? "))
                    .unwrap_or_default();
                let holder = if parent.is_empty() { "the Trigger document".to_string() } else { parent };
                TriggerError {
                    path,
                    message: format!("unknown key in {holder}; {hint}known keys: {}", known.join(", ")),
                }
            }
            SchemaError::Missing(field) => {
                TriggerError { path: child(&path, field), message: format!("required{}", required_hint(field)) }
            }
            SchemaError::Invalid(message) => TriggerError { path: located(path), message },
        }
    })
}

// --- Rules over the parsed document ----------------------------------------------

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
fn event_pattern(raw: &str, allow_star: bool) -> Result<EventPattern, String> {
    let s = raw.trim().to_ascii_lowercase();
    if allow_star && s == "*" {
        return Ok(EventPattern { event: s, action: None });
    }
    let (event, action) = match s.split_once('.') {
        Some((e, a)) => (e.to_string(), Some(a.to_string())),
        None => (s.clone(), None),
    };
    if !is_event_word(&event) || action.as_deref().is_some_and(|a| !is_event_word(a)) {
        return Err(format!(
            "{raw:?} is not a GitHub event: use the X-GitHub-Event name, optionally with an action \
             (\"push\", \"pull_request\", \"pull_request.opened\"){}",
            if allow_star { " or \"*\"" } else { "" }
        ));
    }
    Ok(EventPattern { event, action })
}

/// The globs of one filter list found at `path`, as one set (`None`: no filter).
fn compile_globs(items: Vec<GlobItem>, path: &str) -> Res<Option<Globs>> {
    if items.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for item in &items {
        set.add(item.glob.clone());
    }
    match set.build() {
        Ok(set) => Ok(Some(Globs { set, patterns: items.into_iter().map(|i| i.pattern).collect() })),
        Err(e) => fail(index(path, 0), format!("invalid glob patterns: {e}")),
    }
}

/// Add the `commands` mapping found at `path` to `out` (keyed by the lowercased
/// normalized key, to catch duplicates across both places): each key a slash
/// command or an event, each entry exactly one target.
fn commands_into(commands: Commands, path: &str, out: &mut BTreeMap<String, (String, CommandRoute)>) -> Res<()> {
    for (raw_key, entry) in commands.0 {
        let p = child(path, &raw_key);
        let trimmed = raw_key.trim();
        let (key, pattern) = if trimmed.starts_with('/') {
            let words: Vec<&str> = trimmed.split_whitespace().collect();
            if words[0].len() < 2 {
                return fail(p, "a slash command needs a name after '/', e.g. \"/review\"");
            }
            let pattern = CommandPattern::Slash(words.iter().map(|w| w.to_lowercase()).collect());
            (words.join(" "), pattern)
        } else {
            let Ok(ev) = event_pattern(trimmed, false) else {
                return fail(
                    p,
                    format!(
                        "{raw_key:?} is neither a slash command (\"/review\", \"/deploy staging\") nor an event \
                         (\"push\", \"pull_request.opened\")"
                    ),
                );
            };
            let key = match &ev.action {
                Some(a) => format!("{}.{a}", ev.event),
                None => ev.event.clone(),
            };
            (key, CommandPattern::Event(ev))
        };
        let mut target: Option<(TargetKind, String)> = None;
        for (kind, name) in
            [(TargetKind::Agent, entry.agent), (TargetKind::Fleet, entry.fleet), (TargetKind::Flow, entry.flow)]
        {
            let Some(name) = name else { continue };
            if let Some((prev, _)) = &target {
                return fail(
                    child(&p, kind.as_str()),
                    format!("a command routes to exactly one target, but both {prev} and {kind} are set"),
                );
            }
            target = Some((kind, name.trimmed().to_string()));
        }
        let Some((kind, name)) = target else {
            return fail(p, "a command needs exactly one of agent, fleet or flow");
        };
        let params_json = entry.params.as_ref().map_or_else(|| "{}".to_string(), canonical_json);
        let dedup = key.to_lowercase();
        if let Some((first, _)) = out.get(&dedup) {
            return fail(p, format!("duplicate command: {first} already defines {key:?}"));
        }
        let route = Route { kind, name, params_json };
        out.insert(dedup, (p, CommandRoute { key, route, description: entry.description, pattern }));
    }
    Ok(())
}

/// A value that may be set in one of several places (given in order): the value and
/// its path, or an error at the second place set.
fn one_of<T>(places: Vec<(Option<T>, String)>) -> Res<Option<(T, String)>> {
    let mut found: Option<(T, String)> = None;
    for (value, path) in places {
        let Some(value) = value else { continue };
        if let Some((_, prev)) = &found {
            return fail(path, format!("also set at {prev}; set it in one place"));
        }
        found = Some((value, path));
    }
    Ok(found)
}

fn callback(doc: CallbackDoc) -> Callback {
    Callback { url: doc.url.0, secret_env: doc.secret_env.0 }
}

/// The `spec.callback` of a stored (already validated) Trigger document, if any.
pub fn callback_of(doc_json: &str) -> Option<Callback> {
    let doc: Value = serde_json::from_str(doc_json).ok()?;
    let cb = doc.get("spec")?.get("callback").filter(|v| !v.is_null())?;
    schema::<CallbackDoc>(cb, "spec.callback").ok().map(callback)
}

/// Parse and validate a Trigger document (already decoded from YAML/JSON) registered
/// under `name`, and compile it for matching. See the module docs for the format.
///
/// # Errors
///
/// A [`TriggerError`] whose `path` locates the first problem found: an unknown key,
/// a value of the wrong type, a bad glob, a command with zero or two targets, ...
pub fn parse_trigger(name: &str, doc: &Value) -> Result<Trigger, TriggerError> {
    let github =
        doc.pointer("/spec/type").and_then(Value::as_str).is_some_and(|t| t.trim().eq_ignore_ascii_case("github"));
    if !github {
        // AOF's other types (or a document too broken to say): the common keys only.
        let doc: Doc<OtherSpec> = schema(doc, "")?;
        check_name(name, doc.metadata.as_ref())?;
        return Ok(envelope(name, &doc.spec.trigger_type, doc.spec.enabled, doc.spec.callback));
    }
    let doc: Doc<GithubSpec> = schema(doc, "")?;
    check_name(name, doc.metadata.as_ref())?;
    let spec = doc.spec;
    let mut trigger = envelope(name, &spec.trigger_type, spec.enabled, spec.callback);
    let config = spec.config.unwrap_or_default();

    trigger.webhook_secret = config.webhook_secret.map(|s| s.0);
    let filters = &mut trigger.filters;
    filters.events = config.github_events.unwrap_or_default().0.into_iter().map(|e| e.0).collect();
    filters.actions = config.actions.unwrap_or_default().0.into_iter().map(|a| a.0).collect();
    let repos = one_of(vec![
        (config.repositories, child(CONFIG, "repositories")),
        (config.allowed_repos, child(CONFIG, "allowed_repos")),
    ])?;
    if let Some((list, path)) = repos {
        filters.repositories = compile_globs(list.0.into_iter().map(|r| r.0).collect(), &path)?;
    }
    let branches = config.branches.unwrap_or_default().0.into_iter().map(|b| b.0).collect();
    filters.branches = compile_globs(branches, &child(CONFIG, "branches"))?;
    filters.allowed_users = config.allowed_users.unwrap_or_default().0.into_iter().map(|u| u.0).collect();
    filters.labels = config.labels.unwrap_or_default().0.into_iter().map(|l| l.0).collect();

    let mut commands = BTreeMap::new();
    if let Some(c) = spec.commands {
        commands_into(c, "spec.commands", &mut commands)?;
    }
    if let Some(c) = config.commands {
        commands_into(c, &child(CONFIG, "commands"), &mut commands)?;
    }
    trigger.commands = commands.into_values().map(|(_, c)| c).collect();

    let defaults = [
        (
            TargetKind::Agent,
            spec.default_agent,
            spec.default_agent_camel,
            config.default_agent,
            "default_agent",
            "defaultAgent",
        ),
        (
            TargetKind::Fleet,
            spec.default_fleet,
            spec.default_fleet_camel,
            config.default_fleet,
            "default_fleet",
            "defaultFleet",
        ),
        (
            TargetKind::Flow,
            spec.default_flow,
            spec.default_flow_camel,
            config.default_flow,
            "default_flow",
            "defaultFlow",
        ),
    ];
    for (kind, snake, camel, in_config, snake_key, camel_key) in defaults {
        let found = one_of(vec![
            (snake, child("spec", snake_key)),
            (camel, child("spec", camel_key)),
            (in_config, child(CONFIG, snake_key)),
        ])?;
        if let Some((target, _)) = found {
            if trigger.default_route.is_none() {
                trigger.default_route =
                    Some(Route { kind, name: target.trimmed().to_string(), params_json: "{}".into() });
            }
        }
    }

    let priority =
        one_of(vec![(spec.priority, "spec.priority".to_string()), (config.priority, child(CONFIG, "priority"))])?;
    if let Some((s, path)) = priority {
        let Some(p) = Priority::parse(&s.0) else {
            return fail(path, format!("{:?}: expected critical, high, normal or low", s.0));
        };
        trigger.priority = p;
    }
    trigger.rate_limit = config.rate_limit.map(|r| {
        let events_per_minute = r.events_per_minute.0;
        RateLimit {
            per: r.per.map_or(RateLimitScope::Repo, |s| s.0),
            events_per_minute,
            burst: r.burst.map_or(events_per_minute, |b| b.0),
        }
    });
    Ok(trigger)
}

/// `metadata.name`, when set, must be the registry name.
fn check_name(name: &str, metadata: Option<&Metadata>) -> Res<()> {
    match metadata.and_then(|m| m.name.as_ref()).filter(|v| !v.is_null()) {
        Some(v) if v.as_str() != Some(name) => {
            fail("metadata.name", format!("{v} does not match the trigger's registry name {name:?}"))
        }
        _ => Ok(()),
    }
}

/// A trigger with the keys every AOF type shares; no GitHub filters or routes yet.
fn envelope(name: &str, ty: &TriggerType, enabled: Option<Flag>, cb: Option<CallbackDoc>) -> Trigger {
    Trigger {
        name: name.to_string(),
        enabled: enabled.is_none_or(|f| f.0),
        priority: Priority::Normal,
        webhook_secret: None,
        rate_limit: None,
        callback: cb.map(callback),
        trigger_type: ty.0.to_string(),
        filters: Filters::default(),
        commands: Vec::new(),
        default_route: None,
    }
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
        let with = |cb: Value| json!({"apiVersion": "aof.dev/v1", "kind": "Trigger", "spec": {"type": "GitHub", "callback": cb}});
        let t =
            parse_trigger("t", &with(json!({"url": "https://ci.example/hooks/aof", "secret_env": "AOF_CB_SECRET"})))
                .unwrap();
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
    fn unknown_keys_are_reported_before_other_problems_whatever_the_key_order() {
        // `callback` sorts before `zzz`: the typo is still the error reported.
        let e = parse_err(json!({"spec": {"type": "GitHub", "callback": 3, "zzz": 1}}));
        assert_eq!(e.path, "spec.zzz", "{e}");
        let e = parse_err(spec(json!({"actions": [1], "zactions": ["opened"]})));
        assert_eq!(e.path, "spec.config.zactions", "{e}");
    }

    #[test]
    fn a_list_is_not_read_as_a_mapping() {
        let e = parse_err(json!({"spec": {"type": "GitHub", "callback": ["http://a/", "S"]}}));
        assert_eq!((e.path.as_str(), e.message.contains("mapping")), ("spec.callback", true), "{e}");
        let e = parse_err(spec(json!({"rate_limit": ["org", 5, 5]})));
        assert_eq!(e.path, "spec.config.rate_limit", "{e}");
        let e = parse_err(json!(["aof.dev/v1", "Trigger", {}, {"type": "GitHub"}]));
        assert_eq!(e.path, "document", "{e}");
    }

    #[test]
    fn null_is_absent_for_known_keys_only() {
        let e = parse_err(spec(json!({"rate_limit": {"events_per_minute": null}})));
        assert_eq!((e.path.as_str(), e.message.as_str()), ("spec.config.rate_limit.events_per_minute", "required"));
        let e = parse_err(json!({"spec": {"type": null}}));
        assert_eq!(e.path, "spec.type", "{e}");
        assert!(e.message.starts_with("required"), "{e}");
        let e = parse_err(spec(json!({"repositores": null})));
        assert_eq!(e.path, "spec.config.repositores", "{e}");
        let e = parse_err(spec(json!({"commands": {"/x": null}})));
        assert_eq!(e.path, "spec.config.commands[\"/x\"]", "{e}");
    }

    #[test]
    fn messages_name_types_and_suggest_from_the_derived_key_lists() {
        let e = parse_err(spec(json!({"allowed_users": "alice"})));
        assert_eq!(e.message, "expected a list of strings, found a string");
        let e = parse_err(spec(json!({"rate_limit": {"events_per_minute": -3}})));
        assert_eq!(e.message, "expected a positive integer, found -3");
        let e = parse_err(json!({"spec": {"type": "GitHub", "defaultAgnt": "a"}}));
        assert!(e.message.contains("did you mean \"defaultAgent\"?"), "{e}");
        assert!(e.message.contains("known keys: type, enabled, callback, config"), "{e}");
        let e = parse_err(json!({"spec": {"type": "GitHub", "config": {"users": []}}}));
        assert!(e.message.contains("did you mean \"allowed_users\"?"), "{e}");
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
