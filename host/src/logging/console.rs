//! The console: an indicatif progress bar (step, mean return, loss, ETA) on a terminal; on a pipe or a log file, a
//! plain line every few steps instead, since a bar there is noise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Metrics, Sink};

/// Keys that carry the mean return, in order of preference (base/DR-GRPO, then the multi-turn experiments).
const RETURN_KEYS: [&str; 3] = ["rollouts/returns_mean", "batch_returns/mean", "group_avg/reward"];
const LOSS_KEYS: [&str; 2] = ["training_step/loss", "training_epoch/loss"];

/// Progress on stderr.
pub struct ConsoleSink {
    bar: ProgressBar,
    terminal: bool,
    total: Option<u64>,
    started: std::time::Instant,
    last_printed: Option<u64>,
}

impl ConsoleSink {
    /// A bar of `total` steps (a spinner until the total is known).
    pub fn new(total: Option<u64>) -> ConsoleSink {
        let terminal = std::io::stderr().is_terminal();
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        if !terminal {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        let sink = ConsoleSink { bar, terminal, total, started: std::time::Instant::now(), last_printed: None };
        sink.apply_style();
        sink
    }

    fn apply_style(&self) {
        let template = if self.total.is_some() {
            "{spinner} step {pos}/{len} [{bar:30}] {msg} [{elapsed_precise} < {eta_precise}]"
        } else {
            "{spinner} step {pos} {msg} [{elapsed_precise}]"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
    }

    /// `reward 0.512 loss 0.0031` (`sft loss 0.8345` on a supervised warm-up step), from whichever keys the row
    /// has.
    pub fn status(row: &Metrics) -> String {
        let pick = |keys: &[&str]| keys.iter().find_map(|k| row.get(*k).and_then(|v| v.as_f64()));
        let mut parts = Vec::new();
        if let Some(l) = pick(&["sft/loss"]) {
            parts.push(format!("sft loss {l:.4}"));
        }
        if let Some(r) = pick(&RETURN_KEYS) {
            parts.push(format!("reward {r:.3}"));
        }
        if let Some(l) = pick(&LOSS_KEYS) {
            parts.push(format!("loss {l:.4}"));
        }
        parts.join(" ")
    }
}

impl Sink for ConsoleSink {
    fn name(&self) -> &'static str {
        "console"
    }

    fn log(&mut self, step: u64, row: &Metrics) {
        let status = Self::status(row);
        self.bar.set_position(step + 1);
        if !status.is_empty() {
            self.bar.set_message(status.clone());
        }
        if !self.terminal {
            // About 20 lines per run, and always the first step.
            let every = self.total.map(|t| (t / 20).max(1)).unwrap_or(10);
            if self.last_printed.is_none() || step.is_multiple_of(every) {
                self.last_printed = Some(step);
                let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
                eprintln!("step {}{of} {status} ({:.0}s)", step + 1, self.started.elapsed().as_secs_f64());
            }
        }
    }

    fn set_total_steps(&mut self, total: u64) {
        self.total = Some(total);
        self.bar.set_length(total);
        self.apply_style();
    }

    fn println(&self, line: &str) {
        if self.terminal {
            self.bar.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&mut self, _exit_code: i32) {
        self.bar.finish();
    }
}
