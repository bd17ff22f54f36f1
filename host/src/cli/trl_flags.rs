//! Commands copied from TRL's, transformers' and accelerate's recipes: their flags spelled with underscores
//! (`--learning_rate 1e-5`), which `HfArgumentParser` accepts beside the dashed ones, become the flags clap knows;
//! and their flags that this host does not have get one line saying what it does instead, rather than clap's bare
//! "unexpected argument".

use std::collections::VecDeque;
use std::ffi::OsString;

use anyhow::Result;

use crate::user_error;

/// Flags of those libraries that choose how, not what, or ask for what this host always does: left out, with
/// their values, and a note saying what the host does, so that a recipe runs as it is.
const IGNORED: &[(&[&str], &str)] = &[
    (
        &[
            "use-vllm",
            "vllm-mode",
            "vllm-gpu-memory-utilization",
            "vllm-server-host",
            "vllm-server-port",
            "vllm-server-base-url",
            "vllm-tensor-parallel-size",
            "vllm-enable-sleep-mode",
            "vllm-model-impl",
            "use-vllm-for-eval",
        ],
        "rollouts run in this host's own generation engine",
    ),
    (
        &["vllm-importance-sampling-correction"],
        "rollouts run in this host's own engine; --tis-cap corrects a sampler mismatch",
    ),
    (
        &["logging-steps", "logging-first-step", "logging-strategy", "logging-nan-inf-filter"],
        "metrics are logged at every batch (sft: every step)",
    ),
    (
        &["include-tokens-per-second", "include-num-input-tokens-seen"],
        "training logs timing/generated_tokens_per_s and sft logs sft/tokens at every step",
    ),
    (&["disable-tqdm"], "the console prints one line per batch (sft: per step), no progress bar"),
    (
        &["log-level", "log-level-replica"],
        "the console prints one line per batch (sft: per step); libtorch's own messages follow TORCH_CPP_LOG_LEVEL",
    ),
    (
        &["save-strategy"],
        "checkpoints are saved every --save-steps N optimizer steps (or --checkpoint-interval N: batches in training, \
         steps in sft) and at the end",
    ),
    (
        &["eval-strategy", "evaluation-strategy"],
        "evaluation runs every --eval-steps N optimizer steps (or --eval-every N: batches in training, steps in sft)",
    ),
    (&["attn-implementation"], "attention is SDPA (eager where a family needs it, see --model in docs/cli.md)"),
    (
        &["trust-remote-code"],
        "no model code is ever run: the families in docs/cli.md (--model) are implemented natively",
    ),
    (
        &["use-liger-kernel", "use-liger-loss"],
        "the log-probs are already computed in chunks without keeping full-vocabulary logits",
    ),
    (
        &["hub-model-id", "hub-strategy", "hub-private-repo", "hub-token"],
        "nothing is pushed to the hub (see --push-to-hub)",
    ),
    (
        &["log-completions", "wandb-log-unique-prompts", "log-unique-prompts", "num-completions-to-print"],
        "completions are logged every --log-completions-interval N batches (default 10)",
    ),
    (
        &["gradient-checkpointing-kwargs", "gradient-checkpointing-use-reentrant"],
        "--gradient-checkpointing takes no options",
    ),
    (
        &["torch-compile", "torch-compile-backend", "torch-compile-mode"],
        "nothing is compiled: the model runs libtorch's kernels as they are",
    ),
    (
        &[
            "dataset-num-proc",
            "dataset-streaming",
            "dataloader-num-workers",
            "dataloader-pin-memory",
            "dataloader-persistent-workers",
            "dataloader-prefetch-factor",
        ],
        "rows are read and rendered once, before the first step",
    ),
    (&["ignore-bias-buffers", "ddp-backend"], "data parallelism is c10d's, Gloo on the CPU and NCCL on CUDA"),
    (&["local-rank"], "each rank's place comes from torchrun's environment (RANK, LOCAL_RANK)"),
    (
        &["use-transformers-paged", "cache-implementation"],
        "rollouts run in this host's own engine, with continuous batching and its own KV cache",
    ),
    (
        &[
            "eval-accumulation-steps",
            "prediction-loss-only",
            "label-names",
            "bf16-full-eval",
            "fp16-full-eval",
            "jit-mode-eval",
        ],
        "evaluation is this host's own: --eval-every N, in the rollout precision",
    ),
    (
        &["restore-callback-states-from-checkpoint"],
        "a resumed run restores its whole trainer state, early stopping's count included",
    ),
    (&["skip-memory-metrics"], "memory is logged as system/* metrics at every batch"),
    (&["project", "trackio-space-id"], "Trackio is not one of the loggers; W&B's project is --wandb-project"),
    (&["lora-task-type"], "adapters are for causal language modeling"),
    (
        &["use-bnb-nested-quant", "bnb-4bit-quant-type", "bnb-4bit-compute-dtype", "bnb-4bit-quant-storage"],
        "nothing is quantized (see --load-in-4bit)",
    ),
    (&["ddp-find-unused-parameters"], "every gradient is all-reduced, an unused one as zeros"),
    (&["per-device-eval-batch-size"], "evaluation takes --eval-batch-tasks N tasks per call (sft: its micro-batches)"),
    (&["save-safetensors"], "checkpoints are always safetensors"),
    (&["logging-dir"], "TensorBoard's events go under --log-dir DIR, in DIR/<run-name>/"),
    (
        &["do-train", "do-eval", "do-predict"],
        "the command trains; evaluation runs when --eval-every N is given (and --eval-before-train in training)",
    ),
    (
        &["overwrite-output-dir"],
        "a folder holding checkpoints is never overwritten: --resume auto continues its run, another --output (or \
         --run-name) starts a new one",
    ),
    (&["torch-empty-cache-steps"], "the CUDA memory cache is left to libtorch's allocator"),
    (&["disable-dropout"], "the model's own dropout is never applied (LoRA's is --lora-dropout, 0 by default)"),
    (&["remove-unused-columns"], "every column of a row reaches the environment (sft: the row's format)"),
    (&["tf32"], "matrix products run at libtorch's default precision (no TF32)"),
    (
        &["auto-find-batch-size"],
        "the micro-batch is the one given: --train-batch-size (training) or --micro-batch-size (sft)",
    ),
    (
        &["pad-token", "pad-to-multiple-of"],
        "padded positions are masked out, and a micro-batch is padded to its longest row",
    ),
    (&["activation-offloading"], "--gradient-checkpointing recomputes the activations instead of keeping them"),
];

