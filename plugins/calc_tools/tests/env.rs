//! The calc_tools environment through its `Environment` API: the reward table case by case, tasks, configs.

use grpo_calc_tools::CalcTools;
use grpo_sdk::{Environment, MetricSource, Plugin, Role, Split, Task};
use serde_json::json;

fn env(config: serde_json::Value) -> CalcTools {
    CalcTools::new(config).expect("valid config")
}

/// Play one episode with scripted replies; returns the total reward, the components and whether it ended.
fn play(env: &CalcTools, answer: &str, replies: &[&str]) -> (f64, Vec<(String, f64)>, bool, Vec<grpo_sdk::Message>) {
    let task = Task::new("t", "What is 2 to the 10th?", answer);
    let (mut state, _) = env.reset(&task).unwrap();
    let mut components = Vec::new();
    let mut done = false;
    let mut messages = Vec::new();
    for r in replies {
        let out = env.step(&mut state, r).unwrap();
        components.extend(out.rewards.iter().map(|r| (r.name.clone(), r.value)));
        messages.extend(out.messages);
        done = out.done;
        if done {
            break;
        }
    }
    let total = components.iter().map(|(_, v)| v).sum();
    (total, components, done, messages)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn reward_table() {
    let e = env(serde_json::Value::Null);
    // (replies, expected total, expected component names)
    let cases: Vec<(Vec<&str>, f64, Vec<&str>)> = vec![
        (vec!["<answer>1024</answer>"], -0.5, vec!["step1_tool_call_format"]),
        (vec!["I will not use tools."], -0.5, vec!["step1_tool_call_format"]),
        (vec!["<tool:calc>2**</tool>"], -0.8, vec!["step1_tool_call_format", "step1_tool_execution"]),
        (vec!["<tool:calc>1/0</tool>"], -0.8, vec!["step1_tool_call_format", "step1_tool_execution"]),
        (vec!["<tool:python>2**10</tool>"], -0.8, vec!["step1_tool_call_format", "step1_tool_execution"]),
        (
            vec!["<tool:calc>2**10</tool>", "The answer is 1024."],
            -0.1,
            vec!["step1_tool_call_format", "step1_tool_execution", "step2_answer_format"],
        ),
        (
            vec!["<tool:calc>2**10</tool>", "<answer>1000</answer>"],
            0.5,
            vec!["step1_tool_call_format", "step1_tool_execution", "step2_answer_format", "step2_answer_content"],
        ),
        (
            vec!["Let me compute. <tool:calc>2**10</tool>", " <answer> 1024 </answer> "],
            2.0,
            vec!["step1_tool_call_format", "step1_tool_execution", "step2_answer_format", "step2_answer_content"],
        ),
        // Numbers compare by value (a documented difference from re-grpo's string equality).
        (vec!["<tool:calc>2**10</tool>", "<answer>1,024.0</answer>"], 2.0, vec![]),
    ];
    for (replies, total, names) in cases {
        let (got, components, done, _) = play(&e, "1024", &replies);
        assert!(close(got, total), "{replies:?}: total {got}, want {total} ({components:?})");
        assert!(done, "{replies:?} should end the episode");
        if !names.is_empty() {
            let got_names: Vec<&str> = components.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(got_names, names, "{replies:?}");
        }
    }
    // Exact comparison, as re-grpo, when configured.
    let exact = env(json!({"compare": "exact"}));
    let (got, ..) = play(&exact, "1024", &["<tool:calc>2**10</tool>", "<answer>1024.0</answer>"]);
    assert!(close(got, 0.5));
}

#[test]
fn tool_result_is_shown_as_the_next_user_turn() {
    let e = env(serde_json::Value::Null);
    let task = Task::new("t", "What is 7 * 6?", "42");
    let (mut state, opening) = e.reset(&task).unwrap();
    assert_eq!(opening[0].role, Role::System);
    assert!(opening[1].content.contains("What is 7 * 6?"));
    let out = e.step(&mut state, "<tool:calc>7 * 6</tool>").unwrap();
    assert!(!out.done);
    assert_eq!(out.messages.len(), 1);
    assert_eq!(out.messages[0].role, Role::User);
    assert!(out.messages[0].content.starts_with("Tool result: 42\n"), "{}", out.messages[0].content);
    // Division gives Python's float.
    let (mut state, _) = e.reset(&task).unwrap();
    let out = e.step(&mut state, "<tool:calc>84 / 2</tool>").unwrap();
    assert!(out.messages[0].content.starts_with("Tool result: 42.0\n"));
}

#[test]
fn hermes_format() {
    let e = env(json!({"tool_format": "hermes"}));
    let tools = e.tools();
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "calc");
    let call = "<tool_call>\n{\"name\": \"calc\", \"arguments\": {\"expression\": \"2**10\"}}\n</tool_call>";
    let (total, _, _, messages) = play(&e, "1024", &[call, "<answer>1024</answer>"]);
    assert!(close(total, 2.0));
    assert_eq!(messages[0].role, Role::Tool);
    assert_eq!(messages[0].name.as_deref(), Some("calc"));
    assert_eq!(messages[0].content, "1024");
    assert_eq!(messages[1].role, Role::User);
    // Broken JSON is a format failure; the native tag is not a call in Hermes mode.
    let (total, ..) = play(&e, "1024", &["<tool_call>{\"name\": calc}</tool_call>"]);
    assert!(close(total, -0.5));
    let (total, ..) = play(&e, "1024", &["<tool:calc>2**10</tool>"]);
    assert!(close(total, -0.5));
    // Native format declares no tools to the chat template.
    assert!(env(serde_json::Value::Null).tools().is_empty());
}

