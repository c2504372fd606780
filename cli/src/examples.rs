//! `Examples:` blocks of every command's `--help`, in one table, attached to the
//! clap command tree before parsing (a command that already has examples in its
//! own `after_help` keeps them; other `after_help` text gets the examples after it).

/// (command path, example lines).
const EXAMPLES: &[(&str, &[&str])] = &[
    ("serve", &[
        "aofctl serve --config cluster-configs/local/node1.yaml",
        "AOF__CLUSTER__NODE_ID=3 aofctl serve --config node.yaml --log-format json",
    ]),
    ("cluster status", &["aofctl cluster status", "aofctl cluster status -o json"]),
    ("apply", &[
        "aofctl apply -f triggers/pr-bot.yaml",
        "aofctl apply -f triggers/          # every .yaml/.yml/.json file of the directory",
        "aofctl apply --dry-run -f pr-bot.yaml   # validate on the server, show the diff, change nothing",
        "cat pr-bot.yaml | aofctl apply -f -",
    ]),
    ("get triggers", &[
        "aofctl get triggers",
        "aofctl get trigger pr-bot -o yaml",
        "aofctl get triggers -o name        # trigger/pr-bot, one per line",
    ]),
    ("get events", &[
        "aofctl get events --repo myorg/api --status failed",
        "aofctl get events --after 1200 --limit 50 -o wide",
        "aofctl get events -w               # new events as they arrive, until Ctrl-C",
        "aofctl get events -o name          # event/<id>, one per line",
    ]),
    ("get jobs", &[
        "aofctl get jobs --state leased --target pr-reviewer",
        "aofctl get jobs --event pull_request -o wide",
        "aofctl get jobs --state ready -w    # state changes as they happen, until Ctrl-C",
        "aofctl get jobs --state dead -o name   # job/<id>, one per line",
    ]),
    ("get callbacks", &[
        "aofctl get callbacks                # pending and dead completion notices",
        "aofctl get callbacks --state dead -o wide",
        "aofctl get callbacks -o json        # with each notice's body",
    ]),
    ("cancel job", &["aofctl cancel job 12-0", "aofctl cancel job 12-0 --reason superseded"]),
    ("rerun event", &["aofctl rerun event 12", "aofctl rerun event 12 -o json"]),
    ("queue limits", &["aofctl queue limits", "aofctl queue limits -o yaml"]),
    ("queue set-limits", &[
        "aofctl queue set-limits pr-reviewer --max-in-flight 2 --ttl 1h",
        "aofctl queue set-limits pr-reviewer --max-in-flight 0   # remove the limits",
    ]),
    ("delete trigger", &["aofctl delete trigger pr-bot", "aofctl delete trigger pr-bot --if-match 17"]),
    ("dev", &["aofctl dev", "aofctl dev --configs cluster-configs/local --ready-timeout 2m"]),
    ("describe event", &["aofctl describe event 12", "aofctl describe event --delivery 72d3162e-cc78-11e3-81ab-4c9367dc0958 -o yaml"]),
    ("worker", &[
        "aofctl worker --target pr-reviewer -- ./review.sh",
        "aofctl worker --concurrency 4 --grpc-endpoint grpc://127.0.0.1:4001 -- python3 handle.py",
    ]),
    ("queue stats", &["aofctl queue stats", "aofctl queue stats -w --interval 5s"]),
    ("dlq list", &["aofctl dlq list", "aofctl dlq list -o name         # job/<id>, one per line"]),
    ("dlq redrive", &["aofctl dlq redrive 12-0", "aofctl dlq redrive --all"]),
    ("dlq purge", &["aofctl dlq purge 12-0", "aofctl dlq purge --all --yes"]),
    ("doctor", &["aofctl doctor", "aofctl --context prod doctor --max-lag 500"]),
    ("certs init", &[
        "aofctl certs init --dir ./data/certs --nodes 3",
        "aofctl certs init --dir ./data/certs --nodes 5 --san aof.example.com   # adds nodes 4-5 to an existing CA",
    ]),
    ("config use-context", &["aofctl config use-context prod"]),
    ("config get-contexts", &["aofctl config get-contexts", "aofctl config get-contexts -o yaml"]),
    ("config current-context", &["aofctl config current-context"]),
    ("config delete-context", &["aofctl config delete-context old-staging"]),
];

/// Adds the examples of [`EXAMPLES`] to the commands of `cmd` (recursively).
pub fn attach(cmd: clap::Command) -> clap::Command {
    attach_at(cmd, "")
}

fn attach_at(mut cmd: clap::Command, path: &str) -> clap::Command {
    if let Some((_, lines)) = EXAMPLES.iter().find(|(p, _)| *p == path) {
        let block: String = lines.iter().map(|l| format!("\n  {l}")).collect();
        let block = format!("Examples:{block}");
        let text = match cmd.get_after_help().map(|h| h.to_string()) {
            Some(existing) if existing.contains("Example") => existing,
            Some(existing) => format!("{existing}\n\n{block}"),
            None => block,
        };
        cmd = cmd.after_help(text);
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        let sub_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        cmd = cmd.mut_subcommand(&name, |s| attach_at(s, &sub_path));
    }
    cmd
}

/// Every command (path) of `cmd` without subcommands of its own whose help has no
/// example.
#[cfg(test)]
pub fn missing(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .collect();
    if subs.is_empty() {
        if !cmd
            .get_after_help()
            .is_some_and(|h| h.to_string().contains("Example"))
        {
            out.push(path.to_string());
        }
        return;
    }
    for s in subs {
        let p = if path.is_empty() {
            s.get_name().to_string()
        } else {
            format!("{path} {}", s.get_name())
        };
        missing(s, &p, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example line is a valid aofctl command line.
    #[test]
    fn examples_parse() {
        for (path, lines) in EXAMPLES {
            for line in *lines {
                let line = line.split('#').next().unwrap();
                let line = line.rsplit('|').next().unwrap();
                let words: Vec<&str> = line
                    .split_whitespace()
                    .skip_while(|w| w.contains('='))
                    .collect();
                assert_eq!(words.first(), Some(&"aofctl"), "{path}: {line}");
                if let Err(e) = crate::parse_args(&words) {
                    panic!("{path}: example {line:?} does not parse: {e}");
                }
            }
        }
    }
}
