//! The documentation cannot rot: every `grpo-host` command shown in README.md and docs/*.md uses subcommands and
//! flags the built binary has (checked against its own `--help`), every `cargo generate` command uses flags
//! cargo-generate has, and docs/cli.md mentions every subcommand and flag the binary has.

use grpo_tests::{check_host_args, doc_commands, host_args, host_help, parse_help, run_ok, workspace_root, Help};
use std::path::PathBuf;

/// README.md and every Markdown file in docs/.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![workspace_root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn relative(path: &std::path::Path) -> String {
    path.strip_prefix(workspace_root()).unwrap_or(path).display().to_string()
}

#[test]
fn documented_grpo_host_commands_exist() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        for command in doc_commands(&text) {
            if let Some(args) = host_args(&command.words) {
                checked += 1;
                if let Err(e) = check_host_args(&args) {
                    problems.push(format!("{}:{}: {e}", relative(&file), command.line));
                }
            }
        }
    }
    assert!(problems.is_empty(), "documented commands that grpo-host does not accept:\n{}", problems.join("\n"));
    // docs/cli.md alone shows more than this; a parser that finds nothing must not pass.
    assert!(checked >= 15, "only {checked} grpo-host commands found in the docs");
}

#[test]
fn documented_cargo_generate_commands_use_real_flags() {
    let out = run_ok(grpo_tests::cargo().args(["generate", "--help"]), "cargo generate --help");
    let help = parse_help(&String::from_utf8_lossy(&out.stdout));
    assert!(help.long.contains_key("define"), "cargo generate --help was not understood");
    let mut checked = 0;
    for file in documents() {
        let text = std::fs::read_to_string(&file).unwrap();
        for command in doc_commands(&text) {
            if command.words.len() < 2 || command.words[0] != "cargo" || command.words[1] != "generate" {
                continue;
            }
            checked += 1;
            for word in &command.words[2..] {
                if let Some(flag) = word.strip_prefix("--") {
                    let flag = flag.split('=').next().unwrap();
                    assert!(
                        help.long.contains_key(flag),
                        "{}:{}: cargo generate has no flag --{flag}",
                        relative(&file),
                        command.line
                    );
                }
            }
        }
    }
    assert!(checked >= 1, "no `cargo generate` command in the docs");
}

/// Every command path of grpo-host, from its help: the root, then each subcommand and theirs.
fn command_tree() -> Vec<(Vec<String>, Help)> {
    let mut out = Vec::new();
    let mut queue = vec![Vec::new()];
    while let Some(path) = queue.pop() {
        let help = host_help(&path);
        for command in help.commands.iter().filter(|c| *c != "help") {
            let mut child = path.clone();
            child.push(command.clone());
            queue.push(child);
        }
        out.push((path, help));
    }
    out
}

/// Whether `text` mentions the flag `--name` itself (not a longer flag that starts with it).
fn mentions_flag(text: &str, name: &str) -> bool {
    let needle = format!("--{name}");
    text.match_indices(&needle).any(|(i, _)| {
        let next = text[i + needle.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn cli_reference_covers_every_command_and_flag() {
    let cli = std::fs::read_to_string(workspace_root().join("docs/cli.md")).unwrap();
    let mut missing = Vec::new();
    for (path, help) in command_tree() {
        let shown = std::iter::once("grpo-host").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join(" ");
        if !cli.contains(&shown) {
            missing.push(format!("the command `{shown}`"));
        }
        let mut flags: Vec<&String> = help.long.keys().filter(|f| *f != "help").collect();
        flags.sort();
        for flag in flags {
            if !mentions_flag(&cli, flag) {
                missing.push(format!("--{flag} of `{shown}`"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/cli.md does not mention:\n{}", missing.join("\n"));
    assert!(mentions_flag("a --model-name b", "model-name") && !mentions_flag("--model-name", "model"));
}
