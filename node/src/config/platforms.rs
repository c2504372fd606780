//! `spec.platforms`: webhook sources. aof-cluster serves GitHub; AOF's other
//! platforms are accepted and kept so an AOF config loads, and produce a notice.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// `spec.platforms`. Only `github` is served by aof-cluster; the other AOF platforms
/// are accepted (so an AOF config loads) and kept verbatim, and produce a notice.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discord: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jira: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitlab: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitbucket: Option<UnusedSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<UnusedSection>,
}

impl PlatformsConfig {
    /// The platforms present in the file that aof-cluster does not serve.
    pub fn unused(&self) -> Vec<&'static str> {
        [
            ("slack", &self.slack),
            ("discord", &self.discord),
            ("telegram", &self.telegram),
            ("whatsapp", &self.whatsapp),
            ("jira", &self.jira),
            ("gitlab", &self.gitlab),
            ("bitbucket", &self.bitbucket),
            ("teams", &self.teams),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k)
        .collect()
    }
}

/// `spec.platforms.github`: the `/webhook/github` endpoint (AOF's keys, plus `orgs`
/// and `webhook_secret_envs`).
///
/// A delivery is accepted when its `X-Hub-Signature-256` verifies with one of the
/// secrets named by [`GithubConfig::secret_env_names`] — or, when the payload's
/// organisation has an `orgs` entry with a `webhook_secret_env`, with that one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// Serve `/webhook/github` (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Name of the environment variable holding the GitHub token (e.g. `GITHUB_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Name of the environment variable holding the webhook HMAC secret
    /// (e.g. `GITHUB_WEBHOOK_SECRET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_env: Option<String>,
    /// Extra secret variables that are also accepted, for rotation: add the new
    /// secret here, switch GitHub to it, then make it the `webhook_secret_env`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_secret_envs: Vec<String>,
    /// Inline token (AOF accepts it; prefer `token_env`). Redacted when printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Inline webhook secret (AOF accepts it; prefer `webhook_secret_env`). Redacted
    /// when printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<Secret>,
    /// Bot login used to recognise @mentions (default `aofbot`).
    #[serde(default = "default_bot_name")]
    pub bot_name: String,
    /// AOF's optional repository allow-list (`owner/repo`, `owner/*`, `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_repos: Option<Vec<String>>,
    /// AOF's optional organisation allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_orgs: Option<Vec<String>>,
    /// Per-organisation credentials, keyed by organisation login (case-insensitive).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub orgs: BTreeMap<String, GithubOrgConfig>,
    /// GitHub API base URL (GitHub Enterprise: `https://HOST/api/v3`).
    #[serde(default = "default_github_api_url")]
    pub api_url: String,
    /// Delivery recovery: the leader re-reads the listed hooks' delivery logs and
    /// ingests what the cluster never accepted (see `docs/WEBHOOKS.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryConfig>,
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            enabled: true,
            token_env: None,
            webhook_secret_env: None,
            webhook_secret_envs: Vec::new(),
            token: None,
            webhook_secret: None,
            bot_name: default_bot_name(),
            allowed_repos: None,
            allowed_orgs: None,
            orgs: BTreeMap::new(),
            api_url: default_github_api_url(),
            recovery: None,
        }
    }
}

impl GithubConfig {
    /// The webhook secret variables to try, in order: `webhook_secret_env`, then
    /// `webhook_secret_envs`, without duplicates.
    pub fn secret_env_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for name in self.webhook_secret_env.iter().chain(self.webhook_secret_envs.iter()) {
            if !out.contains(&name.as_str()) {
                out.push(name);
            }
        }
        out
    }

    /// The `orgs` entry of an organisation (GitHub logins are case-insensitive).
    pub fn org(&self, login: &str) -> Option<&GithubOrgConfig> {
        self.orgs.iter().find(|(k, _)| k.eq_ignore_ascii_case(login)).map(|(_, v)| v)
    }
}

/// One entry of `spec.platforms.github.orgs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubOrgConfig {
    /// Secret variable for this organisation's webhooks (replaces the global ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_env: Option<String>,
    /// Token variable for API calls on this organisation's repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

