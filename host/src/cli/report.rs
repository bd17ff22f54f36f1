//! `grpo-host report RUN_DIR`: PNG curves of returns, loss, KL, gradient norm, completion length, supervised
//! fine-tuning (`sft/*`) and held-out evaluation (`eval/*`, drawn beside the training curves they compare with) from
//! the run's `metrics.jsonl`, and a short text summary. Reads whatever is there, so it works on a run still being
//! written (a half-written last line is skipped).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use plotters::prelude::*;

use crate::logging::json;

/// Arguments of `grpo-host report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run directory (`runs/<run-name>`), or its metrics.jsonl.
    pub run_dir: PathBuf,
    /// Where the PNG files go (default: `<run-dir>/plots`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One plot: a file name, a title, and the keys drawn on it (those present in the run).
struct PlotSpec {
    file: &'static str,
    title: &'static str,
    matches: fn(&str) -> bool,
}

const PLOTS: [PlotSpec; 9] = [
    PlotSpec {
        file: "returns.png",
        title: "returns",
        // Per-rollout scales only: returns_sum grows with the batch size and would flatten every other curve.
        matches: |k| {
            (k.starts_with("rollouts/returns_") && k != "rollouts/returns_sum")
                || k.starts_with("batch_returns/")
                || k == "group_avg/reward"
                || k == "rollout_rewards/total"
                || k == "eval/returns_mean"
        },
    },
    PlotSpec {
        file: "eval.png",
        title: "held-out accuracy",
        matches: |k| k == "eval/accuracy" || k.starts_with("eval/pass@") || k == "math/exact_rate",
    },
    PlotSpec {
        file: "loss.png",
        title: "loss",
        matches: |k| k == "training_step/loss" || k == "training_epoch/loss_mean" || k == "training_epoch/loss",
    },
    PlotSpec {
        file: "kl.png",
        title: "KL",
        matches: |k| {
            k == "training_step/kl"
                || k == "rollouts/kl_mean"
                || k == "training_epoch/kl_mean"
                || k == "training_epoch/kl"
        },
    },
    PlotSpec {
        file: "grad_norm.png",
        title: "gradient norm",
        matches: |k| k == "training_step/grad_norm" || k.starts_with("training_epoch/grad_norm"),
    },
    PlotSpec {
        // The share of action tokens the ratio clip changed, and its upper and lower parts (clip-higher shows here).
        file: "clipping.png",
        title: "clipped tokens (share)",
        matches: |k| k.starts_with("training_step/clip_fraction"),
    },
    PlotSpec {
        // On its own plot: nats, between 0 and ln(vocabulary), a scale no other curve shares.
        file: "entropy.png",
        title: "policy entropy (nats per token)",
        matches: |k| k == "training_step/entropy",
    },
    PlotSpec {
        // `grpo-host sft` and train's --sft-warmup-steps: on their own scale (a cross-entropy), not the RL loss's.
        file: "sft.png",
        title: "supervised fine-tuning",
        matches: |k| matches!(k, "sft/loss" | "sft/accuracy" | "sft/eval_loss" | "sft/eval_accuracy"),
    },
    PlotSpec {
        file: "completion_length.png",
        title: "completion length (tokens)",
        // The trainer's own `completions/*` lengths, evaluation's, and other trainers' names for them.
        matches: |k| {
            matches!(k, "completions/mean_length" | "completions/max_length")
                || k.contains("completion_length")
                || k.contains("completion_len")
                || k.contains("response_length")
        },
    },
];

/// Series by key: (step, value) points in file order.
pub type Series = BTreeMap<String, Vec<(u64, f64)>>;

/// What a metrics file holds.
#[derive(Debug, Default)]
pub struct RunData {
    /// Numeric series.
    pub series: Series,
    /// Lines that could not be read (a partial last line of a live run is one).
    pub skipped_lines: usize,
    /// First and last `_runtime` (the run's own seconds, which skip the time a stopped run waited for its
    /// resume), or `_timestamp` in files written before `_runtime` was.
    pub time_span: Option<(f64, f64)>,
}

