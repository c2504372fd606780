//! Reading AOF resource files: a YAML file (several `---`-separated documents
//! allowed) or every `*.yaml` / `*.yml` / `*.json` file of a directory, in name
//! order. Used by `aofctl apply -f` and by the node's `spec.triggers.directory`.
//!
//! - Only the directory itself is read (no subdirectories); entries that are not
//!   regular files (after following links) are skipped.
//! - Empty documents (a lone `---`, comments only) are skipped, but count in the
//!   numbering. YAML merge keys (`<<: *anchor`) are applied.
//! - A document is named `file` when its file holds one document, else
//!   `file (document N)`, N from 1; every error names its file (and document).

use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;

/// The file endings read from a directory.
pub const EXTENSIONS: &[&str] = &["yaml", "yml", "json"];

/// One document of a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The file as given (a path, or a label such as `<stdin>`).
    pub file: String,
    /// Position in the file, from 1.
    pub index: usize,
    /// Documents in the file (empty ones included).
    pub of: usize,
    /// The document, merge keys applied; never null.
    pub value: serde_yaml::Value,
}

impl Document {
    /// `file`, or `file (document N)` when the file holds several documents.
    pub fn source(&self) -> String {
        label(&self.file, self.index, self.of)
    }

    /// The string at `kind`, if any.
    pub fn kind(&self) -> Option<&str> {
        self.value.get("kind").and_then(|k| k.as_str())
    }

    /// The string at `metadata.name`, if any.
    pub fn name(&self) -> Option<&str> {
        self.value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
    }

    /// The document as JSON (fails on keys that are not strings, and the like).
    pub fn to_json(&self) -> Result<serde_json::Value, Error> {
        serde_json::to_value(&self.value).map_err(|e| Error::NotJson {
            source_label: self.source(),
            message: e.to_string(),
        })
    }
}

fn label(file: &str, index: usize, of: usize) -> String {
    if of > 1 {
        format!("{file} (document {index})")
    } else {
        file.to_string()
    }
}

/// Why files could not be loaded. Every message starts with the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("no .yaml, .yml or .json files in {0}")]
    NoFiles(String),
    #[error("{source_label}: invalid YAML{message}")]
    Yaml {
        /// `file` or `file (document N)`.
        source_label: String,
        /// Starts with ` at line L column C: ` or `: `.
        message: String,
    },
    #[error("{source_label}: cannot be read as JSON: {message}")]
    NotJson {
        source_label: String,
        message: String,
    },
}

impl Error {
    /// The file (or directory) the error is about, with the document when known.
    pub fn source_label(&self) -> &str {
        match self {
            Error::Read { path, .. } => path,
            Error::NoFiles(dir) => dir,
            Error::Yaml { source_label, .. } | Error::NotJson { source_label, .. } => source_label,
        }
    }
}

fn yaml_error(source_label: String, e: &serde_yaml::Error) -> Error {
    // serde_yaml's message usually ends with "at line L column C" already.
    let message = match e.location() {
        Some(loc) if !e.to_string().contains(" line ") => {
            format!(" at line {} column {}: {e}", loc.line(), loc.column())
        }
        _ => format!(": {e}"),
    };
    Error::Yaml {
        source_label,
        message,
    }
}

fn read_error(path: &Path, source: io::Error) -> Error {
    Error::Read {
        path: path.display().to_string(),
        source,
    }
}

