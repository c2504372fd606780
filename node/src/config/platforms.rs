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
