//! Loading: the YAML file (optional), then the `AOF__*` environment variables,
//! layered with figment and deserialized by the serde derives; then paths, the node
//! id, and the rules of [`super::rules`].
//!
//! Every error names its source — the file (with line and column where known) or
//! the environment variable — and the key path.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use figment::providers::{Format, Yaml};
use figment::value::Value;
use figment::Figment;

use super::addr::{statefulset_node_id, system_hostname, HostPort};
use super::error::{ConfigError, Problem};
use super::suggest::{did_you_mean, misplaced};
use super::{rules, DaemonConfig, API_VERSION, KIND};

/// Environment variables named `AOF__` + a key path under `spec`, upper-case, levels
/// separated by `__`, set or override that key: `AOF__CLUSTER__NODE_ID=3`.
pub const ENV_PREFIX: &str = "AOF__";

/// Deepest `[`/`{` nesting accepted in an environment value (a member list is 2).
const MAX_ENV_NESTING: usize = 8;

enum FileSource {
    Path(PathBuf),
    Text { origin: String, text: String },
}

/// Where a configuration comes from. [`load`] and [`load_env`] cover `aofctl serve`;
/// tests name every input explicitly.
///
/// ```no_run
/// # use aof_node::config::Loader;
/// let cfg = Loader::new().file("node1.yaml").process_env().load()?;
/// # Ok::<(), aof_node::config::ConfigError>(())
/// ```
#[derive(Default)]
pub struct Loader {
    file: Option<FileSource>,
    env: Vec<(OsString, OsString)>,
    data_dir: Option<PathBuf>,
    cwd: Option<PathBuf>,
    hostname: Option<Option<String>>,
}

/// One `AOF__*` variable, as a key path and a value.
struct EnvEntry {
    var: String,
    /// Dotted key path, `spec.` included.
    key: String,
    value: Value,
}

impl Loader {
    pub fn new() -> Self {
        Loader::default()
    }

    /// Read the YAML file at `path` (messages name it as given).
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(FileSource::Path(path.into()));
        self
    }

    /// Use `text` as the file's content; `origin` names it in messages.
    pub fn yaml(mut self, origin: impl Into<String>, text: impl Into<String>) -> Self {
        self.file = Some(FileSource::Text { origin: origin.into(), text: text.into() });
        self
    }

    /// Environment variables to apply over the file (only `AOF__*` ones are used).
    pub fn env_vars<K: Into<OsString>, V: Into<OsString>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        self.env.extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// This process's environment variables.
    pub fn process_env(self) -> Self {
        self.env_vars(std::env::vars_os())
    }

    /// `--data-dir`: replaces `spec.cluster.data_dir`.
    pub fn data_dir(mut self, dir: Option<&Path>) -> Self {
        self.data_dir = dir.map(Path::to_path_buf);
        self
    }

    /// The directory relative paths resolve against (default: the working directory).
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// The machine's host name (default: [`system_hostname`]), used to derive an
    /// unset `node_id` and the advertised addresses of listeners bound to `0.0.0.0`.
    pub fn hostname(mut self, name: Option<&str>) -> Self {
        self.hostname = Some(name.map(str::to_string));
        self
    }

    /// Load, resolve and validate.
    pub fn load(self) -> Result<DaemonConfig, ConfigError> {
        let cwd = match self.cwd {
            Some(dir) => dir,
            None => std::env::current_dir().map_err(ConfigError::WorkingDir)?,
        };
        let env = parse_env(&self.env)?;
        let file = match self.file {
            Some(FileSource::Path(path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                Some((path.display().to_string(), text))
            }
            Some(FileSource::Text { origin, text }) => Some((origin, text)),
            None => None,
        };
        let sources = Sources { file: file.as_ref().map(|(o, t)| (o.as_str(), t.as_str())), env: &env };

        let mut figment = Figment::new();
        match sources.file {
            Some((origin, text)) => {
                check_document(text, origin)?;
                figment = figment.merge(Yaml::string(text));
            }
            // Configured by the environment alone: the resource header is implied.
            None => figment = figment.merge(("apiVersion", API_VERSION)).merge(("kind", KIND)),
        }
        for e in &env {
            figment = figment.merge((e.key.as_str(), e.value.clone()));
        }
        let mut cfg: DaemonConfig = figment.extract().map_err(|e| sources.schema_error(&figment, e))?;
        cfg.hostname = match self.hostname {
            Some(name) => name,
            // Looked up only when needed: the resolver may be slow or absent.
            None if needs_hostname(&cfg) => system_hostname(),
            None => None,
        };
        resolve(&mut cfg, self.data_dir.as_deref(), &cwd).map_err(|p| sources.invalid(vec![p]))?;
        let problems = rules::validate(&cfg);
        if !problems.is_empty() {
            return Err(sources.invalid(problems));
        }
        Ok(cfg)
    }
}

