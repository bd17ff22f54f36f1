//! `grpo-host play` run as a user runs it, through the dynamically loaded calc_tools and multiturn_qa plugins:
//! the reward table case by case, the built-in QA corpus, JSON output and user errors.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn plugin_dir() -> &'static Path {
    common::installed()
}

fn play(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(plugin_dir().join("grpo-host"))
        .arg("play")
        .args(["--plugin-dir", plugin_dir().to_str().unwrap()])
        .args(args)
        .env_remove("GRPO_PLUGIN_PATH")
        .env("XDG_DATA_HOME", home.path())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn play_json(args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = play(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

#[test]
fn the_headline_calculator_episode_scores_2() {
    let out = play(&[
        "--env",
        "calc_tools",
        "--question",
        "What is 2 to the 10th?",
        "--answer",
        "1024",
        "--reply",
        "<tool:calc>2**10</tool>",
        "--reply",
        "<answer>1024</answer>",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("--- system ---"), "{stdout}");
    assert!(stdout.contains("What is 2 to the 10th?"), "{stdout}");
    assert!(stdout.contains("--- assistant ---\n<tool:calc>2**10</tool>"), "{stdout}");
    assert!(stdout.contains("Tool result: 1024"), "{stdout}");
    assert!(stdout.contains("step2_answer_content: 1.0"), "{stdout}");
    assert!(stdout.contains("total reward: 2.0\ndone: true"), "{stdout}");
}

#[test]
fn calculator_reward_table_through_the_plugin() {
    let base = ["--env", "calc_tools", "--question", "What is 6 * 7?", "--answer", "42"];
    let cases: [(&[&str], f64, usize); 5] = [
        (&["<answer>42</answer>"], -0.5, 1),
        (&["<tool:calc>6 * </tool>"], -0.8, 2),
        (&["<tool:calc>6 * 7</tool>", "42"], -0.1, 3),
        (&["<tool:calc>6 * 7</tool>", "<answer>41</answer>"], 0.5, 4),
        (&["<tool:calc>6 * 7</tool>", "<answer>42</answer>"], 2.0, 4),
    ];
    for (replies, total, components) in cases {
        let mut args = base.to_vec();
        for r in replies {
            args.extend(["--reply", r]);
        }
        let v = play_json(&args);
        assert!((v["total_reward"].as_f64().unwrap() - total).abs() < 1e-9, "{replies:?}: {v}");
        assert_eq!(v["rewards"].as_object().unwrap().len(), components, "{replies:?}: {v}");
        assert_eq!(v["done"], true);
    }
    // A reply after the end is reported as unused.
    let v = play_json(&[&base[..], &["--reply", "no tool", "--reply", "<answer>42</answer>"]].concat());
    assert_eq!(v["unused_replies"], 1);
    assert_eq!(
        v["metrics"].as_array().unwrap().iter().find(|m| m["name"] == "group_rates/tool_called").unwrap()["value"],
        0.0
    );
}

#[test]
fn search_episode_on_the_built_in_corpus() {
    let first = play_json(&["--env", "multiturn_qa", "--task", "0", "--reply", "<answer>?</answer>"]);
    let question = first["task"]["question"].as_str().unwrap().to_string();
    let answer = first["task"]["answer"].as_str().unwrap().to_string();
    let search = format!("<tool:search>{question}</tool>");
    let final_answer = format!("<answer>{answer}</answer>");
    let v = play_json(&["--env", "multiturn_qa", "--task", "0", "--reply", &search, "--reply", &final_answer]);
    assert_eq!(v["total_reward"], 2.0, "{v}");
    let results = v["steps"][0]["messages"][0]["content"].as_str().unwrap();
    assert!(results.contains(&answer), "{results}");
    let hermes = play_json(&[
        "--env",
        "multiturn_qa",
        "--env-config",
        "{\"tool_format\": \"hermes\"}",
        "--task",
        "0",
        "--reply",
        &format!("<tool_call>{{\"name\": \"search\", \"arguments\": {{\"query\": \"{question}\"}}}}</tool_call>"),
        "--reply",
        &final_answer,
    ]);
    assert_eq!(hermes["total_reward"], 2.0, "{hermes}");
    assert_eq!(hermes["steps"][0]["messages"][0]["role"], "tool");
}

#[test]
fn user_mistakes_are_one_line_and_exit_2() {
    let out = play(&["--env", "no_such_env", "--reply", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no_such_env"));
    let out = play(&["--env", "multiturn_qa", "--task", "100000", "--reply", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--task 100000") && stderr.lines().count() == 1, "{stderr}");
    let out = play(&["--env", "calc_tools", "--env-config", "{\"max_turn\": 3}", "--reply", "x"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("max_turn"), "{}", text(&out.stderr));
    let out = play(&["--env", "calc_tools", "--answer", "3", "--reply", "x"]);
    assert_eq!(out.status.code(), Some(2), "--answer needs --question");
}

/// Play the environment's own demonstration of task `task` and return the JSON result.
fn play_demonstration(env: &str, extra: &[&str], task: &str) -> serde_json::Value {
    let mut args = vec!["--env", env, "--task", task, "--demonstration"];
    args.extend(extra);
    play_json(&args)
}

#[test]
fn the_calculator_demonstration_earns_the_best_return() {
    for (extra, task) in
        [(&[][..], "0"), (&[][..], "17"), (&["--env-config", "{\"tool_format\": \"hermes\"}"][..], "3")]
    {
        let v = play_demonstration("calc_tools", extra, task);
        assert_eq!(v["total_reward"], 2.0, "{v}");
        assert_eq!((v["done"].as_bool(), v["unused_replies"].as_u64()), (Some(true), Some(0)), "{v}");
        assert_eq!(v["steps"].as_array().unwrap().len(), 2, "{v}");
    }
    let v = play_demonstration("calc_tools", &[], "0");
    let call = v["steps"][0]["reply"].as_str().unwrap();
    assert!(call.starts_with("<tool:calc>") && call.ends_with("</tool>"), "{call}");
    assert_eq!(v["steps"][1]["reply"], format!("<answer>{}</answer>", v["task"]["answer"].as_str().unwrap()));
}

#[test]
fn the_math_demonstration_earns_the_best_return() {
    for task in ["0", "5"] {
        let v = play_demonstration("math", &[], task);
        assert_eq!(v["total_reward"], 1.0, "{v}");
        assert_eq!(v["done"], true);
    }
}

#[test]
fn the_search_demonstration_earns_the_best_return() {
    for (extra, task) in [(&[][..], "0"), (&["--env-config", "{\"tool_format\": \"hermes\"}"][..], "1")] {
        let v = play_demonstration("multiturn_qa", extra, task);
        assert_eq!(v["total_reward"], 2.0, "{v}");
        let results = v["steps"][0]["messages"][0]["content"].as_str().unwrap();
        assert!(results.contains(v["task"]["answer"].as_str().unwrap()), "{results}");
    }
}

#[test]
fn a_demonstration_and_replies_do_not_mix() {
    let out = play(&["--env", "math", "--demonstration", "--reply", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out =
        play(&["--env", "calc_tools", "--question", "What is 2 to the 10th?", "--answer", "1024", "--demonstration"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("calc_tools has no demonstration for task cli") && err.lines().count() == 1, "{err}");
}