/// Flags of those libraries asking for what this host does not do, each group with what to do instead: the command
/// stops with one line, unless the flag is given false (`--push_to_hub false`), which asks for nothing.
const REFUSED: &[(&[&str], &str)] = &[
    (
        &["optim-args"],
        "the optimizer is AdamW (fused; --weight-decay, --adam-beta1, --adam-beta2, --adam-epsilon); leave it out",
    ),
    (
        &["load-in-4bit", "load-in-8bit"],
        "quantized training is not offered; --lora-rank 16 with --mixed-precision bf16 saves the most memory",
    ),
    (
        &["deepspeed", "fsdp", "fsdp-config", "ds3-gather-for-generation"],
        "data parallelism is torchrun with DDP (docs/cli.md, \"Data parallel: torchrun\"); no sharding is offered",
    ),
    (
        &["push-to-hub"],
        "checkpoints are Hugging Face folders: upload one with `hf upload REPO runs/NAME/checkpoints/step_N`",
    ),
    (
        &["packing", "packing-strategy", "padding-free", "group-by-length"],
        "rows are padded into micro-batches, not packed (--micro-batch-tokens groups them by length)",
    ),
    (
        &["load-best-model-at-end"],
        "the best checkpoint by --metric-for-best-model is kept and named at the end (`best METRIC VALUE: DIR`); use \
         that directory as --model (an adapter's as --lora-adapter)",
    ),
    (
        &["reward-funcs"],
        "rewards come from the environment (--env), its components weighted by --reward-weights; a learned reward \
         model is --reward-model",
    ),
    (
        &["model-init-kwargs"],
        "the model's settings are flags of their own: --dtype, --device, --gradient-checkpointing",
    ),
    (&["data-seed"], "--seed orders the data as well as seeding the rest; leave it out"),
    (
        &["dataset-kwargs"],
        "the data's options are flags: --dataset-config, --dataset-split, --dataset-text-field (sft)",
    ),
    (&["use-cpu", "no-cuda"], "give --device cpu"),
    (&["use-mps-device"], "the devices are the CPU and CUDA GPUs (--device)"),
    (
        &["vllm-guided-decoding-regex", "vllm-structured-outputs-regex"],
        "sampling is not constrained to a pattern; an environment's reward can score the format",
    ),
    (
        &["generation-kwargs"],
        "sampling options are flags: --temperature, --top-p, --top-k, --min-p, --repetition-penalty",
    ),
    (
        &["tools", "rollout-func", "environment-factory"],
        "tools and multi-turn rollouts come from environment plugins (--env; docs/plugins.md)",
    ),
    (&["max-tool-calling-iterations"], "--max-turns N caps an episode's assistant turns (so N - 1 tool calls)"),
    (&["lora-modules-to-save"], "only LoRA adapters train under --use-peft; train every weight without it"),
    (
        &["eos-token"],
        "a text row ends with the tokenizer's own eos_token and a conversation with its chat template's end of turn \
         (--chat-template changes that); leave it out",
    ),
];