/// The files to read for `path`: the file itself, or the files of the directory
/// with one of the [`EXTENSIONS`], in name order (possibly none).
pub fn files(path: &Path) -> Result<Vec<PathBuf>, Error> {
    let meta = std::fs::metadata(path).map_err(|e| read_error(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(|e| read_error(path, e))? {
        let p = entry.map_err(|e| read_error(path, e))?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if EXTENSIONS.contains(&ext) && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// The documents of `text`, read from `file` (used in names and errors).
pub fn parse(file: &str, text: &str) -> Result<Vec<Document>, Error> {
    let mut docs = Vec::new();
    let mut of = 0;
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        // The count is not known yet: name the document unless it is the first.
        let here = || {
            if i == 0 {
                file.to_string()
            } else {
                label(file, i + 1, i + 1)
            }
        };
        let mut value = serde_yaml::Value::deserialize(de).map_err(|e| yaml_error(here(), &e))?;
        of = i + 1;
        if value.is_null() {
            continue;
        }
        value.apply_merge().map_err(|e| yaml_error(here(), &e))?;
        docs.push(Document {
            file: file.to_string(),
            index: i + 1,
            of: 0,
            value,
        });
    }
    for d in &mut docs {
        d.of = of;
    }
    Ok(docs)
}

/// The documents of one file.
pub fn read(file: &Path) -> Result<Vec<Document>, Error> {
    let text = std::fs::read_to_string(file).map_err(|e| read_error(file, e))?;
    parse(&file.display().to_string(), &text)
}

/// Every document of `path` (a file, or a directory with at least one file to
/// read); the first error stops the load.
pub fn load(path: &Path) -> Result<Vec<Document>, Error> {
    let files = files(path)?;
    if files.is_empty() {
        return Err(Error::NoFiles(path.display().to_string()));
    }
    let mut docs = Vec::new();
    for f in files {
        docs.extend(read(&f)?);
    }
    Ok(docs)
}

/// Every document of `path` that can be read, and an error for each file that
/// cannot (its documents are all left out). An empty directory is no error.
pub fn load_each(path: &Path) -> (Vec<Document>, Vec<Error>) {
    let files = match files(path) {
        Ok(f) => f,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let (mut docs, mut errors) = (Vec::new(), Vec::new());
    for f in files {
        match read(&f) {
            Ok(d) => docs.extend(d),
            Err(e) => errors.push(e),
        }
    }
    (docs, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "\
apiVersion: aof.dev/v1
kind: Trigger
metadata:
  name: pr-bot
spec:
  config:
    github_events: [pull_request, issue_comment]
---
# only a comment
---
base: &base {kind: Agent}
<<: *base
metadata:
  name: reviewer
";

    #[test]
    fn documents_are_split_numbered_and_merged() {
        let docs = parse("t.yaml", TWO).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[0].kind(), docs[0].name(), docs[0].source().as_str()),
            (Some("Trigger"), Some("pr-bot"), "t.yaml (document 1)")
        );
        assert_eq!(
            (docs[1].kind(), docs[1].name(), docs[1].source().as_str()),
            (Some("Agent"), Some("reviewer"), "t.yaml (document 3)")
        );
        let json = docs[0].to_json().unwrap();
        assert_eq!(
            json.pointer("/spec/config/github_events/1"),
            Some(&serde_json::json!("issue_comment"))
        );
        let one = parse("one.yaml", "kind: Trigger\n").unwrap();
        assert_eq!(one[0].source(), "one.yaml");
        assert!(parse("empty.yaml", "").unwrap().is_empty());
        assert!(parse("comments.yaml", "# nothing\n---\n")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn errors_name_the_file_and_the_document() {
        let e = parse("bad.yaml", "kind: Trigger\nmetadata:\n  name: [unclosed\n").unwrap_err();
        assert_eq!(e.source_label(), "bad.yaml");
        let msg = e.to_string();
        assert!(
            msg.starts_with("bad.yaml: invalid YAML") && msg.contains("line "),
            "{msg}"
        );
        let e = parse("multi.yaml", "kind: A\n---\nkind: [B\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("multi.yaml (document 2): invalid YAML"),
            "{e}"
        );
        let e = parse("keys.yaml", "{[1, 2]: x}\n").unwrap()[0]
            .to_json()
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("keys.yaml: cannot be read as JSON"),
            "{e}"
        );
    }

    #[test]
    fn directories_are_read_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "kind: Trigger\nmetadata: {name: b}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "kind: Trigger\nmetadata: {name: a}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("c.json"),
            "{\"kind\": \"Trigger\", \"metadata\": {\"name\": \"c\"}}",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        std::fs::create_dir(dir.path().join("sub.yaml")).unwrap();
        let names = |docs: &[Document]| {
            docs.iter()
                .map(|d| d.name().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&load(dir.path()).unwrap()), ["a", "b", "c"]);
        assert_eq!(
            load(&dir.path().join("b.yaml")).unwrap()[0].file,
            dir.path().join("b.yaml").display().to_string()
        );

        // A broken file: `load` stops and names it; `load_each` keeps the others.
        let broken = dir.path().join("b2.yaml");
        std::fs::write(&broken, "kind: [\n").unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}: invalid YAML", broken.display())),
            "{e}"
        );
        let (docs, errors) = load_each(dir.path());
        assert_eq!(names(&docs), ["a", "b", "c"]);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].source_label(), broken.display().to_string());

        let empty = tempfile::tempdir().unwrap();
        assert!(load(empty.path())
            .unwrap_err()
            .to_string()
            .starts_with("no .yaml"));
        assert_eq!(
            load_each(empty.path()).0.len() + load_each(empty.path()).1.len(),
            0
        );
        let missing = dir.path().join("nope.yaml");
        let e = load(&missing).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}", missing.display())),
            "{e}"
        );
    }
}
