//! The routes of the two HTTP listeners, in one place.
//!
//! **Architecture Invariant**: each listener serves only its own role. The public
//! listener (`spec.server`, the only one meant to face the internet) serves GitHub's
//! intake and health probes and answers 404 to everything else; the API listener
//! (`spec.cluster.api_addr`) serves `/v1/*` and `/metrics`, behind bearer tokens, and
//! the status page's static assets `/ui` (no token; the page calls `/v1/*` with one).
//! Handlers never import this module.

use axum::routing::{delete, get, post, put};
use axum::Router;

use super::state::AppState;
use super::{callbacks, cluster, events, github, jobs, prometheus, queue, triggers, ui, webhook};

/// The public listener: `POST /webhook/github`, `GET /health`, `GET /ready`.
pub fn public(state: AppState) -> Router {
    Router::new()
        .route("/webhook/github", post(webhook::webhook))
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .with_state(state)
}

/// GitHub's intake alone (for a listener that also serves [`api`]).
pub fn intake(state: AppState) -> Router {
    Router::new().route("/webhook/github", post(webhook::webhook)).with_state(state)
}

/// The API listener: the REST API and `/metrics` (authentication is layered on by
/// the server, see `super::auth`).
pub fn api(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(prometheus::metrics))
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .route("/v1/events", get(events::list_events))
        .route("/v1/events/{id}", get(events::get_event))
        .route("/v1/deliveries/{delivery_id}", get(events::get_delivery))
        .route("/v1/queue/stats", get(queue::stats))
        .route("/v1/dlq", get(queue::list_dlq))
        .route("/v1/dlq/redrive", post(queue::redrive))
        .route("/v1/dlq/purge", post(queue::purge))
        .route("/v1/cluster", get(cluster::cluster_status))
        .route("/v1/snapshot", get(cluster::snapshot))
        .route("/v1/cluster/learners", post(cluster::add_learner))
        .route("/v1/cluster/voters/{id}", post(cluster::promote))
        .route("/v1/cluster/members/{id}", delete(cluster::remove_member))
        .route("/v1/triggers", get(triggers::list_triggers))
        .route("/v1/triggers/{name}", get(triggers::get_trigger).put(triggers::put_trigger).delete(triggers::delete_trigger))
        // The status page: static assets (no token, see `crate::auth`) and its live
        // feed (read token).
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/app.css", get(ui::app_css))
        .route("/v1/watch", get(ui::watch))
        .route("/v1/github/recovery", get(github::status))
        .route("/v1/github/recover", post(github::recover))
        // Queue controls.
        .route("/v1/jobs", get(jobs::list_jobs))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel_job))
        .route("/v1/events/{id}/rerun", post(jobs::rerun_event))
        .route("/v1/queue/limits", get(jobs::list_limits))
        .route("/v1/targets/{target}/limits", put(jobs::put_limits))
        // Completion callbacks.
        .route("/v1/callbacks", get(callbacks::list_callbacks))
        .with_state(state)
}
