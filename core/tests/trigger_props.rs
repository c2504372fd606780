//! Property tests of the Trigger document parser (`registry::canonical_trigger`,
//! which runs the full AOF schema through `github::trigger::parse_trigger`): it never
//! panics, and what it accepts is stable (canonical JSON parses again to itself).
//!
//! Case counts stay small for CI; run longer with e.g.
//! `PROPTEST_CASES=20000 cargo test -p aof-core --test trigger_props`.

use aof_core::registry::canonical_trigger;
use proptest::prelude::*;

/// Keys the schema knows, plus near misses, so generated documents reach deep paths.
const KEYS: &[&str] = &[
    "type", "config", "enabled", "priority", "webhook_secret", "github_events", "actions", "repositories",
    "allowed_repos", "branches", "allowed_users", "labels", "commands", "default_agent", "default_fleet",
    "default_flow", "agent", "fleet", "flow", "params", "description", "rate_limit", "per", "events_per_minute",
    "burst", "repositores", "comands", "x", "",
];

fn scalar() -> impl Strategy<Value = serde_yaml::Value> {
    prop_oneof![
        Just(serde_yaml::Value::Null),
        any::<bool>().prop_map(serde_yaml::Value::Bool),
        any::<i64>().prop_map(|n| serde_yaml::Value::Number(n.into())),
        "[a-z/*._{}\\[\\]?-]{0,12}".prop_map(serde_yaml::Value::String),
        prop::sample::select(vec!["push", "issues.opened", "*", "/deploy", "org/*", "main", "GitHub", "high", "org"])
            .prop_map(|s| serde_yaml::Value::String(s.to_string())),
        "\\PC{0,8}".prop_map(serde_yaml::Value::String),
    ]
}

fn value() -> impl Strategy<Value = serde_yaml::Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_yaml::Value::Sequence),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                serde_yaml::Value::Mapping(kv.into_iter().map(|(k, v)| (serde_yaml::Value::String(k.to_string()), v)).collect())
            }),
        ]
    })
}

fn document() -> impl Strategy<Value = String> {
    (value(), any::<bool>()).prop_map(|(spec, with_type)| {
        let mut spec = match spec {
            serde_yaml::Value::Mapping(m) => m,
            other => {
                let mut m = serde_yaml::Mapping::new();
                m.insert("config".into(), other);
                m
            }
        };
        if with_type {
            spec.insert("type".into(), "GitHub".into());
        }
        let mut doc = serde_yaml::Mapping::new();
        doc.insert("apiVersion".into(), "aof.dev/v1".into());
        doc.insert("kind".into(), "Trigger".into());
        doc.insert("spec".into(), serde_yaml::Value::Mapping(spec));
        serde_yaml::to_string(&doc).expect("a YAML value serializes")
    })
}

/// The generator must reach both outcomes, or the properties above test little.
#[test]
fn the_generator_produces_accepted_and_refused_documents() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut ok, mut err) = (0, 0);
    for _ in 0..2000 {
        let doc = document().new_tree(&mut runner).unwrap().current();
        match canonical_trigger("t", doc.as_bytes()) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    assert!(ok >= 20 && err >= 20, "accepted {ok}, refused {err} of 2000 generated documents");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Structured documents: accepted ones are canonical (a second pass gives the
    /// same bytes); refused ones say where.
    #[test]
    fn structured_documents_never_panic_and_accepted_ones_are_stable(doc in document()) {
        match canonical_trigger("t", doc.as_bytes()) {
            Ok(json) => {
                let again = canonical_trigger("t", json.as_bytes()).expect("canonical JSON is accepted again");
                prop_assert_eq!(again, json);
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    /// Arbitrary bytes: never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = canonical_trigger("t", &bytes);
    }
}