/// Load, resolve and validate the configuration of `aofctl serve --config FILE
/// [--data-dir DIR]`: the file, then this process's `AOF__*` variables. Relative
/// paths resolve against the working directory.
pub fn load(path: &Path, data_dir_override: Option<&Path>) -> Result<DaemonConfig, ConfigError> {
    Loader::new().file(path).process_env().data_dir(data_dir_override).load()
}

/// `aofctl serve` without `--config`: the configuration from `AOF__*` variables alone.
pub fn load_env(data_dir_override: Option<&Path>) -> Result<DaemonConfig, ConfigError> {
    Loader::new().process_env().data_dir(data_dir_override).load()
}

/// [`load`] from a string, without environment variables; `origin` names it in
/// messages (usually the file name).
pub fn parse_str(yaml: &str, origin: &str, data_dir_override: Option<&Path>) -> Result<DaemonConfig, ConfigError> {
    Loader::new().yaml(origin, yaml).data_dir(data_dir_override).load()
}

/// [`parse_str`] with an explicit directory for relative paths.
pub fn parse_str_in(
    yaml: &str,
    origin: &str,
    data_dir_override: Option<&Path>,
    cwd: &Path,
) -> Result<DaemonConfig, ConfigError> {
    Loader::new().yaml(origin, yaml).data_dir(data_dir_override).cwd(cwd).load()
}

// ---------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------

fn parse_env(vars: &[(OsString, OsString)]) -> Result<Vec<EnvEntry>, ConfigError> {
    let mut out = Vec::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else {
            if name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) {
                return Err(ConfigError::Schema {
                    origin: format!("environment variable {}", name.to_string_lossy()),
                    key: ".".into(),
                    message: "the variable's name is not valid UTF-8".into(),
                    line: None,
                    column: None,
                });
            }
            continue;
        };
        let Some(path) = name.strip_prefix(ENV_PREFIX) else { continue };
        let bad = |key: &str, message: String| ConfigError::Schema {
            origin: format!("environment variable {name}"),
            key: key.to_string(),
            message,
            line: None,
            column: None,
        };
        let segments: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if segments.iter().any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')) {
            return Err(bad(
                ".",
                format!(
                    "not a key path: write {ENV_PREFIX} and the keys under `spec`, upper-case, separated by `__` \
                     (e.g. AOF__CLUSTER__NODE_ID=3)"
                ),
            ));
        }
        let key = format!("spec.{}", segments.join("."));
        let Some(text) = value.to_str() else {
            return Err(bad(&key, "the value is not valid UTF-8".into()));
        };
        if nesting(text) > MAX_ENV_NESTING {
            return Err(bad(&key, format!("the value is nested more than {MAX_ENV_NESTING} levels deep")));
        }
        // figment 0.10's string unescaping slices by character index, and panics on
        // a quoted string with a non-ASCII character before a backslash: such a
        // value is taken as plain text.
        let value: Value = if text.contains('"') && text.contains('\\') && !text.is_ascii() {
            Value::from(text.to_string())
        } else {
            match text.parse() {
                Ok(v) => v,
                Err(never) => match never {},
            }
        };
        out.push(EnvEntry { var: name.to_string(), key, value });
    }
    // Shallow keys first, so `AOF__CLUSTER__NODE_ID` refines `AOF__CLUSTER='{...}'`.
    out.sort_by(|a, b| (a.key.matches('.').count(), &a.var).cmp(&(b.key.matches('.').count(), &b.var)));
    Ok(out)
}

