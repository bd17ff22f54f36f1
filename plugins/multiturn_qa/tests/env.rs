//! multiturn_qa through its `Environment` API: retrieval on the built-in corpus and on the Apollo 13 report, the
//! reward table, configs, and fuzzing with bad replies.

mod common;
use common::apollo_dir;

use grpo_multiturn_qa::MultiturnQa;
use grpo_sdk::{Environment, MetricSource, Plugin, Role, Split, Task};
use grpo_toolcall::fuzz;
use serde_json::json;

fn builtin() -> MultiturnQa {
    MultiturnQa::new(serde_json::Value::Null).expect("the built-in corpus loads")
}

#[test]
fn builtin_questions_find_their_chunk() {
    let env = builtin();
    let mut found = 0;
    let mut total = 0;
    for split in [Split::Train, Split::Eval] {
        for i in 0..env.task_count(split).unwrap() {
            let task = env.task(split, 0, i).unwrap();
            let source = task.meta["source_chunk"].as_u64().unwrap() as usize;
            let hits = env.search(&task.question).unwrap();
            assert_eq!(hits.len(), 3);
            assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "best first");
            total += 1;
            found += usize::from(hits.iter().any(|h| h.chunk == source));
        }
    }
    assert_eq!(total, 240);
    eprintln!("built-in corpus: {found} of {total} source chunks in the top 3");
    // Searching with the whole question is a strong query on this corpus; nearly every source is in the top 3.
    assert!(found * 100 >= total * 95, "{found} of {total} in the top 3");
}

#[test]
fn apollo13_answer_chunk_is_in_the_top_3() {
    let dir = apollo_dir();
    let questions = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        questions.path(),
        serde_json::to_string(&json!([{
            "chunk_id": 0,
            "question": "At about 23 hours, to what percentage did the potable water quantity reading decrease?",
            "answer": "79 percent",
            "difficulty": "medium",
            "context": "The potable water quantity measurement fluctuated briefly on two occasions during the mission."
        }]))
        .unwrap(),
    )
    .unwrap();
    let env = MultiturnQa::new(json!({
        "corpus_dir": dir, "questions_path": questions.path(), "eval_every": 0
    }))
    .unwrap();
    assert!(env.chunks().len() > 200, "{} chunks", env.chunks().len());
    assert!(env.chunks().iter().all(|c| c.text.chars().count() <= 1000));
    let known: Vec<usize> =
        env.chunks().iter().filter(|c| c.text.contains("decreased from 98 to 79 percent")).map(|c| c.id).collect();
    assert_eq!(known.len(), 1, "the answer sits in exactly one chunk");
    let task = env.task(Split::Train, 0, 0).unwrap();
    assert_eq!(task.meta["source_chunk"].as_u64(), Some(known[0] as u64), "context located");
    let hits = env.search(&task.question).unwrap();
    assert!(hits.iter().any(|h| h.chunk == known[0]), "{hits:?}");
    // Another: the relief valve's full-flow pressure.
    let hits = env.search("tank 2 relief valve full-flow pressure psia").unwrap();
    let chunk = env.chunks().iter().find(|c| c.text.contains("1008 psia")).unwrap().id;
    assert!(hits.iter().any(|h| h.chunk == chunk), "{hits:?}");

    // The whole episode: search, then answer.
    let (mut state, _) = env.reset(&task).unwrap();
    let out = env.step(&mut state, "<tool:search>potable water quantity 23 hours</tool>").unwrap();
    assert!(!out.done);
    assert!(out.messages[0].content.contains("79 percent"), "{}", out.messages[0].content);
    let out = env.step(&mut state, "<answer>79 Percent.</answer>").unwrap();
    assert!(out.done && (out.total_reward() - 1.3).abs() < 1e-9);
    let metrics: std::collections::HashMap<String, f64> =
        env.metrics().into_iter().map(|m| (m.name.clone(), m.as_number().unwrap())).collect();
    assert_eq!(metrics["multiturn_qa/search_hit_rate"], 1.0);
    assert_eq!(metrics["multiturn_qa/answer_f1"], 1.0);
}

fn play(env: &MultiturnQa, task: &Task, replies: &[&str]) -> (f64, bool) {
    let (mut state, _) = env.reset(task).unwrap();
    let mut total = 0.0;
    let mut done = false;
    for r in replies {
        let out = env.step(&mut state, r).unwrap();
        total += out.total_reward();
        done = out.done;
        if done {
            break;
        }
    }
    (total, done)
}

#[test]
fn reward_table() {
    let env = builtin();
    let task = env.task(Split::Train, 0, 0).unwrap();
    let right = format!("<answer>{}</answer>", task.answer);
    let search = "<tool:search>founded</tool>";
    let cases: Vec<(Vec<&str>, f64)> = vec![
        (vec![right.as_str()], -0.5),
        (vec!["<tool:search>   </tool>"], -0.8),
        (vec!["<tool:search>!!! ???</tool>"], -0.8),
        (vec!["<tool:calc>1+1</tool>"], -0.8),
        (vec!["<tool:web>x</tool>"], -0.8),
        (vec![search, "It was founded long ago."], -0.1),
        (vec![search, "<answer>never</answer>"], 0.5),
        (vec![search, right.as_str()], 2.0),
    ];
    for (replies, want) in cases {
        let (got, done) = play(&env, &task, &replies);
        assert!((got - want).abs() < 1e-9 && done, "{replies:?}: {got}, want {want}");
    }
    // The calculator is offered when configured.
    let with_calc = MultiturnQa::new(json!({"calc_tool": true})).unwrap();
    let (got, _) = play(&with_calc, &task, &["<tool:calc>1+1</tool>", right.as_str()]);
    assert!((got - 2.0).abs() < 1e-9);
    // A 100 kB query is a tool failure, not a crash.
    let huge = format!("<tool:search>{}</tool>", "oxygen ".repeat(15_000));
    assert!((play(&env, &task, &[huge.as_str()]).0 + 0.8).abs() < 1e-9);
}

