//! Checkpoints: the weights in a layout transformers (or peft) loads, plus everything needed to continue the run
//! exactly where it stopped: optimizer moments, counters and the data position. The random streams need no saving:
//! every batch's seed is derived from the run seed and the batch index.
//!
//! A checkpoint is written under a temporary name and renamed into place, so a crash mid-write never leaves a
//! half checkpoint that `--resume` would pick up.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::user_error;

/// The counters that, with the weights and optimizer, define where a run is.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Rollout batches completed.
    pub batch: u64,
    /// Optimizer steps taken.
    pub global_step: u64,
    /// Rollouts generated so far.
    pub total_rollouts: u64,
    /// Best batch mean return so far.
    pub best_mean_return: Option<f64>,
    /// Updates skipped because the loss was not finite.
    pub invalid_loss_count: u64,
    /// The run seed (a resumed run must use the same one).
    pub seed: u64,
    /// The W&B run id, so a resumed run continues its W&B run.
    #[serde(default)]
    pub wandb_run_id: Option<String>,
    /// fp16's dynamic loss scale (scale, good-step count, skipped steps); `None` when no scaling is done.
    #[serde(default)]
    pub loss_scaler: Option<crate::train::precision::LossScalerState>,
    /// The mixed-precision mode the run trained in (`no`, `bf16`, `fp16`).
    #[serde(default)]
    pub mixed_precision: Option<String>,
}

/// What goes into one checkpoint.
pub struct CheckpointData<'a> {
    /// Weights by Hugging Face name (full model) or PEFT name (adapter).
    pub weights: BTreeMap<String, Tensor>,
    /// True when `weights` is a LoRA adapter.
    pub adapter: Option<AdapterInfo>,
    /// The model directory the run started from (config and tokenizer files are copied from it).
    pub base_model: &'a Path,
    /// Merged full weights for a LoRA run, when asked for.
    pub merged: Option<BTreeMap<String, Tensor>>,
    /// Optimizer step count and moments.
    pub optimizer: (i64, BTreeMap<String, Tensor>),
    /// Counters.
    pub state: TrainerState,
}

/// What peft's adapter_config.json needs.
pub struct AdapterInfo {
    pub rank: i64,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
}

const MODEL_FILES: [&str; 5] =
    ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];

