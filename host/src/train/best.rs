//! The best checkpoint by an evaluation metric, and stopping once that metric stops improving
//! (`--metric-for-best-model`, `--early-stopping-patience`): the same rules for `train` and `sft`.

use anyhow::Result;
use grpo_sdk::MetricValue;

use crate::checkpoint::{BestCheckpoint, TrainerState};
use crate::logging::Metrics;
use crate::train::config::BestModel;
use crate::user_error;

/// What one evaluation decided.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// It beat every earlier one: its checkpoint is due now, and kept through rotation.
    pub new_best: bool,
    /// The patience ran out: the run ends here. The line says why, for the console.
    pub stop: Option<String>,
}

/// Judge the evaluation `metrics` of the weights that checkpoint `step` holds (or will hold) against the best so
/// far in `state`, which it updates: the best, and under early stopping the count of evaluations without progress.
/// `last`: the run ends after this evaluation anyway, so nothing is stopped early. A metric the evaluation does not
/// log is one line listing those it does.
pub fn judge(best: &BestModel, state: &mut TrainerState, metrics: &Metrics, step: u64, last: bool) -> Result<Verdict> {
    let Some(&MetricValue::Number(value)) = metrics.get(&best.metric) else {
        let names: Vec<&str> = metrics.keys().map(String::as_str).collect();
        return Err(user_error!(
            "--metric-for-best-model {}: the evaluation logs no such number; it logs {}",
            best.metric,
            names.join(", ")
        ));
    };
    let previous = state.best.as_ref().map(|b| b.value);
    let mut verdict = Verdict::default();
    if let Some(stopping) = best.early_stopping {
        state.evals_without_improvement = match best.improves_by(value, previous, stopping.threshold) {
            true => 0,
            false => state.evals_without_improvement + 1,
        };
        if state.evals_without_improvement >= stopping.patience && !last {
            state.early_stopped = true;
            let by =
                if stopping.threshold > 0.0 { format!(" by more than {}", stopping.threshold) } else { String::new() };
            verdict.stop = Some(format!(
                "early stopping at step {step}: {} has not improved{by} for {} evaluation(s) in a row (best {:.4} at \
                 step {}); --early-stopping-patience {}",
                best.metric,
                state.evals_without_improvement,
                previous.unwrap_or(f64::NAN),
                state.best.as_ref().map_or(0, |b| b.step),
                stopping.patience
            ));
        }
    }
    if best.improves(value, previous) {
        state.best = Some(BestCheckpoint { metric: best.metric.clone(), value, step });
        verdict.new_best = true;
    }
    Ok(verdict)
}

/// On resume: a run that stopped early stays stopped unless the patience given now is larger (or none is given).
pub fn still_stopped(best: Option<&BestModel>, state: &TrainerState) -> bool {
    let stopping = best.and_then(|b| b.early_stopping);
    state.early_stopped && stopping.is_some_and(|s| state.evals_without_improvement >= s.patience)
}

/// What a resumed run that has nothing left to train says: whether it had completed or stopped early.
pub fn nothing_to_do(state: &TrainerState) -> &'static str {
    match state.early_stopped {
        true => {
            "the run had stopped early at its last checkpoint (--early-stopping-patience); nothing to do (a larger \
             patience trains on)"
        }
        false => "the run was already complete at its last checkpoint; nothing to do",
    }
}

/// The run summary's account of them: `final/best_checkpoint_step`, `final/best_metric` and `final/early_stopped`,
/// where they apply.
pub fn final_metrics(state: &TrainerState) -> Metrics {
    let mut m = Metrics::new();
    if let Some(best) = &state.best {
        m.insert("final/best_checkpoint_step".into(), (best.step as f64).into());
        m.insert("final/best_metric".into(), best.value.into());
    }
    if state.early_stopped {
        m.insert("final/early_stopped".into(), true.into());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::EarlyStopping;

    fn accuracy(value: f64) -> Metrics {
        Metrics::from([("eval/accuracy".to_string(), value.into())])
    }

    /// The count of evaluations without progress resets on progress and stops the run when it reaches the
    /// patience, except at the run's last evaluation; the best moves on any improvement, threshold or not.
    #[test]
    fn patience_counts_evaluations_without_progress() {
        let stopping = Some(EarlyStopping { patience: 2, threshold: 0.05 });
        let best = BestModel { metric: "eval/accuracy".into(), greater_is_better: true, early_stopping: stopping };
        let mut state = TrainerState::default();
        let mut judge_at = |value: f64, step: u64, last: bool| judge(&best, &mut state, &accuracy(value), step, last);
        assert_eq!(judge_at(0.5, 3, false).unwrap(), Verdict { new_best: true, stop: None });
        // Better, but not by more than the threshold: a new best that does not reset the count.
        assert_eq!(judge_at(0.52, 6, false).unwrap(), Verdict { new_best: true, stop: None });
        let verdict = judge_at(0.4, 9, false).unwrap();
        assert!(!verdict.new_best && verdict.stop.as_deref().unwrap().contains("best 0.5200 at step 6"), "{verdict:?}");
        assert!(state.early_stopped && state.evals_without_improvement == 2);
        assert_eq!(final_metrics(&state).get("final/early_stopped"), Some(&MetricValue::from(true)));

        let mut state = TrainerState::default();
        let mut judge_at = |value: f64, step: u64, last: bool| judge(&best, &mut state, &accuracy(value), step, last);
        judge_at(0.5, 3, false).unwrap();
        judge_at(0.5, 6, false).unwrap();
        assert_eq!(judge_at(0.5, 9, true).unwrap(), Verdict::default());
        assert!(!state.early_stopped);
        let err = judge(&best, &mut state, &Metrics::new(), 12, false).unwrap_err();
        assert!(err.to_string().contains("the evaluation logs no such number"), "{err}");
    }
}
