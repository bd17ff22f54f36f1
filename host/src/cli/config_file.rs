//! `--config run.toml` (or a YAML recipe, `run.yaml`, as TRL's `--config` takes): the same keys as the flags
//! (`group-size = 8` or `group_size = 8`), turned into arguments placed before the command line's own, so that a
//! flag given on the command line overrides the file. `train` and `sft` read run files.

use std::ffi::OsString;
use std::path::Path;

use anyhow::Result;
use serde_json::Value as Json;

use crate::user_error;

/// Expand `--config FILE` in `argv` (program name first) into the file's settings.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>> {
    let strings: Vec<String> = argv.iter().map(|a| a.to_string_lossy().to_string()).collect();
    // Only training reads a run file; other subcommands (`plugins check --config JSON`) own their `--config`.
    if strings.get(1).is_some_and(|c| ["generate", "gen-qa", "plugins", "play", "report", "eval"].contains(&c.as_str()))
    {
        return Ok(argv);
    }
    let mut path = None;
    for (i, a) in strings.iter().enumerate() {
        if a == "--config" {
            path = strings.get(i + 1).cloned();
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
    }
    let Some(path) = path else { return Ok(argv) };
    if path.starts_with("--") {
        return Err(user_error!("--config needs a file before {path}: --config run.toml, or a recipe.yaml"));
    }
    // The flags of the command the file configures: training's (top level or `train`) or `sft`'s.
    let subcommand = strings.get(1).filter(|c| *c == "train" || *c == "sft");
    let from_file = file_args(Path::new(&path), &super::command_of(&argv))?;
    // After the program name and an explicit `train` or `sft` subcommand, before everything the user typed.
    let at = if subcommand.is_some() { 2 } else { 1 };
    let mut out = argv;
    out.splice(at..at, from_file.into_iter().map(OsString::from));
    Ok(out)
}

/// The file's settings as arguments of `command`: a boolean is a switch (given when true) unless the flag takes a
/// value (`--shuffle-dataset BOOL`), which then gets `true` or `false`; a null is left out (the default); a list is
/// the flag given once with every item, or repeated for each, as the flag takes them, and refused for a flag that
/// takes one value.
fn file_args(path: &Path, command: &clap::Command) -> Result<Vec<String>> {
    let mut args = Vec::new();
    for (key, value) in read_settings(path)? {
        let flag = format!("--{}", key.replace('_', "-"));
        if flag == "--config" {
            return Err(user_error!("--config {}: a config file cannot name another config file", path.display()));
        }
        let long = &flag[2..];
        let known = super::flag_named(command, long);
        let takes_value = known.is_some_and(|a| a.get_action().takes_values());
        match value {
            Json::Bool(b) if takes_value => {
                args.push(flag);
                args.push(b.to_string());
            }
            Json::Bool(true) => args.push(flag),
            Json::Bool(false) | Json::Null => {}
            Json::Array(items) => {
                let takes = known.map(|a| (a.get_num_args().is_some_and(|n| n.max_values() > 1), a.get_action()));
                match takes {
                    Some((true, _)) => {
                        args.push(flag);
                        for item in &items {
                            args.push(scalar(item, &key, path)?);
                        }
                    }
                    Some((false, clap::ArgAction::Set)) if items.len() != 1 => {
                        return Err(user_error!(
                            "--config {}: `{key}` is a list, but {flag} takes one value (`grpo-host --help` says \
                             which)",
                            path.display()
                        ))
                    }
                    // A repeatable flag, or one this host lacks, which the command line's rules then read.
                    _ => {
                        for item in &items {
                            args.push(flag.clone());
                            args.push(scalar(item, &key, path)?);
                        }
                    }
                }
            }
            // Plugin options (`algo-config = { ... }`) travel as JSON.
            Json::Object(t) => {
                args.push(flag);
                args.push(serde_json::to_string(&t)?);
            }
            other => {
                args.push(flag);
                args.push(scalar(&other, &key, path)?);
            }
        }
    }
    Ok(args)
}

