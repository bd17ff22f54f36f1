//! Commands copied from TRL's, transformers' and accelerate's recipes: their flags spelled with underscores
//! (`--learning_rate 1e-5`), which `HfArgumentParser` accepts beside the dashed ones, become the flags clap knows;
//! and their flags that this host does not have get one line saying what it does instead, rather than clap's bare
//! "unexpected argument".

use std::ffi::OsString;

use anyhow::Result;

use crate::user_error;

/// Flags of those libraries this host has no equivalent of, each group with what to do instead.
const NOT_HERE: [(&[&str], &str); 20] = [
    (
        &["use-vllm", "vllm-mode", "vllm-gpu-memory-utilization"],
        "rollouts run in this host's own generation engine; leave it out",
    ),
    (&["logging-steps"], "metrics are logged at every batch (sft: every step); leave it out"),
    (&["save-strategy"], "checkpoints are saved every --checkpoint-interval N (batches in training, steps in sft)"),
    (&["eval-strategy"], "evaluation runs every --eval-every N (batches in training, steps in sft; 0: never)"),
    (
        &["optim"],
        "the optimizer is AdamW (fused; --weight-decay, --adam-beta1, --adam-beta2, --adam-epsilon); leave it out",
    ),
    (
        &["attn-implementation"],
        "attention is SDPA (eager where a family needs it, see --model in docs/cli.md); leave it out",
    ),
    (
        &["trust-remote-code"],
        "no model code is ever run: the families in docs/cli.md (--model) are implemented natively",
    ),
    (
        &["load-in-4bit", "load-in-8bit"],
        "quantized training is not offered; --lora-rank 16 with --mixed-precision bf16 saves the most memory",
    ),
    (
        &["use-liger-kernel", "use-liger-loss"],
        "the log-probs are already computed in chunks without keeping full-vocabulary logits; leave it out",
    ),
    (
        &["deepspeed"],
        "data parallelism is torchrun with DDP (docs/cli.md, \"Data parallel: torchrun\"); no sharding is offered",
    ),
    (
        &["push-to-hub"],
        "checkpoints are Hugging Face folders: upload one with `hf upload REPO runs/NAME/checkpoints/step_N`",
    ),
    (&["log-completions"], "completions are logged every --log-completions-interval N batches (default 10)"),
    (&["packing"], "rows are padded into micro-batches, not packed (--micro-batch-tokens groups them by length)"),
    (&["gradient-checkpointing-kwargs"], "--gradient-checkpointing takes no options; leave it out"),
    (&["torch-compile"], "nothing is compiled: the model runs libtorch's kernels as they are; leave it out"),
    (
        &["dataset-num-proc", "dataloader-num-workers"],
        "rows are read and rendered once, before the first step; leave it out",
    ),
    (&["ddp-find-unused-parameters"], "every gradient is all-reduced, an unused one as zeros; leave it out"),
    (&["per-device-eval-batch-size"], "evaluation takes --eval-batch-tasks N tasks per call (sft: its micro-batches)"),
    (&["save-safetensors"], "checkpoints are always safetensors; leave it out"),
    (&["logging-dir"], "TensorBoard's events go under --log-dir DIR, in DIR/<run-name>/"),
];

/// `argv` (program name first) as clap should see it: each `--some_flag` or `--some_flag=VALUE` spelled
/// `--some-flag` where that is a flag or alias of the command, and a flag from [`NOT_HERE`] refused in one line.
/// Anything else stays as typed (so an unknown flag is reported as the user wrote it), as does everything after a
/// bare `--`.
pub fn normalize(argv: Vec<OsString>) -> Result<Vec<OsString>> {
    let command = super::command_of(&argv);
    let mut rest = false;
    argv.into_iter()
        .map(|arg| {
            let Some(text) = arg.to_str() else { return Ok(arg) };
            rest |= text == "--";
            let Some(flag) = text.strip_prefix("--").filter(|_| !rest) else { return Ok(arg) };
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (flag, None),
            };
            let dashed = name.replace('_', "-");
            if super::flag_named(&command, &dashed).is_none() {
                if let Some((_, instead)) = NOT_HERE.iter().find(|(foreign, _)| foreign.contains(&dashed.as_str())) {
                    return Err(user_error!("--{name} is not an option of grpo-host: {instead}"));
                }
                return Ok(arg);
            }
            Ok(OsString::from(match value {
                Some(value) => format!("--{dashed}={value}"),
                None => format!("--{dashed}"),
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(argv: &[&str]) -> Result<Vec<String>> {
        let argv = argv.iter().map(OsString::from).collect();
        Ok(normalize(argv)?.into_iter().map(|a| a.into_string().unwrap()).collect())
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
        let err = normalized(&["grpo-host", "--use_vllm", "--lr", "1e-6"]).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2);
        assert_eq!(
            err.to_string(),
            "--use_vllm is not an option of grpo-host: rollouts run in this host's own generation engine; leave it out"
        );
        let err = normalized(&["grpo-host", "sft", "--logging-steps=10"]).unwrap_err().to_string();
        assert!(err.starts_with("--logging-steps is not an option of grpo-host: metrics are logged at every"), "{err}");
        // After `--`, nothing is a flag.
        assert!(normalized(&["grpo-host", "--", "--optim"]).is_ok());
        // None of them is a flag of any command (a flag that gains one stops being refused here).
        let cli = <crate::cli::Cli as clap::CommandFactory>::command();
        for foreign in NOT_HERE.iter().flat_map(|(names, _)| names.iter()) {
            for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
                let found = crate::cli::flag_named(command, foreign);
                assert!(found.is_none(), "--{foreign} is a flag of {}", command.get_name());
            }
        }
    }
}
