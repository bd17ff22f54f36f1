//! Helpers shared by the end-to-end tests: where the workspace and its built binaries are, running commands with
//! their output kept for the failure message, and reading the shell commands out of the documentation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives one level below the workspace root")
        .to_path_buf()
}

/// `target/<profile>` of the running test binary (which lives in its `deps/` folder).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// The cargo profile the tests were built with, as `--profile` takes it.
pub fn profile() -> String {
    match profile_dir().file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!("unexpected target layout {}", profile_dir().display()),
    }
}

/// The cargo that runs the tests.
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The `grpo-host` binary of this profile, built first when needed: `cargo test` builds binaries only for the
/// package under test. It builds the whole workspace, as `cargo xtask test` does before testing: building only
/// grpo-host would unify dependency features differently and compile a second copy of them. With an up-to-date
/// build this costs a few seconds, once per test process.
pub fn grpo_host() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut cmd = cargo();
            cmd.current_dir(workspace_root()).args(["build", "--quiet", "--workspace", "--profile", &profile()]);
            run_ok(&mut cmd, "building grpo-host");
            profile_dir().join(format!("grpo-host{}", std::env::consts::EXE_SUFFIX))
        })
        .clone()
}

/// `lib<stem>.so` on this platform.
pub fn library_file(stem: &str) -> String {
    format!("{}{stem}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX)
}

/// Run a command and return its output, or describe the failure: what was being done, the command line, the
/// exit status and the end of its output.
pub fn try_run(cmd: &mut Command, what: &str) -> Result<Output, String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{what}: could not start {line}: {e}"))?;
    if out.status.success() {
        return Ok(out);
    }
    Err(format!(
        "{what} failed ({}): {line}\n--- stdout (end) ---\n{}\n--- stderr (end) ---\n{}",
        out.status,
        tail(&out.stdout, 60),
        tail(&out.stderr, 60)
    ))
}

/// [`try_run`], panicking on failure.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    try_run(cmd, what).unwrap_or_else(|e| panic!("{e}"))
}

/// The last `lines` lines of a command's output.
pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A shell command found in a Markdown file.
#[derive(Clone, Debug, PartialEq)]
pub struct DocCommand {
    /// The 1-based line where it starts.
    pub line: usize,
    /// Its words after shell-style splitting, with continuation lines joined and the trailing comment removed.
    pub words: Vec<String>,
}

/// The shell commands in a Markdown file's fenced code blocks: lines starting with `$ ` in any block (the
/// `console` convention), every line of `sh`, `bash` and `shell` blocks, and lines starting with `grpo-host`,
/// `cargo generate` or `cargo xtask run` in plain, `text` and `console` blocks. A command line is split at `&&`,
/// `||`, `;` and `|` into several commands.
pub fn doc_commands(markdown: &str) -> Vec<DocCommand> {
    let mut commands = Vec::new();
    let mut block: Option<String> = None;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in markdown.lines().enumerate() {
        let trimmed = raw.trim_start();
        if let Some(info) = trimmed.strip_prefix("```") {
            block = match block {
                None => Some(info.trim().to_string()),
                Some(_) => None,
            };
            pending = None;
            continue;
        }
        let Some(info) = &block else { continue };
        if let Some((_, acc)) = &mut pending {
            acc.push(' ');
            acc.push_str(trimmed);
        } else if let Some(cmd) = trimmed.strip_prefix("$ ") {
            pending = Some((i + 1, cmd.to_string()));
        } else if is_bare_command(info, trimmed) {
            pending = Some((i + 1, trimmed.to_string()));
        } else {
            continue;
        }
        let (line, acc) = pending.as_mut().expect("set above");
        if let Some(stripped) = acc.strip_suffix('\\') {
            *acc = stripped.trim_end().to_string();
            continue;
        }
        for words in split_commands(acc) {
            if !words.is_empty() {
                commands.push(DocCommand { line: *line, words });
            }
        }
        pending = None;
    }
    commands
}

/// Whether a line without a `$ ` prompt is a command: any line of a shell block, and a line that runs one of our
/// tools in a plain, `text` or `console` block.
fn is_bare_command(block_info: &str, line: &str) -> bool {
    match block_info {
        "sh" | "bash" | "shell" => !line.is_empty(),
        "" | "text" | "console" => {
            ["grpo-host ", "cargo generate ", "cargo xtask run "].iter().any(|p| line.starts_with(p))
        }
        _ => false,
    }
}

