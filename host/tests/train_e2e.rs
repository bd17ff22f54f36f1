//! Training end to end, as a user runs it: the installed `grpo-host` binary, the shipped plugins loaded from
//! their libraries, the tiny random Llama fixture, two batches of `math`. Checks every metric key re-grpo's W&B
//! logging guide names (docs/metrics.md), the checkpoint, exact resumption and run-to-run determinism.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny_model() -> PathBuf {
    common::workspace_root().join("tests/fixtures/model/tiny/llama")
}

/// `grpo-host` with small settings writing `runs/<name>` (an empty name: no `--run-name`); `extra` flags replace
/// the defaults they name.
fn command(runs: &Path, name: &str, extra: &[&str]) -> Command {
    let model = tiny_model();
    let defaults = [
        ("--algo", "grpo"),
        ("--env", "math"),
        ("--model", model.to_str().unwrap()),
        ("--device", "cpu"),
        ("--rollouts-per-step", "2"),
        ("--group-size", "3"),
        ("--train-batch-size", "2"),
        ("--max-new-tokens", "6"),
        ("--max-length", "512"),
        ("--temperature", "1.0"),
        ("--lr", "1e-3"),
        ("--seed", "7"),
        ("--checkpoint-interval", "1"),
    ];
    let mut cmd = Command::new(common::host_exe());
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(["--no-wandb", "--runs-dir", runs.to_str().unwrap()]);
    if !name.is_empty() {
        cmd.args(["--run-name", name]);
    }
    cmd.args(extra).env_remove("GRPO_PLUGIN_PATH").env("XDG_DATA_HOME", runs.join("xdg"));
    cmd
}

/// Train to the end and return what it printed.
fn train(runs: &Path, name: &str, extra: &[&str]) -> Output {
    command(runs, name, extra).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Start a run `refused` with `extra` flags, which must be refused at the start (exit 2) with `line` in its stderr;
/// returns the stderr.
fn assert_refused(runs: &Path, extra: &[&str], line: &str) -> String {
    let out = train(runs, "refused", extra);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(line), "{err}");
    err
}

fn rows(run: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap().as_object().unwrap().clone())
        .collect()
}

/// The rows without what legitimately differs between two runs: wall-clock times and memory (`*rss_gb`).
fn comparable(run: &Path) -> Vec<BTreeMap<String, serde_json::Value>> {
    rows(run)
        .into_iter()
        .map(|row| {
            row.into_iter()
                .filter(|(k, _)| !(k.starts_with("timing/") || k.starts_with('_') || k.ends_with("rss_gb")))
                .collect()
        })
        .collect()
}

const SEED_KEYS: &[&str] = &[
    "rollouts/returns_sum",
    "rollouts/returns_mean",
    "rollouts/returns_std",
    "rollouts/returns_max",
    "rollouts/returns_min",
    "rollouts/returns_best_mean",
    "rollouts/kl_mean",
    "rollouts/kl_std",
    "rollouts/kl_max",
    "rollouts/advantages_mean",
    "rollouts/advantages_std",
    "rollouts/total_rollouts",
    "rollouts/batch_step",
    "training_step/loss",
    "training_step/kl",
    "training_step/grad_norm",
    "training_step/learning_rate",
    "training_epoch/loss_mean",
    "training_epoch/loss_std",
    "training_epoch/kl_mean",
    "training_epoch/kl_std",
    "training_epoch/grad_norm_mean",
    "training_epoch/grad_norm_max",
    "system/gpu_memory_allocated_gb",
    "system/gpu_memory_reserved_gb",
    "system/replay_buffer_size",
    "system/rollout_peak_rss_gb",
    "system/logprob_peak_rss_gb",
    "system/train_peak_rss_gb",
    "checkpoint/saved",
    "checkpoint/step",
    "final/total_steps",
    "final/total_batches",
    "final/total_rollouts",
    "final/best_mean_return",
    "timing/rollout_s",
    "timing/logprob_s",
    "timing/train_s",
    "completions/mean_length",
    "completions/clipped_ratio",
    "training/invalid_loss_count",
];