/// Read `metrics.jsonl`.
pub fn read_metrics(path: &Path) -> anyhow::Result<RunData> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        crate::user_error!("cannot read {}: {e}; pass a run directory that contains metrics.jsonl", path.display())
    })?;
    let mut data = RunData::default();
    // (runtime span, time-stamp span, whether every timed row has a runtime)
    let (mut runtime, mut timestamps, mut all_runtime) = (None, None, true);
    let widen = |span: &mut Option<(f64, f64)>, t: f64| {
        let s = span.get_or_insert((t, t));
        *s = (s.0.min(t), s.1.max(t));
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Some(row) = json::parse_line(line) else {
            data.skipped_lines += 1;
            continue;
        };
        let Some(step) = row.get("step").and_then(|v| v.as_f64()) else {
            data.skipped_lines += 1;
            continue;
        };
        let clock = |key: &str| row.get(key).and_then(|v| v.as_f64());
        if let Some(t) = clock("_timestamp") {
            widen(&mut timestamps, t);
            all_runtime &= clock("_runtime").is_some();
        }
        if let Some(t) = clock("_runtime") {
            widen(&mut runtime, t);
        }
        for (k, v) in &row {
            if let (Some(x), false) = (v.as_f64(), k == "step" || k.starts_with('_')) {
                data.series.entry(k.clone()).or_default().push((step as u64, x));
            }
        }
    }
    // A file begun before `_runtime` existed and resumed after mixes clocks: its time stamps are the one measure.
    data.time_span = if all_runtime { runtime.or(timestamps) } else { timestamps };
    Ok(data)
}

/// Run the command.
pub fn run(args: &ReportArgs) -> anyhow::Result<i32> {
    let (run_dir, metrics) = if args.run_dir.is_file() {
        (args.run_dir.parent().unwrap_or(Path::new(".")).to_path_buf(), args.run_dir.clone())
    } else {
        (args.run_dir.clone(), args.run_dir.join("metrics.jsonl"))
    };
    let data = read_metrics(&metrics)?;
    if data.series.is_empty() {
        return Err(crate::user_error!(
            "{} has no numeric metrics yet; wait for the first step to finish",
            metrics.display()
        ));
    }
    let out = args.out.clone().unwrap_or_else(|| run_dir.join("plots"));
    std::fs::create_dir_all(&out).map_err(|e| crate::user_error!("cannot create {}: {e}", out.display()))?;
    let fonts = load_font();
    if !fonts {
        eprintln!("note: no TrueType font found (install fonts-dejavu-core); plots are drawn without labels");
    }
    let mut written = Vec::new();
    for spec in &PLOTS {
        let keys: Vec<&String> = data.series.keys().filter(|k| (spec.matches)(k)).collect();
        if keys.is_empty() {
            continue;
        }
        let path = out.join(spec.file);
        draw(&path, spec.title, &keys.iter().map(|k| (k.as_str(), &data.series[*k])).collect::<Vec<_>>(), fonts)
            .map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))?;
        written.push(path);
    }
    print!("{}", summary_text(&data, &metrics));
    for p in &written {
        println!("plot: {}", p.display());
    }
    if written.is_empty() {
        println!("no returns, loss, KL, grad norm, completion length, sft or eval metrics to plot yet");
    }
    Ok(0)
}

/// The text summary: steps, time, and for the main metrics the last, best and worst values.
pub fn summary_text(data: &RunData, metrics: &Path) -> String {
    let mut out = String::new();
    let steps: Vec<u64> = data.series.values().flat_map(|s| s.iter().map(|p| p.0)).collect();
    let (first, last) = (steps.iter().min().copied().unwrap_or(0), steps.iter().max().copied().unwrap_or(0));
    out.push_str(&format!("run: {}\n", metrics.display()));
    out.push_str(&format!("steps: {first}..={last}"));
    if let Some((t0, t1)) = data.time_span {
        let secs = t1 - t0;
        out.push_str(&format!(", {:.0} s", secs));
        if last > first && secs > 0.0 {
            out.push_str(&format!(" ({:.2} s/step)", secs / (last - first) as f64));
        }
    }
    out.push('\n');
    if data.skipped_lines > 0 {
        out.push_str(&format!("unreadable lines skipped: {}\n", data.skipped_lines));
    }
    for spec in &PLOTS {
        for (k, s) in data.series.iter().filter(|(k, _)| (spec.matches)(k)) {
            let finite: Vec<f64> = s.iter().map(|p| p.1).filter(|x| x.is_finite()).collect();
            let nonfinite = s.len() - finite.len();
            let lastv = s.last().map(|p| p.1).unwrap_or(f64::NAN);
            let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
            let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            out.push_str(&format!("{k}: last {lastv:.4}, min {min:.4}, max {max:.4}, {} points", s.len()));
            if nonfinite > 0 {
                out.push_str(&format!(", {nonfinite} non-finite"));
            }
            out.push('\n');
        }
    }
    out
}

