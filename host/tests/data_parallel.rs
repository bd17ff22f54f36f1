//! Data-parallel training on the CPU (Gloo over loopback) with the tiny model, launched as users do: `torchrun
//! --no-python` from setup's virtual environment, two simulated nodes, or the torchrun variables set by hand. Two
//! ranks of one thread each share this machine's cores.
//!
//! - 2 ranks with per-rank batch B train like one process with batch 2B on the same tasks and rollouts: the same
//!   rewards, losses and gradient norms, and final weights within 1e-5 (sampling is seeded per task, so a task's
//!   rollouts do not depend on the rank that runs it); rank 0 alone writes the history, once, with
//!   `ddp/num_processes` 2. The ranks share the evaluations, whose numbers before training equal one process's. (Every batch the ranks also compare an exact fingerprint of their weights, and would
//!   stop on a difference.)
//! - Two torchrun agents (`--nnodes 2`, c10d rendezvous on loopback) complete a run.
//! - A rank killed with SIGKILL makes the other exit within the collective timeout with one line naming it; the
//!   job then resumes under torchrun with `--resume auto` from the last checkpoint. Under `torchrun --max-restarts`
//!   the same happens by itself: the agent restarts the workers, which resume.
//! - SIGTERM to one rank during a batch's rollouts stops both at the batch's start (both exit 143), and the job
//!   resumes.
//! - A 2-rank checkpoint resumes in one process (with twice the per-process batch: the same global batch) and back.
//! - `--early-stopping-patience` (train and sft) stops every rank at the same boundary.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn torchrun() -> PathBuf {
    let p = grpo_host::paths::cache_dir().join("venv/bin/torchrun");
    assert!(p.exists(), "{} is missing: run `cargo xtask setup`", p.display());
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `grpo-host train` flags of run `name` under `runs`: `prompts` tasks per process, micro-batches of `micro`.
fn train_args(runs: &Path, name: &str, prompts: usize, micro: usize, batches: u64) -> Vec<String> {
    let model = common::workspace_root().join("tests/fixtures/model/tiny/llama");
    let mut a: Vec<String> = ["--algo", "grpo", "--env", "math", "--group-size", "2", "--max-new-tokens", "6"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(["--model".into(), model.display().to_string(), "--device".into(), "cpu".into()]);
    a.extend(["--rollouts-per-step".into(), prompts.to_string(), "--train-batch-size".into(), micro.to_string()]);
    a.extend(["--max-steps".into(), batches.to_string(), "--checkpoint-interval".into(), "1".into()]);
    for s in ["--max-length", "512", "--temperature", "1.0", "--lr", "5e-6", "--seed", "7", "--threads", "1"] {
        a.push(s.into());
    }
    for s in ["--checkpoint-every-minutes", "0", "--no-wandb", "--log-completions-interval", "1"] {
        a.push(s.into());
    }
    a.extend(["--runs-dir".into(), runs.display().to_string(), "--run-name".into(), name.into()]);
    a
}

/// A command with the variables that would change the run removed.
fn clean(mut cmd: Command, runs: &Path) -> Command {
    for var in ["GRPO_PLUGIN_PATH", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WANDB_MODE"] {
        cmd.env_remove(var);
    }
    cmd.env("XDG_DATA_HOME", runs.join("xdg")).env("OMP_NUM_THREADS", "1").stdin(Stdio::null());
    cmd
}

fn single(runs: &Path, args: &[String]) -> Output {
    let mut cmd = clean(Command::new(common::host_exe()), runs);
    cmd.args(args).output().unwrap()
}

fn under_torchrun(runs: &Path, nproc: usize, args: &[String]) -> Output {
    let mut cmd = clean(Command::new(torchrun()), runs);
    cmd.args(["--standalone", "--nproc-per-node", &nproc.to_string(), "--no-python"])
        .arg(common::host_exe())
        .args(args)
        .output()
        .unwrap()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// metrics.jsonl of a run as rows by step; a step that appears twice fails.
fn rows(run: &Path) -> BTreeMap<u64, serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let row: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        let step = row.get("step").and_then(Value::as_u64).expect("a step in every row");
        assert!(out.insert(step, row).is_none(), "step {step} is logged twice in {}", run.display());
    }
    out
}

fn number(row: &serde_json::Map<String, Value>, key: &str) -> f64 {
    row.get(key).and_then(Value::as_f64).unwrap_or_else(|| panic!("{key} missing from {row:?}"))
}

