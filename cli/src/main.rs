//! `aofctl`: run aof-cluster nodes and workers, manage the cluster's membership,
//! its triggers, and follow events and the work queue.
//!
//! One module per concern: [`serve`] (run a node), [`dev`] (a local 3-node
//! cluster), [`cluster`] (status/join/leave), [`triggers`] (apply/get/delete),
//! [`events`] (get events, describe event), [`queue`] (queue stats, dlq),
//! [`worker`] (run a command per job), [`webhook`] (signing sample deliveries),
//! [`output`] (tables, JSON/YAML), [`signals`] (SIGINT/SIGTERM), [`certs`] (cluster CA
//! and node certificates), [`context`] (contexts in aofctl's config file, and the
//! precedence of flags, environment, context and defaults).
//!
//! Errors are printed as `error: <message>` (with a hint when the cluster
//! cannot be reached) and exit with code 1; usage errors exit with code 2.

mod callbacks;
mod certs;
mod cluster;
mod context;
mod dev;
mod diff;
mod doctor;
mod events;
mod examples;
mod github;
mod jobs;
mod leave;
mod output;
mod progress;
mod queue;
mod serve;
mod signals;
mod snapshot;
mod triggers;
mod watch;
mod webhook;
mod worker;

/// mimalloc instead of the system allocator: a node's hot path (sled pages, Raft
/// entries, payloads) allocates and frees many short-lived buffers, and glibc's
/// malloc spent ~30 % of the nodes' CPU on it under load (perf, see
/// docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aof_client::{Client, ClientError, Consistency};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Command-line tool of aof-cluster: run nodes and workers, manage the cluster and
/// its triggers, follow events and the work queue.
#[derive(Debug, Parser)]
#[command(
    name = "aofctl",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted by every subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The nodes' API endpoints (their spec.cluster.api_addr), comma-separated; a
    /// request goes to the next one when a node cannot be reached. Default: the
    /// context's, else http://127.0.0.1:5001,5002,5003 (the local configs).
    #[arg(
        long,
        global = true,
        env = "AOF_ENDPOINT",
        value_delimiter = ',',
        value_name = "URL[,URL...]"
    )]
    pub endpoint: Vec<String>,

    /// Bearer token for the API (admin for changes, read for reads); for `worker`,
    /// the worker token. Default: $AOF_TOKEN ($AOF_WORKER_TOKEN for `worker`), else
    /// the context's.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,

    /// Use this context of aofctl's config file (`aofctl config get-contexts`)
    /// instead of the current one.
    #[arg(long, global = true, env = "AOF_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,

    /// PEM CA to verify https:// and grpcs:// endpoints with (default:
    /// $AOF_CA_FILE, else the context's, else the system's roots).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Log filter (e.g. `debug`, `aof_node=debug,info`); RUST_LOG overrides it.
    /// Default: `info` for `serve`, `warn` otherwise.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Time allowed for one HTTP request to one node (e.g. 500ms, 20s, 1m).
    #[arg(long, global = true, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Whether `--endpoint` was given on the command line (not taken from
    /// AOF_ENDPOINT): `worker` then uses it as its gRPC endpoints.
    #[arg(skip)]
    pub endpoint_given: bool,

    /// The connection settings, chosen by [`context::resolve`] before a command
    /// that talks to the cluster runs.
    #[arg(skip)]
    pub conn: context::Settings,
}

impl GlobalArgs {
    /// A client of the API endpoints, with the token and CA.
    pub fn client(&self) -> Client {
        self.client_for(self.conn.api.clone(), self.request_timeout)
    }

    /// A client of other API endpoints (e.g. one member's), with the same token and CA.
    pub fn client_for(&self, endpoints: Vec<String>, timeout: Duration) -> Client {
        let mut b = Client::builder(endpoints)
            .request_timeout(timeout)
            .token_opt(self.conn.token.clone());
        if let Some(ca) = &self.conn.ca_file {
            b = b.ca_file(ca);
        }
        b.build()
    }

    /// A client of public listeners (`/health`, `/ready`): the CA, never the token
    /// (the public listener may face the internet and needs none).
    pub fn public_client(&self, endpoints: Vec<String>, timeout: Duration) -> Client {
        let mut b = Client::builder(endpoints).request_timeout(timeout);
        if let Some(ca) = &self.conn.ca_file {
            b = b.ca_file(ca);
        }
        b.build()
    }

