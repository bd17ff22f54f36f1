//! Counting episode flags across the many episodes of a training step, for the environments' metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::EpisodeFlags;

/// Counters of episode facts since the last report. Environments are shared by all rollout threads, so the counts
/// are atomics; each flag is counted once per episode, when it first becomes true.
#[derive(Debug, Default)]
pub struct FlagCounters {
    episodes: AtomicU64,
    tool_called: AtomicU64,
    tool_exec_ok: AtomicU64,
    answer_format_ok: AtomicU64,
    answer_correct: AtomicU64,
    tool_calls: AtomicU64,
    tool_failures: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    if n > 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

impl FlagCounters {
    /// An episode was opened.
    pub fn episode_started(&self) {
        add(&self.episodes, 1);
    }

    /// Count what changed in an episode's flags during one turn.
    pub fn record(&self, before: &EpisodeFlags, after: &EpisodeFlags) {
        let rise = |b: bool, a: bool| u64::from(a && !b);
        add(&self.tool_called, rise(before.tool_called, after.tool_called));
        add(&self.tool_exec_ok, rise(before.tool_exec_ok, after.tool_exec_ok));
        add(&self.answer_format_ok, rise(before.answer_format_ok, after.answer_format_ok));
        add(&self.answer_correct, rise(before.answer_correct, after.answer_correct));
        add(&self.tool_calls, u64::from(after.tool_calls.saturating_sub(before.tool_calls)));
        add(&self.tool_failures, u64::from(after.tool_failures.saturating_sub(before.tool_failures)));
    }

    /// The rates since the last call, named as re-grpo's `group_rates/*` (with its denominators: `tool_exec_ok` is
    /// per episode that called a tool, `answer_correct` per well-formed answer, the others per episode), plus
    /// `{prefix}/tool_calls_per_episode`, `{prefix}/tool_failures_per_episode` and `{prefix}/episodes`. Resets the
    /// counters. Empty when no episode was opened since the last call.
    pub fn take_metrics(&self, prefix: &str) -> Vec<(String, f64)> {
        let take = |c: &AtomicU64| c.swap(0, Ordering::Relaxed) as f64;
        let episodes = take(&self.episodes);
        let called = take(&self.tool_called);
        let exec_ok = take(&self.tool_exec_ok);
        let format_ok = take(&self.answer_format_ok);
        let correct = take(&self.answer_correct);
        let calls = take(&self.tool_calls);
        let failures = take(&self.tool_failures);
        if episodes == 0.0 {
            return Vec::new();
        }
        let ratio = |n: f64, d: f64| if d > 0.0 { n / d } else { 0.0 };
        vec![
            ("group_rates/tool_called".into(), ratio(called, episodes)),
            ("group_rates/tool_exec_ok".into(), ratio(exec_ok, called)),
            ("group_rates/answer_format_ok".into(), ratio(format_ok, episodes)),
            ("group_rates/answer_correct".into(), ratio(correct, format_ok)),
            (format!("{prefix}/tool_calls_per_episode"), calls / episodes),
            (format!("{prefix}/tool_failures_per_episode"), failures / episodes),
            (format!("{prefix}/episodes"), episodes),
        ]
    }

    /// [`take_metrics`](Self::take_metrics) as the SDK's metrics, for an environment's `MetricSource::metrics`.
    pub fn take_sdk_metrics(&self, prefix: &str) -> Vec<grpo_sdk::Metric> {
        self.take_metrics(prefix).into_iter().map(|(name, value)| grpo_sdk::Metric::number(name, value)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_use_re_grpo_denominators() {
        let c = FlagCounters::default();
        let none = EpisodeFlags::default();
        for i in 0..4 {
            c.episode_started();
            let after = EpisodeFlags {
                tool_called: i < 3,
                tool_exec_ok: i < 2,
                answer_format_ok: i < 2,
                answer_correct: i < 1,
                tool_calls: u32::from(i < 3),
                tool_failures: u32::from(i == 2),
            };
            c.record(&none, &after);
            // Recording the same flags again counts nothing new.
            c.record(&after, &after);
        }
        let m: std::collections::HashMap<_, _> = c.take_metrics("calc_tools").into_iter().collect();
        assert_eq!(m["group_rates/tool_called"], 0.75);
        assert_eq!(m["group_rates/tool_exec_ok"], 2.0 / 3.0);
        assert_eq!(m["group_rates/answer_format_ok"], 0.5);
        assert_eq!(m["group_rates/answer_correct"], 0.5);
        assert_eq!(m["calc_tools/tool_calls_per_episode"], 0.75);
        assert_eq!(m["calc_tools/tool_failures_per_episode"], 0.25);
        assert!(c.take_metrics("calc_tools").is_empty());
    }
}