/// `spec.platforms.github.recovery`: which GitHub hooks the leader sweeps for
/// deliveries the cluster never accepted, and how often.
///
/// ```yaml
/// recovery:
///   interval: 5m          # between sweeps (humantime: 30s, 5m, 1h)
///   since: 2h             # first sweep (no checkpoint yet): how far back
///   hooks:
///     - { repo: acme/api, hook_id: 123456 }
///     - { org: acme, hook_id: 654321, token_env: ACME_HOOKS_TOKEN }
///     - { app_id: 123456, private_key_file: /secrets/app.pem }   # a GitHub App's hook
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryConfig {
    /// Run the periodic sweep (default true); `aofctl github recover` works either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Time between two sweeps of the leader (default `5m`).
    #[serde(default = "default_recovery_interval")]
    pub interval: String,
    /// How far back a sweep looks when a hook has no checkpoint yet (default `2h`;
    /// GitHub keeps deliveries for 3 days).
    #[serde(default = "default_recovery_since")]
    pub since: String,
    /// Deliveries per page of GitHub's list (1-100, default 100).
    #[serde(default = "default_recovery_per_page")]
    pub per_page: u32,
    /// Most pages one sweep reads per hook (default 20).
    #[serde(default = "default_recovery_max_pages")]
    pub max_pages: u32,
    /// Longest wait for a rate-limit reset before the sweep gives up (default `5m`).
    #[serde(default = "default_recovery_max_wait")]
    pub max_rate_limit_wait: String,
    /// The hooks to sweep.
    #[serde(default)]
    pub hooks: Vec<RecoveryHook>,
}

/// One hook of [`RecoveryConfig::hooks`]: a repository's (`repo`) or an
/// organisation's (`org`), by its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryHook {
    /// `owner/name` of a repository hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Login of an organisation hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// A GitHub App's id: its webhook (`/app/hook/deliveries`), read with an App JWT
    /// (RS256) signed by `private_key_env` or `private_key_file`. No `hook_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<u64>,
    /// Variable holding the App's private key (PEM), for `app_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_env: Option<String>,
    /// File holding the App's private key (PEM), for `app_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<std::path::PathBuf>,
    /// The hook's id (Settings → Webhooks → the hook's URL ends with it); not for `app_id`.
    #[serde(default)]
    pub hook_id: u64,
    /// Token variable for this hook; default: the organisation's `orgs.<org>.token_env`,
    /// then `spec.platforms.github.token_env` (or `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
}

impl RecoveryHook {
    /// The checkpoint key of the hook: `repo:<owner>/<name>/<id>` or `org:<org>/<id>`
    /// (lower case: GitHub logins are case-insensitive).
    pub fn source(&self) -> String {
        if let Some(app) = self.app_id {
            return format!("app:{app}");
        }
        match (&self.repo, &self.org) {
            (Some(r), _) => format!("repo:{}/{}", r.to_ascii_lowercase(), self.hook_id),
            (None, Some(o)) => format!("org:{}/{}", o.to_ascii_lowercase(), self.hook_id),
            (None, None) => format!("hook:{}", self.hook_id),
        }
    }

    /// The API path of the hook: `repos/<owner>/<name>/hooks/<id>` or `orgs/<org>/hooks/<id>`.
    pub fn api_path(&self) -> String {
        if self.app_id.is_some() {
            return "app/hook".into();
        }
        match (&self.repo, &self.org) {
            (Some(r), _) => format!("repos/{r}/hooks/{}", self.hook_id),
            (None, Some(o)) => format!("orgs/{o}/hooks/{}", self.hook_id),
            (None, None) => format!("hooks/{}", self.hook_id),
        }
    }
}

/// Parse a duration like `90s`, `5m`, `2h`, `1d`, `500ms` (a plain number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration; write e.g. 30s, 5m, 2h or 1d"))?;
    let ms = match unit.trim() {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        other => return Err(format!("`{s}`: unknown unit `{other}`; use ms, s, m, h or d")),
    };
    Ok(std::time::Duration::from_millis(ms))
}