/// Shell-style words of one command line, split into separate commands at `&&`, `||`, `;` and `|`. Quotes group
/// words; an unquoted `#` at the start of a word starts a comment.
pub fn split_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    in_word = true;
                }
                '#' if !in_word => break,
                ' ' | '\t' => {
                    if in_word {
                        commands.last_mut().unwrap().push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                ';' | '|' | '&' => {
                    if in_word {
                        commands.last_mut().unwrap().push(std::mem::take(&mut word));
                        in_word = false;
                    }
                    if matches!(chars.peek(), Some('|') | Some('&')) {
                        chars.next();
                    }
                    commands.push(Vec::new());
                }
                _ => {
                    word.push(c);
                    in_word = true;
                }
            },
        }
    }
    if in_word {
        commands.last_mut().unwrap().push(word);
    }
    commands
}

/// Whether a flag takes a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takes {
    /// A switch (`--json`).
    Nothing,
    /// A value (`--plugin-dir <DIR>`).
    Value,
    /// A value that may be left out (`--resume [<RESUME>]`).
    OptionalValue,
}

/// What `<program> <command path> --help` says a command accepts.
#[derive(Clone, Debug, Default)]
pub struct Help {
    /// Subcommand names.
    pub commands: Vec<String>,
    /// Long flags (without `--`), aliases included.
    pub long: HashMap<String, Takes>,
    /// Short flags (the letter).
    pub short: HashMap<char, Takes>,
    /// Whether the command takes positional arguments.
    pub positionals: bool,
}

/// Parse clap's help text: the `Commands` and `Arguments` sections, and every other section's flags (clap puts
/// options under `Options` or under the heading the program gave them).
pub fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    let mut last: Option<Takes> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            section = if line.ends_with(':') { line.trim_end_matches(':') } else { "" };
            continue;
        }
        let item = line.trim_start();
        // The item is what precedes the description, which clap separates by at least two spaces.
        let head = item.split("  ").next().unwrap_or("");
        match section {
            "" | "Usage" => {}
            // Subcommands sit at two spaces; deeper lines continue their description.
            "Commands" if !line.starts_with("   ") => {
                if let Some(name) = head.split_whitespace().next() {
                    help.commands.push(name.trim_end_matches(',').to_string());
                }
            }
            "Commands" => {}
            "Arguments" => help.positionals |= head.starts_with('<') || head.starts_with('['),
            _ if head.starts_with('-') => {
                let words: Vec<&str> = head.split_whitespace().collect();
                let takes = if words.iter().any(|w| w.starts_with("[<")) {
                    Takes::OptionalValue
                } else if words.iter().any(|w| w.starts_with('<')) {
                    Takes::Value
                } else {
                    Takes::Nothing
                };
                for w in words {
                    let w = w.trim_end_matches(',');
                    if let Some(long) = w.strip_prefix("--") {
                        let name = long.split(['=', '[']).next().unwrap_or(long);
                        help.long.insert(name.to_string(), takes);
                    } else if let Some(c) = w.strip_prefix('-').and_then(|s| s.chars().next()) {
                        help.short.insert(c, takes);
                    }
                }
                last = Some(takes);
            }
            _ => {}
        }
        // Visible aliases follow the description: `[alias: --model]`, `[aliases: --a, --b]`.
        for marker in ["[alias: ", "[aliases: "] {
            if let (Some(at), Some(takes)) = (item.find(marker), last) {
                let list = item[at + marker.len()..].split(']').next().unwrap_or("");
                for alias in list.split(',').filter_map(|a| a.trim().strip_prefix("--")) {
                    help.long.insert(alias.to_string(), takes);
                }
            }
        }
    }
    help
}

/// `grpo-host <path> --help`, parsed; cached per path.
pub fn host_help(path: &[String]) -> Help {
    static CACHE: Mutex<Option<HashMap<Vec<String>, Help>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(help) = cache.get(path) {
        return help.clone();
    }
    let out =
        run_ok(Command::new(grpo_host()).args(path).arg("--help"), &format!("grpo-host {} --help", path.join(" ")));
    let help = parse_help(&String::from_utf8_lossy(&out.stdout));
    cache.insert(path.to_vec(), help.clone());
    help
}