#[test]
fn more_turns_allow_more_calls() {
    let e = env(json!({"max_turns": 3}));
    let task = Task::new("t", "q", "1024");
    let (mut state, _) = e.reset(&task).unwrap();
    let out = e.step(&mut state, "<tool:calc>2**5</tool>").unwrap();
    assert!(out.messages[0].content.contains("Call the tool again"));
    let out = e.step(&mut state, "<tool:calc>32*32</tool>").unwrap();
    assert!(!out.done && out.rewards.is_empty());
    assert!(out.messages[0].content.contains("Tool result: 1024"));
    let out = e.step(&mut state, "<answer>1024</answer>").unwrap();
    assert!(out.done);
    assert!(close(out.total_reward(), 1.3));
}

#[test]
fn generated_tasks_are_deterministic_and_correct() {
    let e = env(serde_json::Value::Null);
    assert_eq!(e.task_count(Split::Train), None);
    assert_eq!(e.task_count(Split::Eval), Some(200));
    for i in 0..300 {
        let a = e.task(Split::Train, 7, i).unwrap();
        assert_eq!(a, e.task(Split::Train, 7, i).unwrap());
        assert_ne!(a.id, e.task(Split::Eval, 7, i).unwrap().id);
        // The question holds an expression whose value is the answer.
        let expr = a
            .question
            .trim_start_matches("What is ")
            .trim_start_matches("Calculate ")
            .trim_start_matches("Evaluate ")
            .trim_end_matches(" = ?")
            .trim_end_matches(['?', '.']);
        let value = grpo_toolcall::calc::evaluate(expr).unwrap().to_string();
        assert_eq!(value, a.answer, "{}", a.question);
        assert!(a.question.chars().count() < 128);
        let terms = a.meta["num_terms"].as_u64().unwrap();
        assert!((2..=3).contains(&terms));
    }
    let differs = (0..20).any(|i| e.task(Split::Train, 1, i).unwrap() != e.task(Split::Train, 2, i).unwrap());
    assert!(differs, "the seed picks the stream");
}