/// Flags of those libraries whose value may ask for what this host does anyway: with one of the values listed
/// (compared as numbers where they are, a switch's as `true` or `false`) the flag is left out with the first note,
/// with another refused in one line by the second.
const SAME_AS_HERE: &[(&str, &[&str], &str, &str)] = &[
    (
        "optim",
        &["adamw_torch", "adamw_torch_fused", "adamw_hf"],
        "the optimizer is AdamW, fused",
        "the optimizer is AdamW (fused; --weight-decay, --adam-beta1, --adam-beta2, --adam-epsilon); leave it out",
    ),
    (
        "average-tokens-across-devices",
        &["true"],
        "a loss divided by a count of tokens (or sequences) divides by the count over every rank, as true asks",
        "a loss divided by a count of tokens (or sequences) divides by the count over every rank, as true asks; the \
         count of one rank is not offered",
    ),
    (
        "label-smoothing-factor",
        &["0"],
        "the loss is the plain token cross-entropy",
        "the loss is the plain token cross-entropy; leave it out",
    ),
];

/// The flags above that `HfArgumentParser` reads as booleans: one typed alone is true, and only a boolean word after
/// it is its value (`--use_vllm --lr 1`, `--use_vllm True`).
const SWITCHES: &[&str] = &[
    "use-vllm",
    "vllm-enable-sleep-mode",
    "use-vllm-for-eval",
    "vllm-importance-sampling-correction",
    "logging-first-step",
    "logging-nan-inf-filter",
    "include-tokens-per-second",
    "include-num-input-tokens-seen",
    "disable-tqdm",
    "trust-remote-code",
    "use-liger-kernel",
    "use-liger-loss",
    "hub-private-repo",
    "log-completions",
    "wandb-log-unique-prompts",
    "log-unique-prompts",
    "gradient-checkpointing-use-reentrant",
    "torch-compile",
    "dataset-streaming",
    "dataloader-pin-memory",
    "dataloader-persistent-workers",
    "ignore-bias-buffers",
    "use-transformers-paged",
    "prediction-loss-only",
    "bf16-full-eval",
    "fp16-full-eval",
    "jit-mode-eval",
    "restore-callback-states-from-checkpoint",
    "skip-memory-metrics",
    "use-bnb-nested-quant",
    "ddp-find-unused-parameters",
    "save-safetensors",
    "do-train",
    "do-eval",
    "do-predict",
    "overwrite-output-dir",
    "disable-dropout",
    "remove-unused-columns",
    "tf32",
    "auto-find-batch-size",
    "activation-offloading",
    "load-in-4bit",
    "load-in-8bit",
    "ds3-gather-for-generation",
    "push-to-hub",
    "packing",
    "padding-free",
    "group-by-length",
    "load-best-model-at-end",
    "use-cpu",
    "no-cuda",
    "use-mps-device",
    "average-tokens-across-devices",
];

/// The flags above that take a list: every word after one up to the next flag is its value.
const LISTS: &[&str] = &["label-names", "reward-funcs", "lora-modules-to-save", "fsdp"];

/// transformers' flags that count only under its `steps` strategy, each with the flags choosing that strategy and
/// what the host does when one of them chooses another (`no`, `epoch`): the flag is then left out with that note.
const BY_STEPS: &[(&str, &[&str], &str)] = &[
    (
        "eval-steps",
        &["eval-strategy", "evaluation-strategy"],
        "the evaluation strategy is not `steps`; evaluation runs where --eval-every N asks",
    ),
    (
        "save-steps",
        &["save-strategy"],
        "the save strategy is not `steps`; checkpoints are saved every --checkpoint-interval N and at the end",
    ),
];

/// Flags another command of this host has, refused in one line by the command (`train` for the top level) that
/// lacks them, with what it does instead.
const ELSEWHERE: &[(&str, &[&str], &str)] = &[(
    "train",
    &["neftune-noise-alpha"],
    "NEFTune is for supervised fine-tuning: grpo-host sft --neftune-noise-alpha",
)];

/// A command line made ready for clap by [`normalize`], with a note for each flag it left out.
#[derive(Debug, Default)]
pub struct Normalized {
    /// The arguments clap parses (program name first).
    pub argv: Vec<OsString>,
    /// What the host does instead of the [`IGNORED`] flags it left out: one line per reason, naming its flags.
    pub notes: Vec<String>,
}

