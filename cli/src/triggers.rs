//! `aofctl apply`, `aofctl get triggers`, `aofctl delete trigger`: the
//! replicated trigger registry.
//!
//! `apply` reads multi-document YAML files (or every `.yaml`/`.yml`/`.json` file
//! of a directory), checks all of them before sending anything, then PUTs each
//! `kind: Trigger` document as JSON to `/v1/triggers/{metadata.name}`. Other
//! kinds (Agent, Fleet, DaemonConfig, ...) are not stored in the cluster and are
//! skipped with a note.

use std::fmt;
use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use aof_client::{ClientError, TriggerItem, TriggerList};
use aof_contract::yamldir;
use clap::{Args, Subcommand};

use crate::output::{age_since_ms, join_list, now_ms, print_list, print_structured, ListFormat, OutputFormat, Table};
use crate::{ConsistencyArg, GlobalArgs};

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A YAML file (several documents allowed), a directory of them, or `-` for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR",
        required = true
    )]
    pub filename: Vec<PathBuf>,
    /// Validate on the server and show what would change (created / configured
    /// with a diff / unchanged), without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// List triggers, or show one.
    #[command(visible_alias = "trigger")]
    Triggers(GetTriggersArgs),
    /// List received webhook events (newest last) with their status and jobs.
    #[command(visible_alias = "event")]
    Events(crate::events::GetEventsArgs),
    /// List jobs with their state, target and event (filter by state, target, event).
    #[command(visible_alias = "job")]
    Jobs(crate::jobs::GetJobsArgs),
    /// List completion-callback notices not yet delivered (pending, dead) with their last error.
    #[command(visible_alias = "callback")]
    Callbacks(crate::callbacks::GetCallbacksArgs),
}

#[derive(Debug, Args)]
pub struct GetTriggersArgs {
    /// Show only this trigger.
    pub name: Option<String>,
    #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
    pub output: ListFormat,
    /// `stale` reads the answering node's local copy (works without a leader).
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Debug, Args)]
pub struct DescribeTriggerArgs {
    /// The trigger's name.
    pub name: String,
    /// `json`/`yaml` print the trigger as the API returns it.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table, hide_possible_values = true)]
    pub output: OutputFormat,
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
}

#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Delete a trigger.
    #[command(visible_alias = "triggers")]
    Trigger(DeleteTriggerArgs),
}

#[derive(Debug, Args)]
pub struct DeleteTriggerArgs {
    /// The trigger's name.
    pub name: String,
    /// Delete only if the trigger is still at this revision.
    #[arg(long, value_name = "REVISION")]
    pub if_match: Option<u64>,
}

/// One document of an applied file.
#[derive(Debug)]
pub struct Doc {
    /// `file` or `file (document N)`, for messages.
    pub source: String,
    pub kind: String,
    pub name: String,
    pub value: serde_yaml::Value,
}

impl Doc {
    fn is_trigger(&self) -> bool {
        self.kind == "Trigger"
    }
}

impl fmt::Display for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.to_lowercase(), self.name)
    }
}

/// Checks the documents of one file (read by the shared loader,
/// [`aof_contract::yamldir`]): each needs `kind` and `metadata.name`.
fn checked(docs: Vec<yamldir::Document>) -> anyhow::Result<Vec<Doc>> {
    docs.into_iter()
        .map(|d| {
            let source = d.source();
            if !d.value.is_mapping() {
                bail!("{source}: expected a mapping with apiVersion, kind and metadata");
            }
            let kind = match d.kind() {
                Some(k) if !k.is_empty() => k.to_string(),
                _ => bail!("{source}: missing `kind` (e.g. `kind: Trigger`)"),
            };
            let name = match d.name() {
                Some(n) if !n.is_empty() => n.to_string(),
                _ => bail!("{source}: {kind} has no `metadata.name`"),
            };
            Ok(Doc {
                source,
                kind,
                name,
                value: d.value,
            })
        })
        .collect()
}

/// Parses every document of `text` (from `file`). Empty documents are ignored.
pub fn parse_docs(file: &str, text: &str) -> anyhow::Result<Vec<Doc>> {
    checked(yamldir::parse(file, text)?)
}

