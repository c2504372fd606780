//! GitHub webhooks, AOF-style: Trigger documents, event facts, matching and routing.
//!
//! Users write AOF `Trigger` YAML (`kind: Trigger`, `spec.type: GitHub`); this module
//! gives it the same meaning as AOF's daemon, replicated:
//!
//! ```text
//! edge (any node, aof-node)                         state machine (every replica)
//! -------------------------                         -----------------------------
//! signature check, ${ENV} secrets                   trigger::parse_trigger(name, doc)
//! facts::extract(event, payload) ──EventFacts──▶      matcher::match_event(triggers, facts)
//!                                  (Raft log)         -> MatchOutcome (into the log)
//! ```
//!
//! * [`trigger`] — parse and validate a Trigger document into a [`trigger::Trigger`];
//!   format and validation rules.
//! * [`facts`] — [`extract`] the [`EventFacts`] of a delivery (what matching needs, and
//!   AOF's context variables).
//! * [`matcher`] — [`match_event`]: which trigger, which route; filter and routing
//!   semantics.
//!
//! **Architecture Invariant**: everything here is pure — no IO, clock, randomness or
//! environment, and no hash-order iteration — so [`trigger::parse_trigger`] and
//! [`match_event`] can run in the deterministic `apply` of every replica and agree.
//! Types that enter the Raft log ([`EventFacts`], [`CtxValue`], [`trigger::Route`],
//! [`trigger::TargetKind`], [`trigger::Priority`], [`MatchOutcome`], [`MatchResult`])
//! are plain serde structs that bincode 1.3 can encode: no `serde_json::Value`, no
//! untagged/flattened/skipped fields; JSON `params` travel as canonical JSON text.

pub mod facts;
pub mod matcher;
pub mod trigger;

pub use facts::{extract, CtxValue, EventFacts, COMMENT_EVENTS};
pub use matcher::{match_event, MatchOutcome, MatchResult};
pub use trigger::{
    parse_trigger, CommandRoute, Priority, RateLimit, RateLimitScope, Route, TargetKind, Trigger, TriggerError,
};
