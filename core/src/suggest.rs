//! "Did you mean": the one nearest-key suggestion used for every misspelled key —
//! Trigger documents ([`crate::github::trigger`]) and the node's configuration alike.

/// The candidate nearest to `bad` (case-insensitive Damerau–Levenshtein distance, so
/// a swap of two letters is one edit), if it is plausibly a typo of it: at most one
/// edit per three characters of `bad`, at least one. Ties go to the first candidate.
pub fn did_you_mean<'a>(bad: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let bad_l = bad.to_ascii_lowercase();
    let limit = 1.max(bad.chars().count() / 3);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&bad_l, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = ["heartbeat_interval_ms", "election_timeout_min_ms", "snapshot_every"];
        assert_eq!(did_you_mean("heartbeat_intervl_ms", keys), Some("heartbeat_interval_ms"));
        assert_eq!(did_you_mean("Snapshot_Every", keys), Some("snapshot_every"));
        assert_eq!(did_you_mean("enabeld", ["enabled", "token_env"]), Some("enabled"));
        assert_eq!(did_you_mean("clustr", ["standalone", "gateway", "worker", "cluster"]), Some("cluster"));
        assert_eq!(did_you_mean("agnet", ["agent", "fleet", "flow"]), Some("agent"));
        assert_eq!(did_you_mean("repositores", ["repositories", "allowed_repos"]), Some("repositories"));
        assert_eq!(did_you_mean("foo", keys), None);
        assert_eq!(did_you_mean("x", ["y"]), Some("y"));
        assert_eq!(did_you_mean("abc", std::iter::empty()), None);
    }
}
