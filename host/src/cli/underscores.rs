//! Flags spelled with underscores, as TRL's and transformers' scripts take them (`--learning_rate 1e-5`,
//! `--model_name_or_path ...`): `HfArgumentParser` accepts both spellings, so a command copied from a TRL recipe
//! works here once its names are turned into the dashed ones clap knows.

use std::collections::HashSet;
use std::ffi::OsString;

/// `argv` (program name first) with each `--some_flag` or `--some_flag=VALUE` spelled `--some-flag`, where that
/// is a flag or alias of some command. Anything else stays as typed (so an unknown flag is reported as the user
/// wrote it), as does everything after a bare `--`.
pub fn to_dashes(argv: Vec<OsString>) -> Vec<OsString> {
    let known = long_names(&<super::Cli as clap::CommandFactory>::command());
    let mut rest = false;
    argv.into_iter()
        .map(|arg| {
            let Some(text) = arg.to_str() else { return arg };
            rest |= text == "--";
            let Some(flag) = text.strip_prefix("--").filter(|_| !rest) else { return arg };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (flag, None),
            };
            let dashed = name.replace('_', "-");
            if dashed == name || !known.contains(&dashed) {
                return arg;
            }
            OsString::from(match value {
                Some(value) => format!("--{dashed}={value}"),
                None => format!("--{dashed}"),
            })
        })
        .collect()
}

/// Every long flag and alias of `command` and its subcommands.
fn long_names(command: &clap::Command) -> HashSet<String> {
    let mut names = HashSet::new();
    for arg in command.get_arguments() {
        names.extend(arg.get_long().map(str::to_string));
        names.extend(arg.get_all_aliases().unwrap_or_default().into_iter().map(str::to_string));
    }
    for sub in command.get_subcommands() {
        names.extend(long_names(sub));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dashed(argv: &[&str]) -> Vec<String> {
        let argv = argv.iter().map(OsString::from).collect();
        to_dashes(argv).into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    /// TRL's spellings become the flags, aliases included, with their values untouched; values, unknown flags
    /// and whatever follows `--` stay as typed.
    #[test]
    fn underscored_flags_become_dashed() {
        assert_eq!(
            dashed(&[
                "grpo-host",
                "--model_name_or_path",
                "Qwen/Qwen2.5-0.5B-Instruct",
                "--learning_rate=1e-5",
                "--env",
                "calc_tools",
                "--num_generations",
                "8",
                "--lora_target_modules",
                "q_proj",
                "v_proj",
            ]),
            [
                "grpo-host",
                "--model-name-or-path",
                "Qwen/Qwen2.5-0.5B-Instruct",
                "--learning-rate=1e-5",
                "--env",
                "calc_tools",
                "--num-generations",
                "8",
                "--lora-target-modules",
                "q_proj",
                "v_proj",
            ]
        );
        assert_eq!(
            dashed(&["grpo-host", "sft", "--dataset_text_field", "body", "--no_such_flag", "--", "--max_steps"]),
            ["grpo-host", "sft", "--dataset-text-field", "body", "--no_such_flag", "--", "--max_steps"]
        );
    }
}
