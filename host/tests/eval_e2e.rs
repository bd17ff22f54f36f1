//! Evaluation end to end, as a user runs it: a tiny training run on a GSM8K-format file with rows held out logs
//! every `eval/*` key before training and after each batch, and `grpo-host eval` on a checkpoint of that run gives
//! exactly the numbers and completions the run logged at that step.

mod common;
mod logging_common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn tiny_model() -> PathBuf {
    common::workspace_root().join("tests/fixtures/model/tiny/llama")
}

fn gsm8k_file() -> String {
    common::workspace_root().join("tests/fixtures/datasets/gsm8k_like.jsonl").display().to_string()
}

/// Flags both commands share: the same model, data, held-out rows, limits, sampling and seed.
fn shared(model: &Path) -> Vec<String> {
    let flags = [
        ("--model", model.to_str().unwrap().to_string()),
        ("--device", "cpu".to_string()),
        ("--env", "math".to_string()),
        ("--dataset", gsm8k_file()),
        ("--eval-holdout", "3".into()),
        ("--eval-samples", "2".into()),
        ("--eval-batch-tasks", "2".into()),
        ("--max-new-tokens", "6".into()),
        ("--max-length", "512".into()),
        ("--temperature", "1.0".into()),
        ("--seed", "7".into()),
    ];
    flags.into_iter().flat_map(|(f, v)| [f.to_string(), v]).collect()
}

