//! Commands copied from TRL's, transformers' and accelerate's recipes: their flags spelled with underscores
//! (`--learning_rate 1e-5`), which `HfArgumentParser` accepts beside the dashed ones, become the flags clap knows;
//! and their flags that this host does not have get one line saying what it does instead, rather than clap's bare
//! "unexpected argument".

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
        "checkpoints are saved every --checkpoint-interval N (batches in training, steps in sft) and at the end",
    ),
    (&["eval-strategy"], "evaluation runs every --eval-every N (batches in training, steps in sft; 0: at the end)"),
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
        &["optim", "optim-args"],
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
    (&["label-smoothing-factor"], "the loss is the plain token cross-entropy; leave it out"),
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

/// Flags another command of this host has, refused in one line by the command (`train` for the top level) that
/// lacks them, with what it does instead.
const ELSEWHERE: &[(&str, &[&str], &str)] = &[
    (
        "train",
        &["eval-steps", "save-steps"],
        "training counts batches (a round of rollouts and its optimizer steps): evaluate every --eval-every N \
         batches, save every --checkpoint-interval N batches",
    ),
    ("train", &["neftune-noise-alpha"], "NEFTune is for supervised fine-tuning: grpo-host sft --neftune-noise-alpha"),
];

/// A command line made ready for clap by [`normalize`], with a note for each flag it left out.
#[derive(Debug, Default)]
pub struct Normalized {
    /// The arguments clap parses (program name first).
    pub argv: Vec<OsString>,
    /// One line for each [`IGNORED`] flag: what the host does instead.
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
    let epochs_given = argv.iter().filter_map(|a| a.to_str()).any(|a| {
        let flag = a.split('=').next().unwrap_or_default().replace('_', "-");
        flag == "--num-train-epochs"
    });
    let mut out = Normalized { argv: Vec::with_capacity(argv.len()), notes: Vec::new() };
    let mut args = argv.into_iter().peekable();
    while let Some(arg) = args.next() {
        let Some(flag) = arg.to_str().and_then(|t| t.strip_prefix("--")).filter(|f| !f.is_empty()) else {
            let rest = arg == "--";
            out.argv.push(arg);
            if rest {
                out.argv.extend(args.by_ref());
            }
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (flag, None),
        };
        let dashed = name.replace('_', "-");
        // The word after a flag typed without `=`, which is its value unless it is the next flag.
        let next = args.peek().and_then(|a| a.to_str()).filter(|a| !a.starts_with("--")).map(String::from);
        let (value, separate) = match inline {
            Some(value) => (Some(value), false),
            None => (next, true),
        };
        // Leaving the flag out leaves out the value typed after it too.
        let value_follows = separate && value.is_some();
        let known = super::flag_named(&command, &dashed);
        let negative = value.as_deref().is_some_and(|v| v.parse::<i64>().is_ok_and(|n| n < 0));
        let left_out = match known {
            Some(_) if dashed == "max-steps" && negative => {
                // transformers' "not set": the epochs decide.
                if !epochs_given {
                    return Err(user_error!(
                        "--{name} {}: transformers' `not set`, which leaves the length to --num-train-epochs; give \
                         that, or a positive --max-steps",
                        value.unwrap_or_default()
                    ));
                }
                true
            }
            Some(_) => false,
            None => leaves_out_foreign(&command, name, &dashed, value.as_deref(), &mut out.notes)?,
        };
        if left_out {
            if value_follows {
                args.next();
            }
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
            args.next();
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
    Ok(out)
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

/// Whether `dashed`, a flag `command` does not have (typed `--typed`, given `value`), is left out: an [`IGNORED`]
/// one, noted in `notes`, or a [`REFUSED`] one given false. A refused one is the one-line error saying what to do
/// instead; any other is not left out, for clap to report.
fn leaves_out_foreign(
    command: &clap::Command,
    typed: &str,
    dashed: &str,
    value: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<bool> {
    if let Some((_, instead)) = IGNORED.iter().find(|(flags, _)| flags.contains(&dashed)) {
        notes.push(format!("note: --{typed} is ignored: {instead}"));
        return Ok(true);
    }
    if let Some((_, instead)) = REFUSED.iter().find(|(flags, _)| flags.contains(&dashed)) {
        return match value.and_then(boolish) {
            Some(false) => Ok(true),
            _ => Err(user_error!("--{typed} is not an option of grpo-host: {instead}")),
        };
    }
    let here = match command.get_name() {
        "grpo-host" => "train",
        name => name,
    };
    match ELSEWHERE.iter().find(|(name, flags, _)| *name == here && flags.contains(&dashed)) {
        Some((_, _, instead)) => Err(user_error!("--{typed} is not an option of grpo-host {here}: {instead}")),
        None => Ok(false),
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
        for foreign in IGNORED.iter().chain(REFUSED).flat_map(|(names, _)| names.iter()) {
            for command in commands() {
                let found = crate::cli::flag_named(command, foreign);
                assert!(found.is_none(), "--{foreign} is a flag of {}", command.get_name());
            }
        }
        // Those of another command: refused by the one named, which lacks them, and no other.
        let err = normalized(&["grpo-host", "--save_steps", "5"]).unwrap_err().to_string();
        assert!(err.starts_with("--save_steps is not an option of grpo-host train: training counts batches"), "{err}");
        assert_eq!(normalized(&["grpo-host", "sft", "--save_steps", "5"]).unwrap()[2], "--save-steps");
        for (name, flags, _) in ELSEWHERE {
            for flag in flags.iter() {
                let holders: Vec<&str> =
                    commands().filter(|c| crate::cli::flag_named(c, flag).is_some()).map(|c| c.get_name()).collect();
                assert!(!holders.is_empty() && !holders.contains(name), "--{flag}: {holders:?}");
            }
        }
    }

    /// A recipe flag that chooses how, not what, is left out with its value, whatever it is, and noted once.
    #[test]
    fn flags_that_choose_how_are_left_out_with_a_note() {
        let argv =
            ["grpo-host", "--use_vllm", "--vllm_gpu_memory_utilization", "0.7", "--logging_steps=5", "--lr", "1"];
        let out = normalize(argv.iter().map(OsString::from).collect()).unwrap();
        assert_eq!(out.argv, ["grpo-host", "--lr", "1"]);
        assert_eq!(
            out.notes,
            [
                "note: --use_vllm is ignored: rollouts run in this host's own generation engine",
                "note: --vllm_gpu_memory_utilization is ignored: rollouts run in this host's own generation engine",
                "note: --logging_steps is ignored: metrics are logged at every batch (sft: every step)",
            ]
        );
        let out = normalize(["grpo-host", "sft", "--use_liger_kernel", "True"].iter().map(OsString::from).collect());
        assert_eq!(out.unwrap().argv, ["grpo-host", "sft"]);
        // No flag is both.
        for (flags, _) in IGNORED {
            assert!(flags.iter().all(|f| !REFUSED.iter().any(|(r, _)| r.contains(f))), "{flags:?}");
        }
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
