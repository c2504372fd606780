//! "Did you mean" for configuration keys and values (the rule itself is
//! [`aof_core::suggest::did_you_mean`], shared with Trigger documents), and where a key
//! found at the wrong level belongs. The key lists come from the serde derives
//! themselves, never from hand-written copies.

use std::sync::OnceLock;

use serde::de::{self, DeserializeOwned, Visitor};

/// "Did you mean": the one shared rule, in `aof-core` (Trigger documents use it too).
pub use aof_core::suggest::did_you_mean;

/// The field names of a struct that derives `Deserialize`, as serde's derive declares
/// them (what `deny_unknown_fields` accepts).
pub(crate) fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Sections of the document whose keys are well known, with their keys.
pub(crate) fn sections() -> &'static [(&'static str, &'static [&'static str])] {
    use super::*;
    static SECTIONS: OnceLock<Vec<(&'static str, &'static [&'static str])>> = OnceLock::new();
    SECTIONS.get_or_init(|| {
        vec![
            ("spec", fields_of::<Spec>()),
            ("spec.server", fields_of::<ServerConfig>()),
            ("spec.auth", fields_of::<AuthConfig>()),
            ("spec.cluster", fields_of::<ClusterConfig>()),
            ("spec.cluster.raft", fields_of::<RaftTuning>()),
            ("spec.cluster.storage", fields_of::<StorageTuning>()),
            ("spec.cluster.advertise", fields_of::<AdvertiseConfig>()),
            ("spec.cluster.discovery", fields_of::<DiscoveryConfig>()),
            ("spec.platforms", fields_of::<PlatformsConfig>()),
            ("spec.platforms.github", fields_of::<GithubConfig>()),
            ("spec.runtime", fields_of::<RuntimeConfig>()),
            ("spec.gateway", fields_of::<GatewayConfig>()),
            ("spec.queue", fields_of::<QueueConfig>()),
            ("spec.worker", fields_of::<WorkerConfig>()),
        ]
    })
}

/// Where `bad`, an unknown key at `key`, belongs: the shallowest known section that
/// has such a key, when that section is unique and is not where the key was found.
pub(crate) fn misplaced(key: &str, bad: &str) -> Option<&'static str> {
    let depth = |s: &str| s.matches('.').count();
    let homes: Vec<&'static str> = sections()
        .iter()
        .filter(|(home, fields)| fields.contains(&bad) && key != format!("{home}.{bad}"))
        .map(|(home, _)| *home)
        .collect();
    let shallowest = homes.iter().map(|h| depth(h)).min()?;
    match homes.iter().filter(|h| depth(h) == shallowest).collect::<Vec<_>>()[..] {
        [one] => Some(one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_get_the_shared_suggestion() {
        let keys = ["heartbeat_interval_ms", "election_timeout_min_ms", "snapshot_every"];
        assert_eq!(did_you_mean("heartbeat_intervl_ms", keys), Some("heartbeat_interval_ms"));
        assert_eq!(did_you_mean("foo", keys), None);
    }

    #[test]
    fn field_lists_come_from_the_derives() {
        use crate::config::{InitialMember, RaftTuning};
        assert_eq!(fields_of::<InitialMember>(), ["id", "peer_addr", "grpc_addr", "api_addr", "http_addr"]);
        assert!(fields_of::<RaftTuning>().contains(&"heartbeat_interval_ms"));
        assert!(fields_of::<String>().is_empty());
    }

    #[test]
    fn misplaced_keys() {
        assert_eq!(misplaced("spec.raft", "raft"), Some("spec.cluster"));
        assert_eq!(misplaced("spec.cluster.heartbeat_interval_ms", "heartbeat_interval_ms"), Some("spec.cluster.raft"));
        assert_eq!(misplaced("spec.cluster.server", "server"), Some("spec"));
        assert_eq!(misplaced("spec.github", "github"), Some("spec.platforms"));
        // grpc_addr is a key of spec.cluster (and, deeper, of advertise)
        assert_eq!(misplaced("spec.grpc_addr", "grpc_addr"), Some("spec.cluster"));
        assert_eq!(misplaced("spec.cluster.raft", "raft"), None);
        assert_eq!(misplaced("spec.foo", "foo"), None);
    }
}
