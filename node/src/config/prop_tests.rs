//! Property tests of the `DaemonConfig` loader: it never panics, whatever the YAML
//! and the `AOF__*` variables, a configuration it accepts passes its own rules, and a
//! value of the wrong type is reported at its key path with its source.

use proptest::prelude::*;
use serde_yaml::Value;

use super::suggest::fields_of;
use super::tests::{loader, NODE1};
use super::*;

/// Key names the generators draw from: every key of the well-known sections, and
/// a few that exist nowhere.
fn vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = vec!["apiVersion", "kind", "metadata", "name", "spec", "type", "bogus", "0"];
    for fields in [
        fields_of::<Spec>(),
        fields_of::<ServerConfig>(),
        fields_of::<AuthConfig>(),
        fields_of::<TokenConfig>(),
        fields_of::<ClusterConfig>(),
        fields_of::<InitialMember>(),
        fields_of::<AdvertiseConfig>(),
        fields_of::<DiscoveryConfig>(),
        fields_of::<PeerTlsConfig>(),
        fields_of::<RaftTuning>(),
        fields_of::<StorageTuning>(),
        fields_of::<PlatformsConfig>(),
        fields_of::<GithubConfig>(),
        fields_of::<RuntimeConfig>(),
        fields_of::<QueueConfig>(),
        fields_of::<GatewayConfig>(),
        fields_of::<WorkerConfig>(),
    ] {
        words.extend_from_slice(fields);
    }
    words.sort_unstable();
    words.dedup();
    words
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![4 => proptest::sample::select(vocabulary()).prop_map(str::to_string), 1 => "[a-z_]{0,6}"]
}

/// Scalars that look like what the schema expects, and what it does not.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u64..70_000).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "(127\\.0\\.0\\.1|0\\.0\\.0\\.0|\\[::1?\\]|aof-[0-9]\\.aof|[a-z]{1,5})(:[0-9]{1,6})?".prop_map(Value::from),
        "(admin|read|worker|cluster|gateway|command|github|\\{node_id\\}|[A-Z_]{1,10})".prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
    ]
}

/// YAML-ish trees: maps with schema keys, lists, scalars.
fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Mapping(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect())),
        ]
    })
}

/// Put `value` at `path` (creating maps on the way; list indexes are taken modulo).
fn set(doc: &mut Value, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        *doc = value;
        return;
    };
    match doc {
        Value::Sequence(items) if !items.is_empty() => {
            let i = first.parse::<usize>().unwrap_or(first.len()) % items.len();
            set(&mut items[i], rest, value);
        }
        Value::Mapping(m) => {
            let slot = m.entry(Value::from(first.clone())).or_insert(Value::Null);
            set(slot, rest, value);
        }
        other => {
            let mut m = serde_yaml::Mapping::new();
            let mut child = Value::Null;
            set(&mut child, rest, value);
            m.insert(Value::from(first.clone()), child);
            *other = Value::Mapping(m);
        }
    }
}

/// Key paths that exist in the schema (list entries of NODE1 by index).
fn schema_paths() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (section, fields) in super::suggest::sections() {
        out.extend(fields.iter().map(|f| format!("{section}.{f}")));
    }
    for i in 0..3 {
        out.extend(fields_of::<InitialMember>().iter().map(|f| format!("spec.cluster.initial_members.{i}.{f}")));
    }
    out.extend(fields_of::<TokenConfig>().iter().map(|f| format!("spec.auth.tokens.0.{f}")));
    out.extend(fields_of::<PeerTlsConfig>().iter().map(|f| format!("spec.cluster.peer_tls.{f}")));
    out.extend(fields_of::<TlsConfig>().iter().map(|f| format!("spec.server.tls.{f}")));
    out
}

#[derive(Clone, Debug)]
enum Edit {
    Set(Vec<String>, Value),
    Remove(Vec<String>),
}

fn edit() -> impl Strategy<Value = Edit> {
    let known = proptest::sample::select(schema_paths()).prop_map(|p| p.split('.').map(str::to_string).collect::<Vec<_>>());
    let random = proptest::collection::vec(key(), 0..5).prop_map(|p| {
        let mut full = vec!["spec".to_string()];
        full.extend(p);
        full
    });
    prop_oneof![
        6 => (known.clone(), scalar()).prop_map(|(p, v)| Edit::Set(p, v)),
        1 => (known.clone(), tree()).prop_map(|(p, v)| Edit::Set(p, v)),
        1 => (random, tree()).prop_map(|(p, v)| Edit::Set(p, v)),
        2 => known.prop_map(Edit::Remove),
    ]
}

/// Remove the key at `path`, if present.
fn remove(doc: &mut Value, path: &[String]) {
    match (path, doc) {
        ([last], Value::Mapping(m)) => {
            m.remove(last.as_str());
        }
        ([first, rest @ ..], Value::Mapping(m)) => {
            if let Some(child) = m.get_mut(first.as_str()) {
                remove(child, rest);
            }
        }
        ([first, rest @ ..], Value::Sequence(items)) => {
            if let Some(child) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                remove(child, rest);
            }
        }
        _ => {}
    }
}

/// NODE1 with random edits (mostly at keys of the schema), or free text.
fn document() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::collection::vec(edit(), 0..4).prop_map(|edits| {
            let mut doc: Value = serde_yaml::from_str(NODE1).unwrap();
            for e in edits {
                match e {
                    Edit::Set(path, value) => set(&mut doc, &path, value),
                    Edit::Remove(path) => remove(&mut doc, &path),
                }
            }
            serde_yaml::to_string(&doc).unwrap()
        }),
        1 => ".{0,300}",
        1 => "([a-z_]{1,8}: ?|  |- |\\{|\\}|\\[|\\]|,|\n|[0-9]{1,4}|\"|'|&a|\\*a|!t ){0,60}",
    ]
}