/// The weights of the run's last checkpoint.
fn final_weights(run: &Path) -> BTreeMap<String, tch::Tensor> {
    let dir = grpo_host::checkpoint::latest(&run.join("checkpoints")).expect("a checkpoint");
    grpo_host::checkpoint::load(&dir).unwrap().weights
}

/// The last checkpoints of runs `a` and `b` hold the same tensors, up to the order of floating-point sums.
fn assert_same_weights(a: &Path, b: &Path) {
    assert_weights_within(a, b, 1e-5);
}

/// The last checkpoints of runs `a` and `b` hold the same tensors, every element within `tol`.
fn assert_weights_within(a: &Path, b: &Path, tol: f64) {
    let (wa, wb) = (final_weights(a), final_weights(b));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    for (name, x) in &wa {
        let diff = (x - &wb[name]).abs().max().double_value(&[]);
        assert!(diff <= tol, "{name} differs by {diff} (tolerance {tol:e})");
    }
}

#[test]
fn two_ranks_train_like_one_process_with_twice_the_batch() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    // Both evaluate 7 held-out tasks (4 chunks: the ranks get 2 chunks each, one of them the odd task) before
    // training and after the second batch (an evaluation after the first, whose one update is step 0, would be
    // logged in the row of the one before training).
    let eval = ["--eval-before-train", "--eval-every", "2", "--eval-tasks", "7", "--eval-batch-tasks", "2"];
    let with_eval = |name: &str, prompts: usize, micro: usize| {
        [train_args(r, name, prompts, micro, 2), eval.iter().map(|s| s.to_string()).collect()].concat()
    };
    assert_ok(&single(r, &with_eval("one", 4, 8)), "one process");
    let dp = under_torchrun(r, 2, &with_eval("two", 2, 4));
    assert_ok(&dp, "torchrun with 2 ranks");

    let (one, two) = (rows(&r.join("one")), rows(&r.join("two")));
    assert_eq!(one.keys().collect::<Vec<_>>(), two.keys().collect::<Vec<_>>(), "the same steps");
    for (step, a) in &one {
        let b = &two[step];
        assert_eq!(number(b, "ddp/num_processes"), 2.0, "step {step}");
        assert_eq!(number(a, "ddp/num_processes"), 1.0);
        for key in ["rollouts/returns_mean", "rollouts/returns_std", "completions/mean_length"] {
            assert_eq!(number(a, key), number(b, key), "{key} at step {step}: the same rollouts");
        }
        for key in ["training_step/loss", "training_step/grad_norm", "rollouts/kl_mean"] {
            let (x, y) = (number(a, key), number(b, key));
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{key} at step {step}: {x} vs {y}");
        }
        assert_eq!(number(b, "rollouts/total_rollouts"), number(a, "rollouts/total_rollouts"));
    }
    assert_same_weights(&r.join("one"), &r.join("two"));
    // Rank 0 alone wrote the files: one config.json saying so, one completions table per batch.
    let config: Value = serde_json::from_str(&std::fs::read_to_string(r.join("two/config.json")).unwrap()).unwrap();
    assert_eq!(config["world_size"], 2);
    let stderr = String::from_utf8_lossy(&dp.stderr);
    assert_eq!(stderr.matches("done: final checkpoint").count(), 1, "one rank prints the end:\n{stderr}");

    // The evaluation is shared by the ranks, and before training, from the same weights, it gives one process's
    // numbers and outcomes exactly; later ones are logged at the same steps.
    assert!(stderr.contains("eval at step 0 on 2 ranks: 7 tasks"), "{stderr}");
    let evals = |rows: &BTreeMap<u64, serde_json::Map<String, Value>>| -> Vec<u64> {
        rows.iter().filter(|(_, row)| row.contains_key("eval/returns_mean")).map(|(s, _)| *s).collect()
    };
    assert_eq!(evals(&one), evals(&two));
    assert_eq!(evals(&one), [0, 1], "before training and after the last batch");
    let eval_keys: Vec<&String> = one[&0].keys().filter(|k| k.starts_with("eval/")).collect();
    assert!(eval_keys.len() >= 6, "{eval_keys:?}");
    for key in eval_keys {
        assert_eq!(one[&0][key], two[&0][key], "{key} before training");
    }
    let outcomes_at_0 = |run: &str| -> Vec<Value> {
        let text = std::fs::read_to_string(r.join(run).join("eval_completions.jsonl")).unwrap();
        let rows = text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap());
        rows.filter(|v| v["step"] == 0).collect()
    };
    let first = outcomes_at_0("one");
    assert_eq!(first.len(), 7);
    assert_eq!(first, outcomes_at_0("two"), "the same outcomes, in task order");
}