/// Deepest bracket nesting outside double-quoted strings.
fn nesting(text: &str) -> usize {
    let (mut depth, mut max, mut quoted, mut escaped) = (0usize, 0usize, false, false);
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | '}' if !quoted => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Well-formed YAML (also: no duplicate keys, one document), not empty, a mapping,
/// and the right resource (someone may pass a Trigger file to `--config`).
fn check_document(text: &str, origin: &str) -> Result<(), ConfigError> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
        ConfigError::Syntax { origin: origin.into(), line, column, message: strip_yaml_location(&e.to_string()) }
    })?;
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        origin: origin.into(),
        problems: vec![Problem { key: key.into(), message }],
    };
    let map = match &value {
        serde_yaml::Value::Null => {
            return Err(invalid(
                ".",
                "the file is empty; expected an AOF DaemonConfig (apiVersion: aof.dev/v1, kind: DaemonConfig, metadata, spec)".into(),
            ))
        }
        serde_yaml::Value::Mapping(m) => m,
        _ => return Err(invalid(".", "expected a mapping (an AOF DaemonConfig document)".into())),
    };
    if let Some(v) = map.get("apiVersion").and_then(|v| v.as_str()) {
        if v != API_VERSION {
            return Err(invalid("apiVersion", format!("`{v}` is not supported; use `{API_VERSION}`")));
        }
    }
    if let Some(v) = map.get("kind").and_then(|v| v.as_str()) {
        if v != KIND {
            return Err(invalid(
                "kind",
                format!("`{v}`: expected `{KIND}`; `aofctl serve --config` takes the daemon configuration, not a {v} resource"),
            ));
        }
    }
    Ok(())
}

/// Remove serde_yaml's " at line N column M" (the location is reported separately).
fn strip_yaml_location(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let tail = &after[digits..];
        if digits > 0 && tail.starts_with(" column ") {
            let t = &tail[" column ".len()..];
            let d2 = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            rest = &t[d2..];
        } else {
            out.push_str(" at line ");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The inputs of one load, to say where a value came from.
struct Sources<'a> {
    /// `(origin, text)` of the file.
    file: Option<(&'a str, &'a str)>,
    env: &'a [EnvEntry],
}

/// Whether key path `key` is `prefix` or inside it.
fn covers(prefix: &str, key: &str) -> bool {
    key == prefix || (key.starts_with(prefix) && matches!(key.as_bytes().get(prefix.len()), Some(b'.' | b'[')))
}

/// `a.b[2].c` → `a.b[2]`; `a.b[2]` → `a.b`.
fn parent(key: &str) -> &str {
    key.rfind(['.', '[']).map_or(".", |i| &key[..i])
}

fn join(parent: &str, child: &str) -> String {
    if parent == "." || parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

impl Sources<'_> {
    /// The environment variable that set `key` (the most specific one), if any.
    fn env_var_of(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find(|e| covers(&e.key, key)).map(|e| e.var.as_str())
    }

    fn origin_of(&self, key: &str) -> (String, bool) {
        match self.env_var_of(key) {
            Some(var) => (format!("environment variable {var}"), true),
            None => (self.file.map_or_else(|| "environment (AOF__* variables)".to_string(), |(o, _)| o.to_string()), false),
        }
    }

    /// Rule violations; a problem about a value set by an environment variable names it.
    fn invalid(&self, problems: Vec<Problem>) -> ConfigError {
        let problems = problems
            .into_iter()
            .map(|mut p| {
                if let Some(var) = self.env_var_of(&p.key) {
                    p.message.push_str(&format!(" (set by environment variable {var})"));
                }
                p
            })
            .collect();
        let origin = self.file.map_or_else(|| "environment (AOF__* variables)".to_string(), |(o, _)| o.to_string());
        ConfigError::Invalid { origin, problems }
    }

    /// A deserialization error as a [`ConfigError::Schema`]: key path from figment,
    /// source, advice, and the line of the file where known.
    fn schema_error(&self, figment: &Figment, err: figment::Error) -> ConfigError {
        use figment::error::Kind;
        let e = err.into_iter().next().unwrap_or_else(|| figment::Error::from("invalid configuration".to_string()));
        let root = figment.extract::<Value>().ok();
        let path = render_path(root.as_ref(), &e.path);
        let (key, mut message) = match &e.kind {
            Kind::UnknownField(field, allowed) => {
                let key = if e.path.last() == Some(field) { path } else { join(&path, field) };
                let message = unknown("field", field, &key, allowed, "keys");
                (key, message)
            }
            Kind::UnknownVariant(value, allowed) => {
                let message = unknown("value", value, &path, allowed, "values");
                (path, message)
            }
            Kind::MissingField(field) => {
                let key = join(&path, field);
                let message = format!("required key is missing; {}", missing_hint(&key));
                (key, message)
            }
            Kind::InvalidType(actual, expected) => (path, format!("wrong type: expected {expected}, found {actual}")),
            Kind::InvalidValue(actual, expected) => (path, format!("invalid value {actual}, expected {expected}")),
            Kind::InvalidLength(n, expected) => (path, format!("invalid length {n}, expected {expected}")),
            Kind::Message(m) => (path, m.clone()),
            other => (path, other.to_string()),
        };
        let (origin, from_env) = self.origin_of(&key);
        if from_env && matches!(e.kind, Kind::InvalidType(..)) {
            message.push_str(
                " (environment values are read as 42, true, \"text\", [a, b] or {key=value, ...}; quote a value to keep it text)",
            );
        }
        let (line, column) = if from_env { (None, None) } else { self.file_location(&key) };
        ConfigError::Schema { origin, key, message, line, column }
    }

    /// Line and column of the error at `key` when the file alone has it.
    fn file_location(&self, key: &str) -> (Option<usize>, Option<usize>) {
        let Some((_, text)) = self.file else { return (None, None) };
        let de = serde_yaml::Deserializer::from_str(text);
        match serde_path_to_error::deserialize::<_, DaemonConfig>(de) {
            Err(e) => {
                let at = e.path().to_string();
                match e.inner().location() {
                    Some(l) if at == key || at == parent(key) => (Some(l.line()), Some(l.column())),
                    _ => (None, None),
                }
            }
            Ok(_) => (None, None),
        }
    }
}

/// `["spec", "cluster", "initial_members", "1", "grpc"]` →
/// `spec.cluster.initial_members[1].grpc` (an index where the value is a list).
fn render_path(root: Option<&Value>, segments: &[String]) -> String {
    let mut out = String::new();
    let mut at = root;
    for s in segments {
        let index = match at {
            Some(Value::Array(_, items)) => s.parse::<usize>().ok().map(|i| (i, items.get(i))),
            Some(_) => None,
            None => s.parse::<usize>().ok().map(|i| (i, None)),
        };
        match index {
            Some((i, next)) => {
                out.push_str(&format!("[{i}]"));
                at = next;
            }
            None => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(s);
                at = match at {
                    Some(Value::Dict(_, d)) => d.get(s),
                    _ => None,
                };
            }
        }
    }
    if out.is_empty() {
        ".".into()
    } else {
        out
    }
}