impl RecoveryConfig {
    /// Problems with the section, as (key under `recovery`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in [("interval", &self.interval), ("since", &self.since), ("max_rate_limit_wait", &self.max_rate_limit_wait)] {
            match parse_duration(v) {
                Err(m) => out.push((k.to_string(), m)),
                Ok(d) if d.is_zero() => out.push((k.to_string(), "must be more than 0".into())),
                Ok(_) => {}
            }
        }
        if !(1..=100).contains(&self.per_page) {
            out.push(("per_page".into(), "must be 1-100 (GitHub's limit)".into()));
        }
        if !(1..=1000).contains(&self.max_pages) {
            out.push(("max_pages".into(), "must be 1-1000".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, h) in self.hooks.iter().enumerate() {
            let key = format!("hooks[{i}]");
            if let Some(app) = h.app_id {
                if h.repo.is_some() || h.org.is_some() || h.hook_id != 0 || h.token_env.is_some() {
                    out.push((key.clone(), "an `app_id` hook takes no repo, org, hook_id or token_env (GitHub Apps have one webhook, read with an App JWT)".into()));
                }
                if app == 0 {
                    out.push((format!("{key}.app_id"), "must be the App's id (a positive number)".into()));
                }
                if h.private_key_env.is_some() == h.private_key_file.is_some() {
                    out.push((key.clone(), "set exactly one of `private_key_env` or `private_key_file` (the App's private key, PEM)".into()));
                }
                if !seen.insert(h.source()) {
                    out.push((key, "this hook is listed twice".into()));
                }
                continue;
            }
            if h.private_key_env.is_some() || h.private_key_file.is_some() {
                out.push((key.clone(), "`private_key_env` / `private_key_file` are for `app_id` hooks only".into()));
            }
            match (&h.repo, &h.org) {
                (Some(_), Some(_)) | (None, None) => {
                    out.push((key.clone(), "set exactly one of `repo: owner/name`, `org: login` or `app_id: N`".into()))
                }
                (Some(r), None) => {
                    let ok = r.split_once('/').is_some_and(|(o, n)| login_ok(o) && name_ok(n));
                    if !ok {
                        out.push((format!("{key}.repo"), format!("`{r}` is not owner/name")));
                    }
                }
                (None, Some(o)) => {
                    if !login_ok(o) {
                        out.push((format!("{key}.org"), format!("`{o}` is not an organisation login")));
                    }
                }
            }
            if h.hook_id == 0 {
                out.push((format!("{key}.hook_id"), "must be the hook's id (a positive number)".into()));
            }
            if !seen.insert(h.source()) {
                out.push((key, "this hook is listed twice".into()));
            }
        }
        out
    }
}

fn login_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 39 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 100 && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn default_recovery_interval() -> String {
    "5m".into()
}
fn default_recovery_since() -> String {
    "2h".into()
}
fn default_recovery_per_page() -> u32 {
    100
}
fn default_recovery_max_pages() -> u32 {
    20
}
fn default_recovery_max_wait() -> String {
    "5m".into()
}

/// A secret written inline in the config. `Debug` and `Serialize` print
/// `<redacted>`; [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// A section aof-cluster accepts for AOF compatibility but does not use, kept as
/// YAML. `Debug` and `Serialize` redact values of keys that look like credentials
/// (`*token*`, `*secret*`, `*password*`, `*key*`, except `*_env`).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct UnusedSection(pub serde_yaml::Value);

impl UnusedSection {
    fn redacted(&self) -> serde_yaml::Value {
        fn walk(v: &serde_yaml::Value) -> serde_yaml::Value {
            use serde_yaml::Value;
            match v {
                Value::Mapping(m) => Value::Mapping(
                    m.iter()
                        .map(|(k, v)| {
                            let sensitive = k.as_str().is_some_and(|k| {
                                let k = k.to_ascii_lowercase();
                                !k.ends_with("_env")
                                    && ["token", "secret", "password", "key"].iter().any(|w| k.contains(w))
                            });
                            let v = if sensitive && !v.is_null() { Value::from("<redacted>") } else { walk(v) };
                            (k.clone(), v)
                        })
                        .collect(),
                ),
                Value::Sequence(s) => Value::Sequence(s.iter().map(walk).collect()),
                Value::Tagged(t) => walk(&t.value),
                other => other.clone(),
            }
        }
        walk(&self.0)
    }
}

impl fmt::Debug for UnusedSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("UnusedSection").field(&self.redacted()).finish()
    }
}

impl Serialize for UnusedSection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(s)
    }
}


fn default_true() -> bool {
    true
}

fn default_bot_name() -> String {
    "aofbot".into()
}

fn default_github_api_url() -> String {
    "https://api.github.com".into()
}
