//! The `math` environment: rewards as re-grpo gives them, the seeded generator, and re-grpo's JSONL files.

use grpo_math::{reward, MathEnv};
use grpo_sdk::{Environment, MetricSource, Plugin, Role, Split};
use serde_json::json;
use std::io::Write;

#[test]
fn reward_table_matches_re_grpo() {
    assert_eq!(reward("<answer>42</answer>", "42", false), 1.0);
    assert_eq!(reward("<think>6*7</think>\n<answer>42</answer> done", "42", false), 1.0);
    // The captured text is not stripped, so padding makes it "contains", not exact.
    assert_eq!(reward("<answer> 42 </answer>", "42", false), 0.5);
    assert_eq!(reward("<answer>x = 142</answer>", "42", false), 0.5);
    assert_eq!(reward("<answer>41</answer>", "42", false), 0.01);
    assert_eq!(reward("<answer></answer>", "42", false), 0.01);
    assert_eq!(reward("42", "42", false), 0.0);
    assert_eq!(reward("<answer>42", "42", false), 0.0);
    // The first opening tag that has a closing tag after it wins (re.search, lazy, DOTALL).
    assert_eq!(reward("<answer>1\n</answer><answer>42</answer>", "42", false), 0.01);
    assert_eq!(reward("<answer>4\n2</answer>", "42", false), 0.01);
}

#[test]
fn numeric_option_compares_numbers() {
    assert_eq!(reward("<answer> 42 </answer>", "42", true), 1.0);
    assert_eq!(reward("<answer>42.0</answer>", "42", true), 1.0);
    assert_eq!(reward("<answer>-7</answer>", "-7", true), 1.0);
    assert_eq!(reward("<answer>43</answer>", "42", true), 0.01);
    assert_eq!(reward("<answer>about 42</answer>", "42", true), 0.5);
}

#[test]
fn generator_is_seeded_and_its_answers_are_right() {
    let env =
        MathEnv::new(json!({"generator": {"min_terms": 2, "max_terms": 4, "max_digits": 2, "ops": "+"}})).unwrap();
    assert_eq!(env.task_count(Split::Train), None);
    let again = MathEnv::new(env.config()).unwrap();
    let mut distinct = std::collections::HashSet::new();
    for i in 0..50 {
        let t = env.task(Split::Train, 7, i).unwrap();
        assert_eq!(t, again.task(Split::Train, 7, i).unwrap(), "same seed and index, same task");
        let sum: i64 = t
            .question
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<i64>().unwrap())
            .sum();
        assert_eq!(t.answer, sum.to_string(), "{}", t.question);
        distinct.insert(t.question);
    }
    assert!(distinct.len() > 40, "tasks barely vary: {}", distinct.len());
    assert_ne!(env.task(Split::Train, 8, 0).unwrap(), env.task(Split::Train, 7, 0).unwrap());
    assert_ne!(env.task(Split::Eval, 7, 0).unwrap(), env.task(Split::Train, 7, 0).unwrap());
}

#[test]
fn episode_is_one_turn_with_our_prompt() {
    let env = MathEnv::new(serde_json::Value::Null).unwrap();
    let task = env.task(Split::Train, 1, 3).unwrap();
    let (mut state, messages) = env.reset(&task).unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].role, Role::System);
    assert!(messages[0].content.contains("<answer>"));
    assert_eq!(messages[1].content, task.question);
    let outcome = env.step(&mut state, &format!("<answer>{}</answer>", task.answer)).unwrap();
    assert!(outcome.done && outcome.messages.is_empty());
    assert_eq!(outcome.total_reward(), 1.0);
    env.step(&mut state, "no tag").unwrap();
    let metrics = env.metrics();
    let get = |n: &str| metrics.iter().find(|m| m.name == n).unwrap().as_number().unwrap();
    assert_eq!(get("math/exact_rate"), 0.5);
    assert_eq!(get("math/answer_tag_rate"), 0.5);
    assert!(env.metrics().is_empty(), "counts restart after each pull");
}