/// "unknown field; did you mean `x`? (allowed keys: ...)".
fn unknown(what: &str, bad: &str, key: &str, allowed: &[&str], plural: &str) -> String {
    let mut message = if what == "field" { "unknown field".to_string() } else { format!("unknown value `{bad}`") };
    if let Some(best) = did_you_mean(bad, allowed.iter().copied()) {
        message.push_str(&format!("; did you mean `{best}`?"));
    } else if let Some(home) = misplaced(key, bad).filter(|_| what == "field") {
        message.push_str(&format!("; `{bad}` belongs under `{home}`"));
    }
    if allowed.is_empty() {
        message.push_str("; this section takes no keys");
    } else {
        message.push_str(&format!(" (allowed {plural}: {})", allowed.join(", ")));
    }
    message
}

fn missing_hint(key: &str) -> String {
    match key {
        "apiVersion" => format!("add `apiVersion: {API_VERSION}`"),
        "kind" => format!("add `kind: {KIND}`"),
        "spec" => "add the `spec:` section (or set AOF__* environment variables)".into(),
        "spec.cluster" => "aof-cluster needs a `spec.cluster` section with at least this node's `data_dir` (and \
                           `initial_members` on the nodes that bootstrap the cluster); see \
                           cluster-configs/local/node1.yaml, or set AOF__CLUSTER__* environment variables"
            .into(),
        k if k.starts_with("spec.cluster.initial_members[") => {
            "every member needs `id`, `peer_addr`, `grpc_addr`, `api_addr` and `http_addr`".into()
        }
        k if k.starts_with("spec.cluster.peer_tls.") => "peer_tls needs `ca_file`, `cert_file` and `key_file`".into(),
        k if k.ends_with("_tls.cert_file") || k.ends_with("_tls.key_file") || k.starts_with("spec.server.tls.") => {
            "a listener certificate needs `cert_file` and `key_file`".into()
        }
        k if k.starts_with("spec.auth.tokens[") => {
            "every token needs a `name` and a `role` (admin, read or worker), and one of `env`, `file` or `token`".into()
        }
        _ => "add it".into(),
    }
}

// ---------------------------------------------------------------------------
// Resolution
// ---------------------------------------------------------------------------

