//! `spec.auth`: the bearer tokens of the API and worker listeners, read at start.
//!
//! Tokens are never kept in memory as written: [`AuthConfig::resolve`] reads each one
//! (from its environment variable, file or the config) and keeps its SHA-256 digest;
//! [`ResolvedAuth::check`] hashes the presented token and compares digests in
//! constant time.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::{ConfigError, Problem};
use super::platforms::Secret;

/// `spec.auth`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The accepted tokens. Default: `admin` from `AOF_ADMIN_TOKEN`, `read` from
    /// `AOF_READ_TOKEN` (optional) and `worker` from `AOF_WORKER_TOKEN` (optional).
    pub tokens: Vec<TokenConfig>,
    /// Serve `/metrics` without a token (default false: a `read` token is needed).
    pub metrics_public: bool,
    /// Throwaway setups only: the API and worker listeners accept requests without a
    /// token and peers are not authenticated (no `peer_tls` needed). Logged as a
    /// warning at every start. Default false.
    pub insecure: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig { tokens: default_tokens(), metrics_public: false, insecure: false }
    }
}

/// The tokens of a node whose config names none.
pub fn default_tokens() -> Vec<TokenConfig> {
    let token = |name: &str, role, env: &str, optional| TokenConfig {
        name: name.into(),
        role,
        env: Some(env.into()),
        file: None,
        token: None,
        optional,
        targets: Vec::new(),
    };
    vec![
        token("admin", Role::Admin, "AOF_ADMIN_TOKEN", false),
        token("read", Role::Read, "AOF_READ_TOKEN", true),
        token("worker", Role::Worker, "AOF_WORKER_TOKEN", true),
    ]
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every API route, writes included.
    Admin,
    /// API reads and `/metrics`.
    Read,
    /// The workers' gRPC service (claim, extend, complete, fail), possibly limited to
    /// some targets.
    Worker,
}

impl Role {
    /// Whether a caller with this role may do what needs `required`: `admin` may
    /// everything `read` may; `worker` is separate.
    pub fn allows(self, required: Role) -> bool {
        self == required || (self == Role::Admin && required == Role::Read)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Read => "read",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `spec.auth.tokens`: exactly one of `env`, `file` and `token`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Shown in logs and audit records (never the token).
    pub name: String,
    pub role: Role,
    /// Environment variable holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// File holding the token (surrounding whitespace ignored). Relative to the
    /// working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The token itself, written in the config (discouraged; logged as a warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A missing variable or file is skipped instead of stopping the start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// Worker tokens only: the targets whose jobs this token may claim and settle
    /// (empty = every target).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
}

impl TokenConfig {
    /// Where the token comes from, for messages: `environment variable X`, `file F`
    /// or `the config file`.
    pub fn source(&self) -> String {
        match (&self.env, &self.file) {
            (Some(v), _) => format!("environment variable {v}"),
            (None, Some(f)) => format!("file {}", f.display()),
            (None, None) => "the config file".into(),
        }
    }
}

/// The tokens of a node after [`AuthConfig::resolve`]: digests only.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedAuth {
    tokens: Vec<ResolvedToken>,
    /// `spec.auth.metrics_public`.
    pub metrics_public: bool,
    /// `spec.auth.insecure`.
    pub insecure: bool,
    /// Things to log at start (skipped optional tokens, short tokens, ...).
    pub warnings: Vec<String>,
}

#[derive(Clone, PartialEq, Eq)]
struct ResolvedToken {
    name: String,
    role: Role,
    digest: [u8; 32],
    targets: Vec<String>,
}

/// The token a request presented, once recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenMatch<'a> {
    pub role: Role,
    /// `spec.auth.tokens[].name`.
    pub name: &'a str,
    /// Worker tokens: the targets it is limited to (empty = all).
    pub targets: &'a [String],
}

impl TokenMatch<'_> {
    /// Whether this token may act on jobs of `target`.
    pub fn may_target(&self, target: &str) -> bool {
        self.targets.is_empty() || self.targets.iter().any(|t| t == target)
    }
}

impl fmt::Debug for ResolvedAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tokens: Vec<String> = self.tokens.iter().map(|t| format!("{} ({})", t.name, t.role)).collect();
        f.debug_struct("ResolvedAuth")
            .field("tokens", &tokens)
            .field("metrics_public", &self.metrics_public)
            .field("insecure", &self.insecure)
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Tokens shorter than this are accepted with a warning.
const SHORT_TOKEN: usize = 16;