/// `args` with `flag`'s value replaced (clap takes each flag once).
fn replaced(mut args: Vec<String>, flag: &str, value: &str) -> Vec<String> {
    let at = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    args[at + 1] = value.to_string();
    args
}

/// One batch of `prompts` tasks per process, all in one micro-batch, where rewards and lengths vary: groups of 4
/// with up to 24 new tokens, and the random model's reply scored by its last number (now and then a group gets one
/// right answer).
fn varied_args(r: &Path, name: &str, prompts: usize) -> Vec<String> {
    let mut a = train_args(r, name, prompts, 4 * prompts, 1);
    for (flag, value) in [("--group-size", "4"), ("--max-new-tokens", "24"), ("--seed", "3")] {
        a = replaced(a, flag, value);
    }
    let env = r#"{"generator": {"max_terms": 2, "max_digits": 1, "ops": "+"}, "last_number_fallback": true}"#;
    a.extend(["--env-config".to_string(), env.to_string()]);
    a
}

/// The algorithm scores the global batch on every rank: DR-GRPO's advantage statistics (the skewness of the
/// batch's advantages is not the mean of the ranks' skewnesses) and the policy's entropy come out as one process's.
#[test]
fn two_ranks_score_the_global_batch_as_one_process() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let args = |name: &str, prompts: usize| replaced(varied_args(r, name, prompts), "--algo", "drgrpo");
    assert_ok(&single(r, &args("one", 4)), "one process");
    assert_ok(&under_torchrun(r, 2, &args("two", 2)), "torchrun with 2 ranks");
    let (one, two) = (rows(&r.join("one")), rows(&r.join("two")));
    let first = &one[&0];
    // Without a group that learns something every statistic below is 0 however it is computed.
    assert!(number(first, "rollouts/returns_std") > 0.0, "no reward varied: {first:?}");
    let skewness = number(first, "dr_grpo/advantages_skewness");
    assert!(skewness != 0.0, "{first:?}");
    for key in [
        "rollouts/returns_std",
        "rollouts/frac_reward_zero_std",
        "rollouts/advantages_std",
        "dr_grpo/advantages_variance",
        "dr_grpo/advantages_skewness",
        "training_step/entropy",
        "training_step/loss",
    ] {
        let (x, y) = (number(first, key), number(&two[&0], key));
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{key}: one process {x}, two ranks {y}");
    }
}

/// [`varied_args`] whose replies differ in length from task to task, so that the ranks' shares of the action tokens
/// differ (equal lengths would make every aggregation of a token mean give the same update): the random model never
/// ends a reply, two-digit questions make prompts of different lengths, and a --max-length just past them cuts each
/// task's replies at its own length.
fn varied_lengths_args(r: &Path, name: &str, prompts: usize) -> Vec<String> {
    let env = r#"{"generator": {"max_terms": 2, "max_digits": 2, "ops": "+"}, "last_number_fallback": true}"#;
    replaced(replaced(varied_args(r, name, prompts), "--max-length", "260"), "--env-config", env)
}

/// The first row's replies differ in length.
fn assert_lengths_vary(first: &serde_json::Map<String, Value>) {
    assert!(number(first, "completions/min_length") < number(first, "completions/max_length"), "{first:?}");
}

