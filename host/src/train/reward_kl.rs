//! Stage: experience -> the returns the algorithm scores, under a KL penalty in the reward (`--reward-kl-coef`;
//! verl's `use_kl_in_reward`). Each episode's return loses `coef * sum_t kl_t` over its action tokens, `kl_t`
//! estimated from the sampling policy's log-probs against the reference's; under a target (`--reward-kl-target`)
//! the coefficient follows the adaptive controller of Ziegler et al. 2019, as verl's `AdaptiveKLController`.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::config::{RewardKl, RewardKlEstimator};
use super::experience::Experience;

/// One rank's KL numbers of a batch, for the metrics (summed over the ranks when merged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardKlSummary {
    /// The coefficient this batch's returns were penalised with.
    pub coef: f64,
    /// Sequences.
    pub sequences: f64,
    /// The penalties `coef * sum_t kl_t`, summed over the sequences.
    pub penalty_sum: f64,
    /// Each sequence's mean `kl_t` over its action tokens, summed over the sequences (what the controller reads).
    pub kl_sum: f64,
}

impl RewardKlSummary {
    /// The ranks' numbers as one batch's.
    pub fn merge(a: RewardKlSummary, b: RewardKlSummary) -> RewardKlSummary {
        RewardKlSummary {
            coef: a.coef.max(b.coef),
            sequences: a.sequences + b.sequences,
            penalty_sum: a.penalty_sum + b.penalty_sum,
            kl_sum: a.kl_sum + b.kl_sum,
        }
    }

    /// The batch's mean per-sequence KL (0 for no sequences).
    pub fn mean_kl(&self) -> f64 {
        if self.sequences > 0.0 {
            self.kl_sum / self.sequences
        } else {
            0.0
        }
    }
}

/// Each sequence's `(sum, mean)` over its action tokens of the per-token KL estimate of the sampling policy (the
/// experience's old log-probs) from the reference; a sequence without action tokens has 0 for both. `None` without
/// reference log-probs.
pub fn sequence_kl(exp: &Experience, estimator: RewardKlEstimator) -> Result<Option<(Vec<f64>, Vec<f64>)>> {
    let Some(reference) = &exp.ref_log_probs else { return Ok(None) };
    let d = (&exp.old_log_probs - reference).to_kind(Kind::Double);
    let per_token = match estimator {
        RewardKlEstimator::K1 => d,
        RewardKlEstimator::K2 => d.square() * 0.5,
        RewardKlEstimator::K3 => ((-&d).exp() + &d - 1.0).clamp(-10.0, 10.0),
        RewardKlEstimator::Abs => d.abs(),
    };
    // The loss may leave a sequence out (`in_loss`), but its return still counts in its group: every action token
    // of every sequence is penalised.
    let mask = exp.action_mask.to_kind(Kind::Double);
    let sums = (per_token * &mask).sum_dim_intlist(-1, false, None);
    let means = &sums / mask.sum_dim_intlist(-1, false, None).clamp_min(1.0);
    let host = |t: &Tensor| Vec::<f64>::try_from(&t.to_device(tch::Device::Cpu));
    Ok(Some((host(&sums)?, host(&means)?)))
}

/// The coefficient after a batch of `sequences` sequences whose mean per-sequence KL was `mean_kl`: unchanged
/// without a target; otherwise multiplied by `1 + clip(mean_kl / target - 1, -0.2, 0.2) * sequences / horizon`.
pub fn adapted(coef: f64, settings: &RewardKl, mean_kl: f64, sequences: f64) -> f64 {
    match settings.target {
        None => coef,
        Some(target) => {
            let error = (mean_kl / target - 1.0).clamp(-0.2, 0.2);
            coef * (1.0 + error * sequences / settings.horizon)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_adaptive_coefficient_moves_toward_the_target_by_at_most_a_fifth_per_horizon() {
        let fixed = RewardKl { coef: 0.1, estimator: RewardKlEstimator::K1, target: None, horizon: 10_000.0 };
        assert_eq!(adapted(0.1, &fixed, 5.0, 64.0), 0.1);
        let adaptive = RewardKl { target: Some(0.02), ..fixed };
        // KL 0.025 is 25% over the target: +0.2 (clipped) x 64 / 10000.
        assert!((adapted(0.1, &adaptive, 0.025, 64.0) - 0.1 * (1.0 + 0.2 * 0.0064)).abs() < 1e-15);
        // KL 0.018 is 10% under: -0.1 x 64 / 10000.
        assert!((adapted(0.1, &adaptive, 0.018, 64.0) - 0.1 * (1.0 - 0.1 * 0.0064)).abs() < 1e-15);
        assert_eq!(adapted(0.1, &adaptive, 0.02, 64.0), 0.1);
    }

    #[test]
    fn each_estimator_sums_and_averages_over_the_action_tokens() {
        let old = Tensor::from_slice(&[-1.0f32, -2.0, -0.5, -1.0, -3.0, 0.0]).view([2, 3]);
        let reference = Tensor::from_slice(&[-1.5f32, -1.0, -0.5, -0.2, -3.0, 0.0]).view([2, 3]);
        let action = Tensor::from_slice(&[true, true, false, true, false, false]).view([2, 3]);
        let mut exp = Experience::build(&[], &Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)), tch::Device::Cpu);
        (exp.old_log_probs, exp.action_mask) = (old, action);
        assert!(sequence_kl(&exp, RewardKlEstimator::K1).unwrap().is_none(), "no reference, no penalty");
        exp.ref_log_probs = Some(reference);
        // Row 0's action tokens: d = 0.5 and -1.0; row 1's: d = -0.8.
        let k3 = |d: f64| (-d).exp() + d - 1.0;
        for (estimator, f) in [
            (RewardKlEstimator::K1, &(|d: f64| d) as &dyn Fn(f64) -> f64),
            (RewardKlEstimator::K2, &|d: f64| d * d / 2.0),
            (RewardKlEstimator::K3, &k3),
            (RewardKlEstimator::Abs, &|d: f64| d.abs()),
        ] {
            let (sums, means) = sequence_kl(&exp, estimator).unwrap().unwrap();
            let want = [f(0.5) + f(-1.0), f(-0.8)];
            for (got, want) in sums.iter().zip(want) {
                assert!((got - want).abs() < 1e-6, "{estimator}: sum {got}, want {want}");
            }
            assert!((means[0] - want[0] / 2.0).abs() < 1e-6 && (means[1] - want[1]).abs() < 1e-6, "{estimator}");
        }
    }
}