/// `argv` (program name first) as clap should see it:
/// - each `--some_flag` or `--some_flag=VALUE` spelled `--some-flag` where that is a flag or alias of the command;
/// - a switch given a boolean, as `HfArgumentParser` takes them (`--bf16 True`, `--use_peft=false`): kept for a
///   true value; a false one drops it and the same switch before it (a switch is off unless given);
/// - `--max-steps -1`, transformers' "not set", left out where `--num-train-epochs` is given (refused otherwise);
/// - an [`IGNORED`] flag left out with its value, and noted; a [`REFUSED`] flag, or one [`ELSEWHERE`] names for
///   this command, refused in one line, unless a [`REFUSED`] one is given false (`--push_to_hub false`).
///
/// Anything else stays as typed (so an unknown flag is reported as the user wrote it), as does everything after a
/// bare `--`.
pub fn normalize(argv: Vec<OsString>) -> Result<Normalized> {
    let command = super::command_of(&argv);
    let epochs_given = last_given(&argv, &["num-train-epochs"]).is_some();
    // The `*_steps` flags whose strategy is given as another than `steps`, with what the host does then.
    let not_by_steps: Vec<(&str, &str)> = BY_STEPS
        .iter()
        .filter(|(_, strategies, _)| {
            last_given(&argv, strategies).is_some_and(|value| !value.is_some_and(|v| v.eq_ignore_ascii_case("steps")))
        })
        .map(|(steps, _, instead)| (*steps, *instead))
        .collect();
    let mut out = Normalized { argv: Vec::with_capacity(argv.len()), notes: Vec::new() };
    let mut notes = Notes::default();
    let mut args = VecDeque::from(argv);
    while let Some(arg) = args.pop_front() {
        let Some(flag) = arg.to_str().and_then(|t| t.strip_prefix("--")).filter(|f| !f.is_empty()) else {
            let rest = arg == "--";
            out.argv.push(arg);
            if rest {
                out.argv.extend(args.drain(..));
            }
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        };
        let dashed = name.replace('_', "-");
        // The word after a flag typed without `=`, which is its value unless it is the next flag.
        let next = args.front().and_then(|a| a.to_str()).filter(|a| !a.starts_with("--")).map(String::from);
        let (value, separate) = match inline {
            Some(value) => (Some(value.to_string()), false),
            None => (next, true),
        };
        let known = super::flag_named(&command, &dashed);
        let negative = value.as_deref().is_some_and(|v| v.parse::<i64>().is_ok_and(|n| n < 0));
        let unstepped = not_by_steps.iter().find(|(steps, _)| *steps == dashed).map(|(_, instead)| *instead);
        // How many of the words after the flag are left out with it: its value, typed after it.
        let left_out = match (known, unstepped) {
            (Some(_), Some(instead)) => {
                notes.add(instead, name);
                Some(usize::from(separate && value.is_some()))
            }
            (Some(_), None) if dashed == "max-steps" && negative => {
                // transformers' "not set": the epochs decide.
                if !epochs_given {
                    return Err(user_error!(
                        "--{name} {}: transformers' `not set`, which leaves the length to --num-train-epochs; give \
                         that, or a positive --max-steps",
                        value.unwrap_or_default()
                    ));
                }
                Some(usize::from(separate))
            }
            (Some(_), None) => None,
            (None, _) => foreign(&command, name, &dashed, inline, &args, &mut notes)?,
        };
        if let Some(words) = left_out {
            args.drain(..words);
            continue;
        }
        let Some(known) = known else {
            // Not a flag this host knows of: clap names it as typed.
            out.argv.push(arg);
            continue;
        };
        if !matches!(known.get_action(), clap::ArgAction::SetTrue) {
            out.argv.push(OsString::from(match (separate, value) {
                (false, Some(value)) => format!("--{dashed}={value}"),
                _ => format!("--{dashed}"),
            }));
            continue;
        }
        // A switch: its boolean, if one follows, is part of it.
        let given = match (separate, value.as_deref()) {
            (false, Some(value)) => Some(boolish(value).ok_or_else(|| {
                user_error!("--{name}={value}: a switch takes no value, or true or false (as `--{name} true`)")
            })?),
            (_, value) => value.and_then(boolish),
        };
        if separate && given.is_some() {
            args.pop_front();
        }
        match given {
            // Off by the last word, as in `HfArgumentParser`: a recipe's `bf16: true` and `--bf16 false` after it.
            Some(false) => out.argv.retain(|earlier| {
                let earlier = earlier.to_str().and_then(|e| e.strip_prefix("--"));
                earlier.and_then(|e| super::flag_named(&command, e)).is_none_or(|e| e.get_id() != known.get_id())
            }),
            _ => out.argv.push(OsString::from(format!("--{dashed}"))),
        }
    }
    out.notes = notes.lines();
    Ok(out)
}