/// `grpo`'s DAPO loss (`loss_type` "dapo") divides by the action tokens of the whole step, every rank's: two ranks
/// whose completions have different lengths give one process's gradient and weights.
#[test]
fn a_dapo_loss_on_two_ranks_divides_by_every_ranks_tokens_as_one_process() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let args = |name: &str, prompts: usize| {
        [varied_lengths_args(r, name, prompts), vec!["--algo-config".into(), r#"{"loss_type": "dapo"}"#.into()]]
            .concat()
    };
    let (first, second) = one_update_on_one_and_two_ranks(r, &args);
    assert_lengths_vary(&first);
    // A group's replies share a length, and its advantages sum to 0, so the loss itself is 0 up to rounding.
    let (x, y) = (number(&first, "training_step/loss"), number(&second, "training_step/loss"));
    assert!((x - y).abs() <= 1e-6, "loss: one process {x}, two ranks {y}");
}

/// Run `args(name, tasks per process)` as one process with 4 tasks ("one") and as two ranks with 2 each ("two"), a
/// batch of one optimizer step, and check that the step found something to learn (a group whose rewards varied) and
/// that both took the same step: gradient norm and weights. Returns both runs' first rows.
fn one_update_on_one_and_two_ranks(
    r: &Path,
    args: &dyn Fn(&str, usize) -> Vec<String>,
) -> (serde_json::Map<String, Value>, serde_json::Map<String, Value>) {
    assert_ok(&single(r, &args("one", 4)), "one process");
    assert_ok(&under_torchrun(r, 2, &args("two", 2)), "torchrun with 2 ranks");
    let (mut one, mut two) = (rows(&r.join("one")), rows(&r.join("two")));
    let (first, second) = (one.remove(&0).unwrap(), two.remove(&0).unwrap());
    assert!(number(&first, "rollouts/frac_reward_zero_std") < 1.0, "no reward varied in a group: {first:?}");
    let (x, y) = (number(&first, "training_step/grad_norm"), number(&second, "training_step/grad_norm"));
    assert!(x > 0.0 && (x - y).abs() <= 1e-5 * x, "gradient norm: one process {x}, two ranks {y}");
    assert_same_weights(&r.join("one"), &r.join("two"));
    (first, second)
}

/// Under `--micro-batch-tokens` each rank cuts its own sequences by length into as many micro-batches as the budget
/// needs (not one process's, nor the other rank's number), and each micro-batch's loss weighs by its share of its
/// rank's sequences: two ranks still take one process's step with GRPO's per-sequence mean and reach its weights.
/// The quantile of `--top-entropy-quantile`, taken per micro-batch, is refused with it in one line.
#[test]
fn micro_batches_by_tokens_on_two_ranks_take_one_processs_step() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let args = |name: &str, prompts: usize| {
        [varied_lengths_args(r, name, prompts), vec!["--micro-batch-tokens".into(), "600".into()]].concat()
    };
    let (one, _) = one_update_on_one_and_two_ranks(r, &args);
    assert_lengths_vary(&one);

    let refused = [args("refused", 2), vec!["--top-entropy-quantile".into(), "0.5".into()]].concat();
    let out = under_torchrun(r, 2, &refused);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--top-entropy-quantile with --micro-batch-tokens cannot run data-parallel"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `--top-entropy-quantile` takes its threshold over the micro-batch's tokens on every rank, as TRL gathers them
/// over the processes: two ranks keep the tokens one process keeps, and their gradient and weights are its.
#[test]
fn a_top_entropy_quantile_on_two_ranks_keeps_one_processs_tokens() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let args = |name: &str, prompts: usize| {
        [varied_args(r, name, prompts), vec!["--top-entropy-quantile".into(), "0.3".into()]].concat()
    };
    one_update_on_one_and_two_ranks(r, &args);
}

/// `--entropy-coeff` is a mean over the optimizer step's action tokens on every rank, as the token-level losses are:
/// two ranks, whose shares of the tokens differ, take one process's gradient and reach its weights.
#[test]
fn an_entropy_bonus_on_two_ranks_is_one_processs() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let args = |name: &str, prompts: usize| {
        [varied_lengths_args(r, name, prompts), vec!["--entropy-coeff".into(), "0.5".into()]].concat()
    };
    let (one, _) = one_update_on_one_and_two_ranks(r, &args);
    assert_lengths_vary(&one);
    assert!(number(&one, "training_step/entropy") > 0.0, "no entropy logged: {one:?}");
}

/// Under `--dynamic-sampling` the batch is global: two ranks keep and train on the groups one process with twice the
/// batch keeps (the extra tasks dealt out as one process's positions, with its seeds, and each group sent to the
/// rank that trains on it), with its rounds, counts, rewards, gradient and weights.
#[test]
fn dynamic_sampling_on_two_ranks_keeps_one_processs_groups() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let args = |name: &str, prompts: usize| {
        let mut a = replaced(varied_args(r, name, prompts), "--group-size", "3");
        a.extend(["--dynamic-sampling", "--max-sampling-rounds", "5"].map(String::from));
        a
    };
    let (one, two) = one_update_on_one_and_two_ranks(r, &args);
    assert!(number(&one, "dynamic_sampling/rounds") > 1.0, "the first round had every group: {one:?}");
    assert_eq!(number(&one, "rollouts/total_rollouts"), 12.0);
    for key in [
        "dynamic_sampling/rounds",
        "dynamic_sampling/sampled_groups",
        "dynamic_sampling/varied_share",
        "dynamic_sampling/filled_groups",
        "rollouts/total_rollouts",
        "rollouts/returns_mean",
        "rollouts/returns_std",
        "rollouts/frac_reward_zero_std",
        "completions/mean_length",
        "training_step/loss",
    ] {
        let (x, y) = (number(&one, key), number(&two, key));
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{key}: one process {x}, two ranks {y}");
    }
}

