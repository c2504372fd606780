//! Contexts: named connection settings in a config file of `aofctl`'s own, like
//! kubeconfig or `nats context`, and how a command's settings are chosen.
//!
//! The file is `$AOF_CONFIG`, else `$XDG_CONFIG_HOME/aofctl/config.yaml`, else
//! `~/.config/aofctl/config.yaml` (mode 0600: it may hold tokens):
//!
//! ```yaml
//! current_context: dev
//! contexts:
//!   - name: dev
//!     api: [http://127.0.0.1:5001, http://127.0.0.1:5002, http://127.0.0.1:5003]
//!     grpc: [grpc://127.0.0.1:4001, grpc://127.0.0.1:4002, grpc://127.0.0.1:4003]
//!     token: 3f1c...            # or token_env: AOF_ADMIN_TOKEN
//!     worker_token: 9a2b...     # or worker_token_env: AOF_WORKER_TOKEN
//!     ca_file: /home/me/aof/data/certs/ca.crt   # for https:// and grpcs:// endpoints
//! ```
//!
//! **Precedence**, for each setting: command-line flags, then environment
//! variables, then the context (`--context`, else `$AOF_CONTEXT`, else the file's
//! `current_context`), then the defaults of the local configs:
//!
//! | setting | flag | variable | context | default |
//! |---|---|---|---|---|
//! | API endpoints | `--endpoint` | `AOF_ENDPOINT` | `api` | `http://127.0.0.1:5001,5002,5003` |
//! | gRPC endpoints (`worker`) | `--grpc-endpoint` (or `worker --endpoint`) | `AOF_GRPC_ENDPOINT` | `grpc` | `grpc://127.0.0.1:4001,4002,4003` |
//! | API token | `--token` | `AOF_TOKEN` | `token` / `token_env` | none |
//! | worker token (`worker`) | `--token` | `AOF_WORKER_TOKEN` | `worker_token` / `worker_token_env`, else `token` / `token_env` | none |
//! | CA of https/grpcs | `--ca-file` | `AOF_CA_FILE` | `ca_file` | the system's roots |

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use crate::output::{print_structured, OutputFormat, Table};

/// The API endpoints when nothing else names them: the local configs' API listeners.
pub const DEFAULT_API: [&str; 3] = ["http://127.0.0.1:5001", "http://127.0.0.1:5002", "http://127.0.0.1:5003"];
/// The gRPC endpoints when nothing else names them: the local configs' workers' listeners.
pub const DEFAULT_GRPC: [&str; 3] = ["grpc://127.0.0.1:4001", "grpc://127.0.0.1:4002", "grpc://127.0.0.1:4003"];

/// Environment variables read here.
pub const ENV_CONFIG: &str = "AOF_CONFIG";
pub const ENV_CONTEXT: &str = "AOF_CONTEXT";
pub const ENV_ENDPOINT: &str = "AOF_ENDPOINT";
pub const ENV_GRPC_ENDPOINT: &str = "AOF_GRPC_ENDPOINT";
pub const ENV_TOKEN: &str = "AOF_TOKEN";
pub const ENV_WORKER_TOKEN: &str = "AOF_WORKER_TOKEN";
pub const ENV_CA_FILE: &str = "AOF_CA_FILE";

/// The config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

/// One named context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub name: String,
    /// Base URLs of the nodes' API listeners (`spec.cluster.api_addr`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api: Vec<String>,
    /// The nodes' workers' gRPC listeners (`spec.cluster.grpc_addr`), for `worker`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grpc: Vec<String>,
    /// The API token itself (admin for changes, read for reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Or the environment variable that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// The worker token itself (for `worker`; default: the API token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_token: Option<String>,
    /// Or the environment variable that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_token_env: Option<String>,
    /// PEM CA of `https://` / `grpcs://` endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Context {
    /// How the API token is given, for listings (never the token).
    fn token_source(&self) -> String {
        match (&self.token, &self.token_env) {
            (Some(_), _) => "(stored)".into(),
            (None, Some(v)) => format!("${v}"),
            (None, None) => "-".into(),
        }
    }

    fn worker_token_source(&self) -> String {
        match (&self.worker_token, &self.worker_token_env) {
            (Some(_), _) => "(stored)".into(),
            (None, Some(v)) => format!("${v}"),
            (None, None) => "(API token)".into(),
        }
    }
}