/// Reads and checks all documents of all `paths` (`-` is stdin; a directory
/// means its YAML/JSON files in name order). Nothing is sent yet.
pub fn load_docs(paths: &[PathBuf]) -> anyhow::Result<Vec<Doc>> {
    let mut docs = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            docs.extend(parse_docs("<stdin>", &text)?);
        } else {
            docs.extend(checked(yamldir::load(path)?)?);
        }
    }
    let mut seen = std::collections::HashMap::new();
    for d in docs.iter().filter(|d| d.is_trigger()) {
        if let Some(first) = seen.insert(d.name.as_str(), d.source.as_str()) {
            bail!(
                "trigger {:?} is defined twice: in {first} and in {}",
                d.name,
                d.source
            );
        }
    }
    Ok(docs)
}

pub async fn apply(args: ApplyArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let docs = load_docs(&args.filename)?;
    let mut client = None;
    let (mut failed, mut total) = (0, 0);
    for doc in &docs {
        if !doc.is_trigger() {
            println!("skipped {doc}: not stored in the cluster");
            continue;
        }
        total += 1;
        let json = serde_json::to_vec(&doc.value)
            .with_context(|| format!("{}: cannot convert {doc} to JSON", doc.source))?;
        let client = client.get_or_insert_with(|| global.client());
        if args.dry_run {
            match client
                .put_trigger_dry_run(&doc.name, json, "application/json", None)
                .await
            {
                Ok(r) => print!("{}", dry_run_report(&doc.to_string(), &r)),
                Err(e @ ClientError::Unreachable { .. }) => {
                    return Err(anyhow::Error::new(e).context(format!("checking {doc}")));
                }
                Err(e) => {
                    eprintln!("error: {doc} ({}): {e}", doc.source);
                    failed += 1;
                }
            }
            continue;
        }
        match client
            .put_trigger(&doc.name, json, "application/json", None)
            .await
        {
            Ok(r) => println!("{doc} {}", r.result),
            Err(e @ ClientError::Unreachable { .. }) => {
                return Err(anyhow::Error::new(e).context(format!("applying {doc}")));
            }
            Err(e) => {
                eprintln!("error: {doc} ({}): {e}", doc.source);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        if args.dry_run {
            bail!("{failed} of {total} triggers would not be applied");
        }
        bail!("{failed} of {total} triggers were not applied");
    }
    Ok(())
}

/// `trigger/x configured (dry run)` and, for `configured`, a unified diff of the
/// stored document and the one that would be stored (both as YAML).
pub fn dry_run_report(what: &str, r: &aof_client::DryRunResult) -> String {
    let mut out = format!("{what} {} (dry run)\n", r.result);
    if r.result == aof_client::PutOutcome::Configured {
        let yaml = |v: &serde_json::Value| serde_yaml::to_string(v).unwrap_or_default();
        let old = r.current.as_ref().map(yaml).unwrap_or_default();
        out.push_str(&crate::diff::unified(
            &old,
            &yaml(&r.proposed),
            &format!("{what} (revision {})", r.revision),
            &format!("{what} (dry run; a new revision on apply)"),
        ));
    }
    out
}

pub async fn get(cmd: GetCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let args = match cmd {
        GetCommand::Triggers(args) => args,
        GetCommand::Events(args) => return crate::events::get(args, global).await,
        GetCommand::Jobs(args) => return crate::jobs::get(args, global).await,
        GetCommand::Callbacks(args) => return crate::callbacks::get(args, global).await,
    };
    let client = global.client();
    let consistency = args.consistency.into();
    let items = match &args.name {
        Some(name) => {
            let item = client
                .get_trigger(name, consistency)
                .await
                .with_context(|| format!("getting trigger {name:?}"))?;
            if print_list(args.output, &item, || vec![format!("trigger/{}", item.name)])? {
                return Ok(());
            }
            vec![item]
        }
        None => {
            let items = client
                .list_triggers(consistency)
                .await
                .context("listing triggers")?;
            let list = TriggerList { items };
            if print_list(args.output, &list, || list.items.iter().map(|t| format!("trigger/{}", t.name)).collect())? {
                return Ok(());
            }
            list.items
        }
    };
    if items.is_empty() {
        eprintln!("No triggers found.");
        return Ok(());
    }
    print!(
        "{}",
        render_triggers(&items, args.output == ListFormat::Wide, now_ms())
    );
    Ok(())
}

/// A string list at `spec.config.<field>` of a Trigger document.
fn config_list(trigger: &serde_json::Value, field: &str) -> Vec<String> {
    match trigger.pointer(&format!("/spec/config/{field}")) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The `get triggers` table; `wide` adds TYPE and CREATED and shows lists in full.
pub fn render_triggers(items: &[TriggerItem], wide: bool, now_ms: u64) -> String {
    let max = if wide { 0 } else { 40 };
    let mut t = if wide {
        Table::new([
            "NAME", "TYPE", "REVISION", "CREATED", "UPDATED", "EVENTS", "REPOS",
        ])
    } else {
        Table::new(["NAME", "REVISION", "UPDATED", "EVENTS", "REPOS"])
    };
    for item in items {
        let events = join_list(&config_list(&item.trigger, "github_events"), max);
        let repos = join_list(&config_list(&item.trigger, "repositories"), max);
        let updated = age_since_ms(item.updated_ms, now_ms);
        if wide {
            let ty = item
                .trigger
                .pointer("/spec/type")
                .and_then(|v| v.as_str())
                .unwrap_or("-");
            t.row([
                item.name.clone(),
                ty.to_string(),
                item.revision.to_string(),
                item.created_revision.to_string(),
                updated,
                events,
                repos,
            ]);
        } else {
            t.row([
                item.name.clone(),
                item.revision.to_string(),
                updated,
                events,
                repos,
            ]);
        }
    }
    t.render()
}

pub async fn describe(args: DescribeTriggerArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let item = global
        .client()
        .get_trigger(&args.name, args.consistency.into())
        .await
        .with_context(|| format!("getting trigger {:?}", args.name))?;
    if print_structured(args.output, &item)? {
        return Ok(());
    }
    print!("{}", render_trigger(&item, now_ms()));
    Ok(())
}

/// A string at `spec.<path>` or `spec.config.<path>` (the document's own spelling).
fn spec_str<'a>(doc: &'a serde_json::Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| {
        doc.pointer(&format!("/spec/{k}"))
            .or_else(|| doc.pointer(&format!("/spec/config/{k}")))
            .and_then(|v| v.as_str())
    })
}

/// The `describe trigger` text, kubectl-describe style: fields, what it matches,
/// where matches go, then the document as YAML.
pub fn render_trigger(item: &TriggerItem, now_ms: u64) -> String {
    use std::fmt::Write as _;
    let doc = &item.trigger;
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "{:<13}{v}", format!("{k}:"));
    };
    field(&mut out, "Name", &item.name);
    field(&mut out, "Type", spec_str(doc, &["type"]).unwrap_or("-"));
    let enabled = doc.pointer("/spec/enabled").and_then(|v| v.as_bool()).unwrap_or(true);
    field(&mut out, "Enabled", if enabled { "true" } else { "false (matches nothing)" });
    field(&mut out, "Priority", spec_str(doc, &["priority"]).unwrap_or("normal"));
    field(&mut out, "Revision", &item.revision.to_string());
    field(&mut out, "Created", &format!("at revision {}", item.created_revision));
    let updated = match item.updated_ms {
        0 => "-".to_string(),
        ms => format!("{} ({} ago)", crate::events::rfc3339(ms), age_since_ms(ms, now_ms)),
    };
    field(&mut out, "Updated", &updated);
    if let Some(s) = doc.pointer("/spec/config/webhook_secret").and_then(|v| v.as_str()) {
        field(&mut out, "Secret", s);
    }
    out.push_str("Matches:\n");
    let mut t = Table::new(["FIELD", "VALUES"]);
    for (label, keys) in [
        ("events", &["github_events"][..]),
        ("actions", &["actions"][..]),
        ("repositories", &["repositories", "allowed_repos"][..]),
        ("branches", &["branches"][..]),
        ("users", &["allowed_users"][..]),
        ("labels", &["labels"][..]),
    ] {
        let values: Vec<String> = keys.iter().flat_map(|k| config_list(doc, k)).collect();
        let shown = if values.is_empty() { "(any)".to_string() } else { values.join(", ") };
        t.row([label.to_string(), shown]);
    }
    for line in t.render().lines() {
        let _ = writeln!(out, "  {line}");
    }
    out.push_str("Routes:\n");
    match aof_node::github::trigger::parse_trigger(&item.name, doc) {
        Ok(compiled) => {
            let mut t = Table::new(["COMMAND", "TARGET", "DESCRIPTION"]);
            for c in compiled.commands() {
                t.row([
                    c.key.clone(),
                    format!("{}/{}", c.route.kind, c.route.name),
                    c.description.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            if let Some(r) = compiled.default_route() {
                t.row(["(default)".to_string(), format!("{}/{}", r.kind, r.name), "-".to_string()]);
            }
            if compiled.commands().is_empty() && compiled.default_route().is_none() {
                out.push_str("  (none): matching deliveries are recorded as no_route\n");
            } else {
                for line in t.render().lines() {
                    let _ = writeln!(out, "  {line}");
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  (cannot show: the stored document no longer compiles: {e})");
        }
    }
    out.push_str("Document:\n");
    let yaml = serde_yaml::to_string(doc).unwrap_or_else(|e| format!("(not shown: {e})\n"));
    for line in yaml.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

pub async fn delete(cmd: DeleteCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let DeleteCommand::Trigger(args) = cmd;
    let r = global
        .client()
        .delete_trigger(&args.name, args.if_match)
        .await
        .with_context(|| format!("deleting trigger {:?}", args.name))?;
    println!("trigger/{} deleted (revision {})", r.name, r.revision);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_are_named_by_kind_and_source() {
        let text = "kind: Trigger\nmetadata: {name: pr-bot, labels: {team: a}}\n---\n---\nkind: Agent\nmetadata: {name: reviewer}\n";
        let docs = parse_docs("t.yaml", text).unwrap();
        let shown: Vec<(String, &str, bool)> = docs
            .iter()
            .map(|d| (d.to_string(), d.source.as_str(), d.is_trigger()))
            .collect();
        assert_eq!(
            shown,
            [
                ("trigger/pr-bot".to_string(), "t.yaml (document 1)", true),
                ("agent/reviewer".to_string(), "t.yaml (document 3)", false)
            ]
        );
        let json = serde_json::to_value(&docs[0].value).unwrap();
        assert_eq!(json.pointer("/metadata/labels/team"), Some(&json!("a")));
    }

    #[test]
    fn invalid_yaml_names_the_file_and_line() {
        let err = parse_docs("bad.yaml", "kind: Trigger\nmetadata:\n  name: [unclosed\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bad.yaml: invalid YAML"), "{err}");
        assert!(err.contains("line "), "{err}");
    }

    #[test]
    fn documents_need_kind_and_name() {
        let err = parse_docs("a.yaml", "metadata: {name: x}\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "a.yaml: missing `kind` (e.g. `kind: Trigger`)");
        let err = parse_docs("a.yaml", "kind: Trigger\nspec: {}\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "a.yaml: Trigger has no `metadata.name`");
        let err = parse_docs("a.yaml", "- 1\n- 2\n").unwrap_err().to_string();
        assert!(err.starts_with("a.yaml: expected a mapping"), "{err}");
        assert!(parse_docs("empty.yaml", "").unwrap().is_empty());
    }

    #[test]
    fn a_trigger_defined_twice_is_refused_and_load_errors_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        for (file, name) in [("one.yaml", "same"), ("two.yml", "same")] {
            std::fs::write(
                dir.path().join(file),
                format!("{{kind: Trigger, metadata: {{name: {name}}}}}"),
            )
            .unwrap();
        }
        let err = load_docs(&[dir.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"same\" is defined twice")
                && err.contains("one.yaml")
                && err.contains("two.yml"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = load_docs(&[empty.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("no .yaml"), "{err}");
        let err = load_docs(&[dir.path().join("nope.yaml")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read"), "{err}");
    }

    #[test]
    fn trigger_tables() {
        let item = TriggerItem {
            name: "pr-bot".into(),
            revision: 17,
            created_revision: 12,
            updated_ms: 1_000_000,
            trigger: json!({"spec":{"type":"GitHub","config":{
                "github_events":["pull_request","issue_comment"],"repositories":["myorg/api","myorg/web"]}}}),
        };
        let bare = TriggerItem {
            name: "empty".into(),
            revision: 3,
            created_revision: 3,
            updated_ms: 0,
            trigger: json!({}),
        };
        let now = 1_000_000 + 312_000;
        assert_eq!(
            render_triggers(&[item.clone(), bare.clone()], false, now),
            "NAME     REVISION   UPDATED   EVENTS                       REPOS\n\
             pr-bot   17         5m12s     pull_request,issue_comment   myorg/api,myorg/web\n\
             empty    3          -         -                            -\n"
        );
        assert_eq!(
            render_triggers(&[item], true, now),
            "NAME     TYPE     REVISION   CREATED   UPDATED   EVENTS                       REPOS\n\
             pr-bot   GitHub   17         12        5m12s     pull_request,issue_comment   myorg/api,myorg/web\n"
        );
    }
}
