//! Configuration errors and startup notices. Every message names where the value came
//! from (the file, or the environment variable) and the key path.

use std::fmt;
use std::path::PathBuf;

/// One problem with one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `spec.cluster.initial_members[1].grpc_addr`; `.` for the
    /// whole document.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key == "." {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// How loudly a [`Notice`] is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Accepted and ignored (AOF keys aof-cluster does not use).
    Info,
    /// Accepted, but risky (secrets written in the file, authentication off, ...).
    Warn,
}

/// Something accepted that deserves the operator's attention; `aofctl serve` logs
/// every notice at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub severity: Severity,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded (or its tokens resolved).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    #[error("cannot determine the working directory (relative paths resolve against it): {0}")]
    WorkingDir(std::io::Error),

    /// The file is not well-formed YAML.
    #[error("{origin}:{line}:{column}: invalid YAML: {message}")]
    Syntax { origin: String, line: usize, column: usize, message: String },

    /// A value does not fit the `DaemonConfig` schema: unknown key, wrong type,
    /// missing required key. `origin` is the file or `environment variable NAME`;
    /// `line`/`column` are known for values from the file.
    #[error("{origin}: {}{message}{}", fmt_key(key), fmt_location(*.line, *.column))]
    Schema { origin: String, key: String, message: String, line: Option<usize>, column: Option<usize> },

    /// The document parsed but breaks one or more rules. Problems with a value set
    /// by an environment variable name it.
    #[error("{origin}: {}", fmt_problems(.problems))]
    Invalid { origin: String, problems: Vec<Problem> },

    /// The tokens of `spec.auth` cannot be read at start.
    #[error("API tokens: {}", fmt_problems(.problems))]
    Auth { problems: Vec<Problem> },
}

impl ConfigError {
    /// The key paths this error is about (empty for IO and syntax errors).
    pub fn keys(&self) -> Vec<&str> {
        match self {
            ConfigError::Schema { key, .. } => vec![key.as_str()],
            ConfigError::Invalid { problems, .. } | ConfigError::Auth { problems } => {
                problems.iter().map(|p| p.key.as_str()).collect()
            }
            _ => Vec::new(),
        }
    }
}

fn fmt_key(key: &str) -> String {
    if key == "." {
        String::new()
    } else {
        format!("{key}: ")
    }
}

fn fmt_location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" [line {l}, column {c}]"),
        (Some(l), None) => format!(" [line {l}]"),
        _ => String::new(),
    }
}

fn fmt_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut s = format!("{} problems:", many.len());
            for p in many {
                s.push_str("\n  - ");
                s.push_str(&p.to_string());
            }
            s
        }
    }
}