/// Write a checkpoint as `dir/step_<global_step>` and return its path.
pub fn save(dir: &Path, data: CheckpointData<'_>) -> Result<PathBuf> {
    let name = format!("step_{}", data.state.global_step);
    let final_dir = dir.join(&name);
    let tmp = dir.join(format!(".{name}.partial"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating checkpoint directory {}", tmp.display()))?;

    match &data.adapter {
        None => {
            write_tensors(&tmp.join("model.safetensors"), &data.weights)?;
            copy_model_files(data.base_model, &tmp)?;
        }
        Some(info) => {
            let peft: BTreeMap<String, Tensor> =
                data.weights.iter().map(|(k, v)| (format!("base_model.model.{k}"), v.shallow_clone())).collect();
            write_tensors(&tmp.join("adapter_model.safetensors"), &peft)?;
            let config = serde_json::json!({
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": data.base_model.display().to_string(),
                "r": info.rank,
                "lora_alpha": info.alpha,
                "lora_dropout": info.dropout,
                "target_modules": info.target_modules,
                "bias": "none",
                "fan_in_fan_out": false,
                "inference_mode": true,
            });
            fs::write(tmp.join("adapter_config.json"), serde_json::to_string_pretty(&config)?)?;
            if let Some(merged) = &data.merged {
                let merged_dir = tmp.join("merged");
                fs::create_dir_all(&merged_dir)?;
                write_tensors(&merged_dir.join("model.safetensors"), merged)?;
                copy_model_files(data.base_model, &merged_dir)?;
            }
        }
    }
    let (steps, moments) = &data.optimizer;
    write_tensors(&tmp.join("optimizer.safetensors"), moments)?;
    let mut state = serde_json::to_value(&data.state)?;
    state["optimizer_steps"] = (*steps).into();
    fs::write(tmp.join("trainer_state.json"), serde_json::to_string_pretty(&state)?)?;

    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?;
    }
    fs::rename(&tmp, &final_dir).with_context(|| format!("moving the checkpoint into {}", final_dir.display()))?;
    Ok(final_dir)
}

fn write_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let list: Vec<(String, Tensor)> =
        tensors.iter().map(|(k, v)| (k.clone(), v.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&list, path).with_context(|| format!("writing {}", path.display()))
}

fn copy_model_files(from: &Path, to: &Path) -> Result<()> {
    for f in MODEL_FILES {
        let src = from.join(f);
        if src.exists() {
            fs::copy(&src, to.join(f)).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

/// A checkpoint read back for `--resume`.
pub struct Loaded {
    pub dir: PathBuf,
    pub weights: BTreeMap<String, Tensor>,
    pub adapter: bool,
    pub optimizer_steps: i64,
    pub optimizer: BTreeMap<String, Tensor>,
    pub state: TrainerState,
}

/// Read a checkpoint directory.
pub fn load(dir: &Path) -> Result<Loaded> {
    let state_path = dir.join("trainer_state.json");
    let text = fs::read_to_string(&state_path).map_err(|_| {
        user_error!(
            "{} is not a grpo-rs checkpoint (no trainer_state.json); pass a checkpoint or run directory",
            dir.display()
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", state_path.display()))?;
    let optimizer_steps = value["optimizer_steps"].as_i64().unwrap_or(0);
    let state: TrainerState =
        serde_json::from_value(value).with_context(|| format!("reading {}", state_path.display()))?;
    let (weights_file, adapter) = if dir.join("adapter_model.safetensors").exists() {
        (dir.join("adapter_model.safetensors"), true)
    } else {
        (dir.join("model.safetensors"), false)
    };
    let weights = read_tensors(&weights_file)?
        .into_iter()
        .map(|(k, v)| (if adapter { k.trim_start_matches("base_model.model.").to_string() } else { k }, v))
        .collect();
    let optimizer = read_tensors(&dir.join("optimizer.safetensors"))?;
    Ok(Loaded { dir: dir.to_path_buf(), weights, adapter, optimizer_steps, optimizer, state })
}

fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let list = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(list.into_iter().collect())
}

/// The newest complete checkpoint (highest step) under `checkpoints`, if any.
pub fn latest(checkpoints: &Path) -> Option<PathBuf> {
    let entries = fs::read_dir(checkpoints).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step: u64 = name.strip_prefix("step_")?.parse().ok()?;
            e.path().join("trainer_state.json").exists().then_some((step, e.path()))
        })
        .max_by_key(|(step, _)| *step)
        .map(|(_, p)| p)
}

/// Resolve `--resume`: a checkpoint directory, a run directory (its latest checkpoint), or `auto` (the latest
/// checkpoint of `run_dir` when it exists, else of the most recently modified run under `runs_dir`).
pub fn resolve_resume(spec: &str, runs_dir: &Path, run_dir: Option<&Path>) -> Result<PathBuf> {
    if spec != "auto" {
        let p = PathBuf::from(spec);
        if p.join("trainer_state.json").exists() {
            return Ok(p);
        }
        if let Some(c) = latest(&p.join("checkpoints")) {
            return Ok(c);
        }
        bail!(user_error!(
            "--resume {spec}: neither a checkpoint (no trainer_state.json) nor a run directory with checkpoints"
        ));
    }
    if let Some(run) = run_dir {
        if let Some(c) = latest(&run.join("checkpoints")) {
            return Ok(c);
        }
    }
    let mut runs: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(runs_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| latest(&e.path().join("checkpoints")).is_some())
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    runs.sort();
    match runs.pop() {
        Some((_, run)) => Ok(latest(&run.join("checkpoints")).expect("filtered above")),
        None => bail!(user_error!(
            "--resume auto: no run with a checkpoint under {}; start a run without --resume first",
            runs_dir.display()
        )),
    }
}