    /// The URL of a member's advertised API address (`host:port`), with the
    /// scheme of the configured endpoints (https when they use it).
    pub fn api_url(&self, addr: &str) -> String {
        api_url(&self.conn.api, addr)
    }

    /// What the command line said about the connection (for [`context::resolve`]).
    fn flags(&self, command: &Command) -> context::Flags {
        let mut flags = context::Flags {
            endpoint: self.endpoint_given.then(|| self.endpoint.clone()),
            grpc_endpoint: None,
            token: self.token.clone(),
            ca_file: self.ca_file.clone(),
            context: self.context.clone(),
            worker: matches!(command, Command::Worker(_)),
        };
        if let Command::Worker(w) = command {
            // `aofctl worker --endpoint URL` names gRPC endpoints.
            flags.endpoint = None;
            flags.grpc_endpoint = if w.grpc_endpoint_given {
                Some(w.grpc_endpoint.clone())
            } else if self.endpoint_given {
                Some(self.endpoint.clone())
            } else {
                None
            };
        }
        flags
    }

    /// Chooses the connection settings (flags, environment, context, defaults)
    /// and checks that a client can be built from them.
    fn resolve(&mut self, command: &Command) -> anyhow::Result<()> {
        let path = context::config_path();
        let file = match &path {
            Ok(p) => context::ConfigFile::load(p)?,
            Err(_) => context::ConfigFile::default(),
        };
        self.conn = context::resolve(&self.flags(command), &|k| std::env::var(k).ok(), &file)?;
        if !matches!(command, Command::Worker(_)) {
            Client::builder(self.conn.api.clone())
                .token_opt(self.conn.token.clone())
                .try_build()?;
            if let Some(ca) = &self.conn.ca_file {
                Client::builder(vec![]).ca_file(ca).try_build()?;
            }
        }
        Ok(())
    }
}

/// `host:port` → `http://host:port` (or `https://` when the first of `endpoints`
/// is https); a URL is kept.
pub fn api_url(endpoints: &[String], addr: &str) -> String {
    if addr.contains("://") {
        return addr.to_string();
    }
    let https = endpoints.first().is_some_and(|e| e.trim().starts_with("https://"));
    format!("{}://{addr}", if https { "https" } else { "http" })
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a cluster node (HTTP + gRPC + Raft) until SIGINT/SIGTERM.
    Serve(serve::ServeArgs),
    /// Show and change cluster membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Create or update triggers from YAML files (kubectl-style).
    Apply(triggers::ApplyArgs),
    /// Show stored resources.
    #[command(subcommand)]
    Get(triggers::GetCommand),
    /// Delete stored resources.
    #[command(subcommand)]
    Delete(triggers::DeleteCommand),
    /// Start a local 3-node cluster (nodes 1-3) for development; Ctrl-C stops it.
    Dev(dev::DevArgs),
    /// Show one resource in detail.
    #[command(subcommand)]
    Describe(events::DescribeCommand),
    /// Run a command for each job of the work queue (over gRPC).
    Worker(worker::WorkerArgs),
    /// Work-queue statistics.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// The dead-letter queue: list, redrive or purge dead jobs.
    #[command(subcommand)]
    Dlq(queue::DlqCommand),
    /// Cancel a ready, delayed or leased job.
    #[command(subcommand)]
    Cancel(jobs::CancelCommand),
    /// Run an event again (new jobs for its routes).
    #[command(subcommand)]
    Rerun(jobs::RerunCommand),
    /// Check the cluster's health: quorum, lag, webhook freshness, DLQ, leases, disk.
    Doctor(doctor::DoctorArgs),
    /// GitHub: recover deliveries the cluster missed.
    #[command(subcommand)]
    Github(github::GithubCommand),
    /// Create the cluster CA and node certificates (mutual TLS between nodes).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Contexts: named endpoints, tokens and CA in aofctl's config file
    /// ($AOF_CONFIG or ~/.config/aofctl/config.yaml).
    #[command(subcommand)]
    Config(context::ConfigCommand),
    /// Backups: save the whole cluster state, restore it into a new cluster.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Print a shell completion script (bash, zsh or fish).
    #[command(after_help = "Examples:
  aofctl completion bash > ~/.local/share/bash-completion/completions/aofctl
  aofctl completion zsh > \"${fpath[1]}/_aofctl\"
  aofctl completion fish > ~/.config/fish/completions/aofctl.fish
  source <(aofctl completion bash)   # this shell only")]
    Completion(CompletionArgs),
}