#[test]
fn jsonl_in_re_grpo_schema_with_filters() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, r#"{{"id": "0", "question": "12 + 5", "answer": "17", "num_terms": 2, "num_digits": 2}}"#).unwrap();
    writeln!(file, r#"{{"id": "1", "question": "1 + 2 + 3 + 4", "answer": "10", "num_terms": 4, "num_digits": 1}}"#)
        .unwrap();
    writeln!(file, "not json").unwrap();
    writeln!(file, r#"{{"question": "1234 * 2", "answer": "2468", "num_terms": 2, "num_digits": 4}}"#).unwrap();
    writeln!(file, r#"{{"question": "{}", "answer": "1", "num_terms": 1, "num_digits": 1}}"#, "1".repeat(128)).unwrap();
    writeln!(file, r#"{{"question": "3 * 3", "answer": 9, "num_terms": 2, "num_digits": 1}}"#).unwrap();
    writeln!(file, r#"{{"question": "8 - 1", "answer": "7", "num_terms": 2, "num_digits": 1}}"#).unwrap();
    let env = MathEnv::new(json!({"data_path": file.path(), "eval_rows": 1})).unwrap();
    assert_eq!(env.task_count(Split::Train), Some(2));
    assert_eq!(env.task_count(Split::Eval), Some(1));
    assert_eq!(env.task(Split::Train, 0, 0).unwrap().answer, "17");
    assert_eq!(env.task(Split::Train, 99, 1).unwrap().answer, "9", "numbers are read as text");
    assert_eq!(env.task(Split::Eval, 0, 0).unwrap().question, "8 - 1");
    assert!(env.task(Split::Train, 0, 2).is_err());
    assert_eq!(env.config()["skipped_rows"], 1);

    let limited = MathEnv::new(json!({"data_path": file.path(), "max_prompts": 1})).unwrap();
    assert_eq!(limited.task_count(Split::Train), Some(1));
}

#[test]
fn bad_configs_say_what_is_wrong() {
    let missing = MathEnv::new(json!({"data_path": "/nonexistent/tasks.jsonl"})).err().unwrap().to_string();
    assert!(missing.contains("/nonexistent/tasks.jsonl") && missing.contains("cannot read"), "{missing}");
    let ops = MathEnv::new(json!({"generator": {"ops": "/"}})).err().unwrap().to_string();
    assert!(ops.contains("generator.ops"), "{ops}");
    let unknown = MathEnv::new(json!({"numerik": true})).err().unwrap().to_string();
    assert!(unknown.contains("unknown field `numerik`"), "{unknown}");
}

#[test]
fn the_last_number_fallback_scores_untagged_replies_only() {
    use grpo_math::{last_number, score};
    assert_eq!(last_number("3 + 5 = 8."), Some("8"));
    assert_eq!(last_number("It is -12.5 or so"), Some("-12.5"));
    assert_eq!(last_number("no digits"), None);
    // Off: re-grpo's rule, no tag no reward.
    assert_eq!(score("3 + 5 = 8", "8", false, false), (0.0, false));
    // On: an untagged reply is scored by its last number, compared as numbers.
    assert_eq!(score("3 + 5 = 8.0", "8", false, true), (1.0, false));
    assert_eq!(score("3 + 5 = 8, not 9", "8", false, true), (0.0, false));
    // A tagged reply keeps the tag rules even with the fallback on.
    assert_eq!(score("<answer>9</answer> 8", "8", false, true), (0.01, true));
    assert_eq!(score("<answer>8</answer>", "8", false, true), (1.0, true));
}

#[test]
fn demonstrations_earn_the_best_reward() {
    for config in [json!({}), json!({"numeric": true, "last_number_fallback": true})] {
        let env = MathEnv::new(config).unwrap();
        for index in 0..100 {
            let task = env.task(Split::Train, 3, index).unwrap();
            let turns = env.demonstration(&task).unwrap().unwrap();
            assert_eq!(turns, vec![format!("<answer>{}</answer>", task.answer)]);
            let (mut episode, _) = env.reset(&task).unwrap();
            let out = env.step(&mut episode, &turns[0]).unwrap();
            assert!(out.done && out.total_reward() == 1.0, "{task:?}");
        }
    }
    let env = MathEnv::new(json!({})).unwrap();
    assert_eq!(env.demonstration(&grpo_sdk::Task::new("t", "?", "")).unwrap(), None);
}