/// A KL penalty in the reward on two ranks: their penalised returns are scored together and the adaptive controller
/// reads the global batch's KL, so the second batch (after an update moved the policy from its reference) has one
/// process's coefficient, penalties, advantages, gradient and weights.
#[test]
fn a_kl_penalty_in_the_reward_on_two_ranks_is_one_processs() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let args = |name: &str, prompts: usize| {
        let a = replaced(replaced(varied_args(r, name, prompts), "--max-steps", "2"), "--lr", "1e-3");
        let kl = ["--reward-kl-coef", "0.5", "--reward-kl-target", "0.0001", "--reward-kl-horizon", "10"];
        [a, kl.map(String::from).to_vec()].concat()
    };
    assert_ok(&single(r, &args("one", 4)), "one process");
    assert_ok(&under_torchrun(r, 2, &args("two", 2)), "torchrun with 2 ranks");
    let (one, two) = (rows(&r.join("one")), rows(&r.join("two")));
    // One optimizer step per batch: the second batch starts at step 1.
    let (first, second) = (&one[&1], &two[&1]);
    assert!(number(first, "rollouts/reward_kl_mean").abs() > 1e-6, "the update did not move the policy: {first:?}");
    assert!(number(first, "rollouts/reward_kl_coef") != 0.5, "the controller did not move: {first:?}");
    for key in [
        "rollouts/reward_kl_coef",
        "rollouts/reward_kl_mean",
        "rollouts/reward_kl_penalty_mean",
        "rollouts/advantages_std",
        "training_step/loss",
        "training_step/grad_norm",
    ] {
        let (x, y) = (number(first, key), number(second, key));
        assert!((x - y).abs() <= 1e-4 * x.abs().max(1e-3), "{key}: one process {x}, two ranks {y}");
    }
    // The second update's advantages are KL penalties divided by their group's spread, and AdamW divides each
    // gradient by its own running size: a rounding difference between the two runs' log-prob passes (their rows
    // padded to other lengths) reaches the weights less damped than in the other tests. 3e-5 is 3% of one step at
    // this learning rate; the metrics above pin the penalty and the advantages themselves to 1e-4.
    assert_weights_within(&r.join("one"), &r.join("two"), 3e-5);
}

/// `--early-stopping-patience` on two ranks: both judge the same gathered evaluation, so both end the run after the
/// same batch (2 of 5 here, as in one process) and exit 0, with no rank left waiting in a collective.
#[test]
fn early_stopping_on_two_ranks_stops_both_at_the_same_batch() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let watch = ["--eval-every", "1", "--eval-tasks", "2", "--eval-samples", "0", "--early-stopping-patience", "1"];
    let metric = ["--metric-for-best-model", "eval/completion_logprob_mean", "--early-stopping-threshold", "1e9"];
    let extra: Vec<String> = watch.iter().chain(&metric).map(|s| s.to_string()).collect();
    let out = under_torchrun(r, 2, &[train_args(r, "early", 1, 2, 5), extra].concat());
    assert_ok(&out, "two ranks");
    let logged = rows(&r.join("early"));
    let last = logged.values().last().unwrap();
    assert_eq!((number(last, "final/total_batches"), number(last, "final/early_stopped")), (2.0, 1.0), "{last:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("early stopping at step"));
}