#[test]
fn search_results_are_a_user_turn_with_similarities() {
    let env = builtin();
    let task = env.task(Split::Train, 0, 0).unwrap();
    let (mut state, opening) = env.reset(&task).unwrap();
    assert!(opening[1].content.contains(&task.question));
    let out = env.step(&mut state, &format!("<tool:search>{}</tool>", task.question)).unwrap();
    assert_eq!(out.messages.len(), 1);
    assert_eq!(out.messages[0].role, Role::User);
    let text = &out.messages[0].content;
    assert!(text.starts_with("Search results:\n[1] stations/"), "{text}");
    assert_eq!(text.matches("higher is better").count(), 3);

    let hermes = MultiturnQa::new(json!({"tool_format": "hermes"})).unwrap();
    assert_eq!(hermes.tools()[0].name, "search");
    let (mut state, _) = hermes.reset(&task).unwrap();
    let call = r#"<tool_call>{"name": "search", "arguments": {"query": "station founded"}}</tool_call>"#;
    let out = hermes.step(&mut state, call).unwrap();
    assert_eq!(out.messages[0].role, Role::Tool);
    assert!(out.messages[0].content.starts_with("[1] "));
}

#[test]
fn configs_are_checked() {
    let err = |c: serde_json::Value| MultiturnQa::new(c).err().unwrap().to_string();
    assert!(err(json!({"corpus_dir": "/tmp"})).contains("questions_path"));
    assert!(err(json!({"questions_path": "/x.json"})).contains("corpus_dir"));
    assert!(err(json!({"topk": 3})).contains("unknown field `topk`"));
    let e = err(json!({"corpus_dir": "/nonexistent-corpus", "questions_path": "/x.json"}));
    assert!(e.contains("/nonexistent-corpus"), "{e}");
    let env = builtin();
    assert_eq!(env.task_count(Split::Train), Some(216));
    assert_eq!(env.task_count(Split::Eval), Some(24));
    assert_eq!(env.config()["top_k"], 3);
}

#[test]
fn bad_replies_never_break_an_episode() {
    let env = builtin();
    let task = env.task(Split::Train, 0, 3).unwrap();
    let reachable = [-0.5, -0.8, -0.1, 0.5, 2.0];
    let mut replies = 0;
    for ep in 0..5_000u64 {
        let (mut state, _) = env.reset(&task).unwrap();
        let mut total = 0.0;
        let mut ended = false;
        for turn in 0..2 {
            let reply = if turn == 0 && ep % 3 == 0 {
                "<tool:search>station</tool>".to_string()
            } else {
                fuzz::reply(9, ep * 2 + turn)
            };
            replies += 1;
            let out = env.step(&mut state, &reply).expect("bad replies are not environment errors");
            if ended {
                assert!(out.done && out.rewards.is_empty() && out.messages.is_empty());
            }
            total += out.total_reward();
            ended |= out.done;
        }
        assert!(ended);
        assert!(reachable.iter().any(|r| (r - total).abs() < 1e-9), "total {total}");
    }
    assert!(replies >= 10_000);
}

#[test]
fn demonstrations_search_then_answer_for_the_best_return() {
    for config in [json!({}), json!({"tool_format": "hermes"})] {
        let env = MultiturnQa::new(config.clone()).unwrap();
        let best = grpo_toolcall::protocol::RewardTable::default().best_total();
        let (mut shown, n) = (0, env.task_count(Split::Train).unwrap());
        for index in 0..n {
            let task = env.task(Split::Train, 0, index).unwrap();
            let Some(turns) = env.demonstration(&task).unwrap() else { continue };
            shown += 1;
            assert_eq!(turns.len(), 2, "{turns:?}");
            assert!(turns[1] == format!("<answer>{}</answer>", task.answer.trim()), "{turns:?}");
            let (mut state, _) = env.reset(&task).unwrap();
            let first = env.step(&mut state, &turns[0]).unwrap();
            // The passages shown hold the answer: the gold chunk came back.
            let shown_text: String = first.messages.iter().map(|m| m.content.as_str()).collect();
            assert!(shown_text.contains(task.answer.trim()), "{config} {task:?}");
            let second = env.step(&mut state, &turns[1]).unwrap();
            let total = first.total_reward() + second.total_reward();
            assert!(second.done && (total - best).abs() < 1e-9, "{config} {task:?}: {total}");
        }
        // Most built-in questions find their chunk by the question's own words.
        assert!(shown * 4 >= n * 3, "{config}: {shown} of {n}");
    }
}