/// Where the config file is: `$AOF_CONFIG`, `$XDG_CONFIG_HOME/aofctl/config.yaml`,
/// `$HOME/.config/aofctl/config.yaml`.
pub fn config_path_with(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(p) = set(ENV_CONFIG) {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = set("XDG_CONFIG_HOME") {
        return Ok(Path::new(&x).join("aofctl/config.yaml"));
    }
    if let Some(h) = set("HOME") {
        return Ok(Path::new(&h).join(".config/aofctl/config.yaml"));
    }
    bail!("cannot tell where aofctl's config file goes: set {ENV_CONFIG}=PATH (or HOME)")
}

pub fn config_path() -> anyhow::Result<PathBuf> {
    config_path_with(&|k| std::env::var(k).ok())
}

impl ConfigFile {
    /// Reads `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> anyhow::Result<ConfigFile> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read aofctl's config file {}", path.display())),
        };
        if text.trim().is_empty() {
            return Ok(ConfigFile::default());
        }
        serde_yaml::from_str(&text).with_context(|| {
            format!("{} is not a valid aofctl config file (fix or delete it; {ENV_CONFIG} points elsewhere)", path.display())
        })
    }

    /// Writes `path` (directories created, mode 0600, replaced atomically).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = format!(
            "# aofctl contexts (`aofctl config --help`); may hold tokens: keep it private.\n{}",
            serde_yaml::to_string(self)?
        );
        let tmp = path.with_extension("yaml.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().with_context(|| format!("cannot write aofctl's config file {}", path.display()))
    }

    pub fn get(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    fn names(&self) -> String {
        if self.contexts.is_empty() {
            "none defined".into()
        } else {
            self.contexts.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        }
    }

    /// Adds or replaces `ctx` (by name).
    pub fn upsert(&mut self, ctx: Context) {
        match self.contexts.iter_mut().find(|c| c.name == ctx.name) {
            Some(c) => *c = ctx,
            None => self.contexts.push(ctx),
        }
    }
}

