//! What the HTTP handlers share. Handlers that need only a part take it as its own
//! `State` (`Arc<Node>`, `Arc<Gateway>`, through `FromRef`), so the modules that
//! define those parts never import this one.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::node::Node;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub gateway: Arc<super::webhook::Gateway>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub store: crate::store::Store,
    /// The status page's live feeds (cap and count).
    pub ui: Arc<super::ui::Streams>,
    /// Delivery recovery, when `spec.platforms.github.recovery` lists hooks.
    pub recovery: Option<Arc<crate::github::recovery::Recovery>>,
}

impl FromRef<AppState> for Arc<Node> {
    fn from_ref(s: &AppState) -> Arc<Node> {
        s.node.clone()
    }
}

impl FromRef<AppState> for Arc<super::webhook::Gateway> {
    fn from_ref(s: &AppState) -> Arc<super::webhook::Gateway> {
        s.gateway.clone()
    }
}