#[test]
fn jsonl_tasks_in_re_grpo_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.jsonl");
    std::fs::write(
        &path,
        "{\"id\": \"0\", \"question\": \"12 + 30\", \"answer\": \"42\", \"num_terms\": 2, \"num_digits\": 2}\n\
         \n\
         {\"question\": \"1 + 2 + 3 + 4\", \"answer\": \"10\", \"num_terms\": 4, \"num_digits\": 1}\n\
         {\"question\": \"2 * 3\", \"answer\": 6, \"num_terms\": 2, \"num_digits\": 1}\n",
    )
    .unwrap();
    let e = env(json!({"data_path": path}));
    assert_eq!(e.task_count(Split::Train), Some(2), "the 4-term row is filtered out");
    assert_eq!(e.task(Split::Train, 0, 1).unwrap().answer, "6");
    assert_eq!(e.task_count(Split::Eval), Some(0));
    std::fs::write(&path, "{\"question\": \"1\"}\n").unwrap();
    let err = CalcTools::new(json!({"data_path": path})).err().unwrap().to_string();
    assert!(err.contains("tasks.jsonl:1") && err.contains("answer"), "{err}");
    let err = CalcTools::new(json!({"data_path": "/nonexistent.jsonl"})).err().unwrap().to_string();
    assert!(err.contains("/nonexistent.jsonl"), "{err}");
    let err = CalcTools::new(json!({"max_turn": 3})).err().unwrap().to_string();
    assert!(err.contains("unknown field `max_turn`"), "{err}");
}

#[test]
fn metrics_report_group_rates() {
    let e = env(serde_json::Value::Null);
    play(&e, "1024", &["<tool:calc>2**10</tool>", "<answer>1024</answer>"]);
    play(&e, "1024", &["<tool:calc>2**10</tool>", "<answer>1</answer>"]);
    play(&e, "1024", &["<tool:calc>2**</tool>"]);
    play(&e, "1024", &["no call"]);
    let m: std::collections::HashMap<String, f64> =
        e.metrics().into_iter().map(|m| (m.name.clone(), m.as_number().unwrap())).collect();
    assert_eq!(m["group_rates/tool_called"], 0.75);
    assert!(close(m["group_rates/tool_exec_ok"], 2.0 / 3.0));
    assert_eq!(m["group_rates/answer_format_ok"], 0.5);
    assert_eq!(m["group_rates/answer_correct"], 0.5);
    assert_eq!(m["calc_tools/tool_failures_per_episode"], 0.25);
    assert!(e.metrics().is_empty(), "counters restart after each report");
}

/// Play `task`'s demonstration; returns the total reward and whether the episode ended.
fn play_demonstration(env: &CalcTools, task: &Task) -> (f64, bool) {
    let turns = env.demonstration(task).unwrap().unwrap_or_else(|| panic!("no demonstration for {task:?}"));
    let (mut state, _) = env.reset(task).unwrap();
    let (mut total, mut done) = (0.0, false);
    for turn in &turns {
        assert!(!done, "turns left after the end: {turns:?}");
        let out = env.step(&mut state, turn).unwrap();
        total += out.total_reward();
        done = out.done;
    }
    (total, done)
}

#[test]
fn demonstrations_earn_the_best_return_in_both_formats() {
    for config in [json!({}), json!({"tool_format": "hermes"}), json!({"max_turns": 3, "compare": "exact"})] {
        let e = env(config.clone());
        let best = e.settings().rewards.best_total();
        for index in 0..200 {
            let task = e.task(Split::Train, 7, index).unwrap();
            let (total, done) = play_demonstration(&e, &task);
            assert!(done && close(total, best), "{config} {task:?}: {total}");
        }
    }
    let e = env(serde_json::Value::Null);
    let task = Task::new("t", "Calculate (12 + 7) * 3.", "57");
    assert_eq!(e.demonstration(&task).unwrap().unwrap(), vec!["<tool:calc>(12 + 7) * 3</tool>", "<answer>57</answer>"]);
}

#[test]
fn no_demonstration_without_an_expression_worth_the_answer() {
    let e = env(serde_json::Value::Null);
    assert_eq!(e.demonstration(&Task::new("t", "What is 2 to the 10th?", "1024")).unwrap(), None);
    assert_eq!(e.demonstration(&Task::new("t", "What is 2 + 2?", "5")).unwrap(), None);
    assert_eq!(grpo_calc_tools::tasks::expression_in("Evaluate -3 * 4 = ?"), Some("-3 * 4"));
    assert_eq!(grpo_calc_tools::tasks::expression_in("What is 1.5 + 2?"), Some("1.5 + 2"));
    assert_eq!(grpo_calc_tools::tasks::expression_in("Year 2024 was -7"), None);
}
