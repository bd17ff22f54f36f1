//! `train --sft-warmup-steps` and `grpo-host sft` as a user runs them: the installed binary, the shipped
//! calc_tools plugin and the tiny Llama fixture.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny_model() -> PathBuf {
    common::workspace_root().join("tests/fixtures/model/tiny/llama")
}

fn run(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(common::host_exe())
        .args(args)
        .env_remove("GRPO_PLUGIN_PATH")
        .env("XDG_DATA_HOME", home.path())
        .env("WANDB_MODE", "disabled")
        .output()
        .unwrap()
}

fn train(runs: &Path, extra: &[&str]) -> Output {
    let model = tiny_model();
    let mut args = vec![
        "--algo",
        "drgrpo",
        "--env",
        "calc_tools",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--rollouts-per-step",
        "2",
        "--group-size",
        "2",
        "--max-new-tokens",
        "8",
        "--max-steps",
        "1",
        "--sft-warmup-steps",
        "2",
        "--sft-batch-size",
        "2",
        "--sft-lr",
        "1e-3",
        "--no-wandb",
        "--run-name",
        "warm",
    ];
    args.extend(["--runs-dir", runs.to_str().unwrap()]);
    args.extend(extra);
    run(&args)
}

fn rows(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn step(row: &serde_json::Value) -> u64 {
    row["_step"].as_u64().or_else(|| row["step"].as_u64()).expect("a step in every row")
}

#[test]
fn warm_up_steps_come_first_are_logged_checkpointed_and_skipped_on_resume() {
    let runs = tempfile::tempdir().unwrap();
    let out = train(runs.path(), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = runs.path().join("warm");
    let rows = rows(&run);
    let sft: Vec<u64> = rows.iter().filter(|r| r.get("sft/loss").is_some()).map(step).collect();
    assert_eq!(sft, vec![0, 1]);
    for r in rows.iter().filter(|r| r.get("sft/loss").is_some()) {
        assert!(r["sft/tokens"].as_f64().unwrap() > 0.0 && r["sft/accuracy"].as_f64().unwrap() >= 0.0, "{r}");
    }
    let first_rl = rows.iter().find(|r| r.get("rollouts/returns_mean").is_some()).map(step);
    assert_eq!(first_rl, Some(2));
    // The environment's counters cover the batch's 2 x 2 rollouts, not the 4 demonstrations played before them.
    let episodes = rows.iter().find_map(|r| r["calc_tools/episodes"].as_f64());
    assert_eq!(episodes, Some(4.0));
    assert!(run.join("checkpoints/step_2").is_dir());

    // Resumed from the warm-up's checkpoint, the run goes straight to reinforcement learning.
    std::fs::remove_dir_all(run.join("checkpoints/step_3")).ok();
    let out = train(runs.path(), &["--resume", run.join("checkpoints/step_2").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("sft warm-up 1/2"), "{stdout}");
}

/// The updates' learning-rate schedule starts when they do: after 2 warm-up steps, `--warmup-steps 2` still ramps
/// the first two updates (global steps 2 and 3) up from the floor, then transformers' warmup-stable-decay schedule,
/// named with its keyword arguments, decays linearly over the last two toward its floor, 0.2 of the rate. The
/// console counts the warm-up's steps in the run's total and shows their loss.
#[test]
fn the_learning_rate_schedule_starts_after_the_warm_up() {
    let runs = tempfile::tempdir().unwrap();
    let kwargs = r#"{"num_decay_steps": 2, "decay_type": "linear", "min_lr_ratio": 0.2}"#;
    let schedule = ["--lr-scheduler-type", "warmup_stable_decay", "--lr-scheduler-kwargs", kwargs];
    let out = train(
        runs.path(),
        &[&["--warmup-steps", "2", "--lr", "1e-3", "--train-batch-size", "1"], &schedule[..]].concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lr: Vec<(u64, f64)> = rows(&runs.path().join("warm"))
        .iter()
        .filter_map(|r| r["training_step/learning_rate"].as_f64().map(|lr| (step(r), lr)))
        .collect();
    // Steps 2 and 5 are halfway up the warmup and halfway down the decay: 1e-3 x (0.2 + 0.8 x 0.5).
    let want = [(2, 0.6e-3), (3, 1e-3), (4, 1e-3), (5, 0.6e-3)];
    assert_eq!(lr.len(), want.len(), "{lr:?}");
    assert!(lr.iter().zip(want).all(|(a, b)| a.0 == b.0 && (a.1 - b.1).abs() < 1e-12), "{lr:?}");
    assert!(stderr.contains("step 1/6 sft loss "), "{stderr}");
    assert!(stderr.contains("step 6/6 "), "{stderr}");
}

#[test]
fn sft_on_demonstrations_saves_a_model_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let output = dir.path().join("sft");
    let out = run(&[
        "sft",
        "--env",
        "calc_tools",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--output",
        output.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("step 2/2 sft loss "), "{stderr}");
    assert!(stdout.contains("saved the fine-tuned model to"), "{stdout}");
    // --output is the whole run's folder, as TRL's output_dir: its rows, its config and its checkpoints.
    let logged: Vec<u64> = rows(&output).iter().filter(|r| r.get("sft/loss").is_some()).map(step).collect();
    assert_eq!(logged, vec![0, 1]);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(output.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["sft"]["source"]["environment"]["name"], "calc_tools", "{config}");
    let saved = output.join("step_2");
    let out = run(&[
        "generate",
        "--device",
        "cpu",
        "--model",
        saved.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-new-tokens",
        "2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Three TRL-format conversations (fewer than a run draws, so it takes several passes over them).
fn conversations(dir: &Path) -> PathBuf {
    let path = dir.join("chats.jsonl");
    let line = |q: &str, a: &str| {
        serde_json::json!({"messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": q},
            {"role": "assistant", "content": a},
        ]})
        .to_string()
    };
    let lines = [line("2+2?", "4"), line("Capital of France?", "Paris"), line("Opposite of up?", "down")];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// `grpo-host sft` on `data` in the run `runs/name`, with extra flags.
fn sft_run(runs: &Path, name: &str, data: &Path, extra: &[&str]) -> Output {
    sft_run_on(&tiny_model(), runs, name, data, extra)
}

/// [`sft_run`] with another model.
fn sft_run_on(model: &Path, runs: &Path, name: &str, data: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["sft", "--data", data.to_str().unwrap(), "--model", model.to_str().unwrap()];
    args.extend(["--device", "cpu", "--batch-size", "2", "--micro-batch-size", "1", "--lr", "1e-3", "--no-wandb"]);
    args.extend(["--runs-dir", runs.to_str().unwrap(), "--run-name", name]);
    args.extend(extra);
    run(&args)
}

#[test]
fn an_sft_run_stopped_and_resumed_equals_one_that_ran_through() {
    let dir = tempfile::tempdir().unwrap();
    let data = conversations(dir.path());
    let runs = dir.path().join("runs");
    // NEFTune's noise is drawn in every training forward: a resumed run must draw what the whole one did.
    let steps = |n: &'static str| ["--max-steps", n, "--checkpoint-interval", "2", "--neftune-noise-alpha", "5"];
    let whole = sft_run(&runs, "whole", &data, &steps("5"));
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));
    let first = sft_run(&runs, "parts", &data, &steps("3"));
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let rest = sft_run(&runs, "parts", &data, &[&steps("5")[..], &["--resume"]].concat());
    let stderr = String::from_utf8_lossy(&rest.stderr);
    assert!(rest.status.success(), "{stderr}");
    assert!(stderr.contains("resuming from") && stderr.contains("step_3"), "{stderr}");

    // Each step logged once, with the same loss, learning rate and pass over the data (10 draws of 3
    // conversations, each pass in its own order) as the run that went through.
    let sft_rows = |name: &str| -> Vec<(u64, f64, f64)> {
        rows(&runs.join(name))
            .iter()
            .filter_map(|r| Some((step(r), r.get("sft/loss")?.as_f64()?, r["sft/epoch"].as_f64()?)))
            .collect()
    };
    let expected = sft_rows("whole");
    assert_eq!(expected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert!((expected[4].2 - 10.0 / 3.0).abs() < 1e-12, "{expected:?}");
    assert_eq!(sft_rows("parts"), expected);
    let weights = |name: &str| std::fs::read(runs.join(name).join("checkpoints/step_5/model.safetensors")).unwrap();
    assert!(weights("parts") == weights("whole"), "the resumed run's final weights differ");
    assert!(runs.join("whole/checkpoints/step_2").is_dir() && runs.join("whole/checkpoints/step_4").is_dir());

    // Changing what the run computes on resume is refused in one line: the learning rate, or the chat template the
    // conversations are rendered with.
    let template = runs.join("template.jinja");
    std::fs::write(&template, "{% for m in messages %}{{ m['content'] }}{% endfor %}").unwrap();
    for (flag, value) in [("--lr", "2e-3"), ("--chat-template", template.to_str().unwrap())] {
        let changed = sft_run(&runs, "parts", &data, &[&steps("6")[..], &[flag, value, "--resume"]].concat());
        let err = String::from_utf8_lossy(&changed.stderr);
        assert_eq!(changed.status.code(), Some(2), "{err}");
        assert!(err.contains(flag) && err.contains("--allow-config-change"), "{err}");
    }
}

#[test]
fn sft_reads_a_folder_of_json_lines_and_json_in_both_trl_formats() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("chats");
    std::fs::create_dir(&data).unwrap();
    let messages = serde_json::json!({"messages": [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]});
    std::fs::write(data.join("a.jsonl"), format!("{messages}\n{messages}\n")).unwrap();
    let prompt_completion = serde_json::json!([{
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Opposite of up?"}],
        "completion": [{"role": "assistant", "content": "down"}],
    }]);
    std::fs::write(data.join("b.json"), prompt_completion.to_string()).unwrap();
    let runs = dir.path().join("runs");
    let out = sft_run(&runs, "folder", &data, &["--max-steps", "1", "--batch-size", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row = rows(&runs.join("folder")).into_iter().find(|r| r.get("sft/loss").is_some()).unwrap();
    // One step of three conversations is one pass over the folder's three rows.
    assert_eq!(row["sft/epoch"].as_f64(), Some(1.0), "{row}");
    // Cut to 3 tokens, no conversation keeps an assistant token: one line says so.
    let out = sft_run(&runs, "short", &data, &["--max-steps", "1", "--max-length", "3"]);
    let err = common::refused(&out);
    assert!(err.contains("--max-length 3"), "{err}");

    std::fs::write(data.join("c.jsonl"), "{\"question\": \"a row of no TRL format\"}\n").unwrap();
    let out = sft_run(&runs, "bad", &data, &["--max-steps", "1"]);
    let err = common::refused(&out);
    assert!(err.contains("c.jsonl row 0") && err.contains("no `messages`"), "{err}");
    assert!(err.contains("`text`") && err.contains("[question]"), "{err}");
    let call = serde_json::json!({"messages": [{"role": "user", "content": "lights on"}, {"role": "assistant",
        "tool_calls": [{"type": "function", "function": {"name": "light", "arguments": {"on": true}}}]}]});
    std::fs::write(data.join("c.jsonl"), format!("{call}\n")).unwrap();
    let out = sft_run(&runs, "bad", &data, &["--max-steps", "1"]);
    let err = common::refused(&out);
    assert!(err.contains("c.jsonl row 0") && err.contains("does not write") && err.contains("`light`"), "{err}");
}

/// The tiny model with its chat template taken out, as a base model is, in `dir/base`.
fn without_chat_template(dir: &Path) -> PathBuf {
    let model = dir.join("base");
    std::fs::create_dir(&model).unwrap();
    let tiny = tiny_model();
    for file in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny.join(file), model.join(file)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("tokenizer_config.json")).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(model.join("tokenizer_config.json"), config.to_string()).unwrap();
    model
}

/// Training and evaluation render every episode with the chat template: a model without one is refused at the
/// start in one line naming it, before a run directory or checkpoint exists.
#[test]
fn a_model_without_a_chat_template_is_refused_at_the_start_of_training_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let model = without_chat_template(dir.path());
    let runs = dir.path().join("runs");
    let (model, runs_dir) = (model.to_str().unwrap(), runs.to_str().unwrap());
    let common = ["--env", "calc_tools", "--model", model, "--device", "cpu"];
    let train = [&common[..], &["--max-steps", "1", "--no-wandb", "--runs-dir", runs_dir]].concat();
    let eval_out = dir.path().join("eval.json");
    let eval = [&["eval"][..], &common, &["--eval-tasks", "1", "--output", eval_out.to_str().unwrap()]].concat();
    for args in [train, eval] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("has no chat template") && err.contains(model), "{err}");
    }
    assert!(!runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none(), "a run directory was left");
    assert!(!eval_out.exists());
}

/// TRL's standard rows: language modeling (`text`) and string prompt-completion, mixed with conversational rows in
/// one dataset, and alone on a model with no chat template (a base model), which refuses conversations in one line.
#[test]
fn sft_trains_plain_text_rows_with_or_without_a_chat_template() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        serde_json::json!({"text": "The quick brown fox jumps over the lazy dog."}),
        serde_json::json!({"prompt": "Opposite of up:", "completion": " down"}),
        serde_json::json!({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}),
    ];
    let write = |name: &str, rows: &[serde_json::Value]| {
        let path = dir.path().join(name);
        let lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let runs = dir.path().join("runs");
    let mixed = write("mixed.jsonl", &rows);
    let out = sft_run(&runs, "mixed", &mixed, &["--max-steps", "2", "--batch-size", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let logged: Vec<serde_json::Value> =
        self::rows(&runs.join("mixed")).into_iter().filter(|r| r.get("sft/loss").is_some()).collect();
    assert_eq!(logged.len(), 2);
    // Every step holds the three rows: the text's every token after the first, the completion and its eos, the
    // assistant's answer and its end of turn (the byte-level tokenizer: one token per byte).
    let text_tokens = "The quick brown fox jumps over the lazy dog.".len();
    let want = (text_tokens + " down".len() + 1 + "4".len() + 1) as f64;
    for r in &logged {
        assert_eq!(r["sft/tokens"].as_f64(), Some(want), "{r}");
    }
    // TRL's switches: the prompt of a string prompt-completion row, then a conversation's every token, trained too.
    let tokens = |name: &str, extra: &[&str]| {
        let out = sft_run(&runs, name, &mixed, &[&["--max-steps", "1", "--batch-size", "3"], extra].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        self::rows(&runs.join(name)).iter().find_map(|r| r["sft/tokens"].as_f64()).unwrap()
    };
    // Every prompt token but the first, which nothing predicts.
    let prompt = ("Opposite of up:".len() - 1) as f64;
    assert_eq!(tokens("completion", &["--completion-only-loss", "false"]), want + prompt);
    let tokenizer = grpo_host::tokenizer::Tokenizer::from_dir(&tiny_model()).unwrap();
    let messages: Vec<grpo_sdk::Message> = serde_json::from_value(rows[2]["messages"].clone()).unwrap();
    let stream = grpo_host::sft::Renderer::new(&tokenizer, None).unwrap().render(&messages).unwrap().tokens.len();
    let all = tokens("all", &["--completion-only-loss", "false", "--assistant-only-loss", "false"]);
    assert_eq!(all, want + prompt - 2.0 + (stream - 1) as f64);

    // A model without a chat template: plain rows train, a conversation is refused in one line.
    let model = without_chat_template(dir.path());
    let plain = write("plain.jsonl", &rows[..2]);
    let out = sft_run_on(&model, &runs, "base", &plain, &["--max-steps", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = sft_run_on(&model, &runs, "base-chat", &mixed, &["--max-steps", "1"]);
    let err = common::refused(&out);
    assert!(err.contains("no chat template") && err.contains("`text`"), "{err}");

    // Another text column, named as TRL's dataset_text_field names it.
    let content = write("content.jsonl", &[serde_json::json!({"content": "abc", "id": 3})]);
    let out = sft_run(
        &runs,
        "content",
        &content,
        &["--max-steps", "1", "--batch-size", "1", "--dataset-text-field", "content"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trained = self::rows(&runs.join("content")).iter().find_map(|r| r["sft/tokens"].as_f64());
    assert_eq!(trained, Some(3.0), "b, c and the eos");

    // An empty text has no token to train on (its eos is its first token): alone, it is one line saying so.
    let empty = write("empty.jsonl", &[serde_json::json!({"text": ""})]);
    let out = sft_run(&runs, "empty", &empty, &["--max-steps", "1"]);
    let err = common::refused(&out);
    assert!(err.contains("no row has a token to train on"), "{err}");

    // A prompt and completion of different kinds name both.
    let odd = write(
        "odd.jsonl",
        &[serde_json::json!({"prompt": "up", "completion": [{"role": "assistant", "content": "down"}]})],
    );
    let out = sft_run(&runs, "odd", &odd, &["--max-steps", "1"]);
    let err = common::refused(&out);
    assert!(err.contains("odd.jsonl row 0") && err.contains("`prompt` is a string"), "{err}");
}

/// TRL's tool-calling rows: structured `tool_calls` (content null or absent) and a `tools` column, as a list or as a
/// string holding one (Arrow datasets store it so), trained with a model whose template writes tool calls.
#[test]
fn sft_trains_structured_tool_calls_with_each_rows_tools() {
    let dir = tempfile::tempdir().unwrap();
    // The tiny Qwen2 model with Qwen2.5's chat template, which has a place for tools and tool calls.
    let model = common::tiny_with_template(dir.path(), "qwen2.5-tools", "qwen2", "Qwen-Qwen2.5-7B-Instruct.jinja");

    let calc = serde_json::json!({"type": "function", "function": {"name": "calc", "description": "Evaluate.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}});
    let call = |e: &str| {
        serde_json::json!({"type": "function", "function": {"name": "calc",
        "arguments": {"expression": e}}})
    };
    let rows = [
        serde_json::json!({"tools": [calc], "messages": [
            {"role": "user", "content": "6 * 7?"},
            {"role": "assistant", "content": null, "tool_calls": [call("6 * 7")]},
            {"role": "tool", "content": "42", "name": "calc"},
            {"role": "assistant", "content": "42"}]}),
        serde_json::json!({"tools": serde_json::to_string(&[&calc]).unwrap(),
            "prompt": [{"role": "user", "content": "2 + 2?"}],
            "completion": [{"role": "assistant", "tool_calls": [call("2 + 2")]}]}),
    ];
    let data = dir.path().join("calls.jsonl");
    let lines: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let runs = dir.path().join("runs");
    let out = sft_run_on(&model, &runs, "calls", &data, &["--max-steps", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let logged: Vec<f64> = self::rows(&runs.join("calls")).iter().filter_map(|r| r["sft/loss"].as_f64()).collect();
    assert_eq!(logged.len(), 2);
    assert!(logged.iter().all(|l| l.is_finite() && *l > 0.0), "{logged:?}");

    // A `tools` string that is not JSON, and a tool call naming no function: one line each, naming the row.
    let mut bad = rows[1].clone();
    bad["tools"] = "[{".into();
    std::fs::write(&data, format!("{}\n{bad}\n", rows[0])).unwrap();
    let out = sft_run_on(&model, &runs, "bad-tools", &data, &["--max-steps", "1"]);
    let err = common::refused(&out);
    assert!(err.contains("calls.jsonl row 1") && err.contains("`tools` is not JSON"), "{err}");
    let mut bad = rows[0].clone();
    bad["messages"][1]["tool_calls"][0] = serde_json::json!({"arguments": {}});
    std::fs::write(&data, format!("{bad}\n")).unwrap();
    let out = sft_run_on(&model, &runs, "bad-call", &data, &["--max-steps", "1"]);
    let err = common::refused(&out);
    assert!(err.contains("row 0") && err.contains("message 1") && err.contains("names no function"), "{err}");
}

#[test]
fn sft_with_lora_saves_an_adapter_and_its_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = conversations(dir.path());
    let runs = dir.path().join("runs");
    let extra = ["--max-steps", "2", "--lora-rank", "4", "--lora-dropout", "0.1", "--save-merged", "--lr", "1e-2"];
    let out = sft_run(&runs, "lora", &data, &extra);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ckpt = runs.join("lora/checkpoints/step_2");
    assert!(ckpt.join("adapter_model.safetensors").is_file() && ckpt.join("adapter_config.json").is_file());
    assert!(!ckpt.join("model.safetensors").exists(), "a LoRA run saves the adapter, not the base weights");
    let numbers = |run: &str| -> Vec<(f64, f64)> {
        let rows = rows(&runs.join(run));
        rows.iter().filter_map(|r| Some((r["sft/loss"].as_f64()?, r["sft/grad_norm"].as_f64()?))).collect()
    };
    assert_eq!(numbers("lora").len(), 2);
    // Gradient checkpointing recomputes the layers, dropout included, and changes no number.
    let out = sft_run(&runs, "lora-gc", &data, &[&extra[..], &["--gradient-checkpointing"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(numbers("lora"), numbers("lora-gc"));
    let merged = ckpt.join("merged");
    let out = run(&["generate", "--device", "cpu", "--model", merged.to_str().unwrap(), "--raw", "hi"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn sigterm_stops_sft_after_the_step_in_flight_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = conversations(dir.path());
    let runs = dir.path().join("runs");
    let model = tiny_model();
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::host_exe())
        .args(["sft", "--data", data.to_str().unwrap(), "--model", model.to_str().unwrap(), "--device", "cpu"])
        .args(["--max-steps", "100000", "--batch-size", "1", "--no-wandb", "--checkpoint-interval", "0"])
        .args(["--runs-dir", runs.to_str().unwrap(), "--run-name", "stop"])
        .env("XDG_DATA_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = runs.join("stop/metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(true, |t| t.lines().count() < 2) {
        assert!(started.elapsed().as_secs() < 120 && child.try_wait().unwrap().is_none(), "no rows logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    let logged = rows(&runs.join("stop")).iter().filter(|r| r.get("sft/loss").is_some()).count() as u64;
    let saved = runs.join(format!("stop/checkpoints/step_{logged}"));
    assert!(saved.is_dir(), "no checkpoint at the last logged step {logged}: {stderr}");
    assert!(stderr.contains("stopped by SIGTERM") && stderr.contains("--resume"), "{stderr}");
}

#[test]
fn a_conversation_without_an_assistant_turn_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n").unwrap();
    let model = tiny_model();
    let out = run(&[
        "sft",
        "--device",
        "cpu",
        "--data",
        bad.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    let err = common::refused(&out);
    assert!(err.contains("bad.jsonl row 0") && err.contains("no assistant message"), "{err}");
}

#[test]
fn the_kl_reference_is_the_warmed_up_model_and_a_resume_reads_it_back() {
    let runs = tempfile::tempdir().unwrap();
    // A large warm-up learning rate moves the tiny model far from where it started, so a reference left at the
    // loaded model would show a large KL in the first batch.
    let extra = ["--max-steps", "2", "--sft-lr", "3e-2", "--kl-weight", "0.1", "--checkpoint-interval", "1"];
    let out = train(runs.path(), &extra);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = runs.path().join("warm");
    assert!(run.join("checkpoints/sft_reference/model.safetensors").is_file());
    let rows = rows(&run);
    let kl_at = |rows: &[serde_json::Value], s: u64| -> f64 {
        let row = rows.iter().find(|r| step(r) == s && r.get("rollouts/kl_mean").is_some()).expect("a batch row");
        row["rollouts/kl_mean"].as_f64().unwrap()
    };
    // The first batch samples from the warmed-up model itself: its KL from the reference is rounding only.
    assert!(kl_at(&rows, 2).abs() < 1e-4, "first batch KL {}", kl_at(&rows, 2));
    let sft_loss: Vec<f64> = rows.iter().filter_map(|r| r["sft/loss"].as_f64()).collect();
    assert!(sft_loss[1] < sft_loss[0], "the warm-up moved the model: {sft_loss:?}");

    // Resumed after the first batch, the second batch's KL is the uninterrupted run's to the bit: the reference
    // came back from sft_reference, not from the model directory.
    let second = kl_at(&rows, 3);
    let resumed_runs = tempfile::tempdir().unwrap();
    let copy = resumed_runs.path().join("warm");
    common::copy_dir(&run, &copy);
    std::fs::remove_dir_all(copy.join("checkpoints/step_4")).unwrap();
    std::fs::write(copy.join("metrics.jsonl"), "").unwrap();
    let out = train(resumed_runs.path(), &[&extra[..], &["--resume", "auto"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(kl_at(&self::rows(&copy), 3).to_bits(), second.to_bits());

    // Without it, the resume stops at once with one line saying what is missing and what to do.
    std::fs::remove_dir_all(copy.join("checkpoints/sft_reference")).unwrap();
    std::fs::remove_dir_all(copy.join("checkpoints/step_4")).unwrap();
    let out = train(resumed_runs.path(), &[&extra[..], &["--resume", "auto"]].concat());
    let err = common::refused(&out);
    assert!(err.contains("sft_reference") && err.contains("--kl-weight 0"), "{err}");
}

/// `--eval-data`: the held-out loss after a step is the loss of the model that step made, so on the training rows
/// themselves (every step a whole pass over them) it equals the next step's training loss; it is logged after every
/// `--eval-every` steps and after the last, and a bad held-out row stops the run before the first step.
#[test]
fn sft_held_out_loss_is_the_next_steps_loss_on_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rows.jsonl");
    let rows = [
        serde_json::json!({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}),
        serde_json::json!({"text": "The quick brown fox."}),
        serde_json::json!({"prompt": "Opposite of up:", "completion": " down"}),
    ];
    std::fs::write(&data, rows.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
    let runs = dir.path().join("runs");
    let flags = ["--max-steps", "4", "--batch-size", "3", "--micro-batch-size", "2", "--eval-every", "2"];
    let eval = [&flags[..], &["--eval-data", data.to_str().unwrap()]].concat();
    let out = sft_run(&runs, "held-out", &data, &eval);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let logged = self::rows(&runs.join("held-out"));
    let value = |step: usize, key: &str| logged[step].get(key).and_then(serde_json::Value::as_f64);
    // After steps 2 and 4 (rows 1 and 3): the loss the model of that step has on the three rows.
    let evaluated: Vec<usize> = (0..4).filter(|&s| value(s, "sft/eval_loss").is_some()).collect();
    assert_eq!(evaluated, [1, 3], "{stderr}");
    let (held_out, next) = (value(1, "sft/eval_loss").unwrap(), value(2, "sft/loss").unwrap());
    assert!((held_out - next).abs() <= 1e-6 * next, "{held_out} vs {next}");
    assert_eq!(value(1, "sft/eval_tokens"), value(2, "sft/tokens"));
    // The same holds for the entropy, which both read from the same logits.
    let (held_out, next) = (value(1, "sft/eval_entropy").unwrap(), value(2, "sft/entropy").unwrap());
    assert!(next > 0.0 && (held_out - next).abs() <= 1e-6 * next, "entropy {held_out} vs {next}");
    assert!(stderr.contains("eval at step 2: loss ") && stderr.contains("eval at step 4: loss "), "{stderr}");

    // `--eval-holdout 1`: the last row (" down" and the eos trained) is held out, two rows are trained on.
    let out = sft_run(&runs, "holdout", &data, &["--max-steps", "1", "--batch-size", "2", "--eval-holdout", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row = &self::rows(&runs.join("holdout"))[0];
    assert_eq!((row["sft/eval_tokens"].as_f64(), row["sft/epoch"].as_f64()), (Some(6.0), Some(1.0)), "{row}");
    let out = sft_run(&runs, "holdout-all", &data, &["--max-steps", "1", "--eval-holdout", "3"]);
    let err = common::refused(&out);
    assert!(err.contains("--eval-holdout 3: --data has 3 rows"), "{err}");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"question\": 1}\n").unwrap();
    let out = sft_run(&runs, "bad-eval", &data, &["--max-steps", "1", "--eval-data", bad.to_str().unwrap()]);
    let err = common::refused(&out);
    assert!(err.contains("--eval-data") && err.contains("bad.jsonl row 0"), "{err}");
}

/// `sft --metric-for-best-model sft/eval_loss` keeps the checkpoint of the lowest held-out loss beside the newest
/// under `--save-total-limit 1`, and `--early-stopping-patience 2` ends the run once two evaluations in a row have
/// not improved on the best by more than `--early-stopping-threshold`: with a threshold no change passes, after
/// the third of six steps, as a completed run whose summary says so.
#[test]
fn sft_keeps_its_best_checkpoint_and_stops_early() {
    let dir = tempfile::tempdir().unwrap();
    let data = conversations(dir.path());
    let runs = dir.path().join("runs");
    let flags = ["--max-steps", "6", "--eval-every", "1", "--eval-holdout", "1", "--checkpoint-interval", "100"];
    let watch = ["--metric-for-best-model", "sft/eval_loss", "--early-stopping-patience", "2"];
    let extra = [&flags[..], &watch[..], &["--early-stopping-threshold", "1e9", "--save-total-limit", "1"]].concat();
    let out = sft_run(&runs, "best", &data, &extra);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("early stopping at step 3: sft/eval_loss has not improved by more than 1000000000"), "{err}");
    let run = runs.join("best");
    let evals: Vec<(u64, f64)> =
        self::rows(&run).iter().filter_map(|r| Some((step(r) + 1, r.get("sft/eval_loss")?.as_f64()?))).collect();
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3], "{evals:?}");
    let (best_step, best_loss) = evals.iter().fold(evals[0], |b, e| if e.1 < b.1 { *e } else { b });
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["final/best_checkpoint_step"].as_f64(), Some(best_step as f64), "{summary}");
    assert_eq!(summary["final/best_metric"].as_f64(), Some(best_loss), "{summary}");
    assert_eq!(
        (summary["final/early_stopped"].as_f64(), summary["final/total_steps"].as_f64()),
        (Some(1.0), Some(3.0))
    );
    assert_eq!(summary["training/completed"].as_f64(), Some(1.0), "{summary}");
    let kept = common::checkpoint_names(&run.join("checkpoints"));
    let mut wanted = vec![format!("step_{best_step}"), "step_3".to_string()];
    wanted.dedup();
    assert_eq!(kept, wanted, "{evals:?}");
    assert!(err.contains(&format!("best sft/eval_loss {best_loss:.4}: ")), "{err}");

    let out = sft_run(&runs, "no-eval", &data, &["--max-steps", "2", "--metric-for-best-model", "sft/eval_loss"]);
    let err = common::refused(&out);
    assert!(err.contains("compares the evaluations of --eval-every N, which is not given"), "{err}");
}

/// `--micro-batch-tokens` groups a step's rows longest first within the budget instead of by count: a long row
/// (past the budget, so alone) and three short ones (together) train and evaluate to the losses of one row per
/// pass, and a budget below `--max-length` is refused in one line.
#[test]
fn sft_micro_batches_by_tokens_give_the_same_steps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rows.jsonl");
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(6);
    let rows = [
        serde_json::json!({"text": long}),
        serde_json::json!({"text": "one"}),
        serde_json::json!({"text": "two"}),
        serde_json::json!({"prompt": "Up:", "completion": " down"}),
        serde_json::json!({"text": "three"}),
    ];
    std::fs::write(&data, rows.iter().map(|r| r.to_string() + "\n").collect::<String>()).unwrap();
    let runs = dir.path().join("runs");
    let common = ["--max-steps", "3", "--batch-size", "4", "--max-length", "0", "--eval-holdout", "1"];
    let losses = |name: &str, extra: &[&str]| -> Vec<f64> {
        let out = sft_run(&runs, name, &data, &[&common[..], extra].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let logged = self::rows(&runs.join(name));
        let keys = ["sft/loss", "sft/grad_norm", "sft/eval_loss"];
        logged.iter().flat_map(|r| keys.iter().filter_map(|k| r.get(*k).and_then(serde_json::Value::as_f64))).collect()
    };
    let rows = losses("rows", &["--micro-batch-size", "1"]);
    let tokens = losses("tokens", &["--micro-batch-tokens", "48"]);
    assert_eq!(rows.len(), 7, "{rows:?}");
    for (a, b) in rows.iter().zip(&tokens) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "{rows:?} vs {tokens:?}");
    }
    let out = sft_run(&runs, "refused", &data, &["--max-length", "256", "--micro-batch-tokens", "100"]);
    let err = common::refused(&out);
    assert!(err.contains("--micro-batch-tokens 100 is below --max-length 256"), "{err}");
}

/// `dir/rows.jsonl` with one `{"text": ...}` row per text.
fn text_rows(dir: &Path, texts: &[&str]) -> PathBuf {
    let data = dir.join("rows.jsonl");
    let rows: String = texts.iter().map(|t| serde_json::json!({"text": t}).to_string() + "\n").collect();
    std::fs::write(&data, rows).unwrap();
    data
}

/// `--num-train-epochs` (TRL's num_train_epochs) sets the steps from the rows: 3 rows, 2 passes, 2 a step: 3 steps,
/// ending after exactly two passes.
#[test]
fn sft_trains_for_a_number_of_passes_over_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = text_rows(dir.path(), &["one", "two", "three"]);
    let runs = dir.path().join("runs");
    let out = sft_run(&runs, "passes", &data, &["--num-train-epochs", "2", "--batch-size", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("--num-train-epochs 2: 3 rows in global batches of 2: 3 steps"), "{stderr}");
    let epochs: Vec<f64> = self::rows(&runs.join("passes")).iter().filter_map(|r| r["sft/epoch"].as_f64()).collect();
    assert_eq!(epochs.len(), 3);
    assert!((epochs[2] - 2.0).abs() < 1e-12, "{epochs:?}");
    // With an environment's demonstrations there is no pass to count: one line says so.
    let out = run(&["sft", "--env", "calc_tools", "--num-train-epochs", "1"]);
    let err = common::refused(&out);
    assert!(err.contains("--num-train-epochs needs --data"), "{err}");
}

/// `--sft-data`: the warm-up trains on a dataset's rows (TRL's formats) instead of the environment's
/// demonstrations; a bad file stops the run at the start, before the model, in one line.
#[test]
fn the_warm_up_trains_on_sft_data_when_given() {
    let dir = tempfile::tempdir().unwrap();
    // Three rows of three trained tokens each (the byte-level tokenizer: two bytes and the eos after the first).
    let data = text_rows(dir.path(), &["aaa", "bbb", "ccc"]);
    let runs = dir.path().join("runs");
    let out = train(&runs, &["--sft-data", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tokens: Vec<f64> = rows(&runs.join("warm")).iter().filter_map(|r| r["sft/tokens"].as_f64()).collect();
    assert_eq!(tokens, [6.0, 6.0], "two rows a step, not demonstrations");
    // A resume past the warm-up needs its data no more: the file may be gone.
    std::fs::remove_file(&data).unwrap();
    let out = train(&runs, &["--sft-data", data.to_str().unwrap(), "--max-steps", "2", "--resume"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(&data, "{\"question\": 1}\n").unwrap();
    let out = train(&dir.path().join("runs-bad"), &["--sft-data", data.to_str().unwrap()]);
    let err = common::refused(&out);
    assert!(err.contains("--sft-data") && err.contains("rows.jsonl row 0"), "{err}");
    assert!(!dir.path().join("runs-bad/warm/checkpoints").exists(), "nothing was written before the refusal");
}

/// TRL's way of sizing a step (`--per_device_train_batch_size P --gradient_accumulation_steps G`: P x G rows, P at
/// a time), `--save_steps`, `--eval_on_start True` and `--full_determinism`, as a recipe spells them, train what
/// this host's own flags do; the evaluation before training is logged in step 0's row and not repeated on resume.
#[test]
fn sft_takes_trls_batch_sizing_save_steps_and_eval_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = conversations(dir.path());
    let runs = dir.path().join("runs");
    let model = tiny_model();
    let (data, model, runs_arg) = (data.to_str().unwrap(), model.to_str().unwrap(), runs.to_str().unwrap());
    let base = ["sft", "--data", data, "--model", model, "--device", "cpu", "--lr", "1e-3", "--no-wandb"];
    let base = [&base[..], &["--runs-dir", runs_arg, "--eval-holdout", "1"]].concat();
    let ours = ["--run-name", "ours", "--batch-size", "4", "--micro-batch-size", "2", "--checkpoint-interval", "1"];
    let out = run(&[&base[..], &ours, &["--max-steps", "2"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trl = [
        "--run_name",
        "trl",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "2",
        "--save_steps",
        "1",
        "--eval_on_start",
        "True",
        "--full_determinism",
    ];
    let out = run(&[&base[..], &trl, &["--max_steps", "2"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("eval at step 0: loss "), "{stderr}");

    let value = |run: &str, step: usize, key: &str| rows(&runs.join(run))[step].get(key).and_then(|v| v.as_f64());
    for step in 0..2 {
        let (a, b) = (value("ours", step, "sft/loss").unwrap(), value("trl", step, "sft/loss").unwrap());
        assert!((a - b).abs() <= 1e-6 * a.abs(), "step {step}: {a} vs {b}");
    }
    assert_eq!(value("ours", 0, "sft/eval_loss"), None);
    let (before, after) = (value("trl", 0, "sft/eval_loss").unwrap(), value("trl", 1, "sft/eval_loss").unwrap());
    assert!(before > 0.0 && (after - value("ours", 1, "sft/eval_loss").unwrap()).abs() <= 1e-6 * after);
    for run in ["ours", "trl"] {
        assert_eq!(common::checkpoint_names(&runs.join(run).join("checkpoints")), ["step_1", "step_2"], "{run}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runs.join("trl/config.json")).unwrap()).unwrap();
    assert_eq!((config["sft"]["batch_size"].as_u64(), config["sft"]["micro_batch_size"].as_u64()), (Some(4), Some(2)));

    // Resumed, the run evaluates after its last step only.
    let out = run(&[&base[..], &trl, &["--max_steps", "3", "--resume"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("eval at step 0") && stderr.contains("eval at step 3: loss "), "{stderr}");
}
