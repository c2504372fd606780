//! GitHub webhooks, AOF-style: Trigger documents, event facts, matching and routing,
//! and signature verification.
//!
//! Users write AOF `Trigger` YAML (`kind: Trigger`, `spec.type: GitHub`); this module
//! gives it the same meaning as AOF's daemon, replicated:
//!
//! ```text
//! edge (any node)                                   state machine (every replica)
//! ---------------                                   -----------------------------
//! secrets::expand_env(webhook_secret)               trigger::parse_trigger(name, doc)
//! signature::verify(secrets, body, header)          matcher::match_event(triggers, facts)
//! facts::extract(event, payload) ──EventFacts──▶      -> MatchOutcome (into the log)
//!                                  (Raft log)
//! ```
//!
//! * [`trigger`] — parse and validate a Trigger document into a [`Trigger`];
//!   format and validation rules.
//! * [`facts`] — [`extract`] the [`EventFacts`] of a delivery (what matching needs, and
//!   AOF's context variables).
//! * [`matcher`] — [`match_event`]: which trigger, which route; filter and routing
//!   semantics.
//! * [`signature`] — [`sign`] / [`verify`] `X-Hub-Signature-256`.
//! * [`secrets`] — [`expand_env`] for `${VAR}` secrets.
//!
//! **Architecture Invariant**: everything here except [`secrets::expand_env`] is
//! pure — no IO, clock, randomness or environment, and no hash-order iteration — so
//! [`parse_trigger`] and [`match_event`] can run in the deterministic `apply` of every
//! replica and agree. Types that enter the Raft log ([`EventFacts`], [`CtxValue`],
//! [`Route`], [`TargetKind`], [`Priority`], [`MatchOutcome`], [`MatchResult`]) are
//! plain serde structs that bincode 1.3 can encode: no `serde_json::Value`, no
//! untagged/flattened/skipped fields; JSON `params` travel as canonical JSON text.

pub mod facts;
pub mod matcher;
pub mod secrets;
pub mod signature;
pub mod trigger;

pub use facts::{extract, CtxValue, EventFacts, COMMENT_EVENTS};
pub use matcher::{match_event, MatchOutcome, MatchResult};
pub use secrets::{expand_env, expand_with};
pub use signature::{sign, verify, SignatureError, SIGNATURE_HEADER};
pub use trigger::{
    parse_trigger, CommandRoute, Priority, RateLimit, RateLimitScope, Route, TargetKind, Trigger, TriggerError,
};
