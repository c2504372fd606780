//! Expanding `${VAR}` references in secrets (`webhook_secret: ${GITHUB_WEBHOOK_SECRET}`).
//!
//! **Edge only.** [`expand_env`] reads the process environment, which differs from
//! machine to machine: call it where a delivery is received (before verifying its
//! signature), never inside the Raft state machine's `apply`. Trigger documents in
//! the Raft log keep the raw `${VAR}` text. [`expand_with`] is the pure core, for
//! callers with their own lookup.
//!
//! Syntax: `${NAME}` with `NAME` = `[A-Za-z_][A-Za-z0-9_]*`, any number of times, in
//! any position. A `$` not followed by `{` is literal (`$VAR` is *not* expanded);
//! there is no escape for a literal `${` and no `${VAR:-default}`. Errors name the
//! variable but never echo the rest of the string (it may hold a secret).

/// Expand every `${NAME}` in `s` with `lookup(NAME)`.
///
/// # Errors
///
/// A message naming the variable when `lookup` returns `None`, or describing a
/// malformed reference (`${`, `${}`, `${A:-b}`).
pub fn expand_with(s: &str, mut lookup: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            return Err("unterminated \"${\": write environment references as ${NAME}".to_string());
        };
        let name = &after[..end];
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "invalid environment reference ${{{name}}}: only ${{NAME}} with letters, digits and '_' is supported"
            ));
        }
        match lookup(name) {
            Some(value) => out.push_str(&value),
            None => return Err(format!("environment variable {name} is not set (referenced as ${{{name}}})")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Expand every `${NAME}` in `s` from the process environment. Edge only: see the
/// module docs.
///
/// # Errors
///
/// As [`expand_with`]; an unset variable (or one that is not valid UTF-8) is an error
/// naming it.
pub fn expand_env(s: &str) -> Result<String, String> {
    expand_with(s, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "_B2" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_references() {
        assert_eq!(expand_with("${A}", lookup).unwrap(), "alpha");
        assert_eq!(expand_with("x-${A}-${_B2}-${A}", lookup).unwrap(), "x-alpha--alpha");
        assert_eq!(expand_with("plain $A $ {A} $", lookup).unwrap(), "plain $A $ {A} $");
    }

    #[test]
    fn errors_name_the_variable() {
        let e = expand_with("${A}${MISSING_VAR}", lookup).unwrap_err();
        assert!(e.contains("MISSING_VAR") && e.contains("not set"), "{e}");
        assert!(expand_with("${A", lookup).unwrap_err().contains("unterminated"));
        assert!(expand_with("${A:-x}", lookup).unwrap_err().contains("invalid"));
        assert!(expand_with("${1A}", lookup).unwrap_err().contains("invalid"));
        assert!(expand_with("${}", lookup).unwrap_err().contains("invalid"));
    }

    #[test]
    fn expand_env_reads_the_process_environment() {
        // Cargo sets CARGO_PKG_NAME for test runs; no set_var needed (tests run in parallel).
        assert_eq!(expand_env("pkg=${CARGO_PKG_NAME}").unwrap(), format!("pkg={}", env!("CARGO_PKG_NAME")));
        let e = expand_env("${AOF_CLUSTER_SURELY_UNSET_VARIABLE_4711}").unwrap_err();
        assert!(e.contains("AOF_CLUSTER_SURELY_UNSET_VARIABLE_4711"), "{e}");
    }
}
