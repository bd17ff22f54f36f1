//! The `grpo` plugin against golden values from tests/oracles/losses.py (an independent PyTorch computation).

use grpo_grpo::Grpo;
use grpo_sdk::tch::{Kind, Tensor};
use grpo_sdk::{Algorithm, Plugin};
use grpo_testkit::*;

#[test]
fn advantages_match_the_oracle_including_equal_and_single_groups() {
    let algo = Grpo::new(serde_json::Value::Null).unwrap();
    for case in fixtures("advantages", None) {
        let adv = algo.advantages(&tensor(&case["rewards"]), &groups(&case)).unwrap();
        assert_close(case["name"].as_str().unwrap(), &adv, &tensor(&case["expected_grpo"]));
    }
}

#[test]
fn advantages_scaled_by_the_batch_or_not_at_all_match_the_oracle() {
    for (scale, expected) in [("batch", "expected_grpo_scale_batch"), ("none", "expected_grpo_scale_none")] {
        let algo = Grpo::new(serde_json::json!({"scale_rewards": scale})).unwrap();
        assert_eq!(algo.config()["scale_rewards"], scale);
        for case in fixtures("advantages", None) {
            let adv = algo.advantages(&tensor(&case["rewards"]), &groups(&case)).unwrap();
            let name = format!("{} ({scale})", case["name"].as_str().unwrap());
            assert_close(&name, &adv, &tensor(&case[expected]));
        }
    }
    // "group" is the default, and the published GRPO.
    let algo = Grpo::new(serde_json::json!({"scale_rewards": "group"})).unwrap();
    for case in fixtures("advantages", None) {
        let adv = algo.advantages(&tensor(&case["rewards"]), &groups(&case)).unwrap();
        assert_close(case["name"].as_str().unwrap(), &adv, &tensor(&case["expected_grpo"]));
    }
    let err = Grpo::new(serde_json::json!({"scale_rewards": "rank"})).err().unwrap().to_string();
    assert!(err.contains("scale_rewards") || err.contains("rank"), "{err}");
}

/// RLOO: each reward against the mean of the rest of its group, then the same choice of divisor.
#[test]
fn leave_one_out_advantages_match_the_oracle_under_each_scaling() {
    for (scale, expected) in
        [("none", "expected_rloo"), ("group", "expected_rloo_scale_group"), ("batch", "expected_rloo_scale_batch")]
    {
        let config = serde_json::json!({"baseline": "leave_one_out", "scale_rewards": scale});
        let algo = Grpo::new(config).unwrap();
        assert_eq!(algo.config()["baseline"], "leave_one_out");
        for case in fixtures("advantages", None) {
            let adv = algo.advantages(&tensor(&case["rewards"]), &groups(&case)).unwrap();
            let name = format!("{} (leave-one-out, {scale})", case["name"].as_str().unwrap());
            assert_close(&name, &adv, &tensor(&case[expected]));
        }
    }
    assert_eq!(Grpo::new(serde_json::Value::Null).unwrap().config()["baseline"], "group_mean");
}

#[test]
fn float32_equal_rewards_give_exact_zeros() {
    // 0.3 * 3 / 3 is not exactly 0.3 in float32; dividing that rounding error by eps must not happen.
    let algo = Grpo::new(serde_json::Value::Null).unwrap();
    let adv = algo.advantages(&Tensor::from_slice(&[0.3f32, 0.3, 0.3, 1.0]), &[3, 1]).unwrap();
    assert_eq!(Vec::<f32>::try_from(&adv).unwrap(), vec![0.0; 4]);
}

#[test]
fn loss_gradient_and_metrics_match_the_oracle() {
    check_loss_fixtures::<Grpo>("grpo");
}

