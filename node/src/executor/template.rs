//! AOF's template syntax for text fields: `{{ metadata.pr_number }}` (or just
//! `{{ pr_number }}`) is replaced by the context variable; an unknown variable
//! renders as the empty string.

use std::collections::BTreeMap;

/// Render `text` with the context variables.
pub fn render(text: &str, context: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else { break };
        out.push_str(&rest[..start]);
        let name = rest[start + 2..start + 2 + len].trim();
        let name = name.strip_prefix("metadata.").unwrap_or(name);
        if let Some(v) = context.get(name) {
            out.push_str(v);
        }
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aof_metadata_and_bare_names() {
        let ctx = BTreeMap::from([("pr_number".to_string(), "42".to_string()), ("sender_login".to_string(), "alice".to_string())]);
        assert_eq!(render("PR #{{ metadata.pr_number }} by {{sender_login}}{{ missing }}!", &ctx), "PR #42 by alice!");
        assert_eq!(render("no vars, {{ unterminated", &ctx), "no vars, {{ unterminated");
    }
}
