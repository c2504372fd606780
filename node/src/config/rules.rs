//! The rules a configuration must follow beyond its types: cross-field rules
//! (addresses, the member list, TLS unless insecure, ...) and value ranges. All
//! violations are reported at once. Also the startup notices.

use std::collections::{BTreeMap, BTreeSet};

use super::addr::{advertise, check_dialable, Advertised, Host, HostPort};
use super::error::{Notice, Problem, Severity};
use super::{DaemonConfig, Mode, Role, API_VERSION, KIND};

fn check_env_name(value: &str) -> Result<(), String> {
    if value.starts_with("${") || value.starts_with('$') {
        let bare = value.trim_start_matches('$').trim_start_matches('{').trim_end_matches('}');
        return Err(format!("write the variable's name, not a reference to it: `{bare}` instead of `{value}`"));
    }
    let mut chars = value.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{value}` is not an environment variable name (letters, digits, `_`; e.g. GITHUB_WEBHOOK_SECRET). \
             Put the secret itself in that variable, not in this file"
        ))
    }
}

/// A listener of this node, for messages.
struct Listener {
    /// `http_addr`, `api_addr`, ... (the key under `advertise` and in members).
    field: &'static str,
    /// Where its bind address is configured.
    bind_key: &'static str,
    what: &'static str,
    bind: Option<HostPort>,
    advertised: Option<Advertised>,
}

/// Parse a bind address (any host, port 0 allowed).
fn parse_bind(value: &str, key: &str, bad: &mut impl FnMut(String, String)) -> Option<HostPort> {
    match HostPort::parse(value) {
        Ok(hp) => Some(hp),
        Err(m) => {
            bad(key.to_string(), m);
            None
        }
    }
}

/// Parse an address others dial (no unspecified host, no port 0).
fn parse_dial(value: &str) -> Result<HostPort, String> {
    let hp = HostPort::parse(value)?;
    check_dialable(&hp, value)?;
    Ok(hp)
}

/// Two bind addresses that cannot both be bound.
fn clash(a: &HostPort, b: &HostPort) -> bool {
    a.port == b.port && a.port != 0 && (a.host == b.host || a.is_unspecified() || b.is_unspecified())
}

pub(crate) fn validate(cfg: &DaemonConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut bad = |key: String, message: String| problems.push(Problem { key, message });

    if cfg.api_version != API_VERSION {
        bad("apiVersion".into(), format!("`{}` is not supported; use `{API_VERSION}`", cfg.api_version));
    }
    if cfg.kind != KIND {
        bad("kind".into(), format!("`{}`: expected `{KIND}`", cfg.kind));
    }
    if cfg.metadata.name.trim().is_empty() {
        bad("metadata.name".into(), "must not be empty".into());
    }

    let s = &cfg.spec;
    let c = &s.cluster;
    let insecure = s.auth.insecure;

    // --- this node's listeners: bind addresses
    let http_bind = match Host::parse(&s.server.host) {
        Ok(host) => Some(HostPort { host, port: s.server.port }),
        Err(m) => {
            bad("spec.server.host".into(), m);
            None
        }
    };
    if c.node_id == 0 {
        bad("spec.cluster.node_id".into(), "must be >= 1 (0 is reserved)".into());
    }
    let mut listeners = [
        Listener { field: "http_addr", bind_key: "spec.server", what: "the public listener (spec.server)", bind: http_bind, advertised: None },
        Listener {
            field: "api_addr",
            bind_key: "spec.cluster.api_addr",
            what: "the API listener (spec.cluster.api_addr)",
            bind: parse_bind(&c.api_addr, "spec.cluster.api_addr", &mut bad),
            advertised: None,
        },
        Listener {
            field: "grpc_addr",
            bind_key: "spec.cluster.grpc_addr",
            what: "the workers' gRPC listener (spec.cluster.grpc_addr)",
            bind: parse_bind(&c.grpc_addr, "spec.cluster.grpc_addr", &mut bad),
            advertised: None,
        },
        Listener {
            field: "peer_addr",
            bind_key: "spec.cluster.peer_addr",
            what: "the peer listener (spec.cluster.peer_addr)",
            bind: parse_bind(&c.peer_addr, "spec.cluster.peer_addr", &mut bad),
            advertised: None,
        },
    ];
    for i in 1..listeners.len() {
        for j in 0..i {
            if let (Some(a), Some(b)) = (&listeners[j].bind, &listeners[i].bind) {
                if clash(a, b) {
                    bad(
                        listeners[i].bind_key.into(),
                        format!("`{b}` is also the address of {}; use a different port", listeners[j].what),
                    );
                    break;
                }
            }
        }
    }

    // --- what this node advertises
    let configured = &c.advertise;
    for l in listeners.iter_mut() {
        let key = format!("spec.cluster.advertise.{}", l.field);
        let value = match l.field {
            "http_addr" => configured.http_addr.as_deref(),
            "api_addr" => configured.api_addr.as_deref(),
            "grpc_addr" => configured.grpc_addr.as_deref(),
            _ => configured.peer_addr.as_deref(),
        };
        if let Some(v) = value {
            if let Err(m) = parse_dial(v) {
                bad(key, m);
                continue;
            }
        }
        let Some(b) = &l.bind else { continue };
        match advertise(value, &b.to_string(), cfg.hostname.as_deref()) {
            Ok(a) => l.advertised = Some(a),
            Err(why) => bad(
                key,
                format!(
                    "{} listens on `{b}` (every interface) and {why}, so this node cannot tell others where to reach it; \
                     set this key to an address they can dial",
                    l.what
                ),
            ),
        }
    }

    // --- TLS
    if c.peer_tls.is_none() && !insecure {
        bad(
            "spec.cluster.peer_tls".into(),
            "required: peers authenticate each other with mutual TLS; set `ca_file`, `cert_file` and `key_file` \
             (`aofctl certs init` creates them), or `spec.auth.insecure: true` for a throwaway setup"
                .into(),
        );
    }
    let mut tls: Vec<(String, &std::path::Path)> = Vec::new();
    if let Some(t) = &c.peer_tls {
        tls.push(("spec.cluster.peer_tls.ca_file".into(), &t.ca_file));
        tls.push(("spec.cluster.peer_tls.cert_file".into(), &t.cert_file));
        tls.push(("spec.cluster.peer_tls.key_file".into(), &t.key_file));
    }
    for (k, t) in [("spec.cluster.api_tls", &c.api_tls), ("spec.cluster.grpc_tls", &c.grpc_tls), ("spec.server.tls", &s.server.tls)] {
        if let Some(t) = t {
            tls.push((format!("{k}.cert_file"), &t.cert_file));
            tls.push((format!("{k}.key_file"), &t.key_file));
        }
    }
    for (k, p) in tls {
        let text = p.to_string_lossy();
        if text.is_empty() {
            bad(k, "must not be empty".into());
        } else if text.contains('{') {
            bad(k, format!("`{text}` has an unknown placeholder; only {{node_id}} is replaced"));
        }
    }

    // --- initial_members
    let mut ids = BTreeSet::new();
    let mut addrs: BTreeMap<HostPort, String> = BTreeMap::new();
    let mut self_seen = false;
    for (i, m) in c.initial_members.iter().enumerate() {
        let k = format!("spec.cluster.initial_members[{i}]");
        if m.id == 0 {
            bad(format!("{k}.id"), "must be >= 1".into());
        } else if !ids.insert(m.id) {
            bad(format!("{k}.id"), format!("id {} is listed twice; member ids must be unique", m.id));
        }
        let fields = [
            ("peer_addr", &m.peer_addr),
            ("grpc_addr", &m.grpc_addr),
            ("api_addr", &m.api_addr),
            ("http_addr", &m.http_addr),
        ];
        for (field, value) in fields {
            let here = format!("{k}.{field}");
            let theirs = match parse_dial(value) {
                Ok(a) => a,
                Err(msg) => {
                    bad(here, msg);
                    continue;
                }
            };
            if let Some(first) = addrs.get(&theirs) {
                bad(here.clone(), format!("`{theirs}` is already used by {first}; every address must be unique"));
            } else {
                addrs.insert(theirs.clone(), here.clone());
            }
            let mine = listeners.iter().find(|l| l.field == field).and_then(|l| l.advertised.as_ref().map(|a| (l, a)));
            let Some((l, mine)) = mine else { continue };
            if m.id == c.node_id {
                let differs = if mine.from_hostname { mine.addr.port != theirs.port } else { mine.addr != theirs };
                if differs {
                    bad(
                        here,
                        format!(
                            "this node (id {}) is listed with {field} `{theirs}` but it advertises `{}` ({}, or \
                             spec.cluster.advertise.{field}); make them equal",
                            m.id, mine.addr, l.what
                        ),
                    );
                }
            } else if !mine.from_hostname && mine.addr == theirs {
                bad(
                    here,
                    format!(
                        "`{theirs}` is this node's own address, but this entry is member {} and this node is {}; \
                         fix node_id or the address",
                        m.id, c.node_id
                    ),
                );
            }
        }
        if m.id == c.node_id && c.node_id != 0 {
            self_seen = true;
        }
    }
    if !c.initial_members.is_empty() && !self_seen && c.node_id != 0 {
        bad(
            "spec.cluster.initial_members".into(),
            format!(
                "does not list this node (node_id {}); add it, or leave initial_members empty on a node that joins later",
                c.node_id
            ),
        );
    }

    // --- discovery
    if let Some(d) = &c.discovery {
        let dk = "spec.cluster.discovery";
        match (d.seeds.is_empty(), &d.dns) {
            (true, None) => bad(
                dk.into(),
                "set `seeds` (peer addresses, host:port) or `dns` (name:port of a headless service)".into(),
            ),
            (false, Some(_)) => bad(dk.into(), "set `seeds` or `dns`, not both".into()),
            _ => {}
        }
        let mut seen = BTreeSet::new();
        for (i, seed) in d.seeds.iter().enumerate() {
            match parse_dial(seed) {
                Ok(a) if !seen.insert(a.clone()) => bad(format!("{dk}.seeds[{i}]"), format!("`{a}` is listed twice")),
                Ok(_) => {}
                Err(m) => bad(format!("{dk}.seeds[{i}]"), m),
            }
        }
        if let Some(dns) = &d.dns {
            match parse_dial(dns) {
                Ok(HostPort { host: Host::Name(_), .. }) => {}
                Ok(_) => bad(format!("{dk}.dns"), format!("`{dns}` is not a DNS name; list IP addresses under `seeds`")),
                Err(m) => bad(format!("{dk}.dns"), m),
            }
        }
        if d.max_voters == 0 {
            bad(format!("{dk}.max_voters"), "must be >= 1".into());
        }
        if !c.initial_members.is_empty() {
            bad(
                dk.into(),
                "set either initial_members (a fixed first member list) or discovery, not both".into(),
            );
        }
    }

    // --- raft, storage
    let r = &c.raft;
    let rk = "spec.cluster.raft";
    if r.heartbeat_interval_ms == 0 {
        bad(format!("{rk}.heartbeat_interval_ms"), "must be >= 1".into());
    } else if r.heartbeat_interval_ms >= r.election_timeout_min_ms {
        bad(
            format!("{rk}.heartbeat_interval_ms"),
            format!(
                "{} must be less than election_timeout_min_ms ({}), or followers time out between heartbeats",
                r.heartbeat_interval_ms, r.election_timeout_min_ms
            ),
        );
    }
    if r.election_timeout_min_ms >= r.election_timeout_max_ms {
        bad(
            format!("{rk}.election_timeout_min_ms"),
            format!(
                "{} must be less than election_timeout_max_ms ({}); the range randomises elections",
                r.election_timeout_min_ms, r.election_timeout_max_ms
            ),
        );
    }
    if r.snapshot_every == 0 {
        bad(format!("{rk}.snapshot_every"), "must be >= 1".into());
    }
    if r.request_timeout_ms == 0 {
        bad(format!("{rk}.request_timeout_ms"), "must be >= 1".into());
    }
    if c.storage.cache_capacity_mb == 0 {
        bad("spec.cluster.storage.cache_capacity_mb".into(), "must be >= 1".into());
    }

    // --- github
    if let Some(g) = &s.platforms.github {
        let gk = "spec.platforms.github";
        let mut names = Vec::new();
        if let Some(v) = &g.token_env {
            names.push((format!("{gk}.token_env"), v));
        }
        if let Some(v) = &g.webhook_secret_env {
            names.push((format!("{gk}.webhook_secret_env"), v));
        }
        for (i, v) in g.webhook_secret_envs.iter().enumerate() {
            names.push((format!("{gk}.webhook_secret_envs[{i}]"), v));
        }
        for (org, o) in &g.orgs {
            if let Some(v) = &o.webhook_secret_env {
                names.push((format!("{gk}.orgs.{org}.webhook_secret_env"), v));
            }
            if let Some(v) = &o.token_env {
                names.push((format!("{gk}.orgs.{org}.token_env"), v));
            }
        }
        if let Some(r) = &g.recovery {
            for (k, m) in r.problems() {
                bad(format!("{gk}.recovery.{k}"), m);
            }
            for (i, h) in r.hooks.iter().enumerate() {
                if let Some(v) = &h.token_env {
                    names.push((format!("{gk}.recovery.hooks[{i}].token_env"), v));
                }
            }
        }
        for (key, v) in names {
            if let Err(m) = check_env_name(v) {
                bad(key, m);
            }
        }
        let mut seen = BTreeSet::new();
        for (i, v) in g.webhook_secret_envs.iter().enumerate() {
            if !seen.insert(v) {
                bad(format!("{gk}.webhook_secret_envs[{i}]"), format!("`{v}` is listed twice"));
            }
        }
        let mut logins = BTreeSet::new();
        for (org, o) in &g.orgs {
            if org.trim().is_empty() {
                bad(format!("{gk}.orgs"), "organisation names must not be empty".into());
            } else if !logins.insert(org.to_ascii_lowercase()) {
                bad(format!("{gk}.orgs.{org}"), "listed twice (organisation logins are case-insensitive)".into());
            }
            if o.webhook_secret_env.is_none() && o.token_env.is_none() {
                bad(format!("{gk}.orgs.{org}"), "set webhook_secret_env and/or token_env, or remove the entry".into());
            }
        }
        if g.enabled && g.webhook_secret_env.is_none() && g.webhook_secret.is_none() && g.webhook_secret_envs.is_empty()
        {
            bad(
                gk.into(),
                "enabled but no webhook secret is configured, so deliveries could not be authenticated; set \
                 `webhook_secret_env: GITHUB_WEBHOOK_SECRET` (the variable holding the secret), or `enabled: false`"
                    .into(),
            );
        }
        if g.bot_name.trim().is_empty() {
            bad(format!("{gk}.bot_name"), "must not be empty (default `aofbot`)".into());
        }
    }

    // --- runtime, gateway, queue, worker
    if s.runtime.max_concurrent_tasks == 0 {
        bad("spec.runtime.max_concurrent_tasks".into(), "must be >= 1".into());
    }
    if s.runtime.task_timeout_secs == 0 {
        bad("spec.runtime.task_timeout_secs".into(), "must be >= 1".into());
    }
    let secret_names = cfg.secret_env_names();
    for (i, name) in s.runtime.pass_env.iter().enumerate() {
        if let Err(e) = aof_contract::jobenv::check_entry(name) {
            bad(format!("spec.runtime.pass_env[{i}]"), e.to_string());
        } else if secret_names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            bad(
                format!("spec.runtime.pass_env[{i}]"),
                format!("`{name}` holds one of this node's credentials (spec.platforms.github); jobs never get it"),
            );
        }
    }
    if s.server.timeout_secs == 0 {
        bad("spec.server.timeout_secs".into(), "must be >= 1".into());
    }
    if s.gateway.ack_timeout_ms == 0 {
        bad("spec.gateway.ack_timeout_ms".into(), "must be >= 1".into());
    }
    if s.gateway.max_body_bytes == 0 {
        bad("spec.gateway.max_body_bytes".into(), "must be >= 1".into());
    }
    // The replicated state refuses payloads past this size on every replica alike, so
    // a larger body limit would accept bodies only to have them refused in apply.
    if s.gateway.max_body_bytes > crate::sm::payload::MAX_RAW_BYTES {
        bad(
            "spec.gateway.max_body_bytes".into(),
            format!(
                "{} is more than the largest payload the cluster stores ({} bytes, 64 MiB); set it to at most that (GitHub sends at most 25 MiB)",
                s.gateway.max_body_bytes,
                crate::sm::payload::MAX_RAW_BYTES
            ),
        );
    }
    if s.gateway.max_in_flight == 0 {
        bad("spec.gateway.max_in_flight".into(), "must be >= 1".into());
    }
    if s.queue.lease_timeout_ms == 0 {
        bad("spec.queue.lease_timeout_ms".into(), "must be >= 1".into());
    }
    if s.queue.retry_delay_ms > s.queue.max_retry_delay_ms {
        bad(
            "spec.queue.retry_delay_ms".into(),
            format!(
                "{} is more than max_retry_delay_ms ({}); raise max_retry_delay_ms or lower retry_delay_ms",
                s.queue.retry_delay_ms, s.queue.max_retry_delay_ms
            ),
        );
    }
    if s.queue.retention_secs == 0 {
        bad("spec.queue.retention_secs".into(), "must be >= 1".into());
    }
    if s.queue.max_ready > super::sections::MAX_READY_LIMIT {
        bad(
            "spec.queue.max_ready".into(),
            format!(
                "{} is more than {}; set a lower limit, or 0 for no limit",
                s.queue.max_ready,
                super::sections::MAX_READY_LIMIT
            ),
        );
    }
    if s.worker.concurrency == 0 {
        bad("spec.worker.concurrency".into(), "must be >= 1".into());
    }

    // --- auth
    let ak = "spec.auth.tokens";
    let mut names = BTreeSet::new();
    for (i, t) in s.auth.tokens.iter().enumerate() {
        let k = format!("{ak}[{i}]");
        if t.name.trim().is_empty() {
            bad(format!("{k}.name"), "must not be empty".into());
        } else if !names.insert(t.name.as_str()) {
            bad(format!("{k}.name"), format!("`{}` is used twice; token names must be unique", t.name));
        }
        let sources = [t.env.is_some(), t.file.is_some(), t.token.is_some()].into_iter().filter(|s| *s).count();
        if sources != 1 {
            bad(
                k.clone(),
                "set exactly one of `env` (a variable name), `file` (a path) and `token` (the token itself)".into(),
            );
        }
        if let Some(v) = &t.env {
            if let Err(m) = check_env_name(v) {
                bad(format!("{k}.env"), m);
            }
        }
        if !t.targets.is_empty() && t.role != Role::Worker {
            bad(format!("{k}.targets"), format!("only worker tokens can be limited to targets (this one is {})", t.role));
        }
        if t.targets.iter().any(|x| x.trim().is_empty()) {
            bad(format!("{k}.targets"), "target names must not be empty".into());
        }
    }
    if !insecure && !s.auth.tokens.iter().any(|t| t.role == Role::Admin) {
        bad(
            ak.into(),
            "no token has `role: admin`, so nobody could administer the cluster through the API; add \
             `{ name: admin, role: admin, env: AOF_ADMIN_TOKEN }`, or set `spec.auth.insecure: true` for a throwaway setup"
                .into(),
        );
    }

    problems
}

/// Things that are accepted but deserve the operator's attention: AOF keys that
/// aof-cluster ignores ([`Severity::Info`]) and risky values ([`Severity::Warn`]).
pub(crate) fn notices(cfg: &DaemonConfig) -> Vec<Notice> {
    let s = &cfg.spec;
    let mut out = Vec::new();
    let mut note = |severity, key: &str, message: String| out.push(Notice { severity, key: key.into(), message });
    if s.mode != Mode::Cluster {
        note(
            Severity::Info,
            "spec.mode",
            format!(
                "`{}` is ignored: every aof-cluster node is gateway, worker and Raft member at once",
                s.mode.as_str()
            ),
        );
    }
    let ignored = s.queue.ignored_keys();
    if !ignored.is_empty() {
        note(
            Severity::Info,
            "spec.queue",
            format!(
                "{} ignored: the queue is built into the cluster (replicated through Raft), no external broker is used",
                ignored.join(", ")
            ),
        );
    }
    for p in s.platforms.unused() {
        note(
            Severity::Info,
            &format!("spec.platforms.{p}"),
            "accepted but not served: aof-cluster only serves GitHub webhooks (/webhook/github)".into(),
        );
    }
    match &s.platforms.github {
        None => note(
            Severity::Info,
            "spec.platforms.github",
            "not configured: no webhook endpoint is served (the REST API still is)".into(),
        ),
        Some(g) if !g.enabled => note(
            Severity::Info,
            "spec.platforms.github.enabled",
            "false: no webhook endpoint is served (the REST API still is)".into(),
        ),
        Some(g) => {
            if g.webhook_secret.is_some() {
                note(
                    Severity::Warn,
                    "spec.platforms.github.webhook_secret",
                    "secret written in the config file; prefer webhook_secret_env".into(),
                );
            }
            if g.token.is_some() {
                note(
                    Severity::Warn,
                    "spec.platforms.github.token",
                    "token written in the config file; prefer token_env".into(),
                );
            }
        }
    }
    if s.auth.insecure {
        note(
            Severity::Warn,
            "spec.auth.insecure",
            "true: the API and worker listeners accept requests without a token and peers are not authenticated; \
             for throwaway setups only, never expose this node"
                .into(),
        );
    }
    for (i, t) in s.auth.tokens.iter().enumerate() {
        if t.token.is_some() {
            note(
                Severity::Warn,
                &format!("spec.auth.tokens[{i}].token"),
                format!("token `{}` written in the config file; prefer `env` or `file`", t.name),
            );
        }
    }
    if s.gateway.ack_timeout_ms > 10_000 {
        note(
            Severity::Warn,
            "spec.gateway.ack_timeout_ms",
            format!(
                "{} ms is more than GitHub waits (10 s); GitHub will report such deliveries as timed out",
                s.gateway.ack_timeout_ms
            ),
        );
    }
    let r = &s.cluster.raft;
    if r.heartbeat_interval_ms < r.election_timeout_min_ms
        && r.heartbeat_interval_ms.saturating_mul(3) > r.election_timeout_min_ms
    {
        note(
            Severity::Warn,
            "spec.cluster.raft.election_timeout_min_ms",
            format!(
                "less than 3 heartbeats ({} ms each): a few late heartbeats will cause needless elections",
                r.heartbeat_interval_ms
            ),
        );
    }
    out
}
