//! Matching a delivery's [`EventFacts`] against the trigger registry, and routing it
//! to an agent, fleet or flow.
//!
//! This runs inside the Raft state machine's `apply`, on every replica: it is pure
//! and deterministic (no IO, clock, randomness or hash-order iteration), so the same
//! triggers and facts give the same [`MatchOutcome`] everywhere.
//!
//! # Which trigger
//!
//! [`match_event`] walks the triggers in the order given (the registry's stable order:
//! by name), skips disabled ones (`spec.enabled: false`) and non-GitHub ones, and
//! takes the **first** whose filters all pass. That trigger alone decides the route:
//! if none of its commands and no default applies, the outcome is
//! [`MatchOutcome::NoRoute`] and later triggers are not consulted. If no trigger
//! passes, the outcome is [`MatchOutcome::Unmatched`].
//!
//! # Filters
//!
//! All configured filters must pass (AND); an absent or empty filter passes
//! everything, so a trigger with an empty `config` catches every event.
//!
//! | Filter | Passes when |
//! |---|---|
//! | `github_events` | some entry matches: `event` matches every action of that event, `event.action` only that action, `*` any event. Names compare ASCII case-insensitively. |
//! | `actions` | the delivery has no `action` (`push`, `create`, …: not filtered), or its action is listed. |
//! | `repositories` (`allowed_repos`) | `repository.full_name` matches one of the globs, case-insensitively (`myorg/*`, `myorg/prefix-*`, exact). A delivery without a repository (e.g. org-level `membership`) does not pass. |
//! | `branches` | only for `push` and `pull_request*` events (other events pass): the pushed branch (`refs/heads/X`) or the pull request's **base** branch matches one of the globs (case-sensitive; `*` stops at `/`, `**` does not). A tag push has no branch and does not pass. |
//! | `allowed_users` | `sender.login` equals one of the logins, case-insensitively (`dependabot[bot]` is written as is). A delivery without a sender does not pass. |
//! | `labels` | only for `workflow_job` events (other events pass): every listed label is among `workflow_job.labels`, case-insensitively (GitHub runner labels are case-insensitive). |
//!
//! # Routing
//!
//! Within the matching trigger, the first rule that applies wins:
//!
//! 1. **Slash command** — for `issue_comment`, `pull_request_review_comment` and
//!    `commit_comment` deliveries whose action is `created` (so editing or deleting a
//!    comment never re-runs a command): take the first non-blank line of the comment
//!    body, trimmed; if it starts with `/`, pick the *longest* slash-command key whose
//!    words are a prefix of the line's words (whitespace-separated, compared
//!    case-insensitively). `/deploy production now` routes to `/deploy production`
//!    rather than `/deploy`; `/deployx` matches neither.
//! 2. **Event key** — a command key equal to `event.action` (`pull_request.opened`).
//! 3. **Event key** — a command key equal to `event` (`push`, `pull_request`).
//! 4. **Default** — `default_agent`, else `default_fleet`, else `default_flow`.
//! 5. Otherwise [`MatchOutcome::NoRoute`].
//!
//! [`MatchResult::command`] is the key that routed (`/deploy production`,
//! `pull_request.opened`) or `None` for the default. The matcher does not write it
//! into the context; the caller sets `context["command"]`.

use serde::{Deserialize, Serialize};

use super::facts::{is_pull_request_event, EventFacts, COMMENT_EVENTS};
use super::trigger::{CommandPattern, EventPattern, Priority, Route, Trigger};

/// A delivery routed by a trigger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchResult {
    /// The trigger's registry name.
    pub trigger: String,
    pub route: Route,
    /// The command key that routed (`/deploy staging`, `pull_request.opened`, `push`),
    /// `None` when the default route was used.
    pub command: Option<String>,
    /// The trigger's priority.
    pub priority: Priority,
}

/// The result of matching one delivery against the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOutcome {
    Matched(MatchResult),
    /// The first trigger whose filters passed has no command or default for this
    /// delivery.
    NoRoute {
        trigger: String,
    },
    /// No enabled GitHub trigger's filters passed.
    Unmatched,
}

impl EventPattern {
    fn matches(&self, event: &str, action: Option<&str>) -> bool {
        if self.event == "*" {
            return true;
        }
        self.event.eq_ignore_ascii_case(event)
            && match &self.action {
                None => true,
                Some(want) => action.is_some_and(|a| want.eq_ignore_ascii_case(a)),
            }
    }
}

