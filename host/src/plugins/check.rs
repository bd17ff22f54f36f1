//! `grpo-host plugins check FILE`: load one library, validate it, and call each plugin once on tiny inputs, the
//! way a run would, so that a plugin author finds out before a long run does.

use super::{PluginKind, Registry};
use crate::user_error;
use grpo_sdk::{LossSettings, PolicyBatch, Split};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Check every plugin in `file`; returns one report line per plugin. `config` is given to every plugin's
/// constructor (`null` for their defaults).
pub fn check_file(file: &Path, config: &serde_json::Value) -> anyhow::Result<Vec<String>> {
    if !file.is_file() {
        return Err(user_error!("plugin file {}: no such file", file.display()));
    }
    let mut registry = Registry::default();
    registry.load_file(file)?;
    let infos: Vec<_> = registry.plugins().cloned().collect();
    if infos.is_empty() {
        return Err(user_error!("plugin file {}: exports no plugins", file.display()));
    }
    let mut lines = Vec::new();
    for info in infos {
        let line = match info.kind {
            PluginKind::Algorithm => check_algorithm(&registry, &info.name, config)?,
            PluginKind::Environment => check_environment(&registry, &info.name, config)?,
        };
        lines.push(format!("ok  {} {} {}: {line}", info.kind, info.name, info.version));
    }
    Ok(lines)
}

fn check_algorithm(registry: &Registry, name: &str, config: &serde_json::Value) -> anyhow::Result<String> {
    let algo = registry.algorithm(name, config)?;
    let label = algo.info().label();
    algo.config()?;
    // Two groups of four rollouts, one with a spread of rewards and one where all are equal.
    let rewards = Tensor::from_slice(&[1.0f32, 0.0, 0.5, 0.01, 0.3, 0.3, 0.3, 0.3]);
    let adv = algo.advantages(&rewards, &[4, 4])?;
    if !bool::try_from(adv.isfinite().all())? {
        return Err(user_error!("{label}: advantages are not finite: {adv}"));
    }
    let (b, t) = (4i64, 6i64);
    let opts = (Kind::Float, Device::Cpu);
    let log_probs = (-Tensor::rand([b, t], opts) * 2.0 - 0.01).set_requires_grad(true);
    let noise = |scale: f64| log_probs.detach() + (Tensor::rand([b, t], opts) - 0.5) * scale;
    let lengths = Tensor::from_slice(&[6i64, 4, 1, 3]).unsqueeze(-1);
    let batch = PolicyBatch {
        log_probs: log_probs.shallow_clone(),
        old_log_probs: noise(0.4),
        ref_log_probs: Some(noise(0.2)),
        advantages: adv.narrow(0, 0, b),
        action_mask: Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(0).lt_tensor(&lengths),
        settings: LossSettings { generate_max_length: t, ..LossSettings::default() },
        is_weights: None,
        // The micro-batch is the whole step: its own 14 action tokens.
        step_token_divisor: Some(14.0),
    };
    let out = algo.loss(&batch)?;
    let loss = out.loss.double_value(&[]);
    if !loss.is_finite() {
        return Err(user_error!("{label}: loss is not finite ({loss})"));
    }
    if !out.loss.requires_grad() {
        return Err(user_error!("{label}: the loss is not connected to log_probs (no gradient would flow)"));
    }
    out.loss.backward();
    let grad = log_probs.grad();
    if !grad.defined() || !bool::try_from(grad.isfinite().all())? {
        return Err(user_error!("{label}: backward gave no finite gradient for log_probs"));
    }
    let metrics = algo.metrics()?;
    Ok(format!(
        "advantages, loss {loss:.6} with a finite gradient, {} loss metric(s), {} metric(s)",
        out.metrics.len(),
        metrics.len()
    ))
}

fn check_environment(registry: &Registry, name: &str, config: &serde_json::Value) -> anyhow::Result<String> {
    let env = registry.environment(name, config)?;
    let label = env.info().label();
    env.config()?;
    let tools = env.tools()?;
    let count = env.task_count(Split::Train)?;
    if count == Some(0) {
        return Err(user_error!("{label}: the train split has no tasks with this config"));
    }
    let task = env.task(Split::Train, 0, 0)?;
    if env.task(Split::Train, 0, 0)? != task {
        return Err(user_error!("{label}: task(train, seed 0, index 0) differs between two calls"));
    }
    let (mut episode, opening) = env.reset(&task)?;
    if opening.is_empty() {
        return Err(user_error!("{label}: reset gave no opening messages"));
    }
    let outcome = episode.step("<answer>0</answer>")?;
    drop(episode);
    env.metrics()?;
    let total: f64 = outcome.rewards.iter().map(|r| r.value).sum();
    Ok(format!(
        "{} task(s), {} tool(s), reset gave {} message(s), one step: reward {total} ({} component(s)), done {}",
        count.map_or("unbounded (generated)".to_string(), |n| n.to_string()),
        tools.len(),
        opening.len(),
        outcome.rewards.len(),
        outcome.done
    ))
}
