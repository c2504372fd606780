//! What the HTTP handlers share, assembled once for the router. Handlers take only the
//! parts they need, each as its own `State` (`State<Arc<Node>>`, `State<Arc<Metrics>>`,
//! …, through the `FromRef` impls below), so no handler module imports this one and
//! this module names only the parts' types (checked by `core/tests/layering.rs`).

use std::sync::Arc;

use axum::extract::FromRef;

use super::ui::Streams;
use super::webhook::Gateway;
use crate::github::recovery::Recovery;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::store::Store;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub node: Arc<Node>,
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// The status page's live feeds (cap and count).
    pub ui: Arc<Streams>,
    /// Delivery recovery, when `spec.platforms.github.recovery` lists hooks.
    pub recovery: Option<Arc<Recovery>>,
}

/// `impl FromRef<AppState> for $part` from the field `$field`.
macro_rules! part {
    ($part:ty, $field:ident) => {
        impl FromRef<AppState> for $part {
            fn from_ref(s: &AppState) -> $part {
                s.$field.clone()
            }
        }
    };
}

part!(Arc<Node>, node);
part!(Arc<Gateway>, gateway);
part!(Arc<Metrics>, metrics);
part!(Store, store);
part!(Arc<Streams>, ui);
part!(Option<Arc<Recovery>>, recovery);
