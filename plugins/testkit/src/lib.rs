//! The golden fixtures written by tests/oracles/losses.py (an independent PyTorch computation), read and checked
//! for the tests of the `grpo` and `drgrpo` plugins.

use grpo_sdk::tch::{Kind, Tensor};
use grpo_sdk::{Algorithm, LossSettings, PolicyBatch};
use serde_json::Value;
use std::path::PathBuf;

/// How closely every value must agree with the oracle's.
pub const TOL: f64 = 1e-6;

/// Every fixture of `kind` ("loss" or "advantages"), optionally only those of one algorithm.
pub fn fixtures(kind: &str, algorithm: Option<&str>) -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/losses");
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run tests/oracles/losses.py", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if case["kind"] == kind && algorithm.is_none_or(|a| case["algorithm"] == a) {
            out.push(case);
        }
    }
    assert!(!out.is_empty(), "no {kind} fixtures in {}", dir.display());
    out
}

/// The group sizes of an advantages fixture.
pub fn groups(case: &Value) -> Vec<usize> {
    case["groups"].as_array().unwrap().iter().map(|g| g.as_u64().unwrap() as usize).collect()
}

/// Check algorithm `A`'s loss, its gradient with respect to the log-probs, and its metrics (every one expected, no
/// other) against each loss fixture written for `which` ("grpo" or "drgrpo"), built with each fixture's config
/// (`null`, the defaults, when it has none).
pub fn check_loss_fixtures<A: Algorithm>(which: &str) {
    check_loss_fixtures_in::<A>(which, Kind::Double, TOL);
}

/// The same check with every float tensor of the batch in `kind` (the log-probs leaf included): the loss and each
/// gradient element within `tol` of the float64 oracle. Metrics are compared in float64 only: a ratio that sits on a
/// clip boundary may round to the other side in a lower precision, which changes the clip fraction by design.
pub fn check_loss_fixtures_in<A: Algorithm>(which: &str, kind: Kind, tol: f64) {
    check_loss_fixtures_with::<A>(which, kind, |_| tol);
}

/// [`check_loss_fixtures_in`] with a tolerance per fixture, by its name: a loss that sums over a sequence's tokens
/// instead of averaging them rounds as many times more in a low precision.
pub fn check_loss_fixtures_with<A: Algorithm>(which: &str, kind: Kind, tolerance: impl Fn(&str) -> f64) {
    for case in fixtures("loss", Some(which)) {
        let tol = tolerance(case["name"].as_str().unwrap());
        let name = format!("{} ({kind:?})", case["name"].as_str().unwrap());
        let algorithm = A::new(case.get("config").cloned().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{name}: config {}: {e}", case["config"]));
        let (leaf, batch) = batch(&case);
        let leaf = leaf.detach().to_kind(kind).set_requires_grad(true);
        let cast = |t: Tensor| if t.is_floating_point() { t.to_kind(kind) } else { t };
        let batch = PolicyBatch {
            log_probs: leaf.shallow_clone(),
            old_log_probs: cast(batch.old_log_probs),
            ref_log_probs: batch.ref_log_probs.map(cast),
            advantages: cast(batch.advantages),
            action_mask: batch.action_mask,
            settings: batch.settings,
            is_weights: batch.is_weights.map(cast),
            step_token_divisor: batch.step_token_divisor,
        };
        let out = algorithm.loss(&batch).unwrap();
        let (got, want) = (out.loss.double_value(&[]), case["expected_loss"].as_f64().unwrap());
        assert!((got - want).abs() <= tol, "{name}: loss {got}, want {want} (tolerance {tol:e})");
        out.loss.backward();
        let diff = (leaf.grad().to_kind(Kind::Double) - tensor(&case["expected_grad"])).abs().max().double_value(&[]);
        assert!(diff <= tol, "{name}: gradient differs by {diff:e} (tolerance {tol:e})");
        if kind != Kind::Double {
            continue;
        }
        for m in &out.metrics {
            let want = case["expected_metrics"][&m.name].as_f64().unwrap_or_else(|| panic!("{name}: no {}", m.name));
            assert_num(&format!("{name} {}", m.name), m.as_number().unwrap(), want);
        }
        assert_eq!(out.metrics.len(), case["expected_metrics"].as_object().unwrap().len());
    }
}

/// A float64 tensor from a JSON array (nested for 2-D).
pub fn tensor(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = match v.as_array().unwrap().first() {
        Some(Value::Array(_)) => v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
            .collect(),
        _ => vec![v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()],
    };
    let flat: Vec<f64> = rows.concat();
    let t = Tensor::from_slice(&flat);
    if matches!(v.as_array().unwrap().first(), Some(Value::Array(_))) {
        t.view([rows.len() as i64, -1])
    } else {
        t
    }
}

/// The micro-batch of a loss fixture; `log_probs` is a leaf that requires grad.
pub fn batch(case: &Value) -> (Tensor, PolicyBatch) {
    let log_probs = tensor(&case["log_probs"]).set_requires_grad(true);
    let mask: Vec<bool> = case["action_mask"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_bool().unwrap()))
        .collect();
    let s = &case["settings"];
    let batch = PolicyBatch {
        log_probs: log_probs.shallow_clone(),
        old_log_probs: tensor(&case["old_log_probs"]),
        ref_log_probs: (!case["ref_log_probs"].is_null()).then(|| tensor(&case["ref_log_probs"])),
        advantages: tensor(&case["advantages"]),
        action_mask: Tensor::from_slice(&mask).view(log_probs.size().as_slice()),
        settings: LossSettings {
            clip_eps_low: s["clip_eps_low"].as_f64().unwrap(),
            clip_eps_high: s["clip_eps_high"].as_f64().unwrap(),
            kl_weight: s["kl_weight"].as_f64().unwrap(),
            generate_max_length: s["generate_max_length"].as_i64().unwrap(),
        },
        is_weights: case.get("is_weights").filter(|w| !w.is_null()).map(tensor),
        step_token_divisor: case.get("step_token_divisor").and_then(Value::as_f64),
    };
    (log_probs, batch)
}

/// Assert two tensors agree elementwise within [`TOL`].
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{what}: shape");
    let diff = (got.to_kind(Kind::Double) - want).abs().max().double_value(&[]);
    assert!(diff <= TOL, "{what}: max |diff| {diff:e}\n got {got}\nwant {want}");
}

/// Assert one number agrees within [`TOL`].
pub fn assert_num(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= TOL, "{what}: got {got}, want {want}");
}