/// What the command line said about the connection (flags only; the
/// environment is read by [`resolve`]).
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--endpoint` given on the command line.
    pub endpoint: Option<Vec<String>>,
    /// `--grpc-endpoint` (or `worker --endpoint`) given on the command line.
    pub grpc_endpoint: Option<Vec<String>>,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub context: Option<String>,
    /// The command is `worker`: it needs the worker token (not the API token).
    pub worker: bool,
}

/// The settings a command connects with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub api: Vec<String>,
    pub grpc: Vec<String>,
    /// The API token (not resolved for `worker`).
    pub token: Option<String>,
    /// The worker token (resolved for `worker` only).
    pub worker_token: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// The context used, if any.
    pub context: Option<String>,
}

fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Picks every setting by precedence (see the module docs). `env` reads the
/// environment; `file` is the config file (`None`: no file). A context that is
/// named but missing, or that reads a token from an unset variable, is an error.
pub fn resolve(flags: &Flags, env: &dyn Fn(&str) -> Option<String>, file: &ConfigFile) -> anyhow::Result<Settings> {
    let env = |k: &str| env(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let chosen = flags.context.clone().or_else(|| env(ENV_CONTEXT)).or_else(|| file.current_context.clone());
    let ctx = match &chosen {
        None => None,
        Some(name) => Some(file.get(name).ok_or_else(|| {
            anyhow::anyhow!(
                "no context named {name:?} in aofctl's config file (contexts: {}); create it with \
                 `aofctl config set-context {name} --api URL ...` or pick another with --context",
                file.names()
            )
        })?),
    };
    let from_env_var = |ctx: &Context, var: &str, what: &str| -> anyhow::Result<String> {
        env(var).ok_or_else(|| {
            anyhow::anyhow!(
                "context {:?} takes its {what} from ${var}, which is not set; export it, pass --token, \
                 or change the context with `aofctl config set-context {}`",
                ctx.name,
                ctx.name
            )
        })
    };
    let ctx_token = |c: &Context| -> anyhow::Result<Option<String>> {
        match (&c.token, &c.token_env) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, Some(var)) => from_env_var(c, var, "token").map(Some),
            (None, None) => Ok(None),
        }
    };
    let ctx_worker_token = |c: &Context| -> anyhow::Result<Option<String>> {
        match (&c.worker_token, &c.worker_token_env) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, Some(var)) => from_env_var(c, var, "worker token").map(Some),
            (None, None) => ctx_token(c),
        }
    };
    let nonempty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let api = flags
        .endpoint
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(|| env(ENV_ENDPOINT).map(|v| list(&v)))
        .or_else(|| ctx.and_then(|c| nonempty(&c.api)))
        .unwrap_or_else(|| DEFAULT_API.iter().map(|s| s.to_string()).collect());
    let grpc = flags
        .grpc_endpoint
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(|| env(ENV_GRPC_ENDPOINT).map(|v| list(&v)))
        .or_else(|| ctx.and_then(|c| nonempty(&c.grpc)))
        .unwrap_or_else(|| DEFAULT_GRPC.iter().map(|s| s.to_string()).collect());
    // Only the token the command uses is resolved, and a token from a flag or
    // variable means the context's is not needed (nor its variable).
    let (token, worker_token) = if flags.worker {
        let t = match flags.token.clone().or_else(|| env(ENV_WORKER_TOKEN)) {
            Some(t) => Some(t),
            None => ctx.map(ctx_worker_token).transpose()?.flatten(),
        };
        (None, t)
    } else {
        let t = match flags.token.clone().or_else(|| env(ENV_TOKEN)) {
            Some(t) => Some(t),
            None => ctx.map(ctx_token).transpose()?.flatten(),
        };
        (t, None)
    };
    let ca_file = flags
        .ca_file
        .clone()
        .or_else(|| env(ENV_CA_FILE).map(PathBuf::from))
        .or_else(|| ctx.and_then(|c| c.ca_file.clone()));
    Ok(Settings { api, grpc, token, worker_token, ca_file, context: chosen })
}

// ---- `aofctl config ...` ----

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Create or change a context (only the settings given change). The global
    /// --token and --ca-file flags set its token and CA.
    #[command(after_help = "Examples:\n  aofctl config set-context prod --api https://aof-0.example:5000,https://aof-1.example:5000 \\\n      --grpc grpcs://aof-0.example:4000 --token-env AOF_PROD_TOKEN --ca-file ./certs/ca.crt\n  aofctl config set-context local --api http://127.0.0.1:5001 --token \"$AOF_ADMIN_TOKEN\" --use")]
    SetContext(SetContextArgs),
    /// Make a context the current one.
    UseContext(NameArg),
    /// List the contexts (tokens are never shown).
    GetContexts(GetContextsArgs),
    /// Print the current context's name.
    CurrentContext,
    /// Remove a context.
    DeleteContext(NameArg),
}

#[derive(Debug, Args)]
pub struct NameArg {
    pub name: String,
}

#[derive(Debug, Args)]
pub struct GetContextsArgs {
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct SetContextArgs {
    pub name: String,
    /// API endpoints (the nodes' spec.cluster.api_addr), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "URL[,URL...]")]
    pub api: Vec<String>,
    /// Workers' gRPC endpoints (the nodes' spec.cluster.grpc_addr), comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "URL[,URL...]")]
    pub grpc: Vec<String>,
    /// Read the API token from this environment variable when the context is used
    /// (instead of storing it; --token stores it).
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Store this worker token (for `aofctl worker`; default: the API token).
    #[arg(long, value_name = "TOKEN", conflicts_with = "worker_token_env")]
    pub worker_token: Option<String>,
    /// Read the worker token from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub worker_token_env: Option<String>,
    /// Make it the current context.
    #[arg(long = "use")]
    pub use_it: bool,
    /// Set by the parser from the global --token (not a flag of its own).
    #[arg(skip)]
    pub token_stored: Option<String>,
}

/// Runs a `config` command; `token` / `ca_file` are the global flags.
pub fn run(cmd: ConfigCommand, token: Option<String>, ca_file: Option<PathBuf>) -> anyhow::Result<()> {
    let path = config_path()?;
    let mut file = ConfigFile::load(&path)?;
    match cmd {
        ConfigCommand::SetContext(mut a) => {
            a.token_stored = token;
            let note = set_context(&mut file, a, ca_file)?;
            file.save(&path)?;
            println!("{note} in {}", path.display());
        }
        ConfigCommand::UseContext(NameArg { name }) => {
            if file.get(&name).is_none() {
                bail!("no context named {name:?} (contexts: {}); create it with `aofctl config set-context {name} --api URL ...`", file.names());
            }
            file.current_context = Some(name.clone());
            file.save(&path)?;
            println!("switched to context {name:?}");
        }
        ConfigCommand::GetContexts(a) => {
            if !print_structured(a.output, &redacted(&file))? {
                print!("{}", render_contexts(&file));
            }
        }
        ConfigCommand::CurrentContext => match &file.current_context {
            Some(name) => println!("{name}"),
            None => bail!("no current context (set one with `aofctl config use-context NAME`; `aofctl dev` records one)"),
        },
        ConfigCommand::DeleteContext(NameArg { name }) => {
            let before = file.contexts.len();
            file.contexts.retain(|c| c.name != name);
            if file.contexts.len() == before {
                bail!("no context named {name:?} (contexts: {})", file.names());
            }
            if file.current_context.as_deref() == Some(name.as_str()) {
                file.current_context = None;
            }
            file.save(&path)?;
            println!("deleted context {name:?}");
        }
    }
    Ok(())
}

/// Applies `set-context` to `file`; what was done, for the user.
pub fn set_context(file: &mut ConfigFile, a: SetContextArgs, ca_file: Option<PathBuf>) -> anyhow::Result<String> {
    if a.name.trim().is_empty() {
        bail!("a context needs a name");
    }
    if a.token_stored.is_some() && a.token_env.is_some() {
        bail!("give the context's token either with --token (stored) or with --token-env VAR (read when used), not both");
    }
    let existed = file.get(&a.name).is_some();
    let mut ctx = file.get(&a.name).cloned().unwrap_or_else(|| Context { name: a.name.clone(), ..Context::default() });
    if !a.api.is_empty() {
        ctx.api = a.api;
    }
    if !a.grpc.is_empty() {
        ctx.grpc = a.grpc;
    }
    if let Some(t) = a.token_stored {
        ctx.token = Some(t);
        ctx.token_env = None;
    }
    if let Some(v) = a.token_env {
        ctx.token_env = Some(v);
        ctx.token = None;
    }
    if let Some(t) = a.worker_token {
        ctx.worker_token = Some(t);
        ctx.worker_token_env = None;
    }
    if let Some(v) = a.worker_token_env {
        ctx.worker_token_env = Some(v);
        ctx.worker_token = None;
    }
    if let Some(ca) = ca_file {
        // Absolute, so the context works from any directory.
        let abs = std::path::absolute(&ca).with_context(|| format!("--ca-file {}", ca.display()))?;
        ctx.ca_file = Some(abs);
    }
    let name = ctx.name.clone();
    file.upsert(ctx);
    let mut note = format!("context {name:?} {}", if existed { "changed" } else { "created" });
    if a.use_it || file.current_context.is_none() {
        file.current_context = Some(name);
        note.push_str(" (current)");
    }
    Ok(note)
}

/// The file with every stored token replaced by `(stored)`.
fn redacted(file: &ConfigFile) -> ConfigFile {
    let mut f = file.clone();
    for c in &mut f.contexts {
        for t in [&mut c.token, &mut c.worker_token] {
            if t.is_some() {
                *t = Some("(stored)".into());
            }
        }
    }
    f
}

/// The `get-contexts` table.
pub fn render_contexts(file: &ConfigFile) -> String {
    let mut t = Table::new(["CURRENT", "NAME", "API", "GRPC", "TOKEN", "WORKER TOKEN", "CA"]);
    for c in &file.contexts {
        let dash = |v: &[String]| if v.is_empty() { "-".to_string() } else { v.join(",") };
        t.row([
            if file.current_context.as_deref() == Some(c.name.as_str()) { "*".into() } else { String::new() },
            c.name.clone(),
            dash(&c.api),
            dash(&c.grpc),
            c.token_source(),
            c.worker_token_source(),
            c.ca_file.as_ref().map_or("-".into(), |p| p.display().to_string()),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn file() -> ConfigFile {
        ConfigFile {
            current_context: Some("dev".into()),
            contexts: vec![
                Context {
                    name: "dev".into(),
                    api: vec!["http://127.0.0.1:5001".into()],
                    grpc: vec!["grpc://127.0.0.1:4001".into()],
                    token: Some("dev-admin".into()),
                    worker_token: Some("dev-worker".into()),
                    ..Context::default()
                },
                Context {
                    name: "prod".into(),
                    api: vec!["https://aof:5000".into()],
                    token_env: Some("PROD_TOKEN".into()),
                    ca_file: Some("/etc/aof/ca.crt".into()),
                    ..Context::default()
                },
            ],
        }
    }

    #[test]
    fn flags_beat_env_beat_context_beat_defaults() {
        let f = file();
        let worker = Flags { worker: true, ..Flags::default() };
        // Context only.
        let s = resolve(&Flags::default(), &env(&[]), &f).unwrap();
        assert_eq!(s.api, vec!["http://127.0.0.1:5001"]);
        assert_eq!(s.grpc, vec!["grpc://127.0.0.1:4001"]);
        assert_eq!((s.token.as_deref(), s.worker_token.as_deref()), (Some("dev-admin"), None));
        assert_eq!(s.context.as_deref(), Some("dev"));
        let s = resolve(&worker, &env(&[]), &f).unwrap();
        assert_eq!((s.token.as_deref(), s.worker_token.as_deref()), (None, Some("dev-worker")));
        // Environment over the context.
        let e = env(&[
            ("AOF_ENDPOINT", "http://e:1, http://e:2"),
            ("AOF_GRPC_ENDPOINT", "grpc://e:3"),
            ("AOF_TOKEN", "env-token"),
            ("AOF_WORKER_TOKEN", "env-worker"),
            ("AOF_CA_FILE", "/env/ca.crt"),
        ]);
        let s = resolve(&Flags::default(), &e, &f).unwrap();
        assert_eq!(s.api, vec!["http://e:1", "http://e:2"]);
        assert_eq!(s.grpc, vec!["grpc://e:3"]);
        assert_eq!(s.token.as_deref(), Some("env-token"));
        assert_eq!(resolve(&worker, &e, &f).unwrap().worker_token.as_deref(), Some("env-worker"));
        assert_eq!(s.ca_file, Some(PathBuf::from("/env/ca.crt")));
        // Flags over both (one --token serves as the worker token too).
        let flags = Flags {
            endpoint: Some(vec!["http://f:1".into()]),
            grpc_endpoint: Some(vec!["grpc://f:2".into()]),
            token: Some("flag-token".into()),
            ca_file: Some("/flag/ca.crt".into()),
            context: None,
            worker: false,
        };
        let s = resolve(&flags, &e, &f).unwrap();
        assert_eq!((s.api.clone(), s.grpc.clone()), (vec!["http://f:1".to_string()], vec!["grpc://f:2".to_string()]));
        assert_eq!(s.token.as_deref(), Some("flag-token"));
        let w = resolve(&Flags { worker: true, ..flags.clone() }, &e, &f).unwrap();
        assert_eq!(w.worker_token.as_deref(), Some("flag-token"));
        assert_eq!(s.ca_file, Some(PathBuf::from("/flag/ca.crt")));
        // Nothing at all: the local configs' listeners, no token.
        let s = resolve(&Flags::default(), &env(&[]), &ConfigFile::default()).unwrap();
        assert_eq!(s.api, DEFAULT_API.to_vec());
        assert_eq!(s.grpc, DEFAULT_GRPC.to_vec());
        assert_eq!((s.token, s.worker_token, s.ca_file, s.context), (None, None, None, None));
    }

    #[test]
    fn the_context_is_chosen_by_flag_then_env_then_file() {
        let f = file();
        let e = env(&[("AOF_CONTEXT", "prod"), ("PROD_TOKEN", "p")]);
        let s = resolve(&Flags::default(), &e, &f).unwrap();
        assert_eq!((s.context.as_deref(), s.token.as_deref()), (Some("prod"), Some("p")));
        // No worker token of its own: the API token; no gRPC endpoints: the defaults.
        let w = resolve(&Flags { worker: true, ..Flags::default() }, &e, &f).unwrap();
        assert_eq!(w.worker_token.as_deref(), Some("p"));
        assert_eq!(s.grpc, DEFAULT_GRPC.to_vec());
        assert_eq!(s.ca_file, Some(PathBuf::from("/etc/aof/ca.crt")));
        let flags = Flags { context: Some("dev".into()), ..Flags::default() };
        assert_eq!(resolve(&flags, &e, &f).unwrap().context.as_deref(), Some("dev"));
        // A missing context is an error naming the known ones.
        let flags = Flags { context: Some("staging".into()), ..Flags::default() };
        let err = resolve(&flags, &env(&[]), &f).unwrap_err().to_string();
        assert!(err.contains("no context named \"staging\"") && err.contains("dev, prod"), "{err}");
    }

    #[test]
    fn a_token_variable_that_is_unset_is_an_error_unless_something_else_gives_the_token() {
        let f = file();
        let flags = Flags { context: Some("prod".into()), ..Flags::default() };
        let err = resolve(&flags, &env(&[]), &f).unwrap_err().to_string();
        assert!(err.contains("$PROD_TOKEN, which is not set"), "{err}");
        let flags = Flags { token: Some("t".into()), ..flags };
        assert_eq!(resolve(&flags, &env(&[]), &f).unwrap().token.as_deref(), Some("t"));
        // The worker's token does not need the API token's variable, and the other way round.
        let mut f = f;
        f.contexts[1].worker_token = Some("w".into());
        let w = Flags { context: Some("prod".into()), worker: true, ..Flags::default() };
        assert_eq!(resolve(&w, &env(&[]), &f).unwrap().worker_token.as_deref(), Some("w"));
    }

    #[test]
    fn config_path_follows_aof_config_then_xdg_then_home() {
        assert_eq!(config_path_with(&env(&[("AOF_CONFIG", "/x/c.yaml"), ("HOME", "/h")])).unwrap(), PathBuf::from("/x/c.yaml"));
        assert_eq!(
            config_path_with(&env(&[("XDG_CONFIG_HOME", "/xdg"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/xdg/aofctl/config.yaml")
        );
        assert_eq!(config_path_with(&env(&[("HOME", "/h")])).unwrap(), PathBuf::from("/h/.config/aofctl/config.yaml"));
        assert!(config_path_with(&env(&[])).is_err());
    }

    fn set_args(name: &str) -> SetContextArgs {
        SetContextArgs {
            name: name.into(),
            api: vec![],
            grpc: vec![],
            token_env: None,
            worker_token: None,
            worker_token_env: None,
            use_it: false,
            token_stored: None,
        }
    }

    #[test]
    fn set_context_changes_only_what_is_given_and_the_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.yaml");
        let mut f = ConfigFile::load(&path).unwrap();
        assert_eq!(f, ConfigFile::default());
        let note = set_context(
            &mut f,
            SetContextArgs { api: vec!["http://a:5001".into()], token_stored: Some("s3cret".into()), ..set_args("a") },
            None,
        )
        .unwrap();
        assert_eq!(note, "context \"a\" created (current)");
        let note = set_context(&mut f, SetContextArgs { token_env: Some("B_TOKEN".into()), ..set_args("b") }, Some("ca.crt".into())).unwrap();
        assert_eq!(note, "context \"b\" created");
        // Changing a's gRPC endpoints keeps its API endpoints and token.
        set_context(&mut f, SetContextArgs { grpc: vec!["grpc://a:4001".into()], ..set_args("a") }, None).unwrap();
        f.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = ConfigFile::load(&path).unwrap();
        assert_eq!(back, f);
        let a = back.get("a").unwrap();
        assert_eq!((a.api.as_slice(), a.grpc.as_slice(), a.token.as_deref()), (&["http://a:5001".to_string()][..], &["grpc://a:4001".to_string()][..], Some("s3cret")));
        let b = back.get("b").unwrap();
        assert!(b.ca_file.as_ref().unwrap().is_absolute());
        // A token variable replaces a stored token and the other way round.
        set_context(&mut f, SetContextArgs { token_env: Some("A_TOKEN".into()), use_it: true, ..set_args("a") }, None).unwrap();
        assert_eq!((f.get("a").unwrap().token.clone(), f.get("a").unwrap().token_env.as_deref()), (None, Some("A_TOKEN")));
        // Listings never show a stored token.
        let table = render_contexts(&back);
        assert!(!table.contains("s3cret"), "{table}");
        assert!(table.contains("(stored)") && table.contains("$B_TOKEN"), "{table}");
        assert!(!serde_json::to_string(&redacted(&back)).unwrap().contains("s3cret"));
    }

    #[test]
    fn a_broken_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "contexts: [ {name: a, bogus: 1} ]\n").unwrap();
        let err = format!("{:#}", ConfigFile::load(&path).unwrap_err());
        assert!(err.contains(&path.display().to_string()) && err.contains("bogus"), "{err}");
    }
}