/// `grpo-host` with the shipped plugins only (no `GRPO_PLUGIN_PATH` from the shell) and its data directory under
/// `dir`.
fn grpo_host(dir: &Path) -> Command {
    let mut cmd = Command::new(common::host_exe());
    cmd.env_remove("GRPO_PLUGIN_PATH").env("XDG_DATA_HOME", dir.join("xdg"));
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const EVAL_KEYS: &[&str] = &[
    "eval/tasks",
    "eval/returns_mean",
    "eval/accuracy",
    "eval/pass@1",
    "eval/pass@2",
    "eval/mean@2",
    "eval/completion_length_mean",
    "eval/completion_logprob_mean",
    "eval/rewards/answer",
    "eval/math/answer_tag_rate",
    "eval/math/contains_oracle_rate",
    "eval/math/exact_rate",
];

#[test]
fn training_logs_eval_at_its_steps_and_grpo_host_eval_reproduces_a_checkpoint() {
    let runs = tempfile::tempdir().unwrap();
    let train = |extra: &[&str]| {
        grpo_host(runs.path())
            .args(shared(&tiny_model()))
            .args(["--algo", "grpo", "--max-steps", "2", "--rollouts-per-step", "2", "--group-size", "3"])
            .args(["--train-batch-size", "2", "--lr", "1e-3", "--checkpoint-interval", "1"])
            .args(["--eval-every", "1", "--eval-before-train"])
            .args(["--wandb-mode", "offline", "--runs-dir", runs.path().to_str().unwrap(), "--run-name", "ev"])
            .args(extra)
            .env_remove("WANDB_DIR")
            // --run-name is a flag: it names the W&B run over the shell's WANDB_NAME.
            .env("WANDB_NAME", "from-the-shell")
            .output()
            .unwrap()
    };
    let out = train(&[]);
    assert!(out.status.success(), "training failed: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--dataset "), "{}", text(&out.stderr));
    let run = runs.path().join("ev");

    // 6 episodes per batch in micro-batches of 2: 3 optimizer steps a batch, so batches end at steps 2 and 5.
    let rows = json_lines(&run.join("metrics.jsonl"));
    let eval_rows: Vec<&serde_json::Value> = rows.iter().filter(|r| r.get("eval/returns_mean").is_some()).collect();
    let steps: Vec<u64> = eval_rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 2, 5], "eval before training and after each batch");
    // The console counts the optimizer steps taken, as its progress line and the checkpoints' names do.
    let stderr = text(&out.stderr);
    let console: Vec<&str> = stderr.lines().filter(|l| l.starts_with("eval at step")).map(|l| &l[..15]).collect();
    assert_eq!(console, ["eval at step 0:", "eval at step 3:", "eval at step 6:"], "{stderr}");
    for row in &eval_rows {
        for key in EVAL_KEYS {
            let v = row.get(*key).unwrap_or_else(|| panic!("{key} missing at step {}", row["step"]));
            assert!(v.as_f64().is_some_and(f64::is_finite), "{key} = {v}");
        }
        assert_eq!(row["eval/tasks"], 3.0);
        let acc = row["eval/accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        // A task some of whose samples were solved counts fully in pass@2, by its share in mean@2.
        assert!(row["eval/mean@2"].as_f64() <= row["eval/pass@2"].as_f64(), "{row:?}");
        // pass@1 from 2 samples is each task's share solved: mean@2.
        let (one, mean) = (row["eval/pass@1"].as_f64().unwrap(), row["eval/mean@2"].as_f64().unwrap());
        assert!((one - mean).abs() < 1e-12, "pass@1 {one}, mean@2 {mean}");
    }
    let completions = json_lines(&run.join("eval_completions.jsonl"));
    assert_eq!(completions.len(), 9, "3 tasks at each of 3 evaluations");
    // W&B shows each evaluation's episodes as a table at its step.
    let mut tables: Vec<String> = std::fs::read_dir(run.join("wandb"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path().join("files/media/table/eval")).into_iter().flatten())
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    tables.sort();
    assert_eq!(tables.len(), 3, "{tables:?}");
    let wandb_dir = std::fs::read_dir(run.join("wandb")).unwrap().next().unwrap().unwrap().path();
    let records = logging_common::records(&wandb_dir);
    let grpo_host::logging::wandb::proto::RecordType::Run(record) = &records[0] else { panic!("{:?}", records[0]) };
    assert_eq!(record.display_name, "ev");
    for (table, step) in tables.iter().zip([0, 2, 5]) {
        assert!(table.starts_with(&format!("completions_{step}_")), "{tables:?}");
    }
    assert_eq!(completions.iter().filter(|c| c["step"] == 2).count(), 3);
    // Training moves the policy, so each evaluation sees other weights: a checkpoint can only match its own step.
    let confidence: Vec<f64> = eval_rows.iter().map(|r| r["eval/completion_logprob_mean"].as_f64().unwrap()).collect();
    assert!(confidence[0] != confidence[1] && confidence[1] != confidence[2], "{confidence:?}");

    // The checkpoint after batch 1 is step_3 (steps taken); the run logged that evaluation at its last step, 2.
    let ckpt = run.join("checkpoints/step_3");
    assert!(ckpt.is_dir());
    let summary_path = runs.path().join("eval.json");
    let lines_path = runs.path().join("eval_lines.jsonl");
    let out = grpo_host(runs.path())
        .arg("eval")
        .args(["--checkpoint", ckpt.to_str().unwrap()])
        .args(shared(&tiny_model()).into_iter().skip(2))
        .args(["--output", summary_path.to_str().unwrap(), "--completions", lines_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "eval failed: {}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("note:"), "the run's settings were passed: {}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(summary["global_step"], 3);
    let logged = eval_rows[1];
    for key in EVAL_KEYS {
        // Exactly equal values (metrics.jsonl writes whole numbers without a decimal point, so compare as f64).
        let (ours, theirs) = (summary["metrics"][*key].as_f64(), logged[*key].as_f64());
        assert!(ours.is_some() && ours == theirs, "{key}: grpo-host eval {ours:?} vs the run at step 2 {theirs:?}");
    }
    let again = json_lines(&lines_path);
    let at_step: Vec<&serde_json::Value> = completions.iter().filter(|c| c["step"] == 2).collect();
    assert_eq!(again.len(), at_step.len());
    for (a, b) in again.iter().zip(at_step) {
        for field in [
            "id",
            "question",
            "answer",
            "completion",
            "greedy_return",
            "greedy_logprob_mean",
            "solved",
            "samples_solved",
        ] {
            assert_eq!(a[field], b[field], "{field}");
        }
    }
    // The held-out rows are the file's last three (of 40).
    assert_eq!(again[0]["id"], "row-37");
    // With other settings than the run's evaluations, a note names them (the numbers would not match).
    let out = grpo_host(runs.path())
        .arg("eval")
        .args(["--checkpoint", ckpt.to_str().unwrap()])
        .args(shared(&tiny_model()).into_iter().skip(2))
        .args(["--max-new-tokens", "7", "--output", runs.path().join("other.json").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "eval failed: {}", text(&out.stderr));
    let note = text(&out.stderr).lines().find(|l| l.starts_with("note:")).map(str::to_string).unwrap_or_default();
    assert!(note.contains("used --max-new-tokens 6 (here 7);"), "{}", text(&out.stderr));

    // The run directory scores its latest checkpoint, step_6, as the run's last evaluation (step 5) did.
    let latest_path = runs.path().join("latest.json");
    let out = grpo_host(runs.path())
        .arg("eval")
        .args(["--checkpoint", run.to_str().unwrap()])
        .args(shared(&tiny_model()).into_iter().skip(2))
        .args(["--output", latest_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "eval failed: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("scoring its latest checkpoint"), "{}", text(&out.stderr));
    let latest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&latest_path).unwrap()).unwrap();
    assert_eq!(latest["global_step"], 6);
    for key in EVAL_KEYS {
        let (ours, theirs) = (latest["metrics"][*key].as_f64(), eval_rows[2][*key].as_f64());
        assert!(
            ours.is_some() && ours == theirs,
            "{key}: the run directory's {ours:?} vs the run at step 5 {theirs:?}"
        );
    }

    // Resuming from that checkpoint redoes batch 2 and its evaluation: each evaluation is in the files once, with
    // the numbers and completions of the uninterrupted run.
    let out = train(&["--resume", ckpt.to_str().unwrap()]);
    assert!(out.status.success(), "resuming failed: {}", text(&out.stderr));
    assert_eq!(json_lines(&run.join("eval_completions.jsonl")), completions);
    let resumed = json_lines(&run.join("metrics.jsonl"));
    let resumed_eval: Vec<&serde_json::Value> =
        resumed.iter().filter(|r| r.get("eval/returns_mean").is_some()).collect();
    assert_eq!(resumed_eval.len(), 3);
    for (a, b) in resumed_eval.iter().zip(&eval_rows) {
        for key in EVAL_KEYS {
            assert_eq!(a[*key].as_f64(), b[*key].as_f64(), "{key} at step {}", a["step"]);
        }
    }
}

#[test]
fn a_lora_checkpoint_is_scored_over_its_base_model() {
    // A supervised warm-up step moves the adapter (reinforcement on a random model earns no reward to learn from).
    let runs = tempfile::tempdir().unwrap();
    let common_flags =
        ["--env", "math", "--device", "cpu", "--eval-tasks", "3", "--eval-samples", "1", "--max-new-tokens", "6"];
    let common_flags = [&common_flags[..], &["--max-length", "512", "--temperature", "1.0", "--seed", "7"]].concat();
    let out = grpo_host(runs.path())
        .args(["--model", tiny_model().to_str().unwrap(), "--lora-rank", "2", "--max-steps", "1"])
        .args(["--rollouts-per-step", "2", "--group-size", "2", "--train-batch-size", "4", "--lr", "1e-2"])
        .args(["--sft-warmup-steps", "1", "--sft-batch-size", "2", "--sft-lr", "1e-2", "--eval-every", "1"])
        .args(&common_flags)
        .args(["--no-wandb", "--runs-dir", runs.path().to_str().unwrap(), "--run-name", "lora"])
        .output()
        .unwrap();
    assert!(out.status.success(), "training failed: {}", text(&out.stderr));
    let rows = json_lines(&runs.path().join("lora/metrics.jsonl"));
    let logged = rows.iter().find(|r| r.get("eval/tasks").is_some()).expect("an eval row");
    let key = "eval/completion_logprob_mean";
    let score = |source: &[&str], name: &str| {
        let output = runs.path().join(name);
        let out = grpo_host(runs.path())
            .arg("eval")
            .args(source)
            .args(&common_flags)
            .args(["--output", output.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "eval failed: {}", text(&out.stderr));
        let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(output).unwrap()).unwrap();
        summary["metrics"][key].as_f64().unwrap()
    };
    // The final checkpoint (the warm-up's step and the batch's) holds the weights the run evaluated.
    let ckpt = runs.path().join("lora/checkpoints/step_2");
    assert!(ckpt.join("adapter_model.safetensors").exists());
    let adapted = score(&["--checkpoint", ckpt.to_str().unwrap()], "adapted.json");
    assert_eq!(Some(adapted), logged[key].as_f64());
    let base = score(&["--model", tiny_model().to_str().unwrap()], "base.json");
    assert_ne!(adapted, base, "the adapter changed nothing, so this test would not see it loaded");

    // The adapter alone, as PEFT or TRL would hand it over: `eval --checkpoint` scores it the same, and a new run
    // started from it (`--lora-adapter`, no --model: the adapter's base) evaluates it the same before training.
    let peft = runs.path().join("peft");
    std::fs::create_dir(&peft).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(ckpt.join(file), peft.join(file)).unwrap();
    }
    assert_eq!(score(&["--checkpoint", peft.to_str().unwrap()], "peft.json"), adapted);
    let from_adapter = |extra: &[&str], name: &str| {
        let max_steps = if extra.contains(&"--resume") { "2" } else { "1" };
        grpo_host(runs.path())
            .args(["--lora-adapter", peft.to_str().unwrap(), "--max-steps", max_steps, "--eval-before-train"])
            // Two optimizer steps: the evaluation before training is step 0's alone.
            .args(["--rollouts-per-step", "2", "--group-size", "2", "--train-batch-size", "2", "--eval-every", "1"])
            .args(&common_flags)
            .args(["--no-wandb", "--runs-dir", runs.path().to_str().unwrap(), "--run-name", name])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = from_adapter(&[], "continued");
    assert!(out.status.success(), "training from the adapter failed: {}", text(&out.stderr));
    let rows = json_lines(&runs.path().join("continued/metrics.jsonl"));
    let before = rows.iter().find(|r| r.get("eval/tasks").is_some()).expect("the evaluation before training");
    assert_eq!(before["step"], 0);
    assert_eq!(before[key].as_f64(), Some(adapted), "{before:?}");
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.path().join("continued/checkpoints/step_2/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!((saved["r"].as_i64(), saved["lora_alpha"].as_f64()), (Some(2), Some(32.0)), "{saved}");
    let refused = from_adapter(&["--lora-rank", "8"], "refused");
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    let err = text(&refused.stderr);
    assert!(err.contains("has --lora-rank 2; leave --lora-rank out or give 2"), "{err}");

    // The adapter's folder gone (a scratch disk, another node): the run started from it still resumes, since its
    // checkpoints hold the adapter, while a new run from it is refused in one line.
    std::fs::remove_dir_all(&peft).unwrap();
    let resumed = from_adapter(&["--resume", "auto"], "continued");
    assert!(resumed.status.success(), "resuming without the adapter's folder failed: {}", text(&resumed.stderr));
    assert!(runs.path().join("continued/checkpoints/step_4/adapter_model.safetensors").exists());
    let gone = from_adapter(&[], "gone");
    assert_eq!(gone.status.code(), Some(2), "{}", text(&gone.stderr));
    let err = text(&gone.stderr);
    assert!(err.contains("no such folder") && err.lines().count() == 1, "{err}");
}

/// `--repetition-penalty` reaches the greedy episodes too, as in transformers' greedy search: the random tiny model
/// repeats itself, so penalised its greedy answers change.
#[test]
fn the_repetition_penalty_applies_to_the_greedy_episodes() {
    let dir = tempfile::tempdir().unwrap();
    let calls = std::cell::Cell::new(0);
    let greedy = |penalty: &str| -> Vec<String> {
        // A file of its own per call: --completions appends.
        calls.set(calls.get() + 1);
        let lines = dir.path().join(format!("greedy-{}.jsonl", calls.get()));
        let out = grpo_host(dir.path())
            .arg("eval")
            .args(shared(&tiny_model()))
            .args(["--eval-samples", "0", "--max-new-tokens", "12", "--repetition-penalty", penalty])
            .args(["--output", dir.path().join(format!("e-{}.json", calls.get())).to_str().unwrap()])
            .args(["--completions", lines.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "eval failed: {}", text(&out.stderr));
        json_lines(&lines).iter().map(|l| l["completion"].as_str().unwrap().to_string()).collect()
    };
    let (plain, penalised) = (greedy("1.0"), greedy("3.0"));
    assert_eq!(plain.len(), 3);
    assert_eq!(plain, greedy("1.0"), "greedy episodes are deterministic");
    for (a, b) in plain.iter().zip(&penalised) {
        assert_ne!(a, b, "the penalty did not change a greedy answer");
    }
}

#[test]
fn evaluating_an_environment_without_eval_tasks_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tasks.jsonl");
    std::fs::write(&data, "{\"question\": \"1+1\", \"answer\": \"2\", \"num_terms\": 2, \"num_digits\": 1}\n").unwrap();
    let out = grpo_host(dir.path())
        .args(["eval", "--env", "math", "--device", "cpu", "--model", tiny_model().to_str().unwrap()])
        .args(["--env-config", &format!("{{\"data_path\": \"{}\"}}", data.display())])
        .args(["--output", dir.path().join("e.json").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("environment `math` has no eval tasks"), "{err}");
}

/// A run trained on `--dataset` is not scored on the environment's own eval split (generated arithmetic for
/// `math`) without being told: training with evaluation, and `eval`, ask for `--eval-data` or `--eval-holdout`.
#[test]
fn evaluating_beside_a_dataset_needs_its_eval_tasks_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let host = |args: &[&str]| {
        grpo_host(dir.path())
            .args(args)
            .args(["--env", "math", "--device", "cpu", "--model", model.to_str().unwrap(), "--dataset"])
            .arg(gsm8k_file())
            .output()
            .unwrap()
    };
    let out = host(&["eval", "--output", dir.path().join("e.json").to_str().unwrap()]);
    let runs = dir.path().join("runs");
    for eval in ["--eval-every", "--eval-before-train"] {
        let mut args = vec!["--algo", "grpo", "--no-wandb", "--runs-dir", runs.to_str().unwrap(), eval];
        if eval == "--eval-every" {
            args.push("1");
        }
        let trained = host(&args);
        assert_eq!(trained.status.code(), Some(2), "{args:?}: {}", text(&trained.stderr));
        assert!(text(&trained.stderr).contains("--eval-holdout N"), "{}", text(&trained.stderr));
    }
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--dataset") && err.contains("--eval-data") && err.contains("--eval-holdout N"), "{err}");
}
