//! `grpo-host gen-qa` as a user runs it: the installed binary, the tiny Llama fixture, a small corpus. The tiny model
//! writes no usable questions, so these tests check the plumbing (chunking, resuming, atomic output, errors); the
//! parsing of real replies is unit-tested beside the command.

mod common;

use std::process::{Command, Output};

fn gen_qa(dir: &std::path::Path, extra: &[&str]) -> Output {
    let model = common::workspace_root().join("tests/fixtures/model/tiny/llama");
    Command::new(common::host_exe())
        .args(["gen-qa", "--device", "cpu", "--model", model.to_str().unwrap(), "--corpus"])
        .arg(dir.join("corpus"))
        .arg("--out")
        .arg(dir.join("questions.json"))
        .args(["--max-new-tokens", "4", "--chunk-size", "200"])
        .args(extra)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn gen_qa_continues_a_questions_file_and_skips_chunks_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
    let para = |w: &str| vec![w; 30].join(" ");
    let doc = format!("# Station\n\n{}\n\n{}\n\n{}\n", para("alpha"), para("beta"), para("gamma"));
    std::fs::write(dir.path().join("corpus/a.md"), doc).unwrap();
    let earlier = serde_json::json!([{
        "chunk_id": 0, "question": "Which word repeats?", "answer": "alpha", "difficulty": "easy", "context": "alpha"
    }]);
    std::fs::write(dir.path().join("questions.json"), earlier.to_string()).unwrap();

    let out = gen_qa(dir.path(), &["--max-chunks", "2", "--batch-size", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("2 chunks") && err.contains("1 with questions already") && err.contains("1 to do"), "{err}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("questions.json")).unwrap()).unwrap();
    assert_eq!(rows[0], earlier[0], "the earlier rows are kept as they were");
    assert!(rows.iter().all(|r| r["chunk_id"].as_u64().unwrap() < 2));
    assert!(!dir.path().join("questions.json.partial").exists());
}

#[test]
fn gen_qa_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = gen_qa(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("--corpus") && err.trim().lines().count() == 1, "{err}");

    std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
    std::fs::write(dir.path().join("corpus/a.txt"), "some text").unwrap();
    std::fs::write(dir.path().join("questions.json"), "{not json").unwrap();
    let out = gen_qa(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("not a questions file") && err.trim().lines().count() == 1, "{err}");
}