impl AuthConfig {
    /// Read every token from its environment variable or file, as `aofctl serve`
    /// does at start.
    pub fn resolve(&self) -> Result<ResolvedAuth, ConfigError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// [`AuthConfig::resolve`] with `env` looking up environment variables.
    ///
    /// Fails when a non-optional token is missing or empty, when two entries hold the
    /// same token, or when no admin token is left and `insecure` is false (the
    /// message names the variable to set). With `insecure: true` every token is
    /// optional.
    pub fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<ResolvedAuth, ConfigError> {
        let mut problems = Vec::new();
        let mut tokens: Vec<ResolvedToken> = Vec::new();
        let mut warnings = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("spec.auth.tokens[{i}]");
            let value = match (&t.env, &t.file, &t.token) {
                (Some(var), None, None) => env(var).ok_or_else(|| format!("environment variable {var} is not set")),
                (None, Some(path), None) => std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the token file {}: {e}", path.display())),
                (None, None, Some(secret)) => Ok(secret.expose().to_string()),
                _ => Err("set exactly one of env, file and token".to_string()),
            };
            let value = value.and_then(|v| {
                let v = v.trim().to_string();
                if v.is_empty() {
                    Err(format!("the token from {} is empty", t.source()))
                } else if v.chars().any(char::is_whitespace) {
                    Err(format!("the token from {} contains whitespace", t.source()))
                } else {
                    Ok(v)
                }
            });
            match value {
                Ok(v) => {
                    if v.len() < SHORT_TOKEN {
                        warnings.push(format!(
                            "{key} ({}): the token from {} has fewer than {SHORT_TOKEN} characters; use a long random one \
                             (e.g. `openssl rand -hex 32`)",
                            t.name,
                            t.source()
                        ));
                    }
                    let d = digest(&v);
                    if let Some(other) = tokens.iter().find(|o| bool::from(o.digest.ct_eq(&d))) {
                        problems.push(Problem {
                            key,
                            message: format!(
                                "`{}` holds the same token as `{}`; every entry needs its own token",
                                t.name, other.name
                            ),
                        });
                        continue;
                    }
                    tokens.push(ResolvedToken { name: t.name.clone(), role: t.role, digest: d, targets: t.targets.clone() });
                }
                Err(why) if t.optional || self.insecure => {
                    warnings.push(format!("{key} ({}, {}): skipped, {why}", t.name, t.role));
                }
                Err(why) => problems.push(Problem {
                    key,
                    message: format!(
                        "`{}` ({}): {why}; provide it, or mark the entry `optional: true`",
                        t.name, t.role
                    ),
                }),
            }
        }
        if problems.is_empty() && !self.insecure && !tokens.iter().any(|t| t.role == Role::Admin) {
            let set = match self.tokens.iter().find(|t| t.role == Role::Admin) {
                Some(t) => format!("set {} (spec.auth.tokens entry `{}`)", t.source(), t.name),
                None => "add a token with `role: admin` to spec.auth.tokens (e.g. `{ name: admin, role: admin, env: \
                         AOF_ADMIN_TOKEN }`) and set that variable"
                    .to_string(),
            };
            problems.push(Problem {
                key: "spec.auth".into(),
                message: format!(
                    "no admin token, so nobody could administer the cluster through the API; {set}, or set \
                     `spec.auth.insecure: true` for a throwaway setup"
                ),
            });
        }
        if !problems.is_empty() {
            return Err(ConfigError::Auth { problems });
        }
        if self.insecure {
            warnings.push(
                "spec.auth.insecure is true: requests without a token are accepted and peers are not authenticated; \
                 never expose such a node"
                    .into(),
            );
        }
        Ok(ResolvedAuth { tokens, metrics_public: self.metrics_public, insecure: self.insecure, warnings })
    }
}

