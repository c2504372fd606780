//! Validation of Trigger documents before they are proposed: names, the document
//! envelope and the full AOF Trigger schema, into canonical JSON.
//!
//! **Architecture Invariant**: a document is validated here, before it enters the
//! Raft log (and again on the leader for a forwarded write); the state machine stores
//! only documents that passed.

use serde_json::Value;

/// Longest trigger name (Kubernetes' object-name limit).
pub const MAX_NAME_LEN: usize = 253;

/// Check a trigger name: 1–253 characters of `a-z A-Z 0-9 . _ -`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let ok_start = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars || !ok_start {
        return Err(format!(
            "invalid trigger name {name:?}: use 1-{MAX_NAME_LEN} characters from a-z, A-Z, 0-9, '.', '_', '-', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Parse a Trigger document (YAML or JSON) for the trigger `name` and return its
/// canonical JSON form (object keys sorted). `metadata.name` is filled in when absent
/// and must equal `name` when present.
pub fn canonical_trigger(name: &str, body: &[u8]) -> Result<String, String> {
    validate_name(name)?;
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_string())?;
    let mut doc: Value = serde_yaml::from_str(text).map_err(|e| format!("the body is not a YAML or JSON document: {e}"))?;
    let obj = doc.as_object_mut().ok_or("a Trigger document must be a mapping with apiVersion, kind, metadata and spec")?;
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some("aof.dev/v1") => {}
        other => return Err(format!("apiVersion: expected \"aof.dev/v1\", found {other:?}")),
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some("Trigger") => {}
        other => return Err(format!("kind: expected \"Trigger\", found {other:?}")),
    }
    let metadata = obj.entry("metadata").or_insert_with(|| Value::Object(Default::default()));
    let metadata = metadata.as_object_mut().ok_or("metadata: must be a mapping")?;
    match metadata.get("name") {
        None => {
            metadata.insert("name".into(), Value::String(name.to_string()));
        }
        Some(Value::String(n)) if n == name => {}
        Some(other) => {
            return Err(format!("metadata.name: {other} does not match the name in the URL ({name:?})"));
        }
    }
    if !obj.get("spec").is_some_and(Value::is_object) {
        return Err("spec: required, and must be a mapping (see docs for the Trigger format)".into());
    }
    // The full AOF Trigger schema: unknown keys, bad globs, routes with two targets…
    crate::github::trigger::parse_trigger(name, &doc).map_err(|e| e.to_string())?;
    Ok(serde_json::to_string(&doc).expect("a JSON value serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalizes_yaml_and_json_alike() {
        let yaml = "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: pr\nspec:\n  type: GitHub\n  config: {}\n";
        let json = r#"{"spec":{"config":{},"type":"GitHub"},"kind":"Trigger","apiVersion":"aof.dev/v1","metadata":{"name":"pr"}}"#;
        assert_eq!(canonical_trigger("pr", yaml.as_bytes()).unwrap(), canonical_trigger("pr", json.as_bytes()).unwrap());
    }

    #[test]
    fn fills_in_missing_name_and_rejects_mismatch() {
        let c = canonical_trigger("x", b"apiVersion: aof.dev/v1\nkind: Trigger\nspec: {type: GitHub}\n").unwrap();
        assert!(c.contains(r#""name":"x""#));
        let e = canonical_trigger("x", b"apiVersion: aof.dev/v1\nkind: Trigger\nmetadata: {name: y}\nspec: {type: GitHub}\n").unwrap_err();
        assert!(e.contains("metadata.name"), "{e}");
    }

    #[test]
    fn rejects_bad_documents() {
        for (body, want) in [
            (&b"kind: Trigger\nspec: {}"[..], "apiVersion"),
            (b"apiVersion: aof.dev/v1\nkind: Agent\nspec: {}", "kind"),
            (b"apiVersion: aof.dev/v1\nkind: Trigger", "spec"),
            (b"[1, 2]", "mapping"),
            (b"{not yaml: [", "YAML"),
            (b"\xff\xfe", "UTF-8"),
        ] {
            let e = canonical_trigger("x", body).unwrap_err();
            assert!(e.contains(want), "{e} should mention {want}");
        }
        assert!(validate_name("").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("pr-review.v2").is_ok());
    }

    #[test]
    fn schema_errors_name_the_field() {
        let e = canonical_trigger("x", b"apiVersion: aof.dev/v1\nkind: Trigger\nspec:\n  type: GitHub\n  config:\n    repositores: [a/b]\n").unwrap_err();
        assert!(e.contains("spec.config.repositores"), "{e}");
    }
}