/// `AOF__*` variables: key paths from the vocabulary (or malformed), values in
/// figment's syntax (or not).
fn env_var() -> impl Strategy<Value = (String, String)> {
    let known: Vec<String> = schema_paths()
        .into_iter()
        .filter(|p| !p.split('.').any(|s| s.parse::<usize>().is_ok()))
        .map(|p| format!("AOF__{}", p.trim_start_matches("spec.").replace('.', "__").to_ascii_uppercase()))
        .collect();
    let name = prop_oneof![
        6 => proptest::sample::select(known),
        1 => proptest::collection::vec(key(), 1..4).prop_map(|p| format!("AOF__{}", p.join("__").to_ascii_uppercase())),
        1 => "AOF_{0,3}[A-Z_]{0,10}",
    ];
    let value = prop_oneof![
        1 => ".{0,30}",
        1 => "[\\[\\]{}=,\"a-z0-9:._ -]{0,40}",
        3 => "(true|false|[0-9]{1,6}|-1|\"x\"|\\[\\]|\\{\\})",
        3 => "(127\\.0\\.0\\.1|0\\.0\\.0\\.0|aof-[0-9]\\.aof|\\[::1\\])(:[0-9]{1,5})?",
        1 => "\\[\\{id=[0-9],peer_addr=\"a:[0-9]\"(,grpc_addr=\"b:1\")?\\}\\]",
    ];
    (name, value)
}

fn hostname() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof!["aof-[0-9]{1,2}(\\.aof)?", "[a-z0-9.-]{0,12}"])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever comes in, the loader answers (no panic, no abort), and a
    /// configuration it accepts is valid by its own rules and round-trips.
    #[test]
    fn loader_never_panics(
        yaml in proptest::option::weighted(0.9, document()),
        env in proptest::collection::vec(env_var(), 0..3),
        host in hostname(),
    ) {
        let l = match &yaml {
            Some(y) => loader(y),
            None => Loader::new().cwd("/srv/aof"),
        };
        match l.hostname(host.as_deref()).env_vars(env).load() {
            Ok(cfg) => {
                prop_assert!(cfg.validate("again").is_ok(), "{:?}", cfg.validate("again"));
                prop_assert!(cfg.spec.cluster.node_id >= 1);
                let _ = cfg.self_member();
                let _ = cfg.notices();
                let _ = cfg.spec.auth.resolve_with(|_| None);
                let text = serde_yaml::to_string(&cfg).unwrap();
                let again = loader(&text).hostname(host.as_deref()).load();
                prop_assert!(again.is_ok(), "{text}\n{:?}", again.err());
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    /// A value of the wrong type, in the file or in a variable, is reported at its key
    /// path, naming where it came from.
    #[test]
    fn type_errors_name_the_key_path(
        which in 0..TYPED.len(),
        junk in "x[a-z]{0,8}",
        from_env in any::<bool>(),
        noise in proptest::collection::vec(
            proptest::sample::select(vec![("SERVER__CORS", "true"), ("QUEUE__MAX_RETRIES", "7"), ("CLUSTER__RAFT__SNAPSHOT_EVERY", "7")]),
            0..3,
        ),
    ) {
        let path = TYPED[which];
        let noise: Vec<(String, String)> = noise
            .into_iter()
            .filter(|(k, _)| !path.eq_ignore_ascii_case(&format!("spec.{}", k.replace("__", "."))))
            .map(|(k, v)| (format!("AOF__{k}"), v.to_string()))
            .collect();
        let (yaml, env) = if from_env {
            let var = format!("AOF__{}", path.trim_start_matches("spec.").replace('.', "__").to_ascii_uppercase());
            (NODE1.to_string(), vec![(var, junk.clone())])
        } else {
            let mut doc: Value = serde_yaml::from_str(NODE1).unwrap();
            let segments: Vec<String> = path.split('.').map(str::to_string).collect();
            set(&mut doc, &segments, Value::from(junk.clone()));
            (serde_yaml::to_string(&doc).unwrap(), Vec::new())
        };
        let e = loader(&yaml).env_vars(env.iter().cloned().chain(noise)).load().unwrap_err();
        match &e {
            ConfigError::Schema { origin, key, line, .. } => {
                prop_assert_eq!(key.as_str(), path, "{}", e);
                if from_env {
                    prop_assert_eq!(origin, &format!("environment variable {}", env[0].0));
                    prop_assert!(line.is_none());
                } else {
                    prop_assert_eq!(origin.as_str(), "node1.yaml");
                    prop_assert!(line.is_some(), "{}", e);
                }
                prop_assert!(e.to_string().contains(&junk), "{}", e);
            }
            other => prop_assert!(false, "expected a schema error at {path}: {other}"),
        }
    }
}

/// Keys of NODE1 (or of sections with all-default keys) that take a number or a bool.
const TYPED: &[&str] = &[
    "spec.server.port",
    "spec.server.cors",
    "spec.server.timeout_secs",
    "spec.cluster.node_id",
    "spec.cluster.raft.heartbeat_interval_ms",
    "spec.cluster.raft.snapshot_every",
    "spec.cluster.storage.cache_capacity_mb",
    "spec.cluster.discovery.max_voters",
    "spec.auth.insecure",
    "spec.auth.metrics_public",
    "spec.platforms.github.enabled",
    "spec.triggers.watch",
    "spec.runtime.max_concurrent_tasks",
    "spec.gateway.max_in_flight",
    "spec.queue.max_retries",
    "spec.queue.max_ready",
    "spec.worker.concurrency",
];
