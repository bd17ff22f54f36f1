//! Answer extraction and equivalence, and dataset rows through the column mapping. The equivalence table in
//! docs/environments.md is read and checked row by row, so the documentation cannot drift from the behaviour.

use grpo_math::answer::{self, Compare, ReferenceFormat, ReplyFormat};
use grpo_math::{reward_with, score_with, MathEnv};
use grpo_sdk::{Environment, Plugin, Split};
use serde_json::json;

/// The rows of the table between the `equivalence-table` markers: (reference, answer, same).
fn doc_table() -> Vec<(String, String, bool)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/environments.md")).unwrap();
    let start = doc.find("<!-- equivalence-table -->").expect("start marker");
    let end = doc.find("<!-- /equivalence-table -->").expect("end marker");
    let code = |cell: &str| cell.trim().trim_start_matches('`').trim_end_matches('`').to_string();
    doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 4, "row {l:?}: reference | answer | same | why");
            let same = match cells[2].trim() {
                "yes" => true,
                "no" => false,
                other => panic!("row {l:?}: same must be yes or no, not {other:?}"),
            };
            (code(cells[0]), code(cells[1]), same)
        })
        .collect()
}

#[test]
fn the_documented_equivalence_table_holds() {
    let table = doc_table();
    assert!(table.len() >= 20, "the table lost rows: {}", table.len());
    for (reference, reply, same) in &table {
        assert_eq!(answer::equivalent(reply, reference), *same, "{reply:?} vs reference {reference:?}");
        // Symmetric, and what a tagged reply earns under the math comparison.
        assert_eq!(answer::equivalent(reference, reply), *same, "{reference:?} vs {reply:?}");
        let tagged = format!("<answer>{reply}</answer>");
        let r = reward_with(&tagged, reference, Compare::Math, &[ReplyFormat::AnswerTag]);
        assert_eq!(r == 1.0, *same, "{tagged:?} earned {r}");
    }
}

#[test]
fn references_come_out_of_gsm8k_and_math_solutions() {
    let gsm8k = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72";
    assert_eq!(answer::reference(gsm8k, ReferenceFormat::Auto).as_deref(), Some("72"));
    assert_eq!(answer::reference(gsm8k, ReferenceFormat::Gsm8k).as_deref(), Some("72"));
    assert_eq!(answer::reference(gsm8k, ReferenceFormat::Boxed), None);
    let math = "So the sum is $\\frac{3}{6}+\\frac{2}{6} = \\boxed{\\frac{5}{6}}$.";
    assert_eq!(answer::reference(math, ReferenceFormat::Auto).as_deref(), Some("\\frac{5}{6}"));
    assert_eq!(answer::reference(math, ReferenceFormat::Boxed).as_deref(), Some("\\frac{5}{6}"));
    assert_eq!(answer::reference(math, ReferenceFormat::Plain).as_deref(), Some(math));
    assert_eq!(answer::reference("  ", ReferenceFormat::Auto), None);
}

#[test]
fn replies_may_box_or_hash_their_answer_when_allowed() {
    let all = [ReplyFormat::AnswerTag, ReplyFormat::Boxed, ReplyFormat::Hashes];
    assert_eq!(reward_with("so \\boxed{\\dfrac{5}{6}}", "\\frac{5}{6}", Compare::Math, &all), 1.0);
    assert_eq!(reward_with("5+3=8\n#### 8", "8", Compare::Math, &all), 1.0);
    assert_eq!(reward_with("#### 1,000", "1000", Compare::Math, &all), 1.0);
    // Tags come first: a wrong tagged answer is not rescued by a right box.
    assert_eq!(reward_with("<answer>7</answer> \\boxed{8}", "8", Compare::Math, &all), 0.01);
    // re-grpo's protocol alone by default: a box without tags is no answer.
    assert_eq!(reward_with("\\boxed{8}", "8", Compare::Math, &[ReplyFormat::AnswerTag]), 0.0);
    // The last-number fallback reads thousands separators.
    assert_eq!(
        score_with("so it is 1,000 apples", "1000", Compare::Math, &[ReplyFormat::AnswerTag], true),
        (1.0, false)
    );
}

#[test]
fn dataset_rows_become_tasks_through_the_column_mapping() {
    let env = MathEnv::new(serde_json::Value::Null).unwrap();
    let row = json!({"question": " Tom has 3 apples and buys 4. How many? ", "answer": "3+4=7\n#### 7"});
    let task = env.task_from_row(Split::Train, 5, &row).unwrap().unwrap();
    assert_eq!(
        (task.id.as_str(), task.question.as_str(), task.answer.as_str()),
        ("row-5", "Tom has 3 apples and buys 4. How many?", "7")
    );
    // Dataset tasks compare with the math equivalence by default.
    let (mut state, opening) = env.reset(&task).unwrap();
    assert_eq!(opening[1].content, task.question);
    let outcome = env.step(&mut state, "<answer>7.0</answer>").unwrap();
    assert_eq!((outcome.total_reward(), outcome.solved), (1.0, Some(true)));

    let math =
        MathEnv::new(json!({"question_key": "problem", "answer_key": "solution", "answer_format": "boxed"})).unwrap();
    let row =
        json!({"problem": "What is 1/2 + 1/3?", "solution": "It is $\\boxed{\\frac{5}{6}}$.", "level": "Level 1"});
    assert_eq!(math.task_from_row(Split::Eval, 0, &row).unwrap().unwrap().answer, "\\frac{5}{6}");
    // A solution without the box asked for has no gradable answer: skipped, not an error.
    assert!(math.task_from_row(Split::Eval, 1, &json!({"problem": "p", "solution": "no box"})).unwrap().is_none());

    // verl's layout: the prompt is a list of chat messages, the answer nested in reward_model.
    let verl = MathEnv::new(json!({"question_key": "prompt", "answer_key": "reward_model.ground_truth"})).unwrap();
    let row = json!({"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "2+2?"}],
                     "reward_model": {"style": "rule", "ground_truth": "4"}});
    let task = verl.task_from_row(Split::Train, 0, &row).unwrap().unwrap();
    assert_eq!((task.question.as_str(), task.answer.as_str()), ("2+2?", "4"));

    let err = env.task_from_row(Split::Train, 0, &json!({"problem": "p", "solution": "s"})).unwrap_err().to_string();
    assert_eq!(err, "no column `question` (the row has: problem, solution); set question_key in --env-config");
    let err = verl.task_from_row(Split::Train, 0, &json!({"prompt": "q", "reward_model": {}})).unwrap_err().to_string();
    assert!(err.starts_with("no column `reward_model.ground_truth`"), "{err}");
}

#[test]
fn generated_and_file_tasks_keep_re_grpo_string_rules_and_are_judged() {
    let env = MathEnv::new(serde_json::Value::Null).unwrap();
    let task = env.task(Split::Eval, 3, 0).unwrap();
    let (mut state, _) = env.reset(&task).unwrap();
    let padded = env.step(&mut state, &format!("<answer> {} </answer>", task.answer)).unwrap();
    // Padding is "contains" (0.5) under re-grpo's string comparison, and not solved.
    assert_eq!((padded.total_reward(), padded.solved), (0.5, Some(false)));
    let config = env.config();
    assert_eq!(config["question_key"], "question");
    assert!(config["compare"].is_null());
}