fn is_comment_event(event: &str) -> bool {
    COMMENT_EVENTS.iter().any(|e| e.eq_ignore_ascii_case(event))
}

/// The words of a slash command on the first non-blank line of `body`, if any.
fn slash_words(body: &str) -> Option<Vec<&str>> {
    let line = body.lines().map(str::trim).find(|l| !l.is_empty())?;
    line.starts_with('/').then(|| line.split_whitespace().collect())
}

impl Trigger {
    /// Whether all of this trigger's filters pass for `facts` (see the module docs).
    /// Always false for non-GitHub triggers. Does not look at `enabled`;
    /// [`match_event`] does.
    pub fn matches(&self, facts: &EventFacts) -> bool {
        if !self.is_github() {
            return false;
        }
        let f = &self.filters;
        let event = facts.event.as_str();
        let action = facts.action.as_deref();

        if !f.events.is_empty() && !f.events.iter().any(|p| p.matches(event, action)) {
            return false;
        }
        if let Some(a) = action {
            if !f.actions.is_empty() && !f.actions.iter().any(|want| want.eq_ignore_ascii_case(a)) {
                return false;
            }
        }
        if let Some(repos) = &f.repositories {
            if !facts.repo_full_name.as_deref().is_some_and(|r| repos.is_match(r)) {
                return false;
            }
        }
        if let Some(branches) = &f.branches {
            let has_branch_concept = event.eq_ignore_ascii_case("push") || is_pull_request_event(event);
            if has_branch_concept && !facts.branch.as_deref().is_some_and(|b| branches.is_match(b)) {
                return false;
            }
        }
        if !f.allowed_users.is_empty() {
            let allowed =
                facts.sender.as_deref().is_some_and(|s| f.allowed_users.iter().any(|u| u.eq_ignore_ascii_case(s)));
            if !allowed {
                return false;
            }
        }
        if !f.labels.is_empty() && event.eq_ignore_ascii_case("workflow_job") {
            let all = f.labels.iter().all(|want| facts.labels.iter().any(|have| have.eq_ignore_ascii_case(want)));
            if !all {
                return false;
            }
        }
        true
    }

    /// Whether repository `full_name` passes this trigger's `repositories` filter,
    /// the same test [`Trigger::matches`] applies; `None` when the trigger has no
    /// such filter. Executors check it again before acting on a repository.
    pub fn allows_repository(&self, full_name: &str) -> Option<bool> {
        self.filters.repositories.as_ref().map(|repos| repos.is_match(full_name))
    }

    /// The route for `facts` and the command key that chose it (`None` for the
    /// default), per the routing rules in the module docs. Does not check filters.
    pub fn route(&self, facts: &EventFacts) -> Option<(Route, Option<String>)> {
        if !self.is_github() {
            return None;
        }
        let event = facts.event.as_str();
        let action = facts.action.as_deref();

        let command_allowed = action.is_none_or(|a| a.eq_ignore_ascii_case("created"));
        if is_comment_event(event) && command_allowed {
            if let Some(words) = facts.comment_body.as_deref().and_then(slash_words) {
                let best = self
                    .commands
                    .iter()
                    .filter_map(|c| match &c.pattern {
                        CommandPattern::Slash(key)
                            if key.len() <= words.len()
                                && key.iter().zip(&words).all(|(k, w)| k.eq_ignore_ascii_case(w)) =>
                        {
                            Some((key.len(), c))
                        }
                        _ => None,
                    })
                    .max_by_key(|(len, _)| *len);
                if let Some((_, c)) = best {
                    return Some((c.route.clone(), Some(c.key.clone())));
                }
            }
        }

        let event_key = |with_action: bool| {
            self.commands.iter().find(|c| match &c.pattern {
                CommandPattern::Event(p) if with_action => p.action.is_some() && p.matches(event, action),
                CommandPattern::Event(p) => p.action.is_none() && p.matches(event, action),
                CommandPattern::Slash(_) => false,
            })
        };
        if let Some(c) = event_key(true).or_else(|| event_key(false)) {
            return Some((c.route.clone(), Some(c.key.clone())));
        }
        self.default_route.clone().map(|r| (r, None))
    }
}