/// The aggregations differ on a batch whose sequences have different lengths, and the fixtures of each (and of
/// GSPO's sequence-level ratio) are there: those cases above are not checked against the default by accident.
#[test]
fn each_loss_type_has_its_own_fixture_and_value() {
    let case = fixtures("loss", Some("grpo")).into_iter().find(|c| c["name"] == "grpo_bnpo").unwrap();
    let mut values = Vec::new();
    let types = [
        ("grpo", None),
        ("bnpo", None),
        ("dapo", Some(13.0)),
        ("dapo", None),
        ("dr_grpo", None),
        ("cispo", Some(13.0)),
        ("sapo", None),
        ("vespo", Some(13.0)),
        ("luspo", None),
    ];
    for (loss_type, divisor) in types {
        let algo = Grpo::new(serde_json::json!({"loss_type": loss_type})).unwrap();
        assert_eq!(algo.config()["loss_type"], loss_type);
        let (_, mut batch) = batch(&case);
        batch.step_token_divisor = divisor;
        values.push(algo.loss(&batch).unwrap().loss.double_value(&[]));
    }
    assert!((values[0] - values[1]).abs() > 1e-3, "grpo and bnpo agree: {values:?}");
    assert!((values[1] - values[2]).abs() > 1e-3, "bnpo and a step's dapo agree: {values:?}");
    // Alone in its step, a micro-batch's dapo loss is its token mean.
    assert_num("dapo alone", values[3], values[1]);
    assert!((values[4] - values[0]).abs() > 1e-3, "dr_grpo and grpo agree: {values:?}");
    assert!((values[5] - values[2]).abs() > 1e-3, "cispo and dapo agree: {values:?}");
    assert!((values[6] - values[0]).abs() > 1e-3, "sapo and grpo agree: {values:?}");
    assert!((values[7] - values[2]).abs() > 1e-3, "vespo and dapo agree: {values:?}");
    assert!((values[8] - values[0]).abs() > 1e-3, "luspo and grpo agree: {values:?}");
    let options = ["grpo_bnpo", "grpo_dapo_step", "grpo_dapo_alone", "grpo_gspo", "grpo_gspo_tis_dapo", "grpo_delta"];
    for name in options.into_iter().chain([
        "grpo_kl_k1",
        "grpo_kl_k2",
        "grpo_dr_grpo",
        "grpo_cispo_step",
        "grpo_cispo_gspo_tis",
        "grpo_sapo",
        "grpo_sapo_gspo_tis",
        "grpo_opsm_kl_bias",
        "grpo_opsm_kl_bias_gspo_dapo",
        "grpo_vespo_step",
        "grpo_vespo_tis_kl_bias",
        "grpo_luspo_gspo",
        "grpo_luspo_kl_delta",
    ]) {
        assert!(fixtures("loss", Some("grpo")).iter().any(|c| c["name"] == name && !c["config"].is_null()), "{name}");
    }
    let err = Grpo::new(serde_json::json!({"loss_type": "seq"})).err().unwrap().to_string();
    assert!(err.contains("loss_type") || err.contains("seq"), "{err}");
    // Two-sided clipping's cap must lie above the clip range (1.2 here), where it changes no positive advantage.
    let err = Grpo::new(serde_json::json!({"delta": 1.0})).err().unwrap().to_string();
    assert!(err.contains("delta must be a number above 1"), "{err}");
    let err = Grpo::new(serde_json::json!({"loss_type": "cispo", "delta": 4.0})).err().unwrap().to_string();
    assert!(err.contains("delta caps the clipped surrogate's unclipped branch, which loss_type cispo"), "{err}");
    let err = Grpo::new(serde_json::json!({"loss_type": "sapo", "delta": 4.0})).err().unwrap().to_string();
    assert!(err.contains("which loss_type sapo does not have"), "{err}");
    let err = Grpo::new(serde_json::json!({"loss_type": "sapo", "sapo_temperature_neg": 0.0})).err().unwrap();
    assert!(err.to_string().contains("sapo_temperature_neg must be a finite number > 0"), "{err}");
    let err = Grpo::new(serde_json::json!({"loss_type": "vespo", "delta": 4.0})).err().unwrap().to_string();
    assert!(err.contains("which loss_type vespo does not have"), "{err}");
    let config = serde_json::json!({"loss_type": "vespo", "importance_sampling_level": "sequence"});
    let err = Grpo::new(config).err().unwrap().to_string();
    assert!(err.contains("loss_type vespo weighs each sequence by its own ratio already"), "{err}");
    let err = Grpo::new(serde_json::json!({"loss_type": "vespo", "vespo_lambda_neg": 0.0})).err().unwrap();
    assert!(err.to_string().contains("vespo_lambda_neg must be a finite number > 0 (such as 2), got 0"), "{err}");
    let err = Grpo::new(serde_json::json!({"loss_type": "vespo", "vespo_k_pos": -1.0})).err().unwrap();
    assert!(err.to_string().contains("vespo_k_pos must be a finite number >= 0 (such as 2), got -1"), "{err}");
    let err = Grpo::new(serde_json::json!({"off_policy_mask_threshold": -0.1})).err().unwrap().to_string();
    assert!(err.contains("off_policy_mask_threshold must be a finite number >= 0, got -0.1"), "{err}");
    let algo = Grpo::new(serde_json::json!({"delta": 1.1})).unwrap();
    let err = algo.loss(&batch(&case).1).err().unwrap().to_string();
    assert!(err.contains("delta 1.1 must be a number above 1 + clip_eps_high = 1.2"), "{err}");
    let (_, mut batch) = batch(&case);
    batch.step_token_divisor = Some(0.0);
    let err = Grpo::new(serde_json::json!({"loss_type": "dapo"})).unwrap().loss(&batch).err().unwrap().to_string();
    assert!(err.contains("step_token_divisor must be a finite number > 0"), "{err}");
    batch.step_token_divisor = None;
    batch.settings.generate_max_length = 0;
    let err = Grpo::new(serde_json::json!({"loss_type": "dr_grpo"})).unwrap().loss(&batch).err().unwrap().to_string();
    assert!(err.contains("loss_type dr_grpo needs a positive generate_max_length, got 0"), "{err}");
}

