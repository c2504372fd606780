//! The HTTP side of a node (axum): the public webhook listener and the API listener.
//!
//! * [`routes`] — which paths each listener serves (the only place that knows).
//! * [`serve`] — the accept loop: TCP_NODELAY, optional TLS, header and body read
//!   timeouts, graceful shutdown.
//! * [`error`] — the JSON error answer and shared query parameters.
//! * handlers: [`webhook`] (GitHub intake), [`cluster`] (health, readiness, status,
//!   membership), [`triggers`], [`events`] (status API), [`queue`] (queue stats, DLQ),
//!   [`jobs`] (queue controls: list / cancel jobs, re-run events, per-target limits),
//!   [`prometheus`] (`/metrics`), [`ui`] (the status page `/ui` and its live feed
//!   `/v1/watch`), [`github`] (delivery recovery), [`callbacks`] (the completion
//!   callback outbox).
//!
//! **API Boundary**: the routes and JSON shapes here are the public REST API used by
//! `aofctl` and the `aof-client` crate.

pub mod callbacks;
pub mod cluster;
pub mod error;
pub mod events;
pub mod github;
pub mod jobs;
pub mod prometheus;
pub mod queue;
pub mod routes;
pub mod serve;
pub mod state;
pub mod triggers;
pub mod ui;
pub mod webhook;

pub use error::{ApiError, ApiResult, ReadParams};
pub use state::AppState;