/// After parsing: `--data-dir`, the node id, the default name, absolute paths and
/// `{node_id}` in certificate paths.
fn resolve(cfg: &mut DaemonConfig, data_dir_override: Option<&Path>, cwd: &Path) -> Result<(), Problem> {
    if let Some(dir) = data_dir_override {
        cfg.spec.cluster.data_dir = dir.to_path_buf();
    }
    if cfg.spec.cluster.data_dir.as_os_str().is_empty() {
        return Err(Problem {
            key: "spec.cluster.data_dir".into(),
            message: "missing: set it (e.g. `data_dir: ./data/node1`, or AOF__CLUSTER__DATA_DIR) or pass --data-dir DIR"
                .into(),
        });
    }
    if cfg.spec.cluster.node_id == 0 {
        cfg.spec.cluster.node_id = match cfg.hostname.as_deref() {
            Some(name) => statefulset_node_id(name).ok_or_else(|| Problem {
                key: "spec.cluster.node_id".into(),
                message: format!(
                    "not set, and the host name `{name}` has no StatefulSet ordinal (NAME-N, e.g. aof-2 → node 3) to \
                     derive it from; set spec.cluster.node_id (or AOF__CLUSTER__NODE_ID)"
                ),
            })?,
            None => {
                return Err(Problem {
                    key: "spec.cluster.node_id".into(),
                    message: "not set, and the host name of this machine is unknown, so it cannot be derived; set \
                              spec.cluster.node_id (or AOF__CLUSTER__NODE_ID)"
                        .into(),
                })
            }
        };
    }
    let id = cfg.spec.cluster.node_id;
    if cfg.metadata.name.is_empty() {
        cfg.metadata.name = format!("aof-node{id}");
    }
    let s = &mut cfg.spec;
    for dir in [
        Some(&mut s.cluster.data_dir),
        s.triggers.directory.as_mut(),
        s.agents.directory.as_mut(),
        s.fleets.directory.as_mut(),
        s.flows.directory.as_mut(),
        s.decision_log.path.as_mut(),
    ]
    .into_iter()
    .flatten()
    .chain(s.auth.tokens.iter_mut().filter_map(|t| t.file.as_mut()))
    {
        *dir = absolute(cwd, dir);
    }
    let c = &mut s.cluster;
    let mut tls_paths: Vec<&mut PathBuf> = Vec::new();
    if let Some(t) = c.peer_tls.as_mut() {
        tls_paths.extend([&mut t.ca_file, &mut t.cert_file, &mut t.key_file]);
    }
    for t in [c.api_tls.as_mut(), c.grpc_tls.as_mut(), s.server.tls.as_mut()].into_iter().flatten() {
        tls_paths.extend([&mut t.cert_file, &mut t.key_file]);
    }
    for p in tls_paths {
        if let Some(text) = p.to_str().filter(|t| t.contains("{node_id}")) {
            *p = PathBuf::from(text.replace("{node_id}", &id.to_string()));
        }
        if !p.as_os_str().is_empty() {
            *p = absolute(cwd, p);
        }
    }
    Ok(())
}

/// Whether the node id or an advertised address must come from the host name.
fn needs_hostname(cfg: &DaemonConfig) -> bool {
    let c = &cfg.spec.cluster;
    let a = &c.advertise;
    let binds = cfg.bind_addrs();
    let unspecified = |bind: &str, advertised: &Option<String>| {
        advertised.is_none() && HostPort::parse(bind).is_ok_and(|hp| hp.is_unspecified())
    };
    c.node_id == 0
        || unspecified(&binds.http_addr, &a.http_addr)
        || unspecified(&binds.api_addr, &a.api_addr)
        || unspecified(&binds.grpc_addr, &a.grpc_addr)
        || unspecified(&binds.peer_addr, &a.peer_addr)
}

/// `p` made absolute against `cwd`, without `.` components.
fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) };
    joined.components().filter(|c| !matches!(c, Component::CurDir)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_nesting_is_counted_outside_strings() {
        assert_eq!(nesting("aof-2.aof:6000"), 0);
        assert_eq!(nesting("[{id=1,peer_addr=\"a:6000\"}]"), 2);
        assert_eq!(nesting("\"[[[[[[[[[[\""), 0);
        assert_eq!(nesting("\"\\\"[\""), 0);
        assert_eq!(nesting(&"[".repeat(5000)), 5000);
    }

    #[test]
    fn key_paths() {
        assert!(covers("spec.cluster", "spec.cluster.node_id"));
        assert!(covers("spec.cluster.initial_members", "spec.cluster.initial_members[0].id"));
        assert!(!covers("spec.cluster.peer", "spec.cluster.peer_addr"));
        assert_eq!(parent("spec.cluster.initial_members[2].id"), "spec.cluster.initial_members[2]");
        assert_eq!(parent("spec.cluster.initial_members[2]"), "spec.cluster.initial_members");
        assert_eq!(parent("spec"), ".");
    }
}
