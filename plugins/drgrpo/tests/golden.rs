//! The `drgrpo` plugin against golden values from tests/oracles/losses.py (an independent PyTorch computation).

use grpo_drgrpo::DrGrpo;
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
    check_loss_fixtures(&DrGrpo::new(serde_json::Value::Null).unwrap(), "drgrpo");
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