/// `aofctl completion SHELL`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The completion script of aofctl for `shell`.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut examples::attach(Cli::command()), "aofctl", &mut out);
    out
}

impl Command {
    /// Whether the command talks to a running cluster (and needs its endpoints,
    /// token and CA).
    fn connects(&self) -> bool {
        !matches!(
            self,
            Command::Serve(_)
                | Command::Dev(_)
                | Command::Certs(_)
                | Command::Config(_)
                | Command::Completion(_)
                | Command::Snapshot(snapshot::SnapshotCommand::Restore(_) | snapshot::SnapshotCommand::Status(_))
        )
    }
}

/// `--consistency` of read commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Confirmed with the leader (fails if the node cannot reach a leader).
    #[default]
    Linearizable,
    /// The answering node's local copy (always answers; may be old).
    Stale,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Stale => Consistency::Stale,
        }
    }
}

/// Parses `250ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 2m"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {s:?}: use ms, s, m or h"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Installs logging (stderr; RUST_LOG wins over `level`) and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP trace export. Keep the returned guard
/// alive: dropping it flushes the exporter.
pub fn init_logging(level: &str, json: bool) -> aof_node::telemetry::Telemetry {
    let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok();
    aof_node::telemetry::init(level, json, otlp.as_deref())
}

async fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.command.connects() {
        cli.global.resolve(&cli.command)?;
    }
    let level = cli.global.log_level.as_deref();
    let _telemetry = match &cli.command {
        Command::Serve(args) => init_logging(level.unwrap_or("info"), args.log_format == serve::LogFormat::Json),
        Command::Worker(_) => init_logging(level.unwrap_or("info"), false),
        _ => init_logging(level.unwrap_or("warn"), false),
    };
    match cli.command {
        Command::Serve(args) => serve::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Cluster(cmd) => cluster::run(cmd, &cli.global)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Apply(args) => triggers::apply(args, &cli.global)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Get(cmd) => triggers::get(cmd, &cli.global)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Delete(cmd) => triggers::delete(cmd, &cli.global)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Dev(args) => dev::run(args, &cli.global).await,
        Command::Describe(cmd) => events::describe(cmd, &cli.global)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Worker(args) => worker::run(args, &cli.global).await,
        Command::Queue(cmd) => queue::queue(cmd, &cli.global)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Dlq(cmd) => queue::dlq(cmd, &cli.global)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Cancel(cmd) => jobs::cancel(cmd, &cli.global).await.map(|()| ExitCode::SUCCESS),
        Command::Rerun(cmd) => jobs::rerun(cmd, &cli.global).await.map(|()| ExitCode::SUCCESS),
        Command::Doctor(args) => doctor::run(args, &cli.global)
            .await
            .map(|healthy| if healthy { ExitCode::SUCCESS } else { ExitCode::from(1) }),
        Command::Github(cmd) => github::run(cmd, &cli.global)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Certs(cmd) => certs::run(cmd).map(|()| ExitCode::SUCCESS),
        Command::Config(cmd) => context::run(cmd, cli.global.token.clone(), cli.global.ca_file.clone())
            .map(|()| ExitCode::SUCCESS),
        Command::Snapshot(cmd) => snapshot::run(cmd, &cli.global)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Completion(args) => {
            use std::io::Write as _;
            std::io::stdout().write_all(&completion_script(args.shell))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The message printed for a failed command: the error chain, plus a hint
/// when the cluster could not be reached.
pub fn error_message(err: &anyhow::Error) -> String {
    let mut msg = format!("{err:#}");
    let unreachable = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<ClientError>(),
            Some(ClientError::Unreachable { .. })
        )
    });
    if unreachable {
        msg.push_str(
            "\nhint: is the cluster running? Point aofctl at the nodes' API listeners (spec.cluster.api_addr) \
             with --endpoint URL[,URL...], AOF_ENDPOINT or a context (`aofctl config get-contexts`); \
             `aofctl dev` starts a local cluster and records its context.",
        );
    }
    msg
}