#[test]
fn bad_config_and_bad_groups_are_errors() {
    let err = Grpo::new(serde_json::json!({"std_epz": 1})).err().unwrap();
    assert!(err.to_string().contains("unknown field `std_epz`"), "{err}");
    let algo = Grpo::new(serde_json::Value::Null).unwrap();
    let err = algo.advantages(&Tensor::from_slice(&[1.0f32, 2.0, 3.0]), &[2, 2]).unwrap_err();
    assert!(err.to_string().contains("do not partition 3 rewards"), "{err}");
}

/// The loss in the precisions a run can hand it: the trainer's log-probs are f32 (also under bf16 mixed precision),
/// and a plugin may see bf16 from a custom host. f32 agrees with the float64 oracle to 1e-5; bf16 (8 bits of
/// mantissa) to 1e-2 on these magnitudes (losses and gradients of order 1; the largest difference seen was 2.2e-3).
/// LUSPO sums each sequence's tokens where the others average them, so its loss and gradients, and their rounding,
/// grow with the sequences' lengths (up to 7 action tokens here).
#[test]
fn loss_and_gradient_match_the_oracle_in_f32_and_bf16() {
    check_loss_fixtures_in::<Grpo>("grpo", Kind::Float, 1e-5);
    check_loss_fixtures_with::<Grpo>("grpo", Kind::BFloat16, |name| match name.starts_with("grpo_luspo") {
        true => 7e-2,
        false => 1e-2,
    });
}

/// `loss_type: "dr_grpo"` with `scale_rewards: "none"` is the `drgrpo` plugin: its loss and gradient match that
/// plugin's fixtures, and its advantages that plugin's expected ones.
#[test]
fn the_dr_grpo_loss_type_without_scaling_is_the_drgrpo_plugin() {
    let algo = Grpo::new(serde_json::json!({"loss_type": "dr_grpo", "scale_rewards": "none"})).unwrap();
    let cases = fixtures("loss", Some("drgrpo"));
    assert!(cases.len() >= 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (log_probs, batch) = batch(&case);
        let loss = algo.loss(&batch).unwrap().loss;
        assert_num(name, loss.double_value(&[]), case["expected_loss"].as_f64().unwrap());
        loss.backward();
        assert_close(&format!("{name} gradient"), &log_probs.grad(), &tensor(&case["expected_grad"]));
    }
    for case in fixtures("advantages", None) {
        let adv = algo.advantages(&tensor(&case["rewards"]), &groups(&case)).unwrap();
        assert_close(case["name"].as_str().unwrap(), &adv, &tensor(&case["expected_drgrpo"]));
    }
}

/// Garbage outside the action mask (infinite old log-probs there) changes neither the loss nor the metrics, under
/// the options that read the old log-probs in new ways.
#[test]
fn infinite_old_log_probs_outside_the_mask_change_nothing() {
    let names = ["grpo_opsm_kl_bias", "grpo_opsm_kl_bias_gspo_dapo", "grpo_sapo", "grpo_cispo_step", "grpo_vespo_step"];
    for name in names {
        let case = fixtures("loss", Some("grpo")).into_iter().find(|c| c["name"] == name).unwrap();
        let algo = Grpo::new(case["config"].clone()).unwrap();
        let (_, mut batch) = batch(&case);
        let inf = batch.old_log_probs.full_like(f64::INFINITY);
        batch.old_log_probs = batch.old_log_probs.where_self(&batch.action_mask, &inf);
        let out = algo.loss(&batch).unwrap();
        assert_num(name, out.loss.double_value(&[]), case["expected_loss"].as_f64().unwrap());
        for m in &out.metrics {
            assert_num(
                &format!("{name} {}", m.name),
                m.as_number().unwrap(),
                case["expected_metrics"][&m.name].as_f64().unwrap(),
            );
        }
    }
}