#[test]
fn two_simulated_nodes_complete_a_run() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let agents: Vec<_> = (0..2)
        .map(|node| {
            let mut cmd = clean(Command::new(torchrun()), r);
            cmd.args(["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", &node.to_string()])
                .args(["--rdzv-backend", "c10d", "--rdzv-endpoint", &endpoint, "--rdzv-id", "grpo-test"])
                .args(["--no-python"])
                .arg(common::host_exe())
                .args(train_args(r, "nodes", 2, 4, 2))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (node, agent) in agents.into_iter().enumerate() {
        assert_ok(&agent.wait_with_output().unwrap(), &format!("node {node}"));
    }
    let rows = rows(&r.join("nodes"));
    assert!(rows.values().all(|row| row.get("ddp/num_processes").is_none_or(|v| v == 2)));
    assert!(rows.values().any(|row| row.contains_key("training_step/loss")));
}

/// Ranks 0 and 1 of a two-rank job started by hand (the variables torchrun would set), stderr piped.
fn two_ranks(runs: &Path, args: &[String]) -> (Child, Child) {
    let port = free_port().to_string();
    let mut ranks = (0..2).map(|rank| {
        let mut cmd = clean(Command::new(common::host_exe()), runs);
        cmd.args(args)
            .envs([("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")])
            .env("MASTER_PORT", &port)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    });
    (ranks.next().unwrap(), ranks.next().unwrap())
}

#[test]
fn a_killed_rank_stops_the_other_then_the_job_resumes() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let mut args = train_args(r, "killed", 2, 4, 6);
    args.extend(["--dist-timeout".into(), "20".into()]);
    let (rank0, mut rank1) = two_ranks(r, &args);
    // Kill rank 1 once the first checkpoint is written.
    let start = Instant::now();
    while grpo_host::checkpoint::latest(&r.join("killed/checkpoints")).is_none() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint within two minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
    rank1.kill().unwrap();
    let killed_at = Instant::now();
    let _ = rank1.wait();
    let out = rank0.wait_with_output().unwrap();
    let waited = killed_at.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 0 must fail:\n{stderr}");
    assert!(waited < Duration::from_secs(40), "rank 0 took {waited:?} to stop");
    let line = stderr.lines().find(|l| l.contains("is lost")).unwrap_or_else(|| panic!("no lost-rank line:\n{stderr}"));
    assert!(line.contains("rank 1 is lost") && line.contains("--resume auto"), "{line}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let mut resume = args.clone();
    resume.extend(["--resume".into(), "auto".into()]);
    assert_ok(&under_torchrun(r, 2, &resume), "the resumed job");
    let rows = rows(&r.join("killed"));
    let batches: Vec<f64> = rows.values().filter_map(|row| row.get("rollouts/batch_step")?.as_f64()).collect();
    assert_eq!(batches, (0..6).map(f64::from).collect::<Vec<_>>(), "every batch once");
}

/// SIGTERM to one rank while a batch rolls out (a preemption that reached one process): it drops its rollouts and
/// tells the other rank, which drops its own within moments instead of finishing them; both stop at the boundary the
/// batch started from and exit 143 as if both had been signalled, the boundary's checkpoint stays the newest, and the
/// job resumes under torchrun with every batch once.
#[test]
fn a_signal_to_one_rank_stops_every_rank_at_the_batch_boundary() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let mut args = train_args(r, "signalled", 2, 16, 3);
    // Rollouts of seconds (16 episodes of 300 tokens per rank, one at a time), so that the signal lands in them.
    for s in ["--group-size", "8", "--max-new-tokens", "300", "--ignore-eos", "--max-length", "600"] {
        args.push(s.into());
    }
    args.extend(["--max-batch-rows".into(), "1".into()]);
    let (rank0, rank1) = two_ranks(r, &args);
    // The first batch's checkpoint is renamed into place just before the second batch's rollouts start.
    let checkpoints = r.join("signalled/checkpoints");
    let start = Instant::now();
    while !checkpoints.join("step_1/manifest.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint within two minutes");
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: kill(2) on the pid of a child this test has not reaped yet.
    assert_eq!(unsafe { libc::kill(rank1.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    let (out0, out1) = (rank0.wait_with_output().unwrap(), rank1.wait_with_output().unwrap());
    let stopped = signalled.elapsed();
    let (err0, err1) = (String::from_utf8_lossy(&out0.stderr), String::from_utf8_lossy(&out1.stderr));
    assert_eq!((out0.status.code(), out1.status.code()), (Some(143), Some(143)), "{err0}\n{err1}");
    // The first batch's rollouts (the slower rank's): rank 0 must not have played out its share of the second's.
    let first = rows(&r.join("signalled")).remove(&0).unwrap();
    let rollout = Duration::from_secs_f64(number(&first, "timing/rollout_s"));
    eprintln!("both ranks stopped {stopped:?} after SIGTERM to rank 1; a batch's rollouts take {rollout:?}");
    assert!(stopped < rollout / 2, "the ranks took {stopped:?} to stop, as long as the rollouts ({rollout:?})");
    assert!(err0.contains("stopped by SIGTERM during batch 2/3, whose rollouts were dropped"), "{err0}");
    assert_eq!(grpo_host::checkpoint::latest(&checkpoints), Some(checkpoints.join("step_1")), "{err0}");
    let logged: Vec<u64> = rows(&r.join("signalled")).into_keys().collect();
    assert_eq!(logged, [0], "nothing of the dropped batch is logged\n{err0}");

    args.extend(["--resume".into(), "auto".into()]);
    assert_ok(&under_torchrun(r, 2, &args), "the resumed job");
    let rows = rows(&r.join("signalled"));
    let batches: Vec<f64> = rows.values().filter_map(|row| row.get("rollouts/batch_step")?.as_f64()).collect();
    assert_eq!(batches, [0.0, 1.0, 2.0], "every batch once");
}

#[test]
fn a_two_rank_checkpoint_resumes_in_one_process_and_back() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let resume = |mut a: Vec<String>| {
        a.extend(["--resume".into(), "auto".into()]);
        a
    };
    // `--resume auto` from the first attempt on, as torchrun --max-restarts needs: nothing to resume yet.
    assert_ok(&under_torchrun(r, 2, &resume(train_args(r, "mixed", 2, 4, 1))), "2 ranks, batch 0");
    // One process with twice the per-process batch: the same global batch, which the resume guard accepts.
    assert_ok(&single(r, &resume(train_args(r, "mixed", 4, 8, 2))), "1 process, batch 1");
    assert_ok(&under_torchrun(r, 2, &resume(train_args(r, "mixed", 2, 4, 3))), "2 ranks, batch 2");
    let rows = rows(&r.join("mixed"));
    let processes: Vec<f64> = rows.values().filter_map(|row| row.get("ddp/num_processes")?.as_f64()).collect();
    assert_eq!(processes, vec![2.0, 1.0, 2.0]);
    let total: Vec<f64> = rows.values().filter_map(|row| row.get("rollouts/total_rollouts")?.as_f64()).collect();
    assert_eq!(total, vec![8.0, 16.0, 24.0]);

    // The same per-process flags on another world size change the global batch: refused with one line.
    let out = single(r, &resume(train_args(r, "mixed", 2, 4, 4)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--rollouts-per-step") && stderr.contains("world size"), "{stderr}");
}

#[test]
fn torchrun_restarts_a_job_whose_rank_was_killed_and_it_resumes() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let mut args = train_args(r, "elastic", 2, 4, 5);
    args.extend(["--resume".into(), "auto".into(), "--dist-timeout".into(), "30".into()]);
    let mut cmd = clean(Command::new(torchrun()), r);
    let agent = cmd
        .args(["--standalone", "--nproc-per-node", "2", "--max-restarts", "1", "--no-python"])
        .arg(common::host_exe())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while grpo_host::checkpoint::latest(&r.join("elastic/checkpoints")).is_none() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint within two minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Kill one worker of the job (any rank): its grpo-host processes are the ones writing to this run.
    let pattern = r.join("elastic").display().to_string();
    // (A worker's command line starts with the host's path; the agent's with Python's.)
    let workers = format!("^{}.*{}", common::host_exe().display(), r.display());
    let pids = Command::new("pgrep").args(["-f", &workers]).output().unwrap();
    let pid = String::from_utf8_lossy(&pids.stdout).lines().next().map(str::to_string);
    let pid = pid.unwrap_or_else(|| panic!("no worker of {pattern} found"));
    assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    let out = agent.wait_with_output().unwrap();
    assert_ok(&out, "the restarted job");
    let rows = rows(&r.join("elastic"));
    let batches: Vec<f64> = rows.values().filter_map(|row| row.get("rollouts/batch_step")?.as_f64()).collect();
    assert_eq!(batches, (0..5).map(f64::from).collect::<Vec<_>>(), "every batch once");
}

/// `grpo-host sft` on four TRL-format conversations: `per_rank` of them per step on each rank.
fn sft_args(runs: &Path, name: &str, per_rank: usize) -> Vec<String> {
    let data = runs.join("chats.jsonl");
    if !data.exists() {
        let line = |q: &str, a: &str| {
            serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                .to_string()
        };
        let lines = [line("2+2?", "4"), line("Capital of France?", "Paris"), line("Up?", "down"), line("Hi", "Hello!")];
        std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    }
    let model = common::workspace_root().join("tests/fixtures/model/tiny/llama");
    let mut a: Vec<String> = vec!["sft".into(), "--data".into(), data.display().to_string()];
    // The held-out loss after steps 2 and 3, on the same rows (the ranks score two each).
    a.extend(["--eval-data".into(), data.display().to_string(), "--eval-every".into(), "2".into()]);
    a.extend(["--model".into(), model.display().to_string(), "--device".into(), "cpu".into()]);
    a.extend(["--batch-size".into(), per_rank.to_string(), "--micro-batch-size".into(), "1".into()]);
    for s in ["--max-steps", "3", "--lr", "1e-3", "--threads", "1", "--no-wandb", "--checkpoint-interval", "2"] {
        a.push(s.into());
    }
    a.extend(["--runs-dir".into(), runs.display().to_string(), "--run-name".into(), name.into()]);
    a
}

#[test]
fn sft_on_two_ranks_equals_one_process_with_twice_the_batch() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    assert_ok(&single(r, &sft_args(r, "one", 2)), "sft in one process");
    let dp = under_torchrun(r, 2, &sft_args(r, "two", 1));
    assert_ok(&dp, "sft under torchrun with 2 ranks");
    let (one, two) = (rows(&r.join("one")), rows(&r.join("two")));
    assert_eq!(one.keys().collect::<Vec<_>>(), vec![&0, &1, &2]);
    assert_eq!(one.keys().collect::<Vec<_>>(), two.keys().collect::<Vec<_>>(), "the same steps");
    for (step, a) in &one {
        let b = &two[step];
        // Every step sees the same conversations (two per step, the data reshuffled each pass) and tokens.
        assert_eq!(number(a, "sft/tokens"), number(b, "sft/tokens"), "step {step}");
        assert_eq!(number(a, "sft/epoch"), number(b, "sft/epoch"), "step {step}");
        let evaluated = *step >= 1;
        assert_eq!(a.contains_key("sft/eval_loss"), evaluated, "step {step}");
        assert_eq!(b.contains_key("sft/eval_loss"), evaluated, "step {step}");
        let held_out: &[&str] = if evaluated {
            &["sft/eval_loss", "sft/eval_accuracy", "sft/eval_entropy", "sft/eval_tokens"]
        } else {
            &[]
        };
        for key in ["sft/loss", "sft/accuracy", "sft/entropy", "sft/grad_norm"].iter().chain(held_out) {
            let (x, y) = (number(a, key), number(b, key));
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{key} at step {step}: {x} vs {y}");
        }
    }
    assert_same_weights(&r.join("one"), &r.join("two"));
    let config: Value = serde_json::from_str(&std::fs::read_to_string(r.join("two/config.json")).unwrap()).unwrap();
    assert_eq!(config["world_size"], 2);
    let stdout = String::from_utf8_lossy(&dp.stdout);
    assert_eq!(stdout.matches("saved the fine-tuned model").count(), 1, "one rank prints the end:\n{stdout}");
    assert!(r.join("two/checkpoints/step_2").is_dir() && r.join("two/checkpoints/step_3").is_dir());
}

/// `sft --early-stopping-patience` on two ranks: the ranks add up one held-out loss, judge it alike and stop after
/// the same step (3 of 6: patience 2 under a threshold no change passes), each exiting 0.
#[test]
fn sft_early_stopping_on_two_ranks_stops_both_at_the_same_step() {
    let runs = tempfile::tempdir().unwrap();
    let r = runs.path();
    let args = replaced(replaced(sft_args(r, "early", 1), "--eval-every", "1"), "--max-steps", "6");
    let watch = ["--metric-for-best-model", "sft/eval_loss", "--early-stopping-patience", "2"];
    let extra: Vec<String> =
        watch.iter().chain(&["--early-stopping-threshold", "1e9"]).map(|s| s.to_string()).collect();
    let out = under_torchrun(r, 2, &[args, extra].concat());
    assert_ok(&out, "sft on two ranks");
    assert_eq!(rows(&r.join("early")).keys().collect::<Vec<_>>(), vec![&0, &1, &2], "three steps");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(r.join("early/summary.json")).unwrap()).unwrap();
    assert_eq!(
        (summary["final/total_steps"].as_f64(), summary["final/early_stopped"].as_f64()),
        (Some(3.0), Some(1.0))
    );
}

/// A rank whose peers never join gives up after `--dist-timeout` with one line, libtorch's C++ frames left out;
/// with `TORCH_CPP_LOG_LEVEL=ERROR` (read as Python's torch reads it) libtorch's own warning lines go too, and
/// that line is all of stderr.
#[test]
fn a_rank_alone_at_the_rendezvous_fails_in_one_line() {
    let runs = tempfile::tempdir().unwrap();
    let args = train_args(runs.path(), "alone", 2, 4, 1);
    let port = free_port().to_string();
    let mut cmd = clean(Command::new(common::host_exe()), runs.path());
    cmd.args(&args).args(["--dist-timeout", "1"]);
    cmd.envs([("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")]);
    cmd.env("MASTER_PORT", &port).env("TORCH_CPP_LOG_LEVEL", "ERROR");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: rank 0: joining the process group at 127.0.0.1:"), "{stderr}");
    assert!(!stderr.contains("frame #") && !stderr.contains("Exception raised from"), "{stderr}");
}