/// Check a `grpo-host` command line (the words after the program) against the binary's own help: every
/// subcommand must exist and every flag must be one that command accepts. Returns what is wrong.
pub fn check_host_args(args: &[String]) -> Result<(), String> {
    let mut path: Vec<String> = Vec::new();
    let mut help = host_help(&path);
    let mut positionals = 0;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let shown = if path.is_empty() { "grpo-host".to_string() } else { format!("grpo-host {}", path.join(" ")) };
        if arg == "--" {
            break;
        } else if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, _)) => (n, true),
                None => (long, false),
            };
            let next_is_value = args.get(i + 1).is_some_and(|a| !a.starts_with('-'));
            match help.long.get(name) {
                None => return Err(format!("`{shown}` has no flag --{name}")),
                Some(Takes::Value) if !inline => i += 1,
                Some(Takes::OptionalValue) if !inline && next_is_value => i += 1,
                Some(_) => {}
            }
        } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            let c = short.chars().next().unwrap();
            match help.short.get(&c) {
                None => return Err(format!("`{shown}` has no flag -{c}")),
                Some(Takes::Value) if short.len() == 1 => i += 1,
                Some(_) => {}
            }
        } else if positionals == 0 && help.commands.iter().any(|c| c == arg) {
            path.push(arg.clone());
            help = host_help(&path);
        } else if help.positionals {
            positionals += 1;
        } else if !help.commands.is_empty() {
            return Err(format!("`{shown}` has no subcommand `{arg}` (it has: {})", help.commands.join(", ")));
        } else {
            return Err(format!("`{shown}` takes no argument `{arg}`"));
        }
        i += 1;
    }
    Ok(())
}

/// The `grpo-host` arguments of a documented command, if it runs grpo-host: directly (`grpo-host ...`, also by a
/// path such as `target/release/grpo-host`, after `VAR=value` assignments) or through `cargo xtask run ...`.
pub fn host_args(words: &[String]) -> Option<Vec<String>> {
    let start = words.iter().position(|w| !w.contains('=') || w.starts_with('-'))?;
    let words = &words[start..];
    let program = words.first()?;
    if Path::new(program).file_name().is_some_and(|n| n == "grpo-host") {
        return Some(words[1..].to_vec());
    }
    if words.len() >= 3 && program == "cargo" && words[1] == "xtask" && words[2] == "run" {
        return Some(words[3..].to_vec());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn commands_come_from_console_prompts_and_shell_blocks() {
        let md = "text\n```console\n$ grpo-host plugins list   # comment\noutput line\n$ a 'b c' \\\n  --d\n```\n\
                  ```bash\ncargo xtask test && echo \"x y\"\n```\n```rust\nlet x = 1;\n```\n\
                  ```\ngrpo-host report r\nnot a command\n```\n";
        let got = doc_commands(md);
        assert_eq!(
            got,
            vec![
                DocCommand { line: 3, words: words(&["grpo-host", "plugins", "list"]) },
                DocCommand { line: 5, words: words(&["a", "b c", "--d"]) },
                DocCommand { line: 9, words: words(&["cargo", "xtask", "test"]) },
                DocCommand { line: 9, words: words(&["echo", "x y"]) },
                DocCommand { line: 15, words: words(&["grpo-host", "report", "r"]) },
            ]
        );
    }

    #[test]
    fn clap_help_is_parsed() {
        let text = "Do things\n\nUsage: grpo-host plugins <COMMAND>\n\nCommands:\n  list   List the plugins\n  \
                    check  Check one\n          more text\n\nArguments:\n  <FILE>  The file\n\nOptions:\n  \
                    -V, --version  Print\n      --plugin-dir <DIR>\n          A directory\n  -n <N>  Count\n      \
                    --model-name <M>\n          The model [alias: --model]\n      --resume [<WHERE>]  Go on\n\n\
                    Template Selection:\n  -p, --path <PATH>\n          Local path\n\n  -d, --define <D>\n          A value\n";
        let help = parse_help(text);
        assert_eq!(help.commands, ["list", "check"]);
        assert!(help.positionals);
        assert_eq!(help.long.get("version"), Some(&Takes::Nothing));
        assert_eq!(help.long.get("plugin-dir"), Some(&Takes::Value));
        assert_eq!(help.long.get("model"), Some(&Takes::Value));
        assert_eq!(help.long.get("resume"), Some(&Takes::OptionalValue));
        assert_eq!(help.long.get("path"), Some(&Takes::Value));
        assert_eq!(help.long.get("define"), Some(&Takes::Value), "items after a blank line stay in their section");
        assert_eq!(help.short.get(&'V'), Some(&Takes::Nothing));
        assert_eq!(help.short.get(&'n'), Some(&Takes::Value));
    }

    #[test]
    fn host_commands_are_recognised() {
        assert_eq!(host_args(&words(&["../x/target/release/grpo-host", "report"])), Some(words(&["report"])));
        assert_eq!(host_args(&words(&["A=1", "grpo-host", "--help"])), Some(words(&["--help"])));
        assert_eq!(host_args(&words(&["cargo", "xtask", "run", "generate"])), Some(words(&["generate"])));
        assert_eq!(host_args(&words(&["cargo", "build"])), None);
    }
}