/// Register a system TrueType font with plotters; false if none was found.
fn load_font() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
            "/System/Library/Fonts/Supplemental/Arial.ttf",
            "/Library/Fonts/Arial.ttf",
        ];
        for path in candidates {
            if let Ok(bytes) = std::fs::read(path) {
                // The font lives as long as the process: plotters keeps a 'static reference.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(path: &Path, title: &str, series: &[(&str, &Vec<(u64, f64)>)], labels: bool) -> DrawResult {
    let finite = || series.iter().flat_map(|(_, s)| s.iter()).filter(|p| p.1.is_finite());
    let (mut x0, mut x1) = (u64::MAX, 0u64);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in finite() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0, 1, 0.0, 1.0);
    }
    if x1 == x0 {
        x1 = x0 + 1;
    }
    let pad = if y1 > y0 { (y1 - y0) * 0.05 } else { y0.abs().max(1.0) * 0.05 };
    let (y0, y1) = (y0 - pad, y1 + pad);

    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if labels {
        builder.caption(title, ("sans-serif", 24)).x_label_area_size(40).y_label_area_size(70);
    }
    let mut chart = builder.build_cartesian_2d(x0 as f64..x1 as f64, y0..y1)?;
    let mut mesh = chart.configure_mesh();
    if labels {
        mesh.x_desc("step").x_label_formatter(&|x| format!("{x:.0}")).label_style(("sans-serif", 14));
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        // Non-finite values break the line rather than being drawn.
        let mut segment: Vec<(f64, f64)> = Vec::new();
        let mut segments = Vec::new();
        for &(x, y) in points.iter() {
            if y.is_finite() {
                segment.push((x as f64, y));
            } else if !segment.is_empty() {
                segments.push(std::mem::take(&mut segment));
            }
        }
        if !segment.is_empty() {
            segments.push(segment);
        }
        for (j, seg) in segments.into_iter().enumerate() {
            let single = seg.len() == 1;
            let drawn = chart.draw_series(LineSeries::new(seg.clone(), color.stroke_width(2)))?;
            if j == 0 && labels {
                drawn
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
            if single {
                chart.draw_series(seg.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
            }
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `_runtime`, a stop and resume's pause (here 10,000 s between steps 14 and 15) is not run time.
    #[test]
    fn time_per_step_leaves_out_the_pause_of_a_stop_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let resumed: String = (0..30u64)
            .map(|step| {
                let (stamp, runtime) = (1000 + step * 2 + if step >= 15 { 10_000 } else { 0 }, 5 + step * 3);
                format!("{{\"step\":{step},\"_timestamp\":{stamp},\"_runtime\":{runtime},\"training_step/loss\":1}}\n")
            })
            .collect();
        std::fs::write(dir.path().join("metrics.jsonl"), &resumed).unwrap();
        let data = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
        let summary = summary_text(&data, Path::new("m.jsonl"));
        assert!(summary.contains("steps: 0..=29, 87 s (3.00 s/step)"), "{summary}");
        // Rows from before `_runtime` existed, continued by rows with it: the time stamps measure the whole.
        let mixed = resumed.replacen(",\"_runtime\":5", "", 1);
        std::fs::write(dir.path().join("metrics.jsonl"), mixed).unwrap();
        let data = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(data.time_span, Some((1000.0, 11058.0)));
    }

    #[test]
    fn reads_a_live_file_and_draws_each_curve() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for step in 0..30u64 {
            let loss = if step == 7 { "NaN".to_string() } else { format!("{}", 1.0 / (step + 1) as f64) };
            text.push_str(&format!(
                "{{\"step\":{step},\"_timestamp\":{},\"rollouts/returns_mean\":{},\"training_step/loss\":{loss},\
                 \"training_step/kl\":{},\"training_step/grad_norm\":0.5,\"completions/mean_length\":{},\
                 \"training_step/entropy\":2.5,\"training_step/clip_fraction\":0.1,\"accelerate/device\":\"cpu\"}}\n",
                1000 + step * 2,
                step as f64 / 30.0,
                step as f64 * 0.001,
                100 + step
            ));
        }
        for step in [0u64, 10, 20, 29] {
            text.push_str(&format!(
                "{{\"step\":{step},\"eval/returns_mean\":{},\"eval/accuracy\":{},\"eval/pass@4\":0.5,\
                 \"eval/completion_length_mean\":12}}\n",
                step as f64 / 40.0,
                step as f64 / 50.0
            ));
        }
        for step in 0..3u64 {
            text.push_str(&format!("{{\"step\":{step},\"sft/loss\":{},\"sft/accuracy\":0.5}}\n", 2.0 - step as f64));
            text.push_str(&format!("{{\"step\":{step},\"sft/eval_loss\":{}}}\n", 3.0 - step as f64));
        }
        text.push_str("{\"step\":30,\"rollouts/ret"); // the trainer is mid-write
        std::fs::write(dir.path().join("metrics.jsonl"), text).unwrap();
        let data = read_metrics(&dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(data.skipped_lines, 1);
        assert_eq!(data.series["training_step/loss"].len(), 30);
        assert_eq!(data.series["eval/accuracy"], vec![(0, 0.0), (10, 0.2), (20, 0.4), (29, 0.58)]);
        assert!(data.series["training_step/loss"][7].1.is_nan());
        assert!(!data.series.contains_key("accelerate/device"));
        let summary = summary_text(&data, Path::new("m.jsonl"));
        assert!(summary.contains("steps: 0..=29, 58 s (2.00 s/step)"), "{summary}");
        assert!(
            summary.contains("training_step/loss: last 0.0333, min 0.0333, max 1.0000, 30 points, 1 non-finite"),
            "{summary}"
        );

        let args = ReportArgs { run_dir: dir.path().to_path_buf(), out: None };
        assert_eq!(run(&args).unwrap(), 0);
        assert!(summary.contains("eval/accuracy: last 0.5800, min 0.0000, max 0.5800, 4 points"), "{summary}");
        assert!(summary.contains("sft/loss: last 0.0000, min 0.0000, max 2.0000, 3 points"), "{summary}");
        assert!(summary.contains("sft/eval_loss: last 1.0000, min 1.0000, max 3.0000, 3 points"), "{summary}");
        for f in [
            "returns.png",
            "loss.png",
            "kl.png",
            "grad_norm.png",
            "entropy.png",
            "clipping.png",
            "completion_length.png",
            "eval.png",
            "sft.png",
        ] {
            let bytes = std::fs::read(dir.path().join("plots").join(f)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{f}");
        }
    }

    #[test]
    fn the_trainers_own_names_are_drawn_on_their_plots() {
        for (key, file) in [
            ("rollouts/returns_mean", "returns.png"),
            ("training_step/loss", "loss.png"),
            ("training_step/kl", "kl.png"),
            ("training_step/grad_norm", "grad_norm.png"),
            ("training_step/entropy", "entropy.png"),
            ("training_step/clip_fraction", "clipping.png"),
            ("training_step/clip_fraction_high", "clipping.png"),
            ("completions/mean_length", "completion_length.png"),
            ("completions/max_length", "completion_length.png"),
            ("eval/completion_length_mean", "completion_length.png"),
            ("eval/accuracy", "eval.png"),
            ("sft/loss", "sft.png"),
        ] {
            let drawn: Vec<&str> = PLOTS.iter().filter(|p| (p.matches)(key)).map(|p| p.file).collect();
            assert_eq!(drawn, vec![file], "{key}");
        }
    }

    #[test]
    fn missing_metrics_is_a_user_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(&ReportArgs { run_dir: dir.path().join("nope"), out: None }).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2);
    }
}