impl ResolvedAuth {
    /// The token entry matching `presented` (the bearer token without `Bearer `),
    /// if any. Every digest is compared, in constant time.
    pub fn check(&self, presented: &str) -> Option<TokenMatch<'_>> {
        let d = digest(presented);
        let mut found = None;
        for t in &self.tokens {
            let equal = bool::from(t.digest.ct_eq(&d));
            if equal && found.is_none() {
                found = Some(t);
            }
        }
        found.map(|t| TokenMatch { role: t.role, name: &t.name, targets: &t.targets })
    }

    /// Whether some token has exactly this role.
    pub fn has_role(&self, role: Role) -> bool {
        self.tokens.iter().any(|t| t.role == role)
    }

    /// The names of the usable tokens, with their roles (for the start log).
    pub fn names(&self) -> Vec<(&str, Role)> {
        self.tokens.iter().map(|t| (t.name.as_str(), t.role)).collect()
    }

    /// Every usable token as its SHA-256 digest and what it grants, for an
    /// authenticator that keeps its own table.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8; 32], TokenMatch<'_>)> {
        self.tokens.iter().map(|t| (&t.digest, TokenMatch { role: t.role, name: &t.name, targets: &t.targets }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const ADMIN: &str = "admin-0123456789abcdef";
    const READ: &str = "read-0123456789abcdef";
    const WORKER_A: &str = "worker-a-0123456789abcdef";

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    fn cfg(yaml: &str) -> AuthConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn resolves_by_role_and_checks_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker-b.token");
        std::fs::write(&file, "worker-b-0123456789abcdef\n").unwrap();
        let a = cfg(&format!(
            "tokens:\n  - {{ name: ops, role: admin, env: ADMIN }}\n  - {{ name: dash, role: read, env: READ }}\n  \
             - {{ name: wa, role: worker, env: WA, targets: [deploy] }}\n  - {{ name: wb, role: worker, file: {} }}\n",
            file.display()
        ));
        let r = a.resolve_with(env(&[("ADMIN", ADMIN), ("READ", READ), ("WA", WORKER_A)])).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let m = r.check(ADMIN).unwrap();
        assert_eq!((m.role, m.name), (Role::Admin, "ops"));
        assert_eq!(r.check(READ).unwrap().role, Role::Read);
        let wa = r.check(WORKER_A).unwrap();
        assert_eq!((wa.role, wa.targets), (Role::Worker, &["deploy".to_string()][..]));
        assert!(wa.may_target("deploy") && !wa.may_target("build"));
        // the file's trailing newline is not part of the token
        let wb = r.check("worker-b-0123456789abcdef").unwrap();
        assert!(wb.may_target("anything"));
        assert_eq!(r.check("nope"), None);
        assert_eq!(r.check(""), None);
        assert_eq!(r.check(&format!("{ADMIN} ")), None);
        // only digests are kept
        assert!(!format!("{r:?}").contains(ADMIN));
        let digests: Vec<(String, &str)> = r.entries().map(|(d, m)| (hex::encode(d), m.name)).collect();
        assert_eq!(digests.len(), 4);
        assert_eq!(digests[0], (hex::encode(Sha256::digest(ADMIN.as_bytes())), "ops"));
        assert!(Role::Admin.allows(Role::Read) && !Role::Read.allows(Role::Admin) && !Role::Admin.allows(Role::Worker));
    }

    #[test]
    fn missing_tokens() {
        // the defaults: only the admin token is required
        let a = AuthConfig::default();
        let e = a.resolve_with(env(&[])).unwrap_err();
        assert_eq!(e.keys(), vec!["spec.auth.tokens[0]"], "{e}");
        assert!(e.to_string().contains("AOF_ADMIN_TOKEN is not set"), "{e}");
        let r = a.resolve_with(env(&[("AOF_ADMIN_TOKEN", ADMIN)])).unwrap();
        assert!(r.has_role(Role::Admin) && !r.has_role(Role::Read) && !r.has_role(Role::Worker));
        assert_eq!(r.warnings.len(), 2, "skipped optional tokens are reported: {:?}", r.warnings);

        // an optional admin token that is missing: the message says what to set
        let a = cfg("tokens: [{ name: admin, role: admin, env: AOF_ADMIN_TOKEN, optional: true }]");
        let e = a.resolve_with(env(&[])).unwrap_err();
        assert_eq!(e.keys(), vec!["spec.auth"], "{e}");
        let msg = e.to_string();
        assert!(msg.contains("AOF_ADMIN_TOKEN") && msg.contains("spec.auth.insecure: true"), "{msg}");
        // no admin entry at all
        let e = cfg("tokens: [{ name: r, role: read, env: R }]").resolve_with(env(&[("R", READ)])).unwrap_err();
        assert!(e.to_string().contains("role: admin"), "{e}");

        // insecure: nothing is required, and it says so
        let a = cfg("insecure: true");
        let r = a.resolve_with(env(&[])).unwrap();
        assert!(r.insecure && !r.has_role(Role::Admin));
        assert!(r.warnings.iter().any(|w| w.contains("insecure")), "{:?}", r.warnings);

        // empty value, unreadable file
        let e = AuthConfig::default().resolve_with(env(&[("AOF_ADMIN_TOKEN", "  ")])).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = cfg("tokens: [{ name: a, role: admin, file: /nonexistent/aof-admin.token }]")
            .resolve_with(env(&[]))
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/aof-admin.token"), "{e}");
    }

    #[test]
    fn ambiguous_and_weak_tokens() {
        let a = cfg("tokens: [{ name: a, role: admin, env: A }, { name: w, role: worker, env: W }]");
        let e = a.resolve_with(env(&[("A", ADMIN), ("W", ADMIN)])).unwrap_err();
        assert_eq!(e.keys(), vec!["spec.auth.tokens[1]"], "{e}");
        assert!(e.to_string().contains("same token"), "{e}");

        let a = cfg("tokens: [{ name: a, role: admin, token: short }]");
        let r = a.resolve_with(env(&[])).unwrap();
        assert_eq!(r.check("short").unwrap().name, "a");
        assert!(r.warnings.iter().any(|w| w.contains("fewer than")), "{:?}", r.warnings);

        let a = cfg("tokens: [{ name: a, role: admin, env: A, token: x }]");
        assert!(a.resolve_with(env(&[("A", ADMIN)])).unwrap_err().to_string().contains("exactly one"));
    }
}