/// The value of the last of the flags `names` (dashed, typed with dashes or underscores) in `argv` before a bare
/// `--`: `Some(None)` for one typed last without a value, `None` when none is given.
fn last_given<'a>(argv: &'a [OsString], names: &[&str]) -> Option<Option<&'a str>> {
    let words: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap_or_default()).collect();
    let end = words.iter().position(|w| *w == "--").unwrap_or(words.len());
    let mut given = None;
    for (i, word) in words[..end].iter().enumerate() {
        let Some(flag) = word.strip_prefix("--") else { continue };
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, words.get(i + 1).copied().filter(|w| !w.starts_with("--"))),
        };
        if names.contains(&name.replace('_', "-").as_str()) {
            given = Some(value);
        }
    }
    given
}

/// The flags left out for each reason, in the order they came: one note line per reason.
#[derive(Default)]
struct Notes(Vec<(&'static str, Vec<String>)>);

impl Notes {
    fn add(&mut self, reason: &'static str, typed: &str) {
        let flag = format!("--{typed}");
        match self.0.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, flags)) if flags.contains(&flag) => {}
            Some((_, flags)) => flags.push(flag),
            None => self.0.push((reason, vec![flag])),
        }
    }

    fn lines(self) -> Vec<String> {
        let line = |(reason, flags): (&str, Vec<String>)| match flags.split_last() {
            Some((last, [])) => format!("note: {last} is ignored: {reason}"),
            Some((last, rest)) => format!("note: {} and {last} are ignored: {reason}", rest.join(", ")),
            None => String::new(),
        };
        self.0.into_iter().map(line).collect()
    }
}

