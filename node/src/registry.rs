//! The trigger registry's edge in the node: validation (in `aof-core`, re-exported)
//! and the JSON view served by the API, with literal secrets redacted.

use serde::Serialize;
use serde_json::Value;

pub use aof_core::registry::{canonical_trigger, validate_name, MAX_NAME_LEN};

use crate::types::TriggerRecord;

/// A trigger as the API returns it.
#[derive(Debug, Serialize)]
pub struct TriggerView {
    pub name: String,
    pub revision: u64,
    pub created_revision: u64,
    pub updated_ms: u64,
    pub trigger: Value,
}

/// Hide a literal `spec.config.webhook_secret` (a `${ENV}` reference is shown as is):
/// reads of the registry must not hand out secrets.
fn redact(mut doc: Value) -> Value {
    if let Some(Value::String(s)) = doc.pointer_mut("/spec/config/webhook_secret") {
        let is_reference = s.starts_with("${") && s.ends_with('}') && !s[2..s.len() - 1].contains(['$', '{', '}']);
        if !is_reference {
            *s = "<redacted>".into();
        }
    }
    doc
}

impl From<TriggerRecord> for TriggerView {
    fn from(r: TriggerRecord) -> Self {
        TriggerView {
            trigger: redact(serde_json::from_str(&r.doc_json).unwrap_or(Value::Null)),
            name: r.name,
            revision: r.revision,
            created_revision: r.created_revision,
            updated_ms: r.updated_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_secrets_are_redacted_references_kept() {
        let lit = redact(serde_json::json!({"spec": {"config": {"webhook_secret": "hunter2"}}}));
        assert_eq!(lit["spec"]["config"]["webhook_secret"], "<redacted>");
        let env = redact(serde_json::json!({"spec": {"config": {"webhook_secret": "${GITHUB_WEBHOOK_SECRET}"}}}));
        assert_eq!(env["spec"]["config"]["webhook_secret"], "${GITHUB_WEBHOOK_SECRET}");
    }
}
