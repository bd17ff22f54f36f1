//! The `drgrpo` plugin against golden values from tests/oracles/losses.py (an independent PyTorch computation).

use grpo_drgrpo::DrGrpo;
use grpo_sdk::tch::Kind;
use grpo_sdk::{Algorithm, MetricSource, MetricValue, Plugin};
use grpo_testkit::*;

#[test]
fn advantages_and_their_moments_match_the_oracle() {
    let algo = DrGrpo::new(serde_json::Value::Null).unwrap();
    for case in fixtures("advantages", None) {
        let name = case["name"].as_str().unwrap();
        let adv = algo.advantages(&tensor(&case["rewards"]), &groups(&case)).unwrap();
        assert_close(name, &adv, &tensor(&case["expected_drgrpo"]));
        let metrics = algo.metrics();
        for (key, want) in case["expected_drgrpo_metrics"].as_object().unwrap() {
            let got = metrics.iter().find(|m| &m.name == key).unwrap_or_else(|| panic!("{name}: no {key}"));
            assert_num(&format!("{name} {key}"), got.as_number().unwrap(), want.as_f64().unwrap());
        }
        let critic = metrics.iter().find(|m| m.name == "dr_grpo/critic_type").unwrap();
        assert_eq!(critic.value, MetricValue::Text("group_mean".into()));
        // Reported once per advantages call.
        assert!(algo.metrics().iter().all(|m| m.name == "dr_grpo/critic_type"));
    }
}

#[test]
fn loss_divides_by_generate_max_length_and_matches_the_oracle() {
    check_loss_fixtures::<DrGrpo>("drgrpo");
}

#[test]
fn the_divisor_is_the_constant_not_the_sequence_length() {
    // Doubling generate_max_length halves the loss exactly; a per-sequence or per-batch token mean would not change.
    let algo = DrGrpo::new(serde_json::Value::Null).unwrap();
    let case = &fixtures("loss", Some("drgrpo"))[0];
    let (_, mut batch) = batch(case);
    let a = algo.loss(&batch).unwrap().loss.double_value(&[]);
    batch.settings.generate_max_length *= 2;
    let b = algo.loss(&batch).unwrap().loss.double_value(&[]);
    assert_num("halved", b, a / 2.0);
    batch.settings.generate_max_length = 0;
    assert!(algo.loss(&batch).is_err());
}

/// The loss in the precisions a run can hand it: the trainer's log-probs are f32 (also under bf16 mixed precision),
/// and a plugin may see bf16 from a custom host. f32 agrees with the float64 oracle to 1e-5; bf16 (8 bits of
/// mantissa) to 1e-2 on these magnitudes (losses and gradients of order 1; the largest difference seen was 2.2e-3).
#[test]
fn loss_and_gradient_match_the_oracle_in_f32_and_bf16() {
    check_loss_fixtures_in::<DrGrpo>("drgrpo", Kind::Float, 1e-5);
    check_loss_fixtures_in::<DrGrpo>("drgrpo", Kind::BFloat16, 1e-2);
}