#[test]
fn two_batches_log_every_metric_save_a_checkpoint_and_resume_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let out = train(runs.path(), "full", &["--max-steps", "2"]);
    assert!(out.status.success(), "training failed: {}", text(&out.stderr));

    let run = runs.path().join("full");
    let all: Vec<_> = rows(&run);
    let keys: std::collections::BTreeSet<&str> = all.iter().flat_map(|r| r.keys().map(String::as_str)).collect();
    for key in SEED_KEYS {
        assert!(keys.contains(key), "metrics.jsonl lacks {key}; it has {keys:?}");
    }
    // 2 batches x 6 rollouts in micro-batches of 2: 3 optimizer steps per batch.
    let last = all.last().unwrap();
    assert_eq!(last["final/total_steps"], 6);
    assert_eq!(last["final/total_rollouts"], 12);
    assert!(run.join("config.json").exists());

    let ckpt = run.join("checkpoints/step_6");
    for f in ["model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.json", "tokenizer.json"] {
        assert!(ckpt.join(f).exists(), "checkpoint lacks {f}");
    }
    let state = json_file(&ckpt.join("trainer_state.json"));
    assert_eq!(state["batch"], 2);
    assert_eq!(state["global_step"], 6);

    // The same seed gives the same metrics, and gradient checkpointing, which recomputes the layers' activations
    // in the backward pass, changes none of them.
    let again = train(runs.path(), "again", &["--max-steps", "2", "--gradient-checkpointing"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(comparable(&run), comparable(&runs.path().join("again")), "two runs with one seed differ");
    let config = json_file(&runs.path().join("again/config.json"));
    assert_eq!(config["run"]["model"]["gradient_checkpointing"], true);

    assert_resume_is_exact(runs.path(), &run, "split", &[]);
    // Starting the finished run again without --resume would mix two runs' histories and checkpoints.
    let again = train(runs.path(), "full", &["--max-steps", "2"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again.stderr));
    let err = text(&again.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("already holds checkpoints of run `full`") && err.contains("--resume auto"), "{err}");
    // An attempt that logged rows and died before its first checkpoint is started over: its rows are replaced.
    let over = runs.path().join("over");
    std::fs::create_dir_all(&over).unwrap();
    std::fs::copy(run.join("metrics.jsonl"), over.join("metrics.jsonl")).unwrap();
    let started = train(runs.path(), "over", &["--max-steps", "2"]);
    assert!(started.status.success(), "{}", text(&started.stderr));
    assert!(text(&started.stderr).contains("no checkpoint to resume; starting the run over"));
    assert_eq!(comparable(&over), comparable(&run), "the attempt's rows were not replaced");
    // Checkpoints kept elsewhere, in a folder that happens to be called `checkpoints`: the resume still logs to the
    // named run.
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("moved/checkpoints");
    assert_resume_is_exact(runs.path(), &run, "moved", &["--checkpoint-path", moved.to_str().unwrap()]);
    assert!(!elsewhere.path().join("moved/metrics.jsonl").exists(), "the resume logged beside its checkpoints");
}

/// A libtorch failure (here the CPU allocator refusing a KV cache of petabytes, as a GPU runs out of memory) is one
/// error line with libtorch's message and what uses less memory, never a panic report with libtorch's C++ frames;
/// a training run ends as any failure ends it, its summary closed.
#[test]
fn a_libtorch_failure_is_one_error_line() {
    let runs = tempfile::tempdir().unwrap();
    let huge = ["--max-new-tokens", "1000000000000000", "--max-length", "2000000000000000"];
    let model = tiny_model();
    let generate = Command::new(common::host_exe())
        .args(["generate", "--device", "cpu", "--model", model.to_str().unwrap(), "--raw", "hi"])
        .args(&huge[..2])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let train = command(runs.path(), "oom", &[&["--max-steps", "1"], &huge[..]].concat())
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    for (what, out) in [("generate", generate), ("train", train)] {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{what}: {err}");
        assert!(errors[0].contains("libtorch failed") && errors[0].contains("allocate"), "{what}: {err}");
        assert!(errors[0].contains("--gradient-checkpointing"), "{what}: the memory hint is missing: {err}");
        assert!(!err.contains("panicked") && !err.contains("frame #") && !err.contains("RUST_BACKTRACE"), "{err}");
    }
    let summary = std::fs::read_to_string(runs.path().join("oom/summary.json")).unwrap();
    assert!(summary.contains("\"training/completed\":0"), "{summary}");
}

#[test]
fn a_resume_without_run_name_continues_the_checkpoints_run() {
    let (runs, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ckpts = elsewhere.path().join("ckpts");
    let flags = ["--checkpoint-path", ckpts.to_str().unwrap()];
    let first = train(runs.path(), "", &[&["--max-steps", "1"], &flags[..]].concat());
    assert!(first.status.success(), "{}", text(&first.stderr));
    let resumed = train(runs.path(), "", &[&["--max-steps", "2", "--resume", "auto"], &flags[..]].concat());
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let dirs: Vec<PathBuf> = std::fs::read_dir(runs.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("metrics.jsonl").exists())
        .collect();
    assert_eq!(dirs.len(), 1, "the resume started a second run folder: {dirs:?}");
    let steps: Vec<u64> = rows(&dirs[0]).iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (0..6).collect::<Vec<_>>());
}

/// Train `name` for one batch, resume it for a second, and check that the second batch equals the uninterrupted
/// two-batch run in `full`. `extra` flags go to both halves.
fn assert_resume_is_exact(runs: &Path, full: &Path, name: &str, extra: &[&str]) {
    let first = train(runs, name, &[&["--max-steps", "1"], extra].concat());
    assert!(first.status.success(), "{}", text(&first.stderr));
    // The second batch's first step: the first batch's steps.
    let second = rows(&runs.join(name)).iter().filter_map(|r| r["step"].as_u64()).max().unwrap() + 1;
    let resumed = train(runs, name, &[&["--max-steps", "2", "--resume", "auto"], extra].concat());
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let later = |rows: &[BTreeMap<String, serde_json::Value>]| -> Vec<BTreeMap<String, serde_json::Value>> {
        rows.iter()
            .filter(|r| r["step"].as_u64().unwrap() >= second)
            .map(|r| {
                r.iter()
                    .filter(|(k, _)| !k.starts_with("final/") && !k.starts_with("checkpoint/"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .collect()
    };
    let (split, full) = (comparable(&runs.join(name)), comparable(full));
    assert_eq!(later(&split), later(&full), "the resumed run's second batch differs from the uninterrupted run");
}

/// A JSON file of a run (config.json, trainer_state.json).
fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The dtype of every tensor in a safetensors file, from its JSON header.
fn safetensors_dtypes(path: &Path) -> std::collections::BTreeSet<String> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header.as_object().unwrap().iter().filter_map(|(_, v)| v["dtype"].as_str().map(String::from)).collect()
}

/// bf16 mixed precision: the model computes in bf16, the checkpoint holds the f32 master weights, and a resumed run
/// continues exactly (masters restored, not re-derived from the bf16 copies).
#[test]
fn bf16_mixed_precision_saves_f32_masters_and_resumes_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let mixed = ["--mixed-precision", "bf16"];
    let out = train(runs.path(), "mixed", &[&["--max-steps", "2"], &mixed[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = runs.path().join("mixed");
    let config = json_file(&run.join("config.json"));
    assert_eq!((config["dtype"].as_str(), config["mixed_precision"].as_str()), (Some("BFloat16"), Some("bf16")));
    let ckpt = run.join("checkpoints/step_6");
    assert_eq!(safetensors_dtypes(&ckpt.join("model.safetensors")), ["F32".to_string()].into());
    let state = json_file(&ckpt.join("trainer_state.json"));
    assert_eq!(state["mixed_precision"], "bf16");
    assert_resume_is_exact(runs.path(), &run, "mixed-split", &mixed);
}

/// LoRA with dropout: the training forward's draws come from libtorch's generator, which a resumed process starts
/// afresh, so they are seeded per micro-batch from the run's seed and step, and a resumed run continues exactly, as
/// does a DoRA one (its magnitudes and their moments restored). The dropout is on: without it the second batch's
/// losses differ.
#[test]
fn lora_dropout_draws_the_same_after_a_resume() {
    let runs = tempfile::tempdir().unwrap();
    let lora = ["--lora-rank", "4", "--lora-alpha", "8", "--lora-dropout", "0.3", "--lr", "1e-2"];
    let dora = [&lora[..], &["--use-dora"]].concat();
    for (name, flags) in [("dropout", &lora[..]), ("dora", &dora[..])] {
        let out = train(runs.path(), name, &[&["--max-steps", "2"], flags].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_resume_is_exact(runs.path(), &runs.path().join(name), &format!("{name}-split"), flags);
    }
    let run = runs.path().join("dropout");
    let off = [&lora[..6], &["--lora-dropout", "0", "--lr", "1e-2"]].concat();
    let out = train(runs.path(), "no-dropout", &[&["--max-steps", "2"], &off[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let losses =
        |run: &Path| -> Vec<f64> { rows(run).iter().filter_map(|r| r.get("training_step/loss")?.as_f64()).collect() };
    assert_ne!(losses(&run), losses(&runs.path().join("no-dropout")), "the dropout changed nothing");
}

/// `--reward-model`, twice (unnamed, and as `helpful`): every rollout's return adds each model's score, weighed by
/// `--reward-weights`, which varies within groups where the environment's rewards do not (the tiny policy never
/// answers), so advantages and a loss appear; the components are logged, and a language-model checkpoint is refused
/// at the start in one line.
#[test]
fn a_reward_model_scores_every_rollout() {
    let runs = tempfile::tempdir().unwrap();
    let rm = common::workspace_root().join("tests/fixtures/model/tiny/llama_rm");
    let named = format!("helpful={}", rm.display());
    let flags = ["--reward-model", rm.to_str().unwrap(), "--reward-model", &named];
    let weights = ["--reward-weights", r#"{"reward_model": 2}"#, "--max-steps", "1", "--log-completions-interval", "1"];
    let out = train(runs.path(), "rm", &[&flags[..], &weights[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = runs.path().join("rm");
    let completions = std::fs::read_to_string(run.join("completions.jsonl")).unwrap();
    let mut scores = Vec::new();
    for line in completions.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let rewards = row["rewards"].as_object().unwrap();
        let score = rewards["reward_model"].as_f64().unwrap();
        // The same model under the name `helpful`, weighing 1.
        assert_eq!(rewards["helpful"].as_f64().unwrap(), score);
        let env: f64 = rewards
            .iter()
            .filter(|(k, _)| !["reward_model", "helpful", "total"].contains(&k.as_str()))
            .map(|(_, v)| v.as_f64().unwrap())
            .sum();
        assert!((rewards["total"].as_f64().unwrap() - (env + 3.0 * score)).abs() < 1e-9, "{row}");
        scores.push(score);
    }
    assert!(scores.iter().any(|s| (s - scores[0]).abs() > 1e-6), "the reward model gave every rollout {scores:?}");
    let rows = rows(&run);
    assert!(rows.iter().any(|r| r.get("rollout_rewards/helpful").and_then(|v| v.as_f64()).is_some()));
    let losses: Vec<f64> = rows.iter().filter_map(|r| r.get("training_step/loss")?.as_f64()).collect();
    assert!(losses.iter().any(|l| *l != 0.0), "{losses:?}");
    let saved = &json_file(&run.join("config.json"))["run"]["rewards"]["reward_models"];
    assert_eq!(saved[1], serde_json::json!({"name": "helpful", "model": rm.to_str().unwrap()}));
    let lm = tiny_model();
    assert_refused(runs.path(), &["--reward-model", lm.to_str().unwrap()], "it is not a sequence-classification model");
}

/// `--cast-lm-head-to-fp32` under bf16 mixed precision, with a KL reference: the run trains, says so in config.json,
/// and resumes exactly (the f32 head, which has no master copy of its own, is restored from the checkpoint).
#[test]
fn an_f32_head_under_bf16_trains_and_resumes_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let flags = ["--mixed-precision", "bf16", "--cast-lm-head-to-fp32", "--beta", "0.04"];
    let out = train(runs.path(), "head", &[&["--max-steps", "2"], &flags[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = runs.path().join("head");
    assert_eq!(json_file(&run.join("config.json"))["run"]["model"]["cast_lm_head_to_fp32"], true);
    assert_resume_is_exact(runs.path(), &run, "head-split", &flags);
}

/// Rollouts sampled in bf16 while training in f32 (`--rollout-dtype bf16`): the old log-probs are recomputed in f32,
/// the sampler/trainer ratios are logged and finite, truncated importance weights (`--tis-cap`) go into the loss,
/// and a resumed run continues exactly (the bf16 sampler is refreshed from the restored weights).
#[test]
fn bf16_rollouts_with_f32_training_log_is_ratios_and_resume_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let flags = ["--mixed-precision", "no", "--rollout-dtype", "bf16", "--tis-cap", "2"];
    let out = train(runs.path(), "bf16-rollouts", &[&["--max-steps", "2"], &flags[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = runs.path().join("bf16-rollouts");
    let config = json_file(&run.join("config.json"));
    assert_eq!((config["dtype"].as_str(), config["rollout_dtype"].as_str()), (Some("Float"), Some("BFloat16")));
    let batches: Vec<_> = rows(&run).into_iter().filter(|r| r.contains_key("rollouts/returns_mean")).collect();
    assert_eq!(batches.len(), 2);
    for row in &batches {
        let (mean, max) =
            (row["rollouts/is_ratio_mean"].as_f64().unwrap(), row["rollouts/is_ratio_max"].as_f64().unwrap());
        // bf16 sampling moves the probabilities by a few percent: ratios near 1, never all exactly 1.
        assert!(mean.is_finite() && max.is_finite() && max >= mean && mean > 0.5 && mean < 2.0, "{mean} {max}");
        assert!(max != 1.0 || mean != 1.0, "the ratios are all 1: the old log-probs were not recomputed");
        // Truncated weights are never 0.
        assert_eq!(row["rollouts/is_masked_share"].as_f64(), Some(0.0));
    }
    // f32 sampling and training: the sampler's log-probs are reused, so there is no ratio to log.
    let plain = train(runs.path(), "f32", &["--max-steps", "1", "--mixed-precision", "no"]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    assert!(rows(&runs.path().join("f32")).iter().all(|r| !r.contains_key("rollouts/is_ratio_mean")));
    assert_resume_is_exact(runs.path(), &run, "bf16-rollouts-split", &flags);
}

/// `--tis-mode`: at the tightest cap, 1, masking per token sets the weight of every token whose ratio is above 1 to
/// 0, a share strictly between 0 and 1 of bf16 rollouts' tokens, where truncating sets none to 0; the mode is saved
/// with the run, and a mode without a cap is refused.
#[test]
fn masked_importance_weights_zero_the_tokens_over_the_cap() {
    let runs = tempfile::tempdir().unwrap();
    let first = |name: &str, mode: &str| {
        let flags = ["--max-steps", "1", "--mixed-precision", "no", "--rollout-dtype", "bf16", "--tis-cap", "1"];
        let out = train(runs.path(), name, &[&flags[..], &["--tis-mode", mode]].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        // Every metric of the run's first batch, whichever row logged it.
        let mut all = serde_json::Map::new();
        for row in rows(&runs.path().join(name)) {
            for (k, v) in row {
                all.entry(k).or_insert(v);
            }
        }
        all
    };
    let (masked, truncated) = (first("token-mask", "token_mask"), first("token-truncate", "token-truncate"));
    let share = masked["rollouts/is_masked_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");
    assert_eq!(truncated["rollouts/is_masked_share"].as_f64(), Some(0.0));
    // The same rollouts (one seed, the same weights before the first update), weighted differently. (Their losses
    // cannot show it: the random model's groups earn equal rewards, so every advantage is 0; the plugins' golden
    // tests check that the weights multiply each token's policy-gradient term.)
    assert_eq!(masked["rollouts/is_ratio_mean"], truncated["rollouts/is_ratio_mean"]);
    let saved = json_file(&runs.path().join("token-mask/config.json"));
    assert_eq!(saved["run"]["loss"]["tis_mode"], "token-mask");
    let out = train(runs.path(), "refused", &["--max-steps", "1", "--tis-mode", "sequence-mask"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--tis-mode sequence-mask needs --tis-cap C"), "{}", text(&out.stderr));
}

/// fp16 mixed precision logs its dynamic loss scale, starting at GradScaler's 65536, and keeps it in checkpoints.
#[test]
fn fp16_mixed_precision_logs_and_saves_the_loss_scale() {
    let runs = tempfile::tempdir().unwrap();
    // With libtorch's deterministic algorithms too: every kernel a CPU training step uses has a deterministic form.
    let out = train(runs.path(), "fp16", &["--max-steps", "1", "--mixed-precision", "fp16", "--deterministic"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = runs.path().join("fp16");
    let config = json_file(&run.join("config.json"));
    assert_eq!(config["run"]["model"]["deterministic"], true);
    let scales: Vec<f64> = rows(&run).iter().filter_map(|r| r.get("training_step/loss_scale")?.as_f64()).collect();
    assert!(!scales.is_empty(), "no training_step/loss_scale logged");
    assert!(scales[0] <= 65536.0 && scales[0] >= 1.0, "{scales:?}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/step_3/trainer_state.json")).unwrap())
            .unwrap();
    assert!(state["loss_scaler"]["scale"].as_f64().unwrap() >= 1.0, "{state}");
}

/// Pure bf16 parameters (`--mixed-precision no --dtype bf16`) stay available, with a warning that re-grpo's
/// learning rate cannot move them; mixed precision with a bf16 --dtype is refused in one line.
#[test]
fn pure_bf16_warns_and_contradictions_are_refused() {
    let runs = tempfile::tempdir().unwrap();
    let out =
        train(runs.path(), "pure", &["--max-steps", "1", "--mixed-precision", "no", "--dtype", "bf16", "--lr", "5e-6"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("warning: --lr 5e-6 is below half"), "{}", text(&out.stderr));
    let bad = train(runs.path(), "bad", &["--max-steps", "1", "--mixed-precision", "bf16", "--dtype", "bf16"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = text(&bad.stderr);
    assert!(err.contains("--mixed-precision bf16 keeps f32 master weights"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// `--max-length` shorter than the prompts: the run goes on, each turn one token, and says so in one line.
#[test]
fn prompts_past_max_length_sample_one_token_and_warn() {
    let runs = tempfile::tempdir().unwrap();
    let out = train(runs.path(), "short", &["--max-steps", "1", "--max-length", "8", "--max-new-tokens", "6"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warning: Vec<&str> = err.lines().filter(|l| l.contains("--max-length 8")).collect();
    assert_eq!(warning.len(), 1, "{err}");
    assert!(warning[0].starts_with("warning: 6 of 6 episodes start with a prompt at or past --max-length 8"), "{err}");
    let lengths: Vec<f64> =
        rows(&runs.path().join("short")).iter().filter_map(|r| r.get("completions/mean_length")?.as_f64()).collect();
    assert_eq!(lengths, vec![1.0]);
}

/// `--max-prompt-length`: every math prompt is longer than 12 tokens, so each is cut to its last 12 (the default
/// `left`) before the model sees it; the completions table shows the cut prompt, the end of the uncut run's; the share
/// is logged and the limit saved with the run. `error` stops the run in one line naming the task; a truncation
/// without a limit, and a limit at `--max-length`, are refused.
#[test]
fn a_prompt_limit_cuts_every_longer_prompt_and_is_logged_and_saved() {
    let runs = tempfile::tempdir().unwrap();
    let prompts = |name: &str, extra: &[&str]| -> Vec<String> {
        let base = ["--max-steps", "1", "--log-completions-interval", "1"];
        let out = train(runs.path(), name, &[&base[..], extra].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let lines = std::fs::read_to_string(runs.path().join(name).join("completions.jsonl")).unwrap();
        let rows = lines.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
        rows.map(|r| r["prompt"].as_str().unwrap().to_string()).collect()
    };
    let (whole, cut) = (prompts("whole", &[]), prompts("cut", &["--max-prompt-length", "12"]));
    assert_eq!(cut.len(), 6);
    for (c, w) in cut.iter().zip(&whole) {
        assert!(c.len() < w.len() && w.ends_with(c.as_str()), "{c:?} is not the end of {w:?}");
    }
    let share = |name: &str| rows(&runs.path().join(name))[0]["episodes/prompt_truncated_share"].as_f64();
    assert_eq!((share("whole"), share("cut")), (Some(0.0), Some(1.0)));
    let saved = json_file(&runs.path().join("cut/config.json"));
    assert_eq!(saved["run"]["batch"]["prompt_limit"], serde_json::json!({"max_tokens": 12, "truncation": "left"}));

    let out =
        train(runs.path(), "error", &["--max-steps", "1", "--max-prompt-length", "12", "--prompt-truncation", "error"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("'s prompt has") && err.contains("tokens, more than --max-prompt-length 12; raise it"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for (flags, line) in [
        (&["--prompt-truncation", "middle"][..], "--prompt-truncation middle needs --max-prompt-length N"),
        (&["--max-prompt-length", "512"][..], "--max-prompt-length 512: must be at least 1 and below --max-length 512"),
    ] {
        assert_refused(runs.path(), &[&["--max-steps", "1"][..], flags].concat(), line);
    }
}

/// `--metric-for-best-model` keeps the checkpoint of the best evaluation: a new best is saved at its batch
/// boundary even between `--checkpoint-interval`s, `--save-total-limit 1` keeps it beside the newest, and the end
/// names it (console and `final/best_*`). The model's confidence in its greedy answers changes with every update,
/// so which evaluation is best is read back from the logged values. A name the evaluation does not log stops the
/// run in one line naming those it does.
#[test]
fn the_best_evaluation_keeps_its_checkpoint_through_rotation() {
    let runs = tempfile::tempdir().unwrap();
    let metric = "eval/completion_logprob_mean";
    let flags = ["--max-steps", "3", "--eval-every", "1", "--eval-tasks", "2", "--eval-samples", "0"];
    let rotation = ["--checkpoint-interval", "100", "--save-total-limit", "1", "--metric-for-best-model", metric];
    let out = train(runs.path(), "best", &[&flags[..], &rotation[..]].concat());
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let run = runs.path().join("best");
    let logged = rows(&run);
    // Evaluations after batches 1, 2 and 3, logged at their last steps 2, 5 and 8 (checkpoints step_3, 6, 9).
    let evals: Vec<(u64, f64)> =
        logged.iter().filter_map(|r| Some((r["step"].as_u64()? + 1, r.get(metric)?.as_f64()?))).collect();
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [3, 6, 9], "{evals:?}");
    let (best_step, best_value) = evals.iter().fold(evals[0], |b, e| if e.1 > b.1 { *e } else { b });
    let last = logged.last().unwrap();
    assert_eq!(last["final/best_checkpoint_step"].as_f64(), Some(best_step as f64), "{evals:?}");
    assert_eq!(last["final/best_metric"].as_f64(), Some(best_value));
    let kept = common::checkpoint_names(&run.join("checkpoints"));
    let mut wanted = vec![format!("step_{best_step}"), "step_9".to_string()];
    wanted.dedup();
    assert_eq!(kept, wanted, "{evals:?}");
    let state = json_file(&run.join(format!("checkpoints/step_{best_step}/trainer_state.json")));
    assert_eq!(state["best"]["step"], best_step);
    assert!(err.contains(&format!("best {metric} ")), "{err}");

    let out = train(runs.path(), "misspelt", &[&flags[..], &["--metric-for-best-model", "eval/acuracy"]].concat());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--metric-for-best-model eval/acuracy: the evaluation logs no such number; it logs "),
        "{err}"
    );
    assert!(err.contains("eval/accuracy") && !err.contains("panicked"), "{err}");
    for (extra, line) in [
        (&["--greater-is-better", "false"][..], "--greater-is-better needs --metric-for-best-model METRIC"),
        (&["--metric-for-best-model", metric][..], "compares the evaluations of --eval-every N, which is not given"),
    ] {
        assert_refused(runs.path(), extra, line);
    }
}

/// `--early-stopping-patience` (transformers' `EarlyStoppingCallback`) ends the run, as a completed one with its final
/// checkpoint, once that many evaluations in a row have not improved `--metric-for-best-model` by more than
/// `--early-stopping-threshold`. A threshold no change can pass makes every evaluation after the first one without
/// progress, so patience 1 stops after batch 2 of 5. The count is saved: resuming as it was does nothing, and a patience
/// of 2 trains exactly one more batch (without the saved count it would train two).
#[test]
fn early_stopping_ends_the_run_and_its_count_survives_a_resume() {
    let runs = tempfile::tempdir().unwrap();
    let evals = ["--max-steps", "5", "--eval-every", "1", "--eval-tasks", "2", "--eval-samples", "0"];
    let watch = ["--metric-for-best-model", "eval/completion_logprob_mean", "--early-stopping-threshold", "1e9"];
    let flags = [&evals[..], &watch[..]].concat();
    let out = train(runs.path(), "early", &[&flags[..], &["--early-stopping-patience", "1"]].concat());
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("early stopping at step 6: eval/completion_logprob_mean has not improved by more than"));
    let run = runs.path().join("early");
    let last = |run: &Path| rows(run).last().unwrap().clone();
    let end = last(&run);
    assert_eq!(end["final/total_batches"].as_f64(), Some(2.0), "{end:?}");
    assert_eq!(end["final/early_stopped"].as_f64(), Some(1.0), "{end:?}");
    assert_eq!(end["training/completed"].as_f64(), Some(1.0), "{end:?}");
    let state = json_file(&run.join("checkpoints/step_6/trainer_state.json"));
    assert_eq!((state["evals_without_improvement"].as_u64(), state["early_stopped"].as_bool()), (Some(1), Some(true)));

    let again = &[&flags[..], &["--early-stopping-patience", "1", "--resume", "auto"]].concat();
    let out = train(runs.path(), "early", again);
    let err = text(&out.stderr);
    assert!(out.status.success() && err.contains("the run had stopped early at its last checkpoint"), "{err}");
    assert!(!run.join("checkpoints/step_9").exists());

    let longer = &[&flags[..], &["--early-stopping-patience", "2", "--resume", "auto"]].concat();
    let out = train(runs.path(), "early", longer);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let end = last(&run);
    assert_eq!(end["final/total_batches"].as_f64(), Some(3.0), "{end:?}");
    assert_eq!(end["final/early_stopped"].as_f64(), Some(1.0), "{end:?}");

    for (extra, line) in [
        (&["--early-stopping-patience", "2"][..], "--early-stopping-patience needs --metric-for-best-model METRIC"),
        (&[&watch[..], &evals[..2], &["--eval-every", "1", "--early-stopping-patience", "0"]].concat(), "at least 1"),
        (&[&watch[..], &["--eval-every", "1"]].concat(), "--early-stopping-threshold needs --early-stopping-patience"),
    ] {
        assert_refused(runs.path(), extra, line);
    }
}

/// `--save-only-model` (transformers' `save_only_model`) writes checkpoints without the optimizer state: smaller,
/// still a model directory a new run starts from, but one a run cannot resume from, which `--resume` says in one
/// line.
#[test]
fn checkpoints_of_the_weights_alone_start_new_runs_but_do_not_resume() {
    let runs = tempfile::tempdir().unwrap();
    let out = train(runs.path(), "weights", &["--max-steps", "1", "--save-only-model"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ckpt = runs.path().join("weights/checkpoints/step_3");
    assert!(ckpt.join("model.safetensors").exists() && !ckpt.join("optimizer.safetensors").exists());
    assert_eq!(json_file(&ckpt.join("trainer_state.json"))["model_only"], true);

    let resumed = train(runs.path(), "weights", &["--max-steps", "2", "--save-only-model", "--resume", "auto"]);
    let err = text(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(2), "{err}");
    assert!(err.contains("the checkpoint holds the weights alone (saved with --save-only-model)"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");

    let fresh = train(runs.path(), "from-weights", &["--max-steps", "1", "--model", ckpt.to_str().unwrap()]);
    assert!(fresh.status.success(), "{}", text(&fresh.stderr));
}

/// `--filter-overlong-prompts` leaves the `--dataset` tasks whose prompt is over `--max-prompt-length` out before the
/// run (verl's `filter_overlong_prompts`): of 4 short questions (about 230 tokens of prompt with the math system
/// prompt) and 4 long ones (about 560), only short ones are rolled out, uncut, and `--num-train-epochs 1` is one pass
/// over those 4: 2 batches of 2, each task in one. An environment that generates its tasks without end (for either
/// flag), a limit no prompt meets and a missing `--max-prompt-length` are each one line.
#[test]
fn overlong_prompts_are_filtered_out_of_a_dataset_and_an_epoch_is_a_pass_over_the_rest() {
    let runs = tempfile::tempdir().unwrap();
    let data = runs.path().join("rows.jsonl");
    let mut lines = String::new();
    for i in 0..4 {
        let long = "Please show every step of the working. ".repeat(9);
        lines += &format!(
            "{}\n",
            serde_json::json!({"question": format!("What is {i} + 3?"), "answer": format!("#### {}", i + 3)})
        );
        lines += &format!(
            "{}\n",
            serde_json::json!({"question": format!("What is {i} + 5? {long}"), "answer": format!("#### {}", i + 5)})
        );
    }
    std::fs::write(&data, lines).unwrap();
    let dataset = ["--dataset", data.to_str().unwrap(), "--max-prompt-length", "300"];
    let flags = ["--filter-overlong-prompts", "--num-train-epochs", "1", "--log-completions-interval", "1"];
    let out = train(runs.path(), "filtered", &[&dataset[..], &flags[..]].concat());
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("--filter-overlong-prompts: left out 4 of 8 training tasks, whose prompt has more than 300"),
        "{err}"
    );
    let run = runs.path().join("filtered");
    let completions = std::fs::read_to_string(run.join("completions.jsonl")).unwrap();
    let prompts: Vec<String> = completions
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prompts.len(), 12, "2 batches of 2 tasks x 3 episodes");
    assert!(prompts.iter().all(|p| p.contains(" + 3?") && !p.contains("Please show")), "{prompts:?}");
    assert!(err.contains("--num-train-epochs 1: 4 tasks in global batches of 2: 2 batches"), "{err}");
    for i in 0..4 {
        let question = format!("What is {i} + 3?");
        assert_eq!(prompts.iter().filter(|p| p.contains(&question)).count(), 3, "{question} in {prompts:?}");
    }
    let cut: Vec<f64> = rows(&run).iter().filter_map(|r| r.get("episodes/prompt_truncated_share")?.as_f64()).collect();
    assert_eq!(cut, [0.0, 0.0], "no prompt was cut");
    let saved = json_file(&run.join("config.json"));
    assert_eq!(saved["run"]["data"]["filter_overlong_prompts"], true);

    for (extra, line) in [
        (&["--filter-overlong-prompts"][..], "--filter-overlong-prompts needs --max-prompt-length N"),
        (
            &["--filter-overlong-prompts", "--max-prompt-length", "300"][..],
            "environment `math` generates its training tasks without end",
        ),
        (&["--num-train-epochs", "1"][..], "environment `math` generates its training tasks without end"),
        (&["--num-train-epochs", "0"][..], "--num-train-epochs 0: must be a positive number"),
        (
            &["--filter-overlong-prompts", "--dataset", data.to_str().unwrap(), "--max-prompt-length", "100"][..],
            "left out all 8 training tasks: the shortest prompt has",
        ),
    ] {
        let err = assert_refused(runs.path(), extra, line);
        assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    }
}

/// `--shuffle-dataset false` (TRL's `shuffle_dataset`) takes a dataset in its own order, as a curriculum wants: two
/// batches of two tasks roll out the file's rows 0 and 1, then 2 and 3 (by default a seeded permutation does not).
#[test]
fn a_dataset_in_its_own_order_is_rolled_out_in_that_order() {
    let runs = tempfile::tempdir().unwrap();
    let data = runs.path().join("rows.jsonl");
    let row =
        |i: usize| serde_json::json!({"question": format!("What is {i} + 3?"), "answer": format!("#### {}", i + 3)});
    std::fs::write(&data, (0..4).map(|i| format!("{}\n", row(i))).collect::<String>()).unwrap();
    let order = |name: &str, extra: &[&str]| -> Vec<String> {
        let flags = ["--dataset", data.to_str().unwrap(), "--max-steps", "2", "--log-completions-interval", "1"];
        let out = train(runs.path(), name, &[&flags[..], extra].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let completions = std::fs::read_to_string(runs.path().join(name).join("completions.jsonl")).unwrap();
        let mut tasks: Vec<String> = completions
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["prompt"].as_str().unwrap().to_string())
            .map(|p| (0..4).find(|i| p.contains(&format!("What is {i} + 3?"))).unwrap().to_string())
            .collect();
        tasks.dedup();
        tasks
    };
    assert_eq!(order("ordered", &["--shuffle-dataset", "false"]), ["0", "1", "2", "3"]);
    assert_eq!(json_file(&runs.path().join("ordered/config.json"))["run"]["data"]["keep_order"], true);
    assert_ne!(order("shuffled", &[]), ["0", "1", "2", "3"], "the seeded permutation is the identity");
}

/// `--dynamic-sampling` trains on groups whose rewards vary: the random model's replies are scored by their last
/// number, so now and then a group has a right answer, and further rounds roll out more tasks until the batch has
/// two such groups. The second batch (after updates at a high rate) runs out of rounds, keeps equal-reward groups in
/// the missing places and says so. A resumed run rolls out the same extra tasks.
#[test]
fn dynamic_sampling_keeps_groups_whose_rewards_vary_and_resumes_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let env = r#"{"generator": {"max_terms": 2, "max_digits": 1, "ops": "+"}, "last_number_fallback": true}"#;
    let flags = ["--dynamic-sampling", "--max-sampling-rounds", "6", "--max-new-tokens", "24", "--seed", "3"];
    let flags = [&flags[..], &["--env-config", env]].concat();
    let out = train(runs.path(), "dynamic", &[&["--max-steps", "2"], &flags[..]].concat());
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let run = runs.path().join("dynamic");
    let batches: Vec<_> = rows(&run).into_iter().filter(|r| r.contains_key("rollouts/returns_mean")).collect();
    assert_eq!(batches.len(), 2);
    let number = |row: &serde_json::Map<String, serde_json::Value>, key: &str| row[key].as_f64().unwrap();
    let first = &batches[0];
    assert!(number(first, "dynamic_sampling/rounds") > 1.0, "{first:?}");
    assert_eq!(number(first, "dynamic_sampling/filled_groups"), 0.0, "{first:?}");
    assert_eq!(number(first, "rollouts/frac_reward_zero_std"), 0.0, "only groups whose rewards vary: {first:?}");
    let sampled = number(first, "dynamic_sampling/sampled_groups");
    assert!((number(first, "dynamic_sampling/varied_share") * sampled - 2.0).abs() < 1e-9, "{first:?}");
    // Every group rolled out in every round generated its tokens (3 episodes of 24 tokens: the model never stops).
    assert_eq!(number(first, "rollouts/generated_tokens"), sampled * 3.0 * 24.0, "{first:?}");
    for row in &batches {
        let filled = number(row, "dynamic_sampling/filled_groups");
        assert_eq!(number(row, "rollouts/frac_reward_zero_std"), filled / 2.0, "{row:?}");
        assert!(number(row, "dynamic_sampling/rounds") <= 6.0, "{row:?}");
    }
    let second = &batches[1];
    assert!(number(second, "dynamic_sampling/filled_groups") > 0.0, "the second batch filled nothing: {second:?}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("dynamic sampling found")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].starts_with("warning: batch 1: ") && warnings[0].contains("--max-sampling-rounds"), "{err}");
    assert_resume_is_exact(runs.path(), &run, "dynamic-split", &flags);
}

/// `--micro-batch-tokens 600` regroups each step's 3 sequences (about 260 tokens each) into micro-batches of 2 and
/// 1: the first step's loss and gradient norm are those of the same step in one micro-batch, the budget is saved in
/// config.json, the run resumes exactly, and a budget below `--max-length` is refused in one line.
#[test]
fn a_token_budget_per_micro_batch_trains_the_same_step_and_resumes_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let flags = ["--train-batch-size", "3", "--micro-batch-tokens", "600"];
    let out = train(runs.path(), "tokens", &[&["--max-steps", "2"], &flags[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plain = train(runs.path(), "rows", &["--max-steps", "1", "--train-batch-size", "3"]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let first = |name: &str| rows(&runs.path().join(name)).swap_remove(0);
    let (budget, whole) = (first("tokens"), first("rows"));
    for key in ["training_step/loss", "training_step/grad_norm", "training_step/kl"] {
        let (a, b) = (budget[key].as_f64().unwrap(), whole[key].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-7, "{key}: {a} in micro-batches, {b} in one");
    }
    let saved = json_file(&runs.path().join("tokens/config.json"));
    assert_eq!(saved["run"]["batch"]["micro_batch_tokens"], 600);
    assert_resume_is_exact(runs.path(), &runs.path().join("tokens"), "tokens-split", &flags);

    let out = train(runs.path(), "refused", &["--max-steps", "1", "--micro-batch-tokens", "256"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--micro-batch-tokens 256 is below --max-length 512"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
}

/// Tensors of a safetensors file by name, in f32.
fn tensors(path: &Path) -> BTreeMap<String, grpo_sdk::tch::Tensor> {
    let all = grpo_sdk::tch::Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    all.into_iter().map(|(k, v)| (k, v.to_kind(grpo_sdk::tch::Kind::Float))).collect()
}

/// `--sync-ref-model`: with a sync every 3 updates (the last of each batch's three), each checkpoint holds the KL
/// reference `alpha * policy + (1 - alpha) * previous`, the policy that checkpoint's weights and the first previous
/// the model the run started from; a resumed run continues from the saved reference (its second batch's KL equals
/// the uninterrupted run's), and a run without the flag saves none.
#[test]
fn a_synced_kl_reference_is_the_mix_of_the_policy_saved_and_resumed() {
    let runs = tempfile::tempdir().unwrap();
    let flags =
        ["--sync-ref-model", "--ref-model-sync-steps", "3", "--ref-model-mixup-alpha", "0.3", "--kl-weight", "0.05"];
    let out = train(runs.path(), "synced", &[&["--max-steps", "2"], &flags[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = runs.path().join("synced");
    let mut previous = tensors(&tiny_model().join("model.safetensors"));
    for step in [3, 6] {
        let ckpt = run.join(format!("checkpoints/step_{step}"));
        let (policy, reference) =
            (tensors(&ckpt.join("model.safetensors")), tensors(&ckpt.join("kl_reference.safetensors")));
        assert_eq!(reference.keys().collect::<Vec<_>>(), policy.keys().collect::<Vec<_>>());
        for (name, got) in &reference {
            let want = &policy[name] * 0.3 + &previous[name] * 0.7;
            let gap = (got - want).abs().max().double_value(&[]);
            assert!(gap < 1e-6, "step {step}, {name}: the reference is off the mix by {gap}");
        }
        previous = reference;
    }
    let kl = |row: &serde_json::Map<String, serde_json::Value>| row.get("rollouts/kl_mean").and_then(|v| v.as_f64());
    let kls: Vec<f64> = rows(&run).iter().filter_map(kl).collect();
    assert_eq!(kls.len(), 2);
    assert!(kls[1] > 0.0, "the second batch's sampling policy equals its reference: {kls:?}");
    assert_resume_is_exact(runs.path(), &run, "synced-split", &flags);

    let plain = train(runs.path(), "plain", &["--max-steps", "1"]);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    assert!(!runs.path().join("plain/checkpoints/step_3/kl_reference.safetensors").exists());
}

/// The reference a KL penalty in the reward alone (`--kl-weight 0`) compares against is restored on resume too: synced
/// after every batch, a resumed run's second batch penalises as the uninterrupted run's does.
#[test]
fn a_synced_reference_of_the_reward_penalty_alone_resumes_exactly() {
    let runs = tempfile::tempdir().unwrap();
    let flags = ["--kl-weight", "0", "--reward-kl-coef", "0.5", "--sync-ref-model", "--ref-model-sync-steps", "3"];
    let out = train(runs.path(), "reward-synced", &[&["--max-steps", "2"], &flags[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = runs.path().join("reward-synced");
    assert!(run.join("checkpoints/step_3/kl_reference.safetensors").exists());
    // A fixed coefficient is the flag's, not saved state that would outlive a change of it.
    let state = json_file(&run.join("checkpoints/step_3/trainer_state.json"));
    assert!(state.get("reward_kl_coef").is_none(), "{state}");
    assert_resume_is_exact(runs.path(), &run, "reward-synced-split", &flags);
}

/// `--chat-template-kwargs` reaches the chat template in training: Qwen3's template with `enable_thinking` false
/// closes an empty thinking block after the generation prompt of every rollout. The variables are saved with the
/// run, and a resume that changes them is refused.
#[test]
fn chat_template_kwargs_reach_the_rollouts_prompts_and_are_saved() {
    let runs = tempfile::tempdir().unwrap();
    let model = common::tiny_with_template(runs.path(), "qwen3-template", "qwen3", "Qwen-Qwen3-0.6B.jinja");
    let prompts = |name: &str, extra: &[&str]| -> Vec<String> {
        let base = ["--model", model.to_str().unwrap(), "--max-steps", "1", "--log-completions-interval", "1"];
        let out = train(runs.path(), name, &[&base[..], extra].concat());
        assert!(out.status.success(), "{}", text(&out.stderr));
        let lines = std::fs::read_to_string(runs.path().join(name).join("completions.jsonl")).unwrap();
        let rows = lines.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
        rows.map(|r| r["prompt"].as_str().unwrap().to_string()).collect()
    };
    let kwargs = ["--chat-template-kwargs", r#"{"enable_thinking": false}"#];
    let (thinking, not) = (prompts("thinking", &[]), prompts("not", &kwargs));
    assert_eq!(not.len(), 6);
    assert!(not.iter().all(|p| p.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n")), "{not:?}");
    assert!(thinking.iter().all(|p| p.ends_with("<|im_start|>assistant\n")), "{thinking:?}");
    let saved = json_file(&runs.path().join("not/config.json"));
    assert_eq!(saved["run"]["model"]["chat_template_kwargs"], serde_json::json!({"enable_thinking": false}));
    let resumed = train(runs.path(), "not", &["--model", model.to_str().unwrap(), "--max-steps", "2", "--resume"]);
    assert_eq!(resumed.status.code(), Some(2), "{}", text(&resumed.stderr));
    assert!(
        text(&resumed.stderr).contains("--chat-template-kwargs: {\"enable_thinking\":false} -> {}"),
        "{}",
        text(&resumed.stderr)
    );
}

/// `--reward-kl-coef` with a target. The first batch's policy is its reference, so the penalty is exactly 0 (the old
/// log-probs are recomputed by the same forward pass as the reference's) and a group whose rewards are equal gets no
/// advantage; after an update it is not, and such a group's advantages come from the penalty alone. The adaptive
/// controller's coefficient for the second batch follows from the first batch's logged mean KL, and a resumed run
/// continues with the saved coefficient.
#[test]
fn a_kl_penalty_in_the_reward_drives_the_advantages_and_adapts_its_coefficient() {
    let runs = tempfile::tempdir().unwrap();
    // The random model's replies scored by their last number: now and then a group has a right answer, which moves
    // the policy in the first batch.
    let env = r#"{"generator": {"max_terms": 2, "max_digits": 1, "ops": "+"}, "last_number_fallback": true}"#;
    let kl =
        ["--kl-weight", "0", "--reward-kl-coef", "0.5", "--reward-kl-target", "0.001", "--reward-kl-horizon", "100"];
    let varied = ["--env-config", env, "--seed", "3", "--max-new-tokens", "24", "--rollouts-per-step", "4"];
    // Micro-batches of 4: 3 optimizer steps per batch, as `assert_resume_is_exact` expects.
    let flags = [&kl[..], &varied[..], &["--train-batch-size", "4", "--log-completions-interval", "1"]].concat();
    let out = train(runs.path(), "kl", &[&["--max-steps", "2"], &flags[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = runs.path().join("kl");
    let batches: Vec<_> = rows(&run).into_iter().filter(|r| r.contains_key("rollouts/returns_mean")).collect();
    let number = |row: &serde_json::Map<String, serde_json::Value>, key: &str| row[key].as_f64().unwrap();
    let (first, second) = (&batches[0], &batches[1]);
    assert_eq!(number(first, "rollouts/reward_kl_coef"), 0.5);
    assert_eq!(number(first, "rollouts/reward_kl_mean"), 0.0, "the policy is its reference: {first:?}");
    assert!(number(first, "rollouts/returns_std") > 0.0, "no reward varied: nothing moves the policy");
    // 0 is 100% under the target: -0.2 (clipped) x 12 sequences / 100.
    assert!((number(second, "rollouts/reward_kl_coef") - 0.5 * (1.0 - 0.2 * 0.12)).abs() < 1e-12, "{second:?}");
    assert!(number(second, "rollouts/reward_kl_mean") > 0.0, "{second:?}");
    // Per batch, each group's advantages: those of a group whose rewards are all equal are 0 only in the first.
    let lines = std::fs::read_to_string(run.join("completions.jsonl")).unwrap();
    let completions: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (batch, step) in [(0, 0), (1, 3)] {
        let rows: Vec<&serde_json::Value> = completions.iter().filter(|c| c["step"] == step).collect();
        assert_eq!(rows.len(), 12);
        let equal: Vec<Vec<f64>> = rows
            .chunks(3)
            .filter(|g| g.iter().all(|c| c["rewards"]["total"] == g[0]["rewards"]["total"]))
            .map(|g| g.iter().map(|c| c["advantage"].as_f64().unwrap()).collect())
            .collect();
        assert!(!equal.is_empty(), "batch {batch}: every group's rewards varied");
        let moved = equal.iter().flatten().any(|a| a.abs() > 0.1);
        assert_eq!(moved, batch == 1, "batch {batch}: advantages of equal-reward groups {equal:?}");
    }
    assert_eq!(json_file(&run.join("config.json"))["run"]["loss"]["reward_kl"]["estimator"], "k1");
    assert_resume_is_exact(runs.path(), &run, "kl-split", &flags);
}

/// `--reward-weights` weighs the environment's components in each return (math's `answer` three times here); the
/// component is still logged unweighted, the weights are saved with the run, and a name no episode reported is
/// warned about. `--multi-objective-aggregation normalize-then-sum` on that single component gives GRPO's advantages.
#[test]
fn reward_weights_scale_the_returns_and_a_misspelt_component_is_named() {
    let runs = tempfile::tempdir().unwrap();
    let env = r#"{"generator": {"max_terms": 2, "max_digits": 1, "ops": "+"}, "last_number_fallback": true}"#;
    let flags = ["--max-steps", "1", "--max-new-tokens", "24", "--seed", "3", "--env-config", env];
    let flags = [&flags[..], &["--rollouts-per-step", "4", "--group-size", "4", "--train-batch-size", "16"]].concat();
    let plain = train(runs.path(), "plain", &flags);
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let weights = r#"{"answer": 3, "anwser": 2}"#;
    let weighted = train(runs.path(), "weighted", &[&flags[..], &["--reward-weights", weights]].concat());
    let err = text(&weighted.stderr);
    assert!(weighted.status.success(), "{err}");
    let first = |run: &str| rows(&runs.path().join(run)).into_iter().next().unwrap();
    let (a, b) = (first("plain"), first("weighted"));
    let number = |row: &serde_json::Map<String, serde_json::Value>, key: &str| row[key].as_f64().unwrap();
    // The same rollouts (nothing was trained before them), their returns three times as large.
    assert_eq!(number(&a, "rollout_rewards/answer"), number(&b, "rollout_rewards/answer"));
    assert!(number(&a, "rollouts/returns_mean") > 0.0, "no episode earned a reward: {a:?}");
    assert!((number(&b, "rollouts/returns_mean") - 3.0 * number(&a, "rollouts/returns_mean")).abs() < 1e-12);
    assert!((number(&b, "rollouts/returns_std") - 3.0 * number(&a, "rollouts/returns_std")).abs() < 1e-12);
    let config = json_file(&runs.path().join("weighted/config.json"));
    assert_eq!(config["run"]["rewards"]["weights"], serde_json::json!({"answer": 3.0, "anwser": 2.0}));
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("--reward-weights names")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("anwser") && warnings[0].ends_with("components reported were: answer"), "{err}");

    // Normalize-then-sum with a single component: each group's answers normalised, and normalised again by the
    // algorithm, are GRPO's advantages up to the two epsilons; the logged returns stay the plain ones.
    let gdpo = ["--multi-objective-aggregation", "normalize_then_sum"];
    let out = train(runs.path(), "gdpo", &[&flags[..], &gdpo].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let c = first("gdpo");
    assert_eq!(number(&c, "rollouts/returns_mean"), number(&a, "rollouts/returns_mean"));
    let (plain_std, gdpo_std) = (number(&a, "rollouts/advantages_std"), number(&c, "rollouts/advantages_std"));
    assert!(plain_std > 0.1 && (gdpo_std - plain_std).abs() < 1e-3, "{plain_std} vs {gdpo_std}");
    let config = json_file(&runs.path().join("gdpo/config.json"));
    assert_eq!(config["run"]["rewards"]["aggregation"], "normalize-then-sum");

    let bad = train(runs.path(), "bad", &[&flags[..], &["--reward-weights", r#"{"answer": "x"}"#]].concat());
    let err = common::refused(&bad);
    assert!(err.contains("--reward-weights: the weight of `answer` is \"x\""), "{err}");
}

/// `--overlong-buffer` (DAPO's overlong reward shaping): the random model never ends a reply, so every turn runs to
/// --max-new-tokens 6 and, with a buffer of 4 and a factor of 0.5, earns (6 - 2) / 4 x -0.5 = -0.5, logged as the
/// component `overlong_penalty` and counted in the return (weighted, here by 2).
#[test]
fn the_overlong_penalty_is_a_reward_component_of_every_cut_turn() {
    let runs = tempfile::tempdir().unwrap();
    let flags = ["--max-steps", "1", "--overlong-buffer", "4", "--overlong-penalty-factor", "0.5"];
    let weights = ["--reward-weights", r#"{"overlong_penalty": 2}"#];
    let out = train(runs.path(), "overlong", &[&flags[..], &weights[..]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let row = rows(&runs.path().join("overlong")).into_iter().next().unwrap();
    let number = |key: &str| row[key].as_f64().unwrap();
    assert_eq!(number("completions/min_length"), 6.0, "{row:?}");
    assert_eq!(number("rollout_rewards/overlong_penalty"), -0.5);
    assert!((number("rollouts/returns_mean") - (number("rollout_rewards/answer") - 1.0)).abs() < 1e-12, "{row:?}");
    let config = json_file(&runs.path().join("overlong/config.json"));
    assert_eq!(config["run"]["rewards"]["overlong"], serde_json::json!({"buffer": 4, "factor": 0.5}));

    let bad = train(runs.path(), "bad", &["--max-steps", "1", "--overlong-buffer", "7"]);
    let err = common::refused(&bad);
    assert!(err.contains("--overlong-buffer 7: must be from 1 to --max-new-tokens (6)"), "{err}");
}

/// `--logprob-temperature sampling` scores the tokens under the distribution they were drawn from: the same
/// rollouts as at temperature one, the trainer's recomputed old log-probs still equal the sampler's record (ratios 1),
/// and the policy's entropy is that of the sharper distribution at temperature 0.5. Greedy sampling has no such
/// distribution and is refused.
#[test]
fn log_probs_at_the_sampling_temperature_agree_with_the_samplers_record() {
    let runs = tempfile::tempdir().unwrap();
    let flags = ["--max-steps", "1", "--temperature", "0.5", "--recompute-old-logprobs", "always"];
    let one = train(runs.path(), "one", &flags);
    assert!(one.status.success(), "{}", text(&one.stderr));
    let scaled = train(runs.path(), "scaled", &[&flags[..], &["--logprob-temperature", "sampling"]].concat());
    assert!(scaled.status.success(), "{}", text(&scaled.stderr));
    let first = |run: &str| rows(&runs.path().join(run)).into_iter().next().unwrap();
    let (a, b) = (first("one"), first("scaled"));
    let number = |row: &serde_json::Map<String, serde_json::Value>, key: &str| row[key].as_f64().unwrap();
    for key in ["rollouts/returns_mean", "completions/mean_length", "rollouts/generated_tokens"] {
        assert_eq!(a[key], b[key], "{key}: the flag changed the sampling");
    }
    for row in [&a, &b] {
        let (mean, max) = (number(row, "rollouts/is_ratio_mean"), number(row, "rollouts/is_ratio_max"));
        assert!((mean - 1.0).abs() < 1e-4 && (max - 1.0).abs() < 1e-3, "sampler and trainer disagree: {mean} {max}");
    }
    let (ea, eb) = (number(&a, "training_step/entropy"), number(&b, "training_step/entropy"));
    assert!(eb < ea - 0.1, "entropy at temperature 0.5 {eb}, at 1 {ea}");
    let config = json_file(&runs.path().join("scaled/config.json"));
    assert_eq!(config["run"]["loss"]["logprob_temperature"], "sampling");

    let greedy_flags = ["--temperature", "0", "--eval-samples", "0", "--logprob-temperature", "sampling"];
    let err = common::refused(&train(runs.path(), "greedy", &greedy_flags));
    assert!(err.contains("--logprob-temperature sampling divides the logits by --temperature, which is 0"), "{err}");
}

#[test]
fn an_unknown_algorithm_lists_the_available_ones() {
    let runs = tempfile::tempdir().unwrap();
    let out = Command::new(common::host_exe())
        .args(["--algo", "ppo", "--env", "math", "--no-wandb", "--runs-dir", runs.path().to_str().unwrap()])
        .env_remove("GRPO_PLUGIN_PATH")
        .env("XDG_DATA_HOME", runs.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("drgrpo") && err.contains("grpo"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // W&B's choices are checked with the command line, before any plugin or model is loaded.
    for (flag, value, choices) in
        [("--wandb-mode", "onlin", "online, offline or disabled"), ("--wandb-resume", "sometimes", "allow, must")]
    {
        let out = Command::new(common::host_exe())
            .args(["--algo", "ppo", "--env", "math", flag, value, "--runs-dir", runs.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(err.contains(&format!("invalid value '{value}' for '{flag}")) && err.contains(choices), "{err}");
    }
}

/// Run an oracle script from tests/oracles with the venv's Python and parse the JSON it prints.
fn oracle(script: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = Command::new(common::venv_python())
        .arg(common::workspace_root().join("tests/oracles").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script} failed: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{script}: {e}: {stdout}"))
}

/// Full and LoRA checkpoints load in transformers and peft: the adapter of every linear layer (the default), of the
/// projections `--lora-target-modules` names, whose adapter_config.json says which they are, and a DoRA adapter
/// (`--use-dora`), whose trained magnitudes peft applies as the merged weights have them.
#[test]
fn checkpoints_load_in_transformers_and_peft() {
    let runs = tempfile::tempdir().unwrap();
    let full = train(runs.path(), "full", &["--max-steps", "1"]);
    assert!(full.status.success(), "{}", text(&full.stderr));
    let base = tiny_model();
    let all = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"];
    for (run, targets, expected) in [
        ("lora", "all-linear", &all[..]),
        ("lora-qvd", "q_proj,v_proj,down_proj", &["down_proj", "q_proj", "v_proj"]),
        ("dora", "q_proj,v_proj,down_proj", &["down_proj", "q_proj", "v_proj"]),
    ] {
        let dora: &[&str] = if run == "dora" { &["--use-dora"] } else { &[] };
        let lora = [&["--lora-rank", "4", "--lora-alpha", "8", "--lora-target-modules", targets], dora].concat();
        let first = train(runs.path(), run, &[&["--max-steps", "1"], &lora[..]].concat());
        assert!(first.status.success(), "{}", text(&first.stderr));
        let step_3 = runs.path().join(run).join("checkpoints/step_3");
        let perturbed = oracle("checkpoint_load.py", &["--perturb".as_ref(), step_3.as_os_str()]);
        assert!(perturbed["perturbed"].as_u64().unwrap() > 0, "{perturbed}");
        let resume = ["--max-steps", "2", "--save-merged", "--resume", "auto"];
        let resumed = train(runs.path(), run, &[&resume[..], &lora[..]].concat());
        assert!(resumed.status.success(), "{}", text(&resumed.stderr));

        let adapter = runs.path().join(run).join("checkpoints/step_6");
        let mut args = vec!["--base".as_ref(), base.as_os_str(), "--adapter".as_ref(), adapter.as_os_str()];
        let full_ckpt = runs.path().join("full/checkpoints/step_3");
        if run == "lora" {
            args.extend(["--full".as_ref(), full_ckpt.as_os_str()]);
        }
        let found = oracle("checkpoint_load.py", &args);
        let empty = serde_json::json!([]);
        if run == "lora" {
            assert_eq!(found["full_missing"], empty, "{found}");
            assert_eq!(found["full_unexpected"], empty, "{found}");
            assert_eq!(found["full_finite"], true);
        }
        assert_eq!(found["adapter_unused"], empty, "{found}");
        assert_eq!(found["adapter_missing"], empty, "{found}");
        assert_eq!(found["adapter_targets"], serde_json::json!(expected), "{run}: {found}");
        let merged = found["peft_vs_merged_max_abs"].as_f64().unwrap();
        assert!(merged <= 1e-4, "{run}: peft's logits differ from the merged checkpoint's by {merged}");
        let moved = found["peft_vs_base_max_abs"].as_f64().unwrap();
        assert!(moved > 1e-5, "{run}: the trained adapter does not change peft's logits ({moved})");
    }
    let bad = train(runs.path(), "bad", &["--max-steps", "1", "--lora-rank", "4", "--lora-target-modules", "qproj"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    assert!(
        text(&bad.stderr).contains("`qproj` is not a projection: use all-linear or some of q_proj"),
        "{}",
        text(&bad.stderr)
    );
}

/// A mixture of experts (the tiny Qwen2-MoE: routed experts and a shared one) trains, resumes exactly, and saves
/// full checkpoints transformers loads with every expert, and LoRA adapters peft applies as the merged weights.
#[test]
fn a_mixture_of_experts_trains_resumes_exactly_and_saves_what_transformers_and_peft_load() {
    let runs = tempfile::tempdir().unwrap();
    let base = common::workspace_root().join("tests/fixtures/model/tiny/qwen2_moe");
    let model = ["--model", base.to_str().unwrap()];
    let full = train(runs.path(), "full", &[&["--max-steps", "2"], &model[..]].concat());
    assert!(full.status.success(), "{}", text(&full.stderr));
    // TRL's default load-balancing loss is part of every update.
    for row in rows(&runs.path().join("full")) {
        let aux = row["training_step/aux_loss"].as_f64().unwrap_or(f64::NAN);
        assert!(aux.is_finite() && aux > 0.0, "{row:?}");
    }
    assert_resume_is_exact(runs.path(), &runs.path().join("full"), "split", &model);
    let step_6 = runs.path().join("full/checkpoints/step_6");
    let found =
        oracle("checkpoint_load.py", &["--base".as_ref(), base.as_os_str(), "--full".as_ref(), step_6.as_os_str()]);
    let empty = serde_json::json!([]);
    assert_eq!((&found["full_missing"], &found["full_unexpected"]), (&empty, &empty), "{found}");
    assert_eq!(found["full_finite"], true);

    let lora = [&model[..], &["--lora-rank", "4", "--lora-alpha", "8"]].concat();
    let first = train(runs.path(), "lora", &[&["--max-steps", "1"], &lora[..]].concat());
    assert!(first.status.success(), "{}", text(&first.stderr));
    let step_3 = runs.path().join("lora/checkpoints/step_3");
    oracle("checkpoint_load.py", &["--perturb".as_ref(), step_3.as_os_str()]);
    let resumed =
        train(runs.path(), "lora", &[&["--max-steps", "2", "--save-merged", "--resume", "auto"], &lora[..]].concat());
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let adapter = runs.path().join("lora/checkpoints/step_6");
    let found =
        oracle("checkpoint_load.py", &["--base".as_ref(), base.as_os_str(), "--adapter".as_ref(), adapter.as_os_str()]);
    assert_eq!((&found["adapter_unused"], &found["adapter_missing"]), (&empty, &empty), "{found}");
    let all = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"];
    assert_eq!(found["adapter_targets"], serde_json::json!(all), "the shared expert's and attention's: {found}");
    let merged = found["peft_vs_merged_max_abs"].as_f64().unwrap();
    assert!(merged <= 1e-4, "peft's logits differ from the merged checkpoint's by {merged}: {found}");
    assert!(found["peft_vs_base_max_abs"].as_f64().unwrap() > 1e-5, "{found}");
}

/// gpt-oss (the tiny one: attention sinks, a biased router, stacked experts with biases) trains fully from its MXFP4
/// checkpoint, as the hub stores it, and with LoRA, and saves a full checkpoint transformers loads with nothing
/// missing or unexpected (the experts dequantized, the config without its quantization), and an adapter peft applies
/// with every tensor used, on the attention projections alone.
#[test]
fn gpt_oss_trains_and_saves_what_transformers_and_peft_load() {
    let runs = tempfile::tempdir().unwrap();
    let tiny = common::workspace_root().join("tests/fixtures/model/tiny");
    let full = trains_for_transformers_and_peft(
        runs.path(),
        &tiny.join("gpt_oss_mxfp4"),
        &tiny.join("gpt_oss"),
        &["k_proj", "o_proj", "q_proj", "v_proj"],
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("config.json")).unwrap()).unwrap();
    assert!(saved.get("quantization_config").is_none() && saved["model_type"] == "gpt_oss", "{saved}");
}

/// Phi (its `dense` output projection, ungated `fc1`/`fc2` MLP and biased `lm_head`), Command R+ (`cohere`, its
/// q/k norms with a gain per head), GPT-NeoX (`gpt_neox.` names, the fused per-head `query_key_value`, the head
/// `embed_out`) and GPT-2 (learned positions, `Conv1D` projections stored `[in, out]`, whose adapters peft applies
/// with `fan_in_fan_out` and whose merged update is transposed), OLMo 1 (norms without parameters, `clip_qkv`),
/// nanochat (parameter-free norms, `fc1`/`fc2`), EXAONE 3 (read under its own names, saved under Llama's) and
/// StableLM 2 12B (a q/k LayerNorm module per head) train fully and with LoRA on every projection, and save what
/// transformers and peft load as they load the hub's.
#[test]
fn newer_families_train_and_save_what_transformers_and_peft_load() {
    let tiny = common::workspace_root().join("tests/fixtures/model/tiny");
    for (fam, targets) in [
        ("phi", &["dense", "fc1", "fc2", "k_proj", "q_proj", "v_proj"][..]),
        ("cohere", &["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"][..]),
        ("gpt_neox", &["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"][..]),
        ("gpt2", &["c_attn", "c_fc", "c_proj"][..]),
        ("olmo", &["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"][..]),
        ("nanochat", &["fc1", "fc2", "k_proj", "o_proj", "q_proj", "v_proj"][..]),
        ("exaone", &["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"][..]),
        ("stablelm_12b", &["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"][..]),
    ] {
        let runs = tempfile::tempdir().unwrap();
        trains_for_transformers_and_peft(runs.path(), &tiny.join(fam), &tiny.join(fam), targets);
    }
    // GPT-2's episodes must fit its learned positions (the tiny one's 512): a longer --max-length is refused at once.
    let runs = tempfile::tempdir().unwrap();
    let gpt2 = tiny.join("gpt2");
    let gpt2 = ["--model", gpt2.to_str().unwrap(), "--max-length", "1024"];
    assert_refused(runs.path(), &gpt2, "--max-length 1024 is longer than this gpt2 model's 512 learned positions");
}

/// `--chat-template` gives a base model (the tiny Llama with its template taken out) the template its conversations
/// are rendered with. Without it the run is refused in one line; with it the run trains, its checkpoint keeps the
/// template as chat_template.jinja beside the LoRA adapter, `grpo-host eval` scores that checkpoint with it, and a
/// resume without the flag is refused as a changed setting.
#[test]
fn a_chat_template_lets_a_base_model_train() {
    let runs = tempfile::tempdir().unwrap();
    let base = runs.path().join("model");
    common::copy_dir(&tiny_model(), &base);
    let config_path = base.join("tokenizer_config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let template = config.as_object_mut().unwrap().remove("chat_template").unwrap();
    let template = template.as_str().unwrap();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let file = runs.path().join("template.jinja");
    std::fs::write(&file, template).unwrap();

    let model = ["--model", base.to_str().unwrap(), "--lora-rank", "4"];
    assert_refused(runs.path(), &[&model[..], &["--max-steps", "1"]].concat(), "has no chat template");
    let with = [&model[..], &["--chat-template", file.to_str().unwrap()]].concat();
    let out = train(runs.path(), "lora", &[&with[..], &["--max-steps", "1"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ckpt = runs.path().join("lora/checkpoints/step_3");
    assert_eq!(std::fs::read_to_string(ckpt.join("chat_template.jinja")).unwrap(), template);

    let summary = runs.path().join("eval.json");
    let eval = Command::new(common::host_exe())
        .args(["eval", "--checkpoint", ckpt.to_str().unwrap(), "--env", "math", "--device", "cpu"])
        .args(["--eval-tasks", "2", "--max-new-tokens", "4", "--output", summary.to_str().unwrap()])
        .env_remove("GRPO_PLUGIN_PATH")
        .env("XDG_DATA_HOME", runs.path().join("xdg"))
        .output()
        .unwrap();
    assert!(eval.status.success(), "{}", text(&eval.stderr));
    assert!(summary.exists());

    let resumed = train(runs.path(), "lora", &[&model[..], &["--max-steps", "2", "--resume", "auto"]].concat());
    assert_eq!(resumed.status.code(), Some(2), "{}", text(&resumed.stderr));
    assert!(text(&resumed.stderr).contains("--chat-template"), "{}", text(&resumed.stderr));
}

/// Train for one batch (three updates) in full from `full_from` and with LoRA (`--save-merged`) from `base`, check
/// that transformers loads the full checkpoint against `base` with nothing missing or unexpected, and that peft
/// applies the adapter with every tensor used, on the projections `targets` names (sorted), with the merged weights'
/// logits; returns the full checkpoint.
fn trains_for_transformers_and_peft(runs: &Path, full_from: &Path, base: &Path, targets: &[&str]) -> PathBuf {
    let full = train(runs, "full", &["--model", full_from.to_str().unwrap(), "--max-steps", "1"]);
    assert!(full.status.success(), "{}", text(&full.stderr));
    let step_3 = runs.join("full/checkpoints/step_3");
    let found =
        oracle("checkpoint_load.py", &["--base".as_ref(), base.as_os_str(), "--full".as_ref(), step_3.as_os_str()]);
    let empty = serde_json::json!([]);
    assert_eq!((&found["full_missing"], &found["full_unexpected"]), (&empty, &empty), "{found}");
    assert_eq!(found["full_finite"], true);

    let model = ["--model", base.to_str().unwrap(), "--max-steps", "1"];
    let lora = [&model[..], &["--lora-rank", "4", "--lora-alpha", "8", "--save-merged"]].concat();
    let adapted = train(runs, "lora", &lora);
    assert!(adapted.status.success(), "{}", text(&adapted.stderr));
    let adapter = runs.join("lora/checkpoints/step_3");
    let found =
        oracle("checkpoint_load.py", &["--base".as_ref(), base.as_os_str(), "--adapter".as_ref(), adapter.as_os_str()]);
    assert_eq!((&found["adapter_unused"], &found["adapter_missing"]), (&empty, &empty), "{found}");
    assert_eq!(found["adapter_targets"], serde_json::json!(targets), "{found}");
    let merged = found["peft_vs_merged_max_abs"].as_f64().unwrap();
    assert!(merged <= 1e-4, "{}: peft's logits differ from the merged checkpoint's by {merged}", base.display());
    step_3
}

/// Send `signal` to a long run once it has logged a few rows: it stops at a batch boundary (after finishing the batch
/// in flight when its updates had begun, else at the boundary the batch started from), saves a checkpoint there,
/// exits with `code`, and resumes from it.
fn stop_with_signal(signal: &str, code: i32) {
    let runs = tempfile::tempdir().unwrap();
    let mut child = command(runs.path(), "stopped", &["--max-steps", "100000", "--checkpoint-interval", "100000"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = runs.path().join("stopped");
    let started = std::time::Instant::now();
    while rows_so_far(&run) < 2 {
        assert!(started.elapsed().as_secs() < 300, "no metrics after 300 s");
        assert!(child.try_wait().unwrap().is_none(), "training ended on its own");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let killed = Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    eprintln!("{}", stderr.lines().find(|l| l.starts_with("stopped by")).unwrap_or("no stop line"));

    // Whether the batch in flight was finished or dropped, the rows are an uninterrupted run's (no final values) and
    // end at the checkpoint's boundary; the summary records the stop.
    let all = rows(&run);
    let last = all.last().unwrap();
    assert!(!last.contains_key("final/total_steps") && !last.contains_key("training/completed"), "{last:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let steps = last["step"].as_u64().unwrap() + 1;
    assert_eq!(summary["final/total_steps"].as_u64(), Some(steps), "{summary}");
    assert_eq!(summary["training/completed"].as_f64(), Some(0.0), "{summary}");
    let batches = summary["final/total_batches"].as_u64().unwrap();
    // 3 optimizer steps per batch: the checkpoint is at a batch boundary.
    assert!(batches >= 1 && steps == 3 * batches, "stopped at step {steps} after {batches} batches\n{stderr}");
    let ckpt = run.join(format!("checkpoints/step_{steps}"));
    assert!(ckpt.join("trainer_state.json").exists(), "no checkpoint at {}", ckpt.display());
    assert!(!std::fs::read_dir(run.join("checkpoints")).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));
    // The stopped run resumes from that checkpoint.
    let next = (batches + 1).to_string();
    let resumed = train(runs.path(), "stopped", &["--max-steps", &next, "--resume", "auto"]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(text(&resumed.stderr).contains(&format!("step_{steps}")), "{}", text(&resumed.stderr));
}

#[test]
fn ctrl_c_stops_at_a_batch_boundary_saves_a_checkpoint_and_exits_130() {
    stop_with_signal("-INT", 130);
}

#[test]
fn sigterm_stops_at_a_batch_boundary_saves_a_checkpoint_and_exits_143() {
    stop_with_signal("-TERM", 143);
}

/// A resumed run must compute what the saved run did: a changed --lr is refused in one line naming it, and accepted
/// (and recorded in config.json) with --allow-config-change; logging flags may change freely.
#[test]
fn resume_refuses_a_changed_learning_rate_unless_allowed() {
    let runs = tempfile::tempdir().unwrap();
    let first = train(runs.path(), "guarded", &["--max-steps", "1"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let changed = train(runs.path(), "guarded", &["--max-steps", "2", "--resume", "auto", "--lr", "5e-4"]);
    assert_eq!(changed.status.code(), Some(2), "{}", text(&changed.stderr));
    let err = text(&changed.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--lr: 0.001 -> 0.0005") && err.contains("--allow-config-change"), "{err}");
    let allowed = [
        "--max-steps",
        "2",
        "--resume",
        "auto",
        "--lr",
        "5e-4",
        "--allow-config-change",
        "--log-completions-interval",
        "3",
    ];
    let resumed = train(runs.path(), "guarded", &allowed);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let config = json_file(&runs.path().join("guarded/config.json"));
    assert_eq!(config["config_changes"][0]["changes"][0], "--lr: 0.001 -> 0.0005", "{config}");
}

/// Complete rows in metrics.jsonl so far (a half-written last line does not count).
fn rows_so_far(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()).count())
        .unwrap_or(0)
}

/// The last value `key` was logged with, from any row.
fn last_logged(all: &[serde_json::Map<String, serde_json::Value>], key: &str) -> serde_json::Value {
    all.iter().rev().find_map(|r| r.get(key).cloned()).unwrap_or_else(|| panic!("nothing logged {key}"))
}

/// One optimizer step of each shipped algorithm on every device libtorch offers (CUDA in its default bf16 mixed
/// precision), and of `grpo` with a KL penalty in the reward, a reference synced after the step and an entropy bonus
/// (the log-prob node's differentiable entropy): the loss, the KL and the gradient norm come out finite, the GPU memory metrics are the caching allocator's (0 on the CPU), and with
/// `--deterministic` a second run logs the same numbers.
#[test]
fn one_step_of_each_algorithm_on_every_device() {
    let kl_in_reward =
        ["--reward-kl-coef", "0.1", "--sync-ref-model", "--ref-model-sync-steps", "1", "--entropy-coeff", "0.01"];
    for device in common::devices("one_step_of_each_algorithm_on_every_device") {
        let flag = if device.is_cuda() { "cuda" } else { "cpu" };
        for (algo, extra) in [("grpo", &[][..]), ("drgrpo", &[]), ("grpo", &kl_in_reward)] {
            let runs = tempfile::tempdir().unwrap();
            let args = [&["--algo", algo, "--device", flag, "--max-steps", "1", "--deterministic"], extra].concat();
            for name in ["one", "again"] {
                let out = train(runs.path(), name, &args);
                assert!(out.status.success(), "{algo} on {flag}: {}", text(&out.stderr));
            }
            let (one, again) = (runs.path().join("one"), runs.path().join("again"));
            // The memory the allocator holds may differ between runs; every computed number may not.
            let computed = |run: &Path| -> Vec<BTreeMap<String, serde_json::Value>> {
                let rows = comparable(run).into_iter();
                rows.map(|r| r.into_iter().filter(|(k, _)| !k.starts_with("system/gpu_memory")).collect()).collect()
            };
            assert_eq!(computed(&one), computed(&again), "{algo} on {flag}: --deterministic reruns differ");
            let all = rows(&one);
            for key in ["training_step/loss", "training_step/kl", "training_step/grad_norm"] {
                let v = last_logged(&all, key).as_f64().unwrap_or(f64::NAN);
                assert!(v.is_finite(), "{algo} on {flag}: {key} = {v}");
            }
            // The tiny model's vocabulary has 256 tokens: an entropy lies in [0, ln 256], and a random model's is
            // near the top.
            let entropy = last_logged(&all, "training_step/entropy").as_f64().unwrap_or(f64::NAN);
            assert!(entropy > 1.0 && entropy <= 256f64.ln() + 1e-6, "{algo} on {flag}: entropy {entropy}");
            let want = if device.is_cuda() { "cuda:0" } else { "cpu" };
            assert_eq!(last_logged(&all, "accelerate/device"), want, "{algo}");
            let allocated = last_logged(&all, "system/gpu_memory_allocated_gb").as_f64().unwrap();
            assert_eq!(allocated > 0.0, device.is_cuda(), "{algo} on {flag}: gpu_memory_allocated_gb = {allocated}");
            if !extra.is_empty() {
                // The policy is its reference at the first batch: the penalty is exactly 0.
                assert_eq!(last_logged(&all, "rollouts/reward_kl_mean").as_f64(), Some(0.0), "{algo} on {flag}");
                assert!(one.join("checkpoints/step_3/kl_reference.safetensors").exists(), "{algo} on {flag}");
            }
        }
    }
}

#[test]
fn drgrpo_trains_two_batches_of_calc_tools() {
    let runs = tempfile::tempdir().unwrap();
    let out = train(runs.path(), "calc", &["--max-steps", "2", "--algo", "drgrpo", "--env", "calc_tools"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = rows(&runs.path().join("calc"));
    let keys: std::collections::BTreeSet<&str> = all.iter().flat_map(|r| r.keys().map(String::as_str)).collect();
    for key in [
        "group_rates/tool_called",
        "group_rates/tool_exec_ok",
        "group_rates/answer_format_ok",
        "group_rates/answer_correct",
        "batch_returns/mean",
        "group_avg/reward",
        "episodes/turns_mean",
        "episodes/truncated_share",
        "dr_grpo/advantages_variance",
        "dr_grpo/critic_type",
        "training_step/loss",
        "training_step/entropy",
        "rollouts/frac_reward_zero_std",
        "completions/min_length",
    ] {
        assert!(keys.contains(key), "metrics.jsonl lacks {key}; it has {keys:?}");
    }
    assert_eq!(all.last().unwrap()["final/total_batches"], 2);
}

#[test]
fn grpo_trains_two_batches_of_multiturn_qa() {
    let runs = tempfile::tempdir().unwrap();
    let out = train(runs.path(), "qa", &["--max-steps", "2", "--env", "multiturn_qa"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = rows(&runs.path().join("qa"));
    let keys: std::collections::BTreeSet<&str> = all.iter().flat_map(|r| r.keys().map(String::as_str)).collect();
    for key in ["group_rates/tool_called", "batch_returns/mean", "episodes/turns_mean", "training_step/loss"] {
        assert!(keys.contains(key), "metrics.jsonl lacks {key}; it has {keys:?}");
    }
    assert_eq!(all.last().unwrap()["final/total_batches"], 2);
}

/// `--mask-truncated-completions` where every episode is cut (2 new tokens, and the random model rarely ends a reply
/// that soon): the updates are exactly empty, a warning says why, and the same run without the flag does learn.
#[test]
fn masking_truncated_completions_leaves_cut_episodes_out_and_says_when_that_is_all_of_them() {
    let runs = tempfile::tempdir().unwrap();
    let args = ["--max-steps", "1", "--max-new-tokens", "2"];
    let masked = train(runs.path(), "masked", &[&args[..], &["--mask-truncated-completions"]].concat());
    assert!(masked.status.success(), "{}", text(&masked.stderr));
    let all = rows(&runs.path().join("masked"));
    assert_eq!(last_logged(&all, "completions/clipped_ratio"), 1, "the precondition: every episode was cut");
    let steps: Vec<_> = all.iter().filter(|r| r.contains_key("training_step/loss")).collect();
    assert_eq!(steps.len(), 3);
    for row in steps {
        assert_eq!(
            (row["training_step/loss"].as_f64(), row["training_step/grad_norm"].as_f64()),
            (Some(0.0), Some(0.0))
        );
        assert!(!row.contains_key("training_step/entropy"), "no action token is left to average over: {row:?}");
    }
    let err = text(&masked.stderr);
    assert_eq!(err.matches("all 6 episodes were cut off").count(), 1, "{err}");
    assert!(err.contains("raise --max-new-tokens"), "{err}");
    assert_eq!(json_file(&runs.path().join("masked/config.json"))["run"]["loss"]["mask_truncated_completions"], true);

    let kept = train(runs.path(), "kept", &args);
    assert!(kept.status.success(), "{}", text(&kept.stderr));
    let norm = last_logged(&rows(&runs.path().join("kept")), "training_step/grad_norm").as_f64().unwrap();
    assert!(norm > 0.0, "without the flag the cut episodes are trained on");
    assert!(!text(&kept.stderr).contains("cut off"));
}

/// A TRL recipe file as written (`--config recipe.yaml`): its flags that choose how are left out with a note, its
/// settings reach the run unless the command line gives them too (`--bf16 false` over its `bf16: true`), and two
/// runs without `--run-name` started together get a folder each.
#[test]
fn a_trl_recipe_file_runs_as_written() {
    let runs = tempfile::tempdir().unwrap();
    let recipe = runs.path().join("recipe.yaml");
    let text_of_recipe = "# GRPO trainer config\nbf16: true\nuse_vllm: true\nvllm_mode: colocate\n\
                          push_to_hub: false\nlogging_steps: 1\nweight_decay: 0.05\nlearning_rate: 2.0e-03\nmax_steps: 1\n\
                          eval_strategy: \"no\"\neval_steps: 7\noptim: adamw_torch\n";
    std::fs::write(&recipe, text_of_recipe).unwrap();
    let flags = ["--config", recipe.to_str().unwrap(), "--bf16", "false"];
    let children: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = command(runs.path(), "", &flags);
            cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains(
                "note: --use-vllm and --vllm-mode are ignored: rollouts run in this host's own generation engine"
            ),
            "{err}"
        );
        // transformers evaluates by steps only under that strategy, and TRL's default optimizer is this host's.
        assert!(err.contains("note: --eval-steps is ignored: the evaluation strategy is not `steps`"), "{err}");
        assert!(err.contains("note: --optim is ignored: the optimizer is AdamW, fused"), "{err}");
        assert!(!err.contains("push-to-hub"), "{err}");
    }
    let folders: Vec<PathBuf> = std::fs::read_dir(runs.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("metrics.jsonl").exists())
        .collect();
    assert_eq!(folders.len(), 2, "{folders:?}");
    for folder in folders {
        // The file's weight decay; the command line's learning rate (`command` gives one) over the file's.
        let config = json_file(&folder.join("config.json"));
        assert_eq!(config["run"]["optimizer"]["weight_decay"].as_f64(), Some(0.05), "{config}");
        assert_eq!(rows(&folder)[0]["training_step/learning_rate"].as_f64(), Some(1e-3));
        assert_eq!(config["run"]["model"]["mixed_precision"], "auto", "{config}");
    }
}