/// The boolean a word spells as `HfArgumentParser`'s `string_to_bool` reads it (any case): yes, true, t, y, 1 or
/// no, false, f, n, 0. Hand-written because clap's `BoolishValueParser`, which takes the same words (and on/off),
/// parses a flag's value, not a word that may be the next argument.
fn boolish(word: &str) -> Option<bool> {
    match word.to_ascii_lowercase().as_str() {
        "yes" | "true" | "t" | "y" | "1" => Some(true),
        "no" | "false" | "f" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// What becomes of `--typed` (`dashed`), a flag `command` does not have, given `inline` after its `=` and followed
/// by `after`: `None` when it is no recipe flag this host knows (clap reports it), else how many of the words after
/// it are its value, left out with it. An [`IGNORED`] flag is noted in `notes`; a [`REFUSED`] one is left out when
/// given false or nothing (`--push_to_hub false`, `--fsdp ""`), which asks for nothing, and otherwise is the one-line
/// error saying what to do instead, as is one [`ELSEWHERE`] names; a [`SAME_AS_HERE`] one goes by its value.
fn foreign(
    command: &clap::Command,
    typed: &str,
    dashed: &str,
    inline: Option<&str>,
    after: &VecDeque<OsString>,
    notes: &mut Notes,
) -> Result<Option<usize>> {
    let word = |a: &OsString| a.to_str().filter(|a| !a.starts_with("--")).map(String::from);
    let (value, words) = match inline {
        Some(value) => (Some(value.to_string()), 0),
        None if SWITCHES.contains(&dashed) => match after.front().and_then(|a| a.to_str()).and_then(boolish) {
            Some(given) => (Some(given.to_string()), 1),
            None => (Some("true".to_string()), 0),
        },
        None if LISTS.contains(&dashed) => {
            let values: Vec<String> = after.iter().map_while(word).collect();
            (Some(values.join(" ")).filter(|_| !values.is_empty()), values.len())
        }
        None => match after.front().and_then(word) {
            Some(value) => (Some(value), 1),
            None => (None, 0),
        },
    };
    if let Some((_, instead)) = IGNORED.iter().find(|(flags, _)| flags.contains(&dashed)) {
        notes.add(instead, typed);
        return Ok(Some(words));
    }
    if let Some((_, same, note, refusal)) = SAME_AS_HERE.iter().find(|(flag, ..)| *flag == dashed) {
        let value = value.unwrap_or_default();
        return match same.iter().any(|s| same_value(&value, s, SWITCHES.contains(&dashed))) {
            true => {
                notes.add(note, typed);
                Ok(Some(words))
            }
            false => {
                Err(user_error!("{} is not an option of grpo-host: {refusal}", format!("--{typed} {value}").trim()))
            }
        };
    }
    if let Some((_, instead)) = REFUSED.iter().find(|(flags, _)| flags.contains(&dashed)) {
        let nothing = match value.as_deref() {
            Some(value) if SWITCHES.contains(&dashed) => boolish(value) == Some(false),
            value => value.is_none_or(|v| v.trim().is_empty()),
        };
        return match nothing {
            true => Ok(Some(words)),
            false => Err(user_error!("--{typed} is not an option of grpo-host: {instead}")),
        };
    }
    let here = match command.get_name() {
        "grpo-host" => "train",
        name => name,
    };
    match ELSEWHERE.iter().find(|(name, flags, _)| *name == here && flags.contains(&dashed)) {
        Some((_, _, instead)) => Err(user_error!("--{typed} is not an option of grpo-host {here}: {instead}")),
        None => Ok(None),
    }
}

/// Whether `value`, as typed, is `listed`: as booleans for a switch, as numbers where both are, else in any case.
fn same_value(value: &str, listed: &str, switch: bool) -> bool {
    if switch {
        return boolish(value).map(|b| b.to_string()).as_deref() == Some(listed);
    }
    match (value.parse::<f64>(), listed.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => value.eq_ignore_ascii_case(listed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(argv: &[&str]) -> Result<Vec<String>> {
        let argv = argv.iter().map(OsString::from).collect();
        Ok(normalize(argv)?.argv.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    /// TRL's spellings become the command's flags, aliases included, with their values untouched; values,
    /// unknown flags and whatever follows `--` stay as typed.
    #[test]
    fn underscored_flags_become_dashed() {
        assert_eq!(
            normalized(&[
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
            ])
            .unwrap(),
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
            normalized(&["grpo-host", "sft", "--dataset_text_field", "body", "--no_such_flag", "--", "--max_steps"])
                .unwrap(),
            ["grpo-host", "sft", "--dataset-text-field", "body", "--no_such_flag", "--", "--max_steps"]
        );
        // Each subcommand's own flags: `sft` has --eval-steps, `generate` has no --lr.
        assert_eq!(normalized(&["grpo-host", "sft", "--eval_steps=5"]).unwrap()[2], "--eval-steps=5");
        assert_eq!(normalized(&["grpo-host", "generate", "--learning_rate", "1"]).unwrap()[2], "--learning_rate");
    }

    /// A recipe's flag this host lacks is one line naming it as typed and what to do instead.
    #[test]
    fn flags_this_host_lacks_say_what_to_do_instead() {
        let err = normalized(&["grpo-host", "--load_in_4bit", "--lr", "1e-6"]).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2);
        assert_eq!(
            err.to_string(),
            "--load_in_4bit is not an option of grpo-host: quantized training is not offered; --lora-rank 16 with \
             --mixed-precision bf16 saves the most memory"
        );
        let err = normalized(&["grpo-host", "sft", "--packing=true"]).unwrap_err().to_string();
        assert!(
            err.starts_with("--packing is not an option of grpo-host: rows are padded into micro-batches"),
            "{err}"
        );
        // After `--`, nothing is a flag.
        assert!(normalized(&["grpo-host", "--", "--optim"]).is_ok());
        // None of them is a flag of any command (a flag that gains one stops being refused here).
        let cli = <crate::cli::Cli as clap::CommandFactory>::command();
        let commands = || std::iter::once(&cli).chain(cli.get_subcommands());
        let same = SAME_AS_HERE.iter().map(|(name, ..)| name);
        for foreign in IGNORED.iter().chain(REFUSED).flat_map(|(names, _)| names.iter()).chain(same) {
            for command in commands() {
                let found = crate::cli::flag_named(command, foreign);
                assert!(found.is_none(), "--{foreign} is a flag of {}", command.get_name());
            }
        }
        // Those of another command: refused by the one named, which lacks them, and no other.
        let err = normalized(&["grpo-host", "--neftune_noise_alpha", "5"]).unwrap_err().to_string();
        assert!(err.starts_with("--neftune_noise_alpha is not an option of grpo-host train: NEFTune is"), "{err}");
        assert_eq!(
            normalized(&["grpo-host", "sft", "--neftune_noise_alpha", "5"]).unwrap()[2],
            "--neftune-noise-alpha"
        );
        for (name, flags, _) in ELSEWHERE {
            for flag in flags.iter() {
                let holders: Vec<&str> =
                    commands().filter(|c| crate::cli::flag_named(c, flag).is_some()).map(|c| c.get_name()).collect();
                assert!(!holders.is_empty() && !holders.contains(name), "--{flag}: {holders:?}");
            }
        }
    }

    /// A recipe flag that chooses how, not what, is left out with its value, whatever it is, and noted: one line
    /// per reason, naming its flags once each.
    #[test]
    fn flags_that_choose_how_are_left_out_with_a_note() {
        let argv = [
            "grpo-host",
            "--use_vllm",
            "--vllm_gpu_memory_utilization",
            "0.7",
            "--logging_steps=5",
            "--vllm-mode",
            "colocate",
            "--use_vllm",
            "--lr",
            "1",
        ];
        let out = normalize(argv.iter().map(OsString::from).collect()).unwrap();
        assert_eq!(out.argv, ["grpo-host", "--lr", "1"]);
        assert_eq!(
            out.notes,
            [
                "note: --use_vllm, --vllm_gpu_memory_utilization and --vllm-mode are ignored: rollouts run in this \
                 host's own generation engine",
                "note: --logging_steps is ignored: metrics are logged at every batch (sft: every step)",
            ]
        );
        let out = normalize(["grpo-host", "sft", "--use_liger_kernel", "True"].iter().map(OsString::from).collect());
        assert_eq!(out.unwrap().argv, ["grpo-host", "sft"]);
        // No flag is in two tables, and each switch or list is in one.
        let flags = |table: &[(&[&'static str], &str)]| -> Vec<&'static str> {
            table.iter().flat_map(|(names, _)| names.iter().copied()).collect()
        };
        let tables = [flags(IGNORED), flags(REFUSED), SAME_AS_HERE.iter().map(|(name, ..)| *name).collect()];
        for (i, table) in tables.iter().enumerate() {
            for flag in table {
                assert!(tables.iter().enumerate().all(|(j, t)| j == i || !t.contains(flag)), "--{flag}");
            }
        }
        for flag in SWITCHES.iter().chain(LISTS) {
            assert!(tables.iter().any(|t| t.contains(flag)), "--{flag}");
        }
    }

    /// A left-out flag takes with it the words that are its value: a switch only a boolean, a list every word up to
    /// the next flag, any other one word.
    #[test]
    fn a_left_out_flag_takes_its_value_and_no_more() {
        let argv = normalized(&[
            "grpo-host",
            "--use_vllm",
            "word",
            "--label_names",
            "labels",
            "mask",
            "--tf32",
            "False",
            "--disable_tqdm=true",
            "--logging_steps",
            "5",
            "--fsdp",
            "",
            "--lr",
            "1",
        ]);
        assert_eq!(argv.unwrap(), ["grpo-host", "word", "--lr", "1"]);
    }

    /// transformers' `eval_steps` and `save_steps` count only under the `steps` strategy: under another (`no`,
    /// `epoch`), wherever it is given, they are left out with a note.
    #[test]
    fn steps_flags_count_under_the_steps_strategy_only() {
        let argv = [
            "grpo-host",
            "sft",
            "--eval_steps",
            "5",
            "--eval_strategy",
            "no",
            "--save_steps=7",
            "--save_strategy",
            "steps",
        ];
        let out = normalize(argv.iter().map(OsString::from).collect()).unwrap();
        assert_eq!(out.argv, ["grpo-host", "sft", "--save-steps=7"]);
        assert_eq!(out.notes.len(), 3, "{:?}", out.notes);
        assert!(out.notes[0].starts_with("note: --eval_steps is ignored: the evaluation strategy is not `steps`"));
        let argv = normalized(&["grpo-host", "--save-strategy=epoch", "--save-steps", "4", "--lr", "1"]).unwrap();
        assert_eq!(argv, ["grpo-host", "--lr", "1"]);
        assert_eq!(normalized(&["grpo-host", "--eval-steps", "4"]).unwrap(), ["grpo-host", "--eval-steps", "4"]);
    }

    /// A recipe flag whose value asks for what the host does anyway is left out with a note; another value of it
    /// is refused in one line naming that value.
    #[test]
    fn a_flag_asking_for_what_the_host_does_is_noted_and_any_other_value_refused() {
        let argv = [
            "grpo-host",
            "--optim",
            "adamw_torch_fused",
            "--average_tokens_across_devices",
            "--label_smoothing_factor=0.0",
            "--lr",
            "1",
        ];
        let out = normalize(argv.iter().map(OsString::from).collect()).unwrap();
        assert_eq!(out.argv, ["grpo-host", "--lr", "1"]);
        assert_eq!(out.notes.len(), 3, "{:?}", out.notes);
        assert_eq!(out.notes[0], "note: --optim is ignored: the optimizer is AdamW, fused");
        assert!(normalized(&["grpo-host", "--average-tokens-across-devices", "True"]).is_ok());
        let err = normalized(&["grpo-host", "--optim", "--lr", "1"]).unwrap_err().to_string();
        assert!(err.starts_with("--optim is not an option of grpo-host: the optimizer is AdamW"), "{err}");
        let err = normalized(&["grpo-host", "--optim=sgd"]).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2);
        assert!(err.to_string().starts_with("--optim sgd is not an option of grpo-host: the optimizer is AdamW"));
        let err = normalized(&["grpo-host", "sft", "--average_tokens_across_devices", "false"]).unwrap_err();
        assert!(err.to_string().starts_with("--average_tokens_across_devices false is not an option"), "{err}");
        assert!(normalized(&["grpo-host", "sft", "--label_smoothing_factor", "0.1"]).is_err());
        // A value that is not false is a request, even one that reads as a boolean elsewhere.
        let err = normalized(&["grpo-host", "--data_seed", "0"]).unwrap_err().to_string();
        assert!(err.starts_with("--data_seed is not an option of grpo-host: --seed orders the data"), "{err}");
    }

    /// A switch followed by a boolean, as `HfArgumentParser` takes them, is on or off by it; a flag that takes a
    /// boolean takes the same words; after `--` nothing changes.
    #[test]
    fn switches_take_hf_booleans() {
        use crate::train::precision::MixedPrecision;
        let train = |argv: &[&str]| {
            let argv = normalized(&[&["grpo-host"], argv].concat()).unwrap();
            <crate::cli::Cli as clap::Parser>::try_parse_from(argv).map(|c| c.train)
        };
        let t = train(&["--bf16", "True", "--use_peft=true", "--gradient_checkpointing", "1", "--lr", "1e-6"]).unwrap();
        assert_eq!((t.precision.mode(), t.gradient_checkpointing, t.lr), (MixedPrecision::Bf16, true, 1e-6));
        assert_eq!(t.lora.config().unwrap().map(|c| c.rank), Some(16));
        let t = train(&["--bf16", "--bf16", "false", "--use-peft", "N", "--shuffle_dataset", "False"]).unwrap();
        assert_eq!(
            (t.precision.mode(), t.lora.config().unwrap(), t.shuffle_dataset),
            (MixedPrecision::Auto, None, false)
        );
        assert!(train(&["--bf16", "maybe"]).is_err());
        let err = normalized(&["grpo-host", "--bf16=maybe"]).unwrap_err().to_string();
        assert_eq!(err, "--bf16=maybe: a switch takes no value, or true or false (as `--bf16 true`)");
        assert_eq!(normalized(&["grpo-host", "--", "--bf16", "True"]).unwrap(), ["grpo-host", "--", "--bf16", "True"]);
        // A flag this host lacks, given false, asks for nothing: left out, with its value.
        let argv = normalized(&["grpo-host", "--packing", "False", "--push_to_hub=false", "--lr", "1"]).unwrap();
        assert_eq!(argv, ["grpo-host", "--lr", "1"]);
        assert!(normalized(&["grpo-host", "--push_to_hub", "true"]).is_err());
        // transformers' `max_steps: -1` leaves the length to the epochs.
        let argv = normalized(&["grpo-host", "sft", "--max_steps", "-1", "--num_train_epochs", "2"]).unwrap();
        assert_eq!(argv, ["grpo-host", "sft", "--num-train-epochs", "2"]);
        assert_eq!(normalized(&["grpo-host", "--max-steps=-1", "--num-train-epochs=1"]).unwrap().len(), 2);
        let err = normalized(&["grpo-host", "--max_steps", "-1"]).unwrap_err().to_string();
        assert!(err.starts_with("--max_steps -1: transformers' `not set`"), "{err}");
        // TRL's and transformers' other names.
        let t = train(&["--full_determinism", "--ddp_timeout", "60", "--chat_template_path", "t.jinja"]).unwrap();
        assert!(t.deterministic && t.dist_timeout == 60.0);
        assert_eq!(t.model.chat_template.as_deref(), Some(std::path::Path::new("t.jinja")));
        let t = train(&["--model_revision", "v1", "--greater_is_better", "FALSE"]).unwrap();
        assert_eq!((t.model.model_revision.as_deref(), t.best_model.greater_is_better), (Some("v1"), Some(false)));
        let argv = normalized(&["grpo-host", "sft", "--env", "math", "--assistant_only_loss", "No", "--bf16", "TRUE"]);
        let Some(crate::cli::Command::Sft(sft)) = <crate::cli::Cli as clap::Parser>::parse_from(argv.unwrap()).command
        else {
            panic!("not sft")
        };
        assert!(!sft.assistant_only_loss && sft.precision.mode() == MixedPrecision::Bf16);
    }
}
