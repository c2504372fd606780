//! Output formats (`-o table|wide|json|yaml`): kubectl-style plain tables and
//! JSON/YAML dumps of API objects, plus human-readable ages.

use std::fmt::Write as _;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    #[default]
    Table,
    /// Aligned columns with more detail.
    Wide,
    Json,
    Yaml,
}

/// `-o` of the list commands (`get ...`, `dlq list`): the formats of
/// [`OutputFormat`] plus kubectl's `name` (`kind/name`, one per line, for scripts:
/// `aofctl get triggers -o name | xargs ...`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// Aligned columns.
    #[default]
    Table,
    /// Aligned columns with more detail.
    Wide,
    /// `kind/name` per line (e.g. `trigger/pr-bot`, `event/12`, `job/12-0`).
    Name,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML, or `names` one per line for `-o name`;
/// returns false for the table formats (the caller renders those).
pub fn print_list<T: Serialize>(format: ListFormat, value: &T, names: impl FnOnce() -> Vec<String>) -> anyhow::Result<bool> {
    match format {
        ListFormat::Json => print!("{}", to_json(value)?),
        ListFormat::Yaml => print!("{}", to_yaml(value)?),
        ListFormat::Name => print!("{}", name_lines(&names())),
        ListFormat::Table | ListFormat::Wide => return Ok(false),
    }
    Ok(true)
}

/// `names`, one per line.
pub fn name_lines(names: &[String]) -> String {
    names.iter().map(|n| format!("{n}\n")).collect()
}

/// A table of left-aligned columns separated by three spaces, like kubectl's.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(headers: I) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = line.get(i).map(String::as_str).unwrap_or("");
                if i + 1 < cols {
                    let pad = width - cell.chars().count();
                    let _ = write!(text, "{cell}{}   ", " ".repeat(pad));
                } else {
                    text.push_str(cell);
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Pretty JSON, newline-terminated.
pub fn to_json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// YAML (serde_yaml output ends with a newline).
pub fn to_yaml<T: Serialize>(value: &T) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(value)?)
}

/// Prints `value` as JSON or YAML; returns false for the table formats
/// (the caller renders those).
pub fn print_structured<T: Serialize>(format: OutputFormat, value: &T) -> anyhow::Result<bool> {
    match format {
        OutputFormat::Json => print!("{}", to_json(value)?),
        OutputFormat::Yaml => print!("{}", to_yaml(value)?),
        OutputFormat::Table | OutputFormat::Wide => return Ok(false),
    }
    Ok(true)
}

/// kubectl-style age (its `HumanDuration`): `45s`, `5m12s`, `42m`, `150m`, `5h10m`,
/// `20h`, `4d3h`, `12d`, `2y70d`, `9y`.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    let (m, h, day) = (s / 60, s / 3600, s / 86_400);
    let with = |big: u64, bu: &str, small: u64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        with(m, "m", s % 60, "s")
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        with(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        with(day, "d", h % 24, "h")
    } else if h < 24 * 365 * 2 {
        format!("{day}d")
    } else if h < 24 * 365 * 8 {
        with(day / 365, "y", day % 365, "d")
    } else {
        format!("{}y", day / 365)
    }
}

/// Age of a Unix-epoch millisecond timestamp; `-` if unknown (0). A timestamp
/// ahead of this machine's clock (skew) reads as `0s`.
pub fn age_since_ms(ms: u64, now_ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    human_age(Duration::from_millis(now_ms.saturating_sub(ms)))
}

/// Now, ms since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Joins `items`, shortening to `max` characters with `...` (0 = no limit); `-` if empty.
pub fn join_list(items: &[String], max: usize) -> String {
    if items.is_empty() {
        return "-".into();
    }
    let joined = items.join(",");
    if max == 0 || joined.chars().count() <= max {
        return joined;
    }
    let cut: String = joined.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims_trailing_space() {
        let mut t = Table::new(["ID", "ADDR", "ROLE"]);
        t.row(["1", "127.0.0.1:3001", "voter"]);
        t.row(["10", "h:1", ""]);
        assert_eq!(
            t.render(),
            "ID   ADDR             ROLE\n1    127.0.0.1:3001   voter\n10   h:1\n"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        let s = Duration::from_secs;
        assert_eq!(human_age(s(0)), "0s");
        assert_eq!(human_age(s(90)), "90s");
        assert_eq!(human_age(s(312)), "5m12s");
        assert_eq!(human_age(s(300)), "5m");
        assert_eq!(human_age(s(42 * 60)), "42m");
        assert_eq!(human_age(s(2 * 3600 + 5 * 60)), "125m");
        assert_eq!(human_age(s(5 * 3600 + 10 * 60)), "5h10m");
        assert_eq!(human_age(s(9 * 3600 + 5 * 60)), "9h");
        assert_eq!(human_age(s(4 * 86_400 + 3 * 3600)), "4d3h");
        assert_eq!(human_age(s(12 * 86_400)), "12d");
        assert_eq!(human_age(s(800 * 86_400)), "2y70d");
        assert_eq!(human_age(s(9 * 365 * 86_400)), "9y");
        assert_eq!(age_since_ms(0, 5000), "-");
        assert_eq!(age_since_ms(1000, 6000), "5s");
    }

    #[test]
    fn lists_are_joined_and_shortened() {
        let v = vec!["pull_request".to_string(), "issue_comment".to_string()];
        assert_eq!(join_list(&v, 0), "pull_request,issue_comment");
        assert_eq!(join_list(&v, 15), "pull_request...");
        assert_eq!(join_list(&[], 10), "-");
    }
}
