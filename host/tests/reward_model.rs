//! `--reward-model`: a sequence-classification checkpoint scores conversations as transformers does
//! (`tests/oracles/reward_model.py`: its chat template's rendering, the first label at the last token), in one padded
//! batch or one at a time, and a checkpoint without a `score` head is refused in one line.

mod common;

use grpo_host::rollout::RewardModel;
use tch::{Device, Kind};

fn fixture() -> std::path::PathBuf {
    common::workspace_root().join("tests/fixtures/model/tiny/llama_rm")
}

#[test]
fn reward_model_scores_match_transformers_batched_or_alone() {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("scores.json")).unwrap()).unwrap();
    let conversations: Vec<Vec<serde_json::Value>> =
        cases.iter().map(|c| c["messages"].as_array().unwrap().clone()).collect();
    let expected: Vec<f64> = cases.iter().map(|c| c["score"].as_f64().unwrap()).collect();
    let model = RewardModel::load(&fixture(), Device::Cpu, Kind::Float).unwrap();
    let batched = model.score(&conversations).unwrap();
    for (i, (got, want)) in batched.iter().zip(&expected).enumerate() {
        assert!((got - want).abs() < 1e-4, "conversation {i}: {got} against transformers' {want}");
        let alone = model.score(&conversations[i..i + 1]).unwrap()[0];
        assert!((alone - got).abs() < 1e-5, "conversation {i}: {alone} alone, {got} in a padded batch");
    }
    // The conversations score differently, so a model that ignored its input could not pass.
    assert!(expected.iter().any(|s| (s - expected[0]).abs() > 1e-2), "{expected:?}");
}

#[test]
fn a_language_model_is_not_a_reward_model() {
    let lm = common::workspace_root().join("tests/fixtures/model/tiny/llama");
    let err = RewardModel::load(&lm, Device::Cpu, Kind::Float).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("no \"score.weight\": it is not a sequence-classification model"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert_eq!(grpo_host::error::exit_code(&err), 2);
}
