//! Prometheus metrics of one node (`GET /metrics`, text format).
//!
//! **Architecture Invariant**: every rejected webhook is counted here under its
//! outcome, so bad input is visible even though it stores nothing.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What happened to a webhook request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum WebhookOutcome {
    accepted,
    duplicate,
    unmatched,
    no_route,
    ping,
    bad_signature,
    invalid,
    too_large,
    unavailable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: WebhookOutcome,
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    pub webhook_requests: Family<OutcomeLabels, Counter>,
    /// Seconds from receiving a webhook to answering 202/200.
    pub webhook_ack_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aof");
        let webhook_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_requests",
            "GitHub webhook requests by outcome",
            webhook_requests.clone(),
        );
        let webhook_ack_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "webhook_ack_seconds",
            "Time from receiving a webhook to acknowledging it (after quorum commit)",
            webhook_ack_seconds.clone(),
        );
        Metrics { registry, webhook_requests, webhook_ack_seconds }
    }
}

impl Metrics {
    pub fn count(&self, outcome: WebhookOutcome) {
        self.webhook_requests.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn webhook_count(&self, outcome: WebhookOutcome) -> u64 {
        self.webhook_requests.get_or_create(&OutcomeLabels { outcome }).get()
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