/// Match `facts` against `triggers` (in the registry's stable order): the first
/// enabled trigger whose filters pass decides the outcome. See the module docs.
pub fn match_event(triggers: &[Trigger], facts: &EventFacts) -> MatchOutcome {
    let Some(trigger) = triggers.iter().find(|t| t.enabled && t.matches(facts)) else {
        return MatchOutcome::Unmatched;
    };
    match trigger.route(facts) {
        Some((route, command)) => MatchOutcome::Matched(MatchResult {
            trigger: trigger.name.clone(),
            route,
            command,
            priority: trigger.priority,
        }),
        None => MatchOutcome::NoRoute { trigger: trigger.name.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::trigger::{parse_trigger, TargetKind};
    use serde_json::{json, Value};

    fn trig(name: &str, spec: Value) -> Trigger {
        let mut spec = spec;
        spec["type"] = json!("GitHub");
        parse_trigger(name, &json!({"apiVersion": "aof.dev/v1", "kind": "Trigger", "spec": spec})).unwrap()
    }

    fn cfg(config: Value) -> Trigger {
        trig("t", json!({"config": config, "default_agent": "helper"}))
    }

    fn facts(event: &str, action: Option<&str>) -> EventFacts {
        EventFacts {
            event: event.into(),
            action: action.map(String::from),
            repo_full_name: Some("myorg/api".into()),
            org: Some("myorg".into()),
            sender: Some("alice".into()),
            ..Default::default()
        }
    }

    fn with<F: FnOnce(&mut EventFacts)>(mut f: EventFacts, edit: F) -> EventFacts {
        edit(&mut f);
        f
    }

    fn comment(body: &str) -> EventFacts {
        with(facts("issue_comment", Some("created")), |f| f.comment_body = Some(body.into()))
    }

    #[test]
    fn events_with_and_without_action() {
        let t = cfg(json!({"github_events": ["push", "pull_request.opened"]}));
        assert!(t.matches(&facts("push", None)));
        assert!(t.matches(&facts("pull_request", Some("opened"))));
        assert!(!t.matches(&facts("pull_request", Some("closed"))));
        assert!(!t.matches(&facts("issues", Some("opened"))));
        let t = cfg(json!({"github_events": ["pull_request"]}));
        assert!(t.matches(&facts("pull_request", Some("closed"))));
        assert!(!t.matches(&facts("pull_request_review", Some("submitted"))));
        assert!(cfg(json!({"github_events": ["*"]})).matches(&facts("star", Some("created"))));
    }

    #[test]
    fn actions_list_filters_only_deliveries_with_an_action() {
        let t = cfg(json!({"github_events": ["pull_request", "push"], "actions": ["opened", "synchronize"]}));
        assert!(t.matches(&facts("pull_request", Some("synchronize"))));
        assert!(!t.matches(&facts("pull_request", Some("closed"))));
        assert!(t.matches(&facts("push", None)));
    }

    #[test]
    fn repository_globs() {
        let t = cfg(json!({"repositories": ["myorg/terraform-*", "myorg/k8s-manifests"]}));
        let repo = |r: &str| with(facts("push", None), |f| f.repo_full_name = Some(r.into()));
        assert!(t.matches(&repo("myorg/terraform-aws")));
        assert!(t.matches(&repo("MyOrg/K8s-Manifests")));
        assert!(!t.matches(&repo("myorg/terraform")));
        assert!(!t.matches(&repo("myorg/k8s-manifests-old")));
        assert!(!t.matches(&repo("other/terraform-aws")));
        assert!(!t.matches(&with(facts("push", None), |f| f.repo_full_name = None)));
        let all_org = cfg(json!({"repositories": ["myorg/*"]}));
        assert!(all_org.matches(&repo("myorg/anything")) && !all_org.matches(&repo("myorgx/a")));
        assert!(cfg(json!({"repositories": ["*"]})).matches(&repo("a/b")));
        assert_eq!(all_org.allows_repository("MyOrg/api"), Some(true));
        assert_eq!(all_org.allows_repository("victim/api"), Some(false));
        assert_eq!(all_org.allows_repository("myorg/../victim/api"), Some(false));
        assert_eq!(cfg(json!({"github_events": ["push"]})).allows_repository("any/repo"), None);
    }

    #[test]
    fn branches_for_push_tags_and_pull_requests() {
        let t = cfg(json!({"branches": ["main", "release/*"]}));
        let push = |b: Option<&str>| with(facts("push", None), |f| f.branch = b.map(String::from));
        assert!(t.matches(&push(Some("main"))));
        assert!(t.matches(&push(Some("release/1.2"))));
        assert!(!t.matches(&push(Some("release/1.2/hotfix"))), "* does not cross /");
        assert!(!t.matches(&push(Some("Main"))), "branches are case-sensitive");
        assert!(!t.matches(&push(None)), "tag push has no branch");
        let pr = |b: &str| with(facts("pull_request", Some("opened")), |f| f.branch = Some(b.into()));
        assert!(t.matches(&pr("main")));
        assert!(!t.matches(&pr("feature")));
        let review = with(facts("pull_request_review", Some("submitted")), |f| f.branch = Some("dev".into()));
        assert!(!t.matches(&review));
        assert!(t.matches(&facts("issues", Some("opened"))), "no branch concept: filter not applied");
        assert!(cfg(json!({"branches": ["release/**"]})).matches(&push(Some("release/1.2/hotfix"))));
        assert!(cfg(json!({"branches": ["refs/heads/main"]})).matches(&push(Some("main"))));
    }

    #[test]
    fn allowed_users_including_bots() {
        let t = cfg(json!({"allowed_users": ["Alice", "dependabot[bot]"]}));
        let by = |u: Option<&str>| with(facts("pull_request", Some("opened")), |f| f.sender = u.map(String::from));
        assert!(t.matches(&by(Some("alice"))));
        assert!(t.matches(&by(Some("dependabot[bot]"))));
        assert!(!t.matches(&by(Some("dependabot"))), "[bot] is part of the login, not a glob");
        assert!(!t.matches(&by(Some("mallory"))));
        assert!(!t.matches(&by(None)));
    }

    #[test]
    fn labels_apply_to_workflow_job_only() {
        let t = cfg(json!({"labels": ["self-hosted", "GPU"]}));
        let job = |ls: &[&str]| {
            with(facts("workflow_job", Some("queued")), |f| f.labels = ls.iter().map(|s| s.to_string()).collect())
        };
        assert!(t.matches(&job(&["self-hosted", "gpu", "linux"])));
        assert!(!t.matches(&job(&["self-hosted"])));
        assert!(!t.matches(&job(&[])));
        assert!(t.matches(&facts("workflow_run", Some("completed"))));
    }

    #[test]
    fn empty_config_catches_all_and_disabled_is_skipped() {
        let all = trig("all", json!({"default_agent": "a"}));
        for (e, a) in [("push", None), ("ping", None), ("issues", Some("opened")), ("membership", Some("added"))] {
            assert!(all.matches(&EventFacts { event: e.into(), action: a.map(String::from), ..Default::default() }));
        }
        let off = trig("a-off", json!({"enabled": false, "default_agent": "off"}));
        let out = match_event(&[off.clone(), all.clone()], &facts("push", None));
        assert!(matches!(out, MatchOutcome::Matched(MatchResult { ref trigger, .. }) if trigger == "all"), "{out:?}");
        assert_eq!(match_event(&[off], &facts("push", None)), MatchOutcome::Unmatched);
    }

    #[test]
    fn non_github_triggers_never_match() {
        let slack = parse_trigger("s", &json!({"spec": {"type": "Slack", "config": {"bot_token": "x"}}})).unwrap();
        assert!(!slack.matches(&facts("push", None)));
        assert_eq!(slack.route(&facts("push", None)), None);
        assert_eq!(match_event(&[slack], &facts("push", None)), MatchOutcome::Unmatched);
    }

    fn router() -> Trigger {
        trig(
            "router",
            json!({
                "commands": {
                    "/deploy": {"flow": "deploy"},
                    "/deploy production": {"flow": "deploy-prod", "params": {"require_approval": true}},
                    "/review": {"agent": "reviewer"},
                    "pull_request.opened": {"fleet": "review-fleet"},
                    "pull_request": {"agent": "pr-agent"},
                    "push": {"flow": "ci"},
                },
                "default_agent": "helper",
            }),
        )
    }

    fn routed(t: &Trigger, f: &EventFacts) -> (String, Option<String>) {
        let (route, cmd) = t.route(f).expect("routes");
        (route.name, cmd)
    }

    #[test]
    fn longest_slash_command_wins() {
        let t = router();
        assert_eq!(
            routed(&t, &comment("/deploy production now")),
            ("deploy-prod".into(), Some("/deploy production".into()))
        );
        assert_eq!(routed(&t, &comment("/deploy staging")), ("deploy".into(), Some("/deploy".into())));
        assert_eq!(routed(&t, &comment("\n  /Review  please\nthanks")), ("reviewer".into(), Some("/review".into())));
        assert_eq!(routed(&t, &comment("/deployx")), ("helper".into(), None), "word boundary");
        assert_eq!(routed(&t, &comment("please /review")), ("helper".into(), None), "must start the line");
        let (route, _) = t.route(&comment("/deploy production")).unwrap();
        assert_eq!(route.params_json, r#"{"require_approval":true}"#);
        for kind in ["pull_request_review_comment", "commit_comment"] {
            let f = with(comment("/review"), |f| f.event = kind.into());
            assert_eq!(routed(&t, &f).1.as_deref(), Some("/review"), "{kind}");
        }
    }

    #[test]
    fn edited_or_deleted_comments_do_not_run_commands() {
        let t = router();
        for action in ["edited", "deleted"] {
            let f = with(comment("/deploy production"), |f| f.action = Some(action.into()));
            assert_eq!(routed(&t, &f), ("helper".into(), None), "{action}");
        }
    }

    #[test]
    fn event_action_key_beats_event_key_beats_default() {
        let t = router();
        assert_eq!(
            routed(&t, &facts("pull_request", Some("opened"))),
            ("review-fleet".into(), Some("pull_request.opened".into()))
        );
        assert_eq!(
            routed(&t, &facts("pull_request", Some("closed"))),
            ("pr-agent".into(), Some("pull_request".into()))
        );
        assert_eq!(routed(&t, &facts("push", None)), ("ci".into(), Some("push".into())));
        assert_eq!(routed(&t, &facts("issues", Some("opened"))), ("helper".into(), None));
        let comment_event_key = trig("c", json!({"commands": {"issue_comment.created": {"agent": "triage"}}}));
        assert_eq!(
            routed(&comment_event_key, &comment("just text")),
            ("triage".into(), Some("issue_comment.created".into()))
        );
    }

    #[test]
    fn no_route_when_nothing_applies_and_later_triggers_are_not_consulted() {
        let a = trig("a", json!({"config": {"github_events": ["push"]}, "commands": {"/review": {"agent": "r"}}}));
        let b = trig("b", json!({"default_agent": "catch-all"}));
        assert_eq!(
            match_event(&[a.clone(), b.clone()], &facts("push", None)),
            MatchOutcome::NoRoute { trigger: "a".into() }
        );
        let out = match_event(&[a, b], &facts("issues", Some("opened")));
        assert_eq!(
            out,
            MatchOutcome::Matched(MatchResult {
                trigger: "b".into(),
                route: Route { kind: TargetKind::Agent, name: "catch-all".into(), params_json: "{}".into() },
                command: None,
                priority: Priority::Normal,
            })
        );
    }

    #[test]
    fn first_match_wins_in_given_order() {
        let x =
            trig("x", json!({"priority": "high", "config": {"repositories": ["myorg/*"]}, "default_agent": "x-agent"}));
        let y = trig("y", json!({"default_fleet": "y-fleet"}));
        let f = facts("push", None);
        let MatchOutcome::Matched(m) = match_event(&[x.clone(), y.clone()], &f) else { panic!() };
        assert_eq!((m.trigger.as_str(), m.route.name.as_str(), m.priority), ("x", "x-agent", Priority::High));
        let MatchOutcome::Matched(m) = match_event(&[y.clone(), x.clone()], &f) else { panic!() };
        assert_eq!((m.trigger.as_str(), m.route.kind), ("y", TargetKind::Fleet));
        let other = with(f, |f| f.repo_full_name = Some("other/repo".into()));
        let MatchOutcome::Matched(m) = match_event(&[x, y], &other) else { panic!() };
        assert_eq!(m.trigger, "y");
    }

    #[test]
    fn outcomes_round_trip_through_bincode() {
        let t = router();
        for out in [
            match_event(std::slice::from_ref(&t), &comment("/deploy production")),
            MatchOutcome::NoRoute { trigger: "n".into() },
            MatchOutcome::Unmatched,
        ] {
            let bytes = bincode::serialize(&out).unwrap();
            assert_eq!(bincode::deserialize::<MatchOutcome>(&bytes).unwrap(), out);
        }
    }
}