/// The file's top-level keys and values, in the file's order: YAML for a `.yaml` or `.yml` file (TRL's and
/// transformers' recipe files, which `HfArgumentParser` reads), TOML otherwise.
fn read_settings(path: &Path) -> Result<serde_json::Map<String, Json>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| user_error!("--config {}: cannot read it ({e})", path.display()))?;
    let yaml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    let value = if yaml {
        let value = serde_yaml_ng::from_str::<Json>(&text)
            .map_err(|e| user_error!("--config {}: not valid YAML ({})", path.display(), one_line(&e.to_string())))?;
        // An empty file is an empty recipe.
        if value.is_null() {
            Json::Object(Default::default())
        } else {
            value
        }
    } else {
        let table = text.parse::<toml::Table>().map_err(|e: toml::de::Error| {
            user_error!("--config {}: not valid TOML ({})", path.display(), one_line(&e.to_string()))
        })?;
        serde_json::to_value(table)?
    };
    match value {
        Json::Object(settings) => Ok(settings),
        _ => Err(user_error!("--config {}: give `key: value` lines, one per flag", path.display())),
    }
}

fn scalar(value: &Json, key: &str, path: &Path) -> Result<String> {
    Ok(match value {
        Json::String(s) => s.clone(),
        Json::Number(n) => n.to_string(),
        Json::Bool(b) => b.to_string(),
        _ => return Err(user_error!("--config {}: `{key}` must be a string, number or boolean", path.display())),
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `argv` (program name first) after `expand`, as strings.
    fn expanded(argv: &[&str]) -> Vec<String> {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        expand(argv).unwrap().iter().map(|a| a.to_string_lossy().to_string()).collect()
    }

    #[test]
    fn file_settings_come_before_command_line_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "group_size = 8\nlr = 1e-5\nno-wandb = true\nenv-config = { digits = 2 }\n").unwrap();
        let out = expanded(&["grpo-host", "--config", path.to_str().unwrap(), "--group-size", "2"]);
        let first_group = out.iter().position(|a| a == "--group-size").unwrap();
        assert_eq!(out[first_group + 1], "8");
        assert_eq!(out.last().unwrap(), "2");
        assert!(out.contains(&"--no-wandb".to_string()));
        assert!(out.contains(&"{\"digits\":2}".to_string()));
    }

    /// A boolean is a switch for a switch, and a value for a flag that takes one: `false` must reach
    /// `--shuffle-dataset` (whose default is true) rather than be dropped.
    #[test]
    fn booleans_reach_flags_that_take_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        let text = "shuffle-dataset = false\ngreater_is_better = true\nno-wandb = true\ndeterministic = false\n";
        std::fs::write(&path, text).unwrap();
        let out = expanded(&["grpo-host", "--config", path.to_str().unwrap()]);
        let at = |flag: &str| out.iter().position(|a| a == flag).map(|i| out.get(i + 1).cloned());
        assert_eq!(at("--shuffle-dataset"), Some(Some("false".into())), "{out:?}");
        assert_eq!(at("--greater-is-better"), Some(Some("true".into())), "{out:?}");
        assert!(at("--no-wandb").is_some() && at("--deterministic").is_none(), "{out:?}");
        let cli = <super::super::Cli as clap::Parser>::try_parse_from(&out).unwrap();
        assert!(!cli.train.shuffle_dataset && cli.train.best_model.greater_is_better == Some(true));

        let path = dir.path().join("sft.toml");
        std::fs::write(&path, "assistant-only-loss = false\n").unwrap();
        let out = expanded(&["grpo-host", "sft", "--config", path.to_str().unwrap()]);
        assert_eq!(&out[..4], ["grpo-host", "sft", "--assistant-only-loss", "false"]);
    }

    /// A YAML recipe as TRL's `--config` reads it: its keys (underscored, as `HfArgumentParser` names them) become
    /// the flags, lists repeat the flag, a null is the default, and the recipe flags this host lacks are left out
    /// when false and refused in one line when true.
    #[test]
    fn a_yaml_recipe_reads_as_trl_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipe.yaml");
        let recipe = "# Model arguments\nmodel_name_or_path: Qwen/Qwen2.5-0.5B-Instruct\nmodel_revision: main\n\
                      torch_dtype: bfloat16\nbf16: true\nuse_vllm: false\nlearning_rate: 2.0e-05\n\
                      lr_scheduler_type: cosine\nmax_steps: -1\nnum_train_epochs: 1\nnum_generations: 8\n\
                      report_to:\n- tensorboard\n- wandb\nhub_model_id: null\nenv_config: {digits: 2}\n";
        std::fs::write(&path, recipe).unwrap();
        let out = expanded(&["grpo-host", "--config", path.to_str().unwrap(), "--num-generations", "4"]);
        let argv = super::super::trl_flags::normalize(out.iter().map(OsString::from).collect()).unwrap().argv;
        let t = <super::super::Cli as clap::Parser>::try_parse_from(argv).unwrap().train;
        assert_eq!(
            (t.model.model.as_deref(), t.model.model_revision.as_deref(), t.lr, t.group_size),
            (Some("Qwen/Qwen2.5-0.5B-Instruct"), Some("main"), 2e-5, 4)
        );
        assert_eq!(
            (t.num_train_epochs, t.precision.mode()),
            (Some(1.0), crate::train::precision::MixedPrecision::Bf16)
        );
        assert_eq!(t.env_config.as_deref(), Some("{\"digits\":2}"));
        // A list is its flag given once with each item, as that flag takes them.
        assert_eq!(out.iter().filter(|a| *a == "--report-to").count(), 1, "{out:?}");
        assert!(!out.iter().any(|a| a.contains("hub")), "{out:?}");
        assert_eq!(t.logging.report_to.map(|r| r.len()), Some(2));

        // What only chooses how is left out with a note; what this host does not do stops the command.
        std::fs::write(&path, "use_vllm: true\nvllm_mode: colocate\nlr: 0.1\n").unwrap();
        let argv = expanded(&["grpo-host", "--config", path.to_str().unwrap()]);
        let out = super::super::trl_flags::normalize(argv.iter().map(OsString::from).collect()).unwrap();
        assert_eq!((out.argv.len(), out.notes.len()), (5, 1), "one line for one reason: {out:?}");
        std::fs::write(&path, "push_to_hub: true\n").unwrap();
        let argv = expanded(&["grpo-host", "--config", path.to_str().unwrap()]);
        let err = super::super::trl_flags::normalize(argv.iter().map(OsString::from).collect()).unwrap_err();
        assert!(err.to_string().starts_with("--push-to-hub is not an option of grpo-host: checkpoints are"), "{err}");
        let err = expand(["grpo-host", "--config", "--no-wandb"].iter().map(OsString::from).collect()).unwrap_err();
        assert_eq!(err.to_string(), "--config needs a file before --no-wandb: --config run.toml, or a recipe.yaml");
        for (text, wanted) in [
            ("a: [1\n", "not valid YAML"),
            ("- 1\n- 2\n", "give `key: value` lines"),
            ("reward_weights: [1.0, 0.5]\n", "`reward_weights` is a list, but --reward-weights takes one value"),
        ] {
            std::fs::write(&path, text).unwrap();
            let argv = [&["grpo-host", "--config"][..], &[path.to_str().unwrap()]].concat();
            let err = expand(argv.iter().map(OsString::from).collect()).unwrap_err().to_string();
            assert!(err.contains(wanted), "{err}");
        }
    }

    #[test]
    fn sft_reads_a_run_file_after_its_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sft.toml");
        std::fs::write(&path, "batch-size = 16\n").unwrap();
        let out = expanded(&["grpo-host", "sft", "--config", path.to_str().unwrap()]);
        assert_eq!(&out[..4], ["grpo-host", "sft", "--batch-size", "16"]);
    }
}