/// Parses the command line, noting where the endpoints came from (`worker`
/// takes `--endpoint` as gRPC endpoints when it is given explicitly).
pub fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::parser::ValueSource;
    use clap::{CommandFactory as _, FromArgMatches as _};
    let matches = examples::attach(Cli::command()).try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    cli.global.endpoint_given = matches.value_source("endpoint") == Some(ValueSource::CommandLine);
    if let (Command::Worker(w), Some(sub)) =
        (&mut cli.command, matches.subcommand_matches("worker"))
    {
        w.grpc_endpoint_given = sub.value_source("grpc_endpoint") == Some(ValueSource::CommandLine);
    }
    Ok(cli)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", error_message(&err));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_args(std::iter::once("aofctl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn endpoint_flags_split_on_commas_and_count_only_from_the_command_line() {
        let cli = parse(&["get", "triggers", "--endpoint", "http://a:1,http://b:2"]).unwrap();
        assert_eq!(cli.global.endpoint, vec!["http://a:1", "http://b:2"]);
        let flags = cli.global.flags(&cli.command);
        assert_eq!(flags.endpoint, Some(vec!["http://a:1".to_string(), "http://b:2".to_string()]));
        assert_eq!(flags.grpc_endpoint, None);
        // Global options go before or after the subcommand.
        let cli = parse(&["--endpoint", "http://c:3", "--token", "t", "cluster", "status", "--ca-file", "ca.crt"]).unwrap();
        let flags = cli.global.flags(&cli.command);
        assert_eq!(flags.endpoint, Some(vec!["http://c:3".to_string()]));
        assert_eq!((flags.token.as_deref(), flags.ca_file), (Some("t"), Some(PathBuf::from("ca.crt"))));
        // Not given on the command line: left to the environment, context and defaults.
        let cli = parse(&["get", "triggers", "--context", "dev"]).unwrap();
        let flags = cli.global.flags(&cli.command);
        assert_eq!((flags.endpoint, flags.context.as_deref()), (None, Some("dev")));
    }

    #[test]
    fn member_urls_take_the_scheme_of_the_endpoints() {
        assert_eq!(api_url(&["http://a:5001".into()], "10.0.0.2:5000"), "http://10.0.0.2:5000");
        assert_eq!(api_url(&["https://a:5001".into()], "aof-1.aof:5000"), "https://aof-1.aof:5000");
        assert_eq!(api_url(&[], "b:1"), "http://b:1");
        assert_eq!(api_url(&["https://a:1".into()], "http://b:1"), "http://b:1");
    }

    #[test]
    fn get_triggers_takes_an_optional_name_and_output() {
        let cli = parse(&[
            "get",
            "triggers",
            "pr-bot",
            "-o",
            "wide",
            "--consistency",
            "stale",
        ])
        .unwrap();
        let Command::Get(triggers::GetCommand::Triggers(a)) = cli.command else {
            panic!()
        };
        assert_eq!(a.name.as_deref(), Some("pr-bot"));
        assert_eq!(a.output, output::ListFormat::Wide);
        assert_eq!(a.consistency, ConsistencyArg::Stale);
        // Singular alias, default table.
        let cli = parse(&["get", "trigger"]).unwrap();
        let Command::Get(triggers::GetCommand::Triggers(a)) = cli.command else {
            panic!()
        };
        assert_eq!((a.name, a.output), (None, output::ListFormat::Table));
        assert!(parse(&["get", "triggers", "-o", "xml"]).is_err());
    }

    #[test]
    fn cluster_join_requires_its_four_addresses() {
        let cli = parse(&[
            "cluster",
            "join",
            "--endpoint",
            "http://127.0.0.1:5001",
            "--node-id",
            "4",
            "--peer-addr",
            "127.0.0.1:6004",
            "--grpc-addr",
            "127.0.0.1:4004",
            "--api-addr",
            "127.0.0.1:5004",
            "--http-addr",
            "127.0.0.1:3004",
            "--timeout",
            "90s",
        ])
        .unwrap();
        let Command::Cluster(cluster::ClusterCommand::Join(j)) = cli.command else {
            panic!()
        };
        assert_eq!(j.node_id, 4);
        assert_eq!(
            (j.peer_addr.as_str(), j.grpc_addr.as_str(), j.api_addr.as_str(), j.http_addr.as_str()),
            ("127.0.0.1:6004", "127.0.0.1:4004", "127.0.0.1:5004", "127.0.0.1:3004")
        );
        assert_eq!(j.timeout, Duration::from_secs(90));
        let cli = parse(&[
            "cluster", "join", "--node-id", "4", "--peer-addr", "a:0", "--grpc-addr", "a:1", "--api-addr", "a:3",
            "--http-addr", "a:2",
        ])
        .unwrap();
        let Command::Cluster(cluster::ClusterCommand::Join(j)) = cli.command else {
            panic!()
        };
        assert_eq!(j.timeout, Duration::from_secs(120));
        assert!(parse(&["cluster", "join", "--node-id", "4"]).is_err());
        assert!(parse(&["cluster", "join", "--node-id", "4", "--grpc-addr", "a:1", "--http-addr", "a:2"]).is_err());
        assert!(parse(&["cluster", "leave"]).is_err());
        assert!(parse(&["cluster", "leave", "--node-id", "x"]).is_err());
    }

    #[test]
    fn apply_takes_several_files() {
        let cli = parse(&["apply", "-f", "a.yaml", "-f", "dir"]).unwrap();
        let Command::Apply(a) = cli.command else {
            panic!()
        };
        assert_eq!(
            a.filename,
            vec![std::path::PathBuf::from("a.yaml"), "dir".into()]
        );
        assert!(parse(&["apply"]).is_err());
    }

    #[test]
    fn serve_and_dev_arguments() {
        let cli = parse(&[
            "serve",
            "--config",
            "n1.yaml",
            "--data-dir",
            "/tmp/d",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!()
        };
        assert_eq!(s.config, Some(std::path::PathBuf::from("n1.yaml")));
        assert_eq!(s.data_dir.as_deref(), Some(std::path::Path::new("/tmp/d")));
        assert_eq!(s.log_format, serve::LogFormat::Json);
        // without --config, the node is configured by AOF__* variables
        let Command::Serve(s) = parse(&["serve"]).unwrap().command else {
            panic!()
        };
        assert_eq!(s.config, None);

        let cli = parse(&["dev"]).unwrap();
        let Command::Dev(d) = cli.command else {
            panic!()
        };
        assert_eq!(d.configs, std::path::PathBuf::from("cluster-configs/local"));
    }

    #[test]
    fn worker_has_its_own_grpc_endpoint_and_a_command_after_dashes() {
        let cli = parse(&["worker", "--", "cat"]).unwrap();
        let Command::Worker(w) = &cli.command else {
            panic!()
        };
        // Nothing on the command line: left to $AOF_GRPC_ENDPOINT, the context, the defaults.
        assert_eq!(cli.global.flags(&cli.command).grpc_endpoint, None);
        assert_eq!(w.command, vec!["cat"]);
        assert_eq!((w.concurrency, w.worker_id.as_deref()), (1, None));
        assert_eq!(w.task_timeout, Duration::from_secs(300));
        assert_eq!(w.drain_timeout, Duration::from_secs(30));
        assert!(w.targets.is_empty());

        // `--endpoint` after `worker` names gRPC endpoints.
        let cli = parse(&[
            "worker",
            "--endpoint",
            "grpc://a:1,grpc://b:2",
            "--target",
            "x",
            "--target",
            "y",
            "--concurrency",
            "4",
            "--worker-id",
            "w-9",
            "--task-timeout",
            "2s",
            "--drain-timeout",
            "1m",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        let Command::Worker(w) = &cli.command else {
            panic!()
        };
        let flags = cli.global.flags(&cli.command);
        assert_eq!(flags.grpc_endpoint, Some(vec!["grpc://a:1".to_string(), "grpc://b:2".to_string()]));
        assert_eq!(flags.endpoint, None);
        assert_eq!(w.targets, vec!["x", "y"]);
        assert_eq!((w.concurrency, w.worker_id.as_deref()), (4, Some("w-9")));
        assert_eq!(
            (w.task_timeout, w.drain_timeout),
            (Duration::from_secs(2), Duration::from_secs(60))
        );
        assert_eq!(w.command, vec!["sh", "-c", "exit 3"]);

        // `--grpc-endpoint` wins over `--endpoint`.
        let cli = parse(&[
            "--endpoint",
            "http://x:3001",
            "worker",
            "--grpc-endpoint",
            "grpc://y:4001",
            "--",
            "cat",
        ])
        .unwrap();
        assert_eq!(cli.global.endpoint, vec!["http://x:3001"]);
        assert_eq!(cli.global.flags(&cli.command).grpc_endpoint, Some(vec!["grpc://y:4001".to_string()]));
        // `--token` after `worker` is the worker token.
        let cli = parse(&["worker", "--token", "w", "--", "cat"]).unwrap();
        assert_eq!(cli.global.flags(&cli.command).token.as_deref(), Some("w"));

        assert!(parse(&["worker"]).is_err());
        assert!(parse(&["worker", "cat"]).is_err());
        assert!(parse(&["worker", "--concurrency", "0", "--", "cat"]).is_err());
    }

    #[test]
    fn dlq_queue_events_and_describe_arguments() {
        let cli = parse(&["dlq", "redrive", "--all"]).unwrap();
        let Command::Dlq(queue::DlqCommand::Redrive(r)) = cli.command else {
            panic!()
        };
        assert!(r.select.all && r.select.job_id.is_none());
        let cli = parse(&["dlq", "purge", "7-0", "--yes"]).unwrap();
        let Command::Dlq(queue::DlqCommand::Purge(p)) = cli.command else {
            panic!()
        };
        assert_eq!((p.select.job_id.as_deref(), p.yes), (Some("7-0"), true));
        assert!(parse(&["dlq", "purge"]).is_err());
        assert!(parse(&["dlq", "redrive", "7-0", "--all"]).is_err());
        assert!(parse(&["dlq", "list", "-o", "json"]).is_ok());
        assert!(parse(&["queue", "stats", "-o", "json"]).is_ok());

        let cli = parse(&[
            "get", "events", "--status", "no_route", "--repo", "a/b", "--limit", "5", "-o", "wide",
        ])
        .unwrap();
        let Command::Get(triggers::GetCommand::Events(e)) = cli.command else {
            panic!()
        };
        assert_eq!(e.status, Some(events::StatusArg::NoRoute));
        assert_eq!(
            (e.repo.as_deref(), e.limit, e.output),
            (Some("a/b"), 5, output::ListFormat::Wide)
        );
        assert!(parse(&["get", "events", "--limit", "0"]).is_err());

        let cli = parse(&["describe", "event", "12"]).unwrap();
        let Command::Describe(events::DescribeCommand::Event(d)) = cli.command else {
            panic!()
        };
        assert_eq!((d.id, d.delivery), (Some(12), None));
        let cli = parse(&["describe", "event", "--delivery", "abc"]).unwrap();
        let Command::Describe(events::DescribeCommand::Event(d)) = cli.command else {
            panic!()
        };
        assert_eq!((d.id, d.delivery.as_deref()), (None, Some("abc")));
        assert!(parse(&["describe", "event"]).is_err());
        assert!(parse(&["describe", "event", "12", "--delivery", "abc"]).is_err());
    }

    #[test]
    fn every_command_has_examples_in_its_help() {
        use clap::CommandFactory as _;
        let mut missing = Vec::new();
        examples::missing(&examples::attach(Cli::command()), "", &mut missing);
        assert!(missing.is_empty(), "commands without an `Examples:` block: {missing:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn unreachable_errors_get_a_hint() {
        let e = anyhow::Error::new(ClientError::Unreachable {
            endpoints: vec!["http://127.0.0.1:1".into()],
            last_error: "connection refused".into(),
        })
        .context("listing triggers");
        let msg = error_message(&e);
        assert!(
            msg.starts_with(
                "listing triggers: could not reach http://127.0.0.1:1: connection refused"
            ),
            "{msg}"
        );
        assert!(msg.contains("hint:"), "{msg}");
        let e = anyhow::anyhow!("plain");
        assert_eq!(error_message(&e), "plain");
    }
}
