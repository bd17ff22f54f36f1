//! Checkpoints: the weights in a layout transformers (or peft) loads, plus everything needed to continue the run
//! exactly where it stopped: optimizer moments, counters and the data position. The random streams need no saving:
//! every batch's seed is derived from the run seed and the batch index.
//!
//! Durability: every file is written into `.step_N.partial` and fsynced, then `manifest.json` (each file's size and
//! sha256) is written last and fsynced, the directory is fsynced, renamed to `step_N`, and the parent fsynced. A
//! checkpoint without a manifest, or whose files disagree with it, was cut short (a kill, a power loss, a full disk)
//! or damaged later: [`scan`] and [`latest`] skip it, name it, and fall back to the previous one. Checkpoints written
//! before manifests existed are accepted when their files open ("legacy").

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

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
    /// The run's name (its folder under `--runs-dir`), so a resume without `--run-name` of a checkpoint kept
    /// elsewhere (`--checkpoint-path`) continues the same run's logs.
    #[serde(default)]
    pub run_name: Option<String>,
    /// `grpo-host sft`: how far its data stream has gone (conversations, or demonstrated tasks, drawn so far), so a
    /// resumed run continues with the next ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sft_position: Option<u64>,
    /// The KL-in-reward coefficient the next batch uses, as the adaptive controller left it (`--reward-kl-target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_kl_coef: Option<f64>,
    /// The best checkpoint so far by `--metric-for-best-model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<BestCheckpoint>,
    /// Evaluations in a row, up to now, that did not improve on the best by `--early-stopping-threshold`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub evals_without_improvement: u64,
    /// The run ended because `--early-stopping-patience` evaluations in a row did not improve.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub early_stopped: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The checkpoint with the best evaluation so far (transformers' `best_model_checkpoint`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BestCheckpoint {
    /// The metric compared (`eval/accuracy`).
    pub metric: String,
    /// Its value at that evaluation.
    pub value: f64,
    /// The checkpoint's step: it is `step_<step>`.
    pub step: u64,
}

/// What goes into one checkpoint.
pub struct CheckpointData<'a> {
    /// Weights by Hugging Face name (full model) or PEFT name (adapter).
    pub weights: BTreeMap<String, Tensor>,
    /// True when `weights` is a LoRA adapter.
    pub adapter: Option<AdapterInfo>,
    /// The model directory the run started from (config and tokenizer files are copied from it).
    pub base_model: &'a Path,
    /// A chat template that replaces the model's (`--chat-template`), written as chat_template.jinja beside the
    /// weights or the adapter, which transformers reads before tokenizer_config.json's.
    pub chat_template: Option<&'a str>,
    /// Merged full weights for a LoRA run, when asked for.
    pub merged: Option<BTreeMap<String, Tensor>>,
    /// Optimizer step count and moments; `None` for a checkpoint of the weights alone (`--save-only-model`), which
    /// a run cannot resume from.
    pub optimizer: Option<(i64, BTreeMap<String, Tensor>)>,
    /// Counters.
    pub state: TrainerState,
    /// The KL reference as it is now, when it moves during the run (`--sync-ref-model`); written as
    /// [`REFERENCE_FILE`].
    pub reference: Option<BTreeMap<String, Tensor>>,
}

/// The KL reference's weights inside a checkpoint of a run whose reference moves (`--sync-ref-model`).
pub const REFERENCE_FILE: &str = "kl_reference.safetensors";

/// What peft's adapter_config.json needs.
pub struct AdapterInfo {
    /// LoRA rank `r`.
    pub rank: i64,
    /// LoRA alpha (the update is scaled by alpha / r).
    pub alpha: f64,
    /// rsLoRA: the update is scaled by alpha / sqrt(r) instead (PEFT's `use_rslora`).
    pub rslora: bool,
    /// DoRA: each adapted layer has a trained magnitude vector (PEFT's `use_dora`).
    pub dora: bool,
    /// LoRA dropout probability.
    pub dropout: f64,
    /// The module names LoRA wraps (`q_proj`, ...).
    pub target_modules: Vec<String>,
    /// The wrapped modules store their weights `[in, out]` (GPT-2's `Conv1D`), as PEFT's `fan_in_fan_out` says.
    pub fan_in_fan_out: bool,
}

/// A model directory's chat template file, which transformers prefers to tokenizer_config.json's `chat_template`.
pub const TEMPLATE_FILE: &str = "chat_template.jinja";

const MODEL_FILES: [&str; 5] =
    ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", TEMPLATE_FILE];

/// The file written last into every checkpoint: each other file's relative path, size and sha256.
pub const MANIFEST: &str = "manifest.json";

const STATE_FILE: &str = "trainer_state.json";

/// The trainer state's key that marks a checkpoint of the weights alone (`--save-only-model`).
const MODEL_ONLY: &str = "model_only";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// Bumped if the manifest's meaning changes.
    format: u32,
    files: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ManifestEntry {
    /// Relative to the checkpoint directory, `/`-separated (`merged/model.safetensors`).
    path: String,
    size: u64,
    sha256: String,
}

/// Stands in for the disk in tests: makes the write of one file fail after some bytes, as a full disk would.
#[derive(Clone, Debug, Default)]
struct Fault {
    /// The relative path whose write fails.
    file: String,
    /// Bytes accepted before the failure.
    after: u64,
}

/// Write a checkpoint as `dir/step_<global_step>` and return its path. On failure nothing is left behind (the
/// partial directory is removed), earlier checkpoints are untouched, and the error is one line naming what failed
/// and the checkpoint that is still there.
pub fn save(dir: &Path, data: CheckpointData<'_>) -> Result<PathBuf> {
    save_with(dir, data, None)
}

fn save_with(dir: &Path, data: CheckpointData<'_>, fault: Option<&Fault>) -> Result<PathBuf> {
    let name = format!("step_{}", data.state.global_step);
    let final_dir = dir.join(&name);
    let tmp = dir.join(format!(".{name}.partial"));
    match write_checkpoint(dir, &name, &tmp, &final_dir, &data, fault) {
        Ok(()) => Ok(final_dir),
        Err(err) => {
            // Best effort: the partial directory is garbage whatever happens next, and prune() retries it.
            let _ = fs::remove_dir_all(&tmp);
            let previous = match scan(dir, Verify::Sizes).chosen {
                Some(p) => format!("the previous checkpoint {} is intact", p.display()),
                None => format!("there is no earlier checkpoint under {}", dir.display()),
            };
            let os = err.chain().find_map(|c| c.downcast_ref::<io::Error>()).and_then(io::Error::raw_os_error);
            let line = format!("writing checkpoint {}: {err:#}; {previous}", final_dir.display());
            if matches!(os, Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                // The user can fix this one: free space (or keep fewer checkpoints) and resume.
                bail!(user_error!("{line}; free disk space there and resume"));
            }
            bail!(anyhow::anyhow!(line))
        }
    }
}

fn write_checkpoint(
    dir: &Path,
    name: &str,
    tmp: &Path,
    final_dir: &Path,
    data: &CheckpointData<'_>,
    fault: Option<&Fault>,
) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if tmp.exists() {
        fs::remove_dir_all(tmp).with_context(|| format!("removing the stale {}", tmp.display()))?;
    }
    fs::create_dir(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = Writer { root: tmp.to_path_buf(), entries: Vec::new(), fault };

    match &data.adapter {
        None => {
            out.file("model.safetensors", |w| write_tensors(w, &data.weights))?;
            out.model_files(data.base_model, "", data.chat_template)?;
        }
        Some(info) => {
            let peft: BTreeMap<String, Tensor> =
                data.weights.iter().map(|(k, v)| (format!("base_model.model.{k}"), v.shallow_clone())).collect();
            out.file("adapter_model.safetensors", |w| write_tensors(w, &peft))?;
            if let Some(template) = data.chat_template {
                out.file(TEMPLATE_FILE, |w| w.write_all(template.as_bytes()))?;
            }
            let config = serde_json::json!({
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": data.base_model.display().to_string(),
                "r": info.rank,
                "lora_alpha": info.alpha,
                "lora_dropout": info.dropout,
                "use_rslora": info.rslora,
                "use_dora": info.dora,
                "target_modules": info.target_modules,
                "bias": "none",
                "fan_in_fan_out": info.fan_in_fan_out,
                "inference_mode": true,
            });
            let text = serde_json::to_string_pretty(&config)?;
            out.file("adapter_config.json", |w| w.write_all(text.as_bytes()))?;
            if let Some(merged) = &data.merged {
                fs::create_dir(tmp.join("merged")).context("merged")?;
                out.file("merged/model.safetensors", |w| write_tensors(w, merged))?;
                out.model_files(data.base_model, "merged/", data.chat_template)?;
                sync_dir(&tmp.join("merged")).context("merged")?;
            }
        }
    }
    if let Some(reference) = &data.reference {
        out.file(REFERENCE_FILE, |w| write_tensors(w, reference))?;
    }
    let mut state = serde_json::to_value(&data.state)?;
    match &data.optimizer {
        Some((steps, moments)) => {
            out.file("optimizer.safetensors", |w| write_tensors(w, moments))?;
            state["optimizer_steps"] = (*steps).into();
        }
        None => state[MODEL_ONLY] = true.into(),
    }
    let text = serde_json::to_string_pretty(&state)?;
    out.file(STATE_FILE, |w| w.write_all(text.as_bytes()))?;

    // Last: its presence says every file above is complete and on disk.
    let manifest = serde_json::to_string_pretty(&Manifest { format: 1, files: out.entries.clone() })?;
    out.file(MANIFEST, |w| w.write_all(manifest.as_bytes()))?;
    sync_dir(tmp).with_context(|| format!("syncing {}", tmp.display()))?;

    if final_dir.exists() {
        // Saving the same step again (a resumed run stopped at once): keep the old copy until the new one is in
        // place, so no moment exists with neither.
        let aside = dir.join(format!(".{name}.old"));
        if aside.exists() {
            fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
        }
        fs::rename(final_dir, &aside).with_context(|| format!("moving {} aside", final_dir.display()))?;
        if let Err(e) = fs::rename(tmp, final_dir) {
            let _ = fs::rename(&aside, final_dir);
            return Err(e).with_context(|| format!("moving the checkpoint into {}", final_dir.display()));
        }
        let _ = fs::remove_dir_all(&aside);
    } else {
        fs::rename(tmp, final_dir).with_context(|| format!("moving the checkpoint into {}", final_dir.display()))?;
    }
    sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(())
}

/// Writes the files of one checkpoint, recording what the manifest needs as it goes.
struct Writer<'f> {
    root: PathBuf,
    entries: Vec<ManifestEntry>,
    fault: Option<&'f Fault>,
}

impl Writer<'_> {
    /// Create `rel`, fill it with `body`, fsync it, and record its size and hash. Errors name `rel`.
    fn file(&mut self, rel: &str, body: impl FnOnce(&mut Sink) -> io::Result<()>) -> Result<()> {
        let run = || -> io::Result<ManifestEntry> {
            let file = File::create(self.root.join(rel))?;
            let limit = self.fault.filter(|f| f.file == rel).map(|f| f.after);
            let mut sink = Sink { out: BufWriter::with_capacity(1 << 20, file), hash: Sha256::new(), size: 0, limit };
            body(&mut sink)?;
            sink.flush()?;
            let Sink { out, hash, size, .. } = sink;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            Ok(ManifestEntry { path: rel.to_string(), size, sha256: hex(&hash.finalize()) })
        };
        let entry = run().with_context(|| rel.to_string())?;
        if rel != MANIFEST {
            self.entries.push(entry);
        }
        Ok(())
    }

    /// Copy the base model's config and tokenizer files, so the checkpoint loads on its own. A config's
    /// `quantization_config` is left out: the weights were dequantized when loaded (gpt-oss's MXFP4 experts) and
    /// are saved in the model's dtype.
    /// The base model's config, tokenizer and template files, under `prefix`; `chat_template` replaces its template.
    fn model_files(&mut self, from: &Path, prefix: &str, chat_template: Option<&str>) -> Result<()> {
        if let Some(template) = chat_template {
            self.file(&format!("{prefix}{TEMPLATE_FILE}"), |w| w.write_all(template.as_bytes()))?;
        }
        for f in MODEL_FILES {
            if f == TEMPLATE_FILE && chat_template.is_some() {
                continue;
            }
            let src = from.join(f);
            if !src.exists() {
                continue;
            }
            if f == "config.json" {
                let text = fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
                if let Ok(serde_json::Value::Object(mut config)) = serde_json::from_str(&text) {
                    if config.remove("quantization_config").is_some() {
                        let text = serde_json::to_string_pretty(&config)?;
                        self.file(&format!("{prefix}{f}"), |w| w.write_all(text.as_bytes()))?;
                        continue;
                    }
                }
            }
            let mut input = File::open(&src).with_context(|| format!("opening {}", src.display()))?;
            self.file(&format!("{prefix}{f}"), |w| io::copy(&mut input, w).map(drop))?;
        }
        Ok(())
    }
}

/// A buffered file that hashes and counts what passes through (and can fail on purpose in tests).
struct Sink {
    out: BufWriter<File>,
    hash: Sha256,
    size: u64,
    limit: Option<u64>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let buf = match self.limit {
            Some(limit) if self.size >= limit => return Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(limit) => &buf[..buf.len().min((limit - self.size) as usize)],
            None => buf,
        };
        let n = self.out.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stream tensors in the safetensors format, so the bytes are hashed and counted on their way to disk (and a write
/// error keeps its OS error code, which tells a full disk from other failures).
fn write_tensors(w: &mut Sink, tensors: &BTreeMap<String, Tensor>) -> io::Result<()> {
    use safetensors::tensor::{Dtype, Metadata, TensorInfo};
    let mut list: Vec<(&String, Dtype, Tensor)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = match t.kind() {
            Kind::Float => Dtype::F32,
            Kind::Double => Dtype::F64,
            Kind::Half => Dtype::F16,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Int64 => Dtype::I64,
            Kind::Int => Dtype::I32,
            Kind::Int16 => Dtype::I16,
            Kind::Int8 => Dtype::I8,
            Kind::Uint8 => Dtype::U8,
            Kind::Bool => Dtype::BOOL,
            other => return Err(io::Error::other(format!("tensor {name} has kind {other:?}, not storable"))),
        };
        list.push((name, dtype, t.detach().to_device(tch::Device::Cpu).contiguous()));
    }
    // As the safetensors crate does: widest dtypes first keeps every tensor aligned to its element size.
    list.sort_by(|(ln, ld, _), (rn, rd, _)| rd.cmp(ld).then(ln.cmp(rn)));
    let mut infos = Vec::with_capacity(list.len());
    let mut offset = 0usize;
    for (name, dtype, t) in &list {
        let n = t.numel() * t.kind().elt_size_in_bytes();
        let shape = t.size().iter().map(|&d| d as usize).collect();
        infos.push((name.to_string(), TensorInfo { dtype: *dtype, shape, data_offsets: (offset, offset + n) }));
        offset += n;
    }
    let format = HashMap::from([("format".to_string(), "pt".to_string())]);
    let metadata = Metadata::new(Some(format), infos).map_err(|e| io::Error::other(format!("{e:?}")))?;
    let mut header = serde_json::to_vec(&metadata)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    for (_, _, t) in &list {
        let n = t.numel() * t.kind().elt_size_in_bytes();
        if n == 0 {
            continue;
        }
        // SAFETY: `t` is a contiguous CPU tensor alive for this whole borrow, and `n` is exactly its byte length.
        let bytes = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, n) };
        w.write_all(bytes)?;
    }
    Ok(())
}

/// A checkpoint read back for `--resume`.
pub struct Loaded {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Weights by Hugging Face name, or adapter weights by their names without peft's prefix.
    pub weights: BTreeMap<String, Tensor>,
    /// True when `weights` is a LoRA adapter.
    pub adapter: bool,
    /// AdamW's step count.
    pub optimizer_steps: i64,
    /// AdamW's moments (and f32 masters under mixed precision); empty in a checkpoint of the weights alone.
    pub optimizer: BTreeMap<String, Tensor>,
    /// The checkpoint holds the weights alone (`--save-only-model`): there is nothing to resume the optimizer from.
    pub model_only: bool,
    /// Counters.
    pub state: TrainerState,
}

/// How thoroughly [`verify`] checks a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// File presence and sizes against the manifest: a few `stat` calls, catches truncated and emptied files.
    Sizes,
    /// Sizes and sha256 of every file: reads the whole checkpoint, also catches flipped or overwritten bytes.
    Full,
}

/// What kind of checkpoint [`verify`] accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// Its files match its manifest.
    Manifest,
    /// Written before manifests existed: its state parses and its safetensors files are whole.
    Legacy,
}

/// Why a checkpoint directory cannot be used: one phrase that names the file (`model.safetensors is 1024 bytes, the
/// manifest says 5242880`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// Check a checkpoint directory against its manifest (or, without one, as a legacy checkpoint).
pub fn verify(dir: &Path, level: Verify) -> std::result::Result<Integrity, Damaged> {
    let text = match fs::read_to_string(dir.join(MANIFEST)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return verify_legacy(dir),
        Err(e) => return Err(Damaged(format!("{MANIFEST} cannot be read ({e})"))),
    };
    let manifest: Manifest = match serde_json::from_str(&text) {
        Ok(m) => m,
        Err(e) => return Err(Damaged(format!("{MANIFEST} is not valid ({e})"))),
    };
    if !manifest.files.iter().any(|f| f.path == STATE_FILE) {
        return Err(Damaged(format!("{MANIFEST} does not list {STATE_FILE}")));
    }
    verify_files(dir, &manifest, level)?;
    Ok(Integrity::Manifest)
}

/// The files a manifest lists are there with its sizes (and, at [`Verify::Full`], its hashes).
fn verify_files(dir: &Path, manifest: &Manifest, level: Verify) -> std::result::Result<(), Damaged> {
    let damaged = |s: String| Err(Damaged(s));
    for entry in &manifest.files {
        let path = dir.join(&entry.path);
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => return damaged(format!("{} is missing", entry.path)),
        };
        if size != entry.size {
            return damaged(format!("{} is {size} bytes, the manifest says {}", entry.path, entry.size));
        }
    }
    if level == Verify::Full && !hashed::unchanged(dir, manifest) {
        for entry in &manifest.files {
            match sha256_file(&dir.join(&entry.path)) {
                Ok(h) if h == entry.sha256 => {}
                Ok(_) => {
                    return damaged(format!("{}'s sha256 differs from the manifest's (its bytes changed)", entry.path))
                }
                Err(e) => return damaged(format!("{} cannot be read ({e})", entry.path)),
            }
        }
        hashed::record(dir, manifest);
    }
    Ok(())
}

/// The directory beside the `step_N` checkpoints that holds the KL reference `--sft-warmup-steps` leaves: the
/// warmed-up model, written once when the warm-up ends, read by every resume past it. Kept out of the `step_N`
/// rotation (`--save-total-limit`), since every later checkpoint needs it.
pub const REFERENCE_DIR: &str = "sft_reference";

/// Write the KL reference's weights into `checkpoints/sft_reference` (safetensors and a manifest, replaced whole:
/// a failure leaves the previous one or none, never a partial one).
pub fn save_reference(checkpoints: &Path, weights: &BTreeMap<String, Tensor>) -> Result<PathBuf> {
    let final_dir = checkpoints.join(REFERENCE_DIR);
    let tmp = checkpoints.join(format!(".{REFERENCE_DIR}.partial"));
    let write = || -> Result<()> {
        fs::create_dir_all(checkpoints).with_context(|| format!("creating {}", checkpoints.display()))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("removing the stale {}", tmp.display()))?;
        }
        fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = Writer { root: tmp.clone(), entries: Vec::new(), fault: None };
        out.file("model.safetensors", |w| write_tensors(w, weights))?;
        let manifest = serde_json::to_string_pretty(&Manifest { format: 1, files: out.entries.clone() })?;
        out.file(MANIFEST, |w| w.write_all(manifest.as_bytes()))?;
        sync_dir(&tmp).with_context(|| format!("syncing {}", tmp.display()))?;
        if final_dir.exists() {
            // Only a warm-up run again from its start writes a second one; the new one replaces it.
            fs::remove_dir_all(&final_dir).with_context(|| format!("removing {}", final_dir.display()))?;
        }
        fs::rename(&tmp, &final_dir).with_context(|| format!("moving it into {}", final_dir.display()))?;
        sync_dir(checkpoints).with_context(|| format!("syncing {}", checkpoints.display()))?;
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_dir_all(&tmp);
        anyhow::anyhow!("writing the KL reference {}: {e:#}", final_dir.display())
    })?;
    Ok(final_dir)
}

/// Read the KL reference [`save_reference`] wrote beside the checkpoint `ckpt`, verified against its manifest.
pub fn load_reference(ckpt: &Path) -> Result<BTreeMap<String, Tensor>> {
    let dir = ckpt.parent().unwrap_or(ckpt).join(REFERENCE_DIR);
    let text = fs::read_to_string(dir.join(MANIFEST)).map_err(|e| {
        user_error!(
            "resuming {} past the SFT warm-up needs the KL reference the warm-up saved, {} ({e}); copy it back \
             beside the checkpoint, or resume with --kl-weight 0 (and no --reward-kl-coef)",
            ckpt.display(),
            dir.display()
        )
    })?;
    let manifest: Manifest =
        serde_json::from_str(&text).with_context(|| format!("reading {}", dir.join(MANIFEST).display()))?;
    verify_files(&dir, &manifest, Verify::Full).map_err(|d| {
        user_error!(
            "the KL reference {} is damaged: {d}; resume with --kl-weight 0 (and no --reward-kl-coef)",
            dir.display()
        )
    })?;
    read_tensors(&dir.join("model.safetensors"))
}

/// The KL reference a checkpoint holds ([`REFERENCE_FILE`], verified with the rest by [`load`]), or `None` when its
/// run's reference did not move.
pub fn load_checkpoint_reference(ckpt: &Path) -> Result<Option<BTreeMap<String, Tensor>>> {
    let path = ckpt.join(REFERENCE_FILE);
    if !path.exists() {
        return Ok(None);
    }
    read_tensors(&path).map(Some)
}

/// Checkpoints this process has hashed in full, so that one is hashed once: `--resume` verifies every candidate
/// while choosing (to fall back past a damaged one), and [`load`] then verifies the chosen one again. Reading every
/// byte twice doubles the cost of a resume for multi-gigabyte weights; instead a later [`Verify::Full`] of the same
/// directory trusts the earlier hash when no file changed since, judged by each file's inode, size, modification and
/// change times (any write moves the change time, which no program can set back).
mod hashed {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::{Manifest, MANIFEST};

    type Stamp = Vec<(u64, u64, i64, i64, i64, i64)>;

    static HASHED: Mutex<Vec<(PathBuf, Stamp)>> = Mutex::new(Vec::new());

    /// The manifest's and every listed file's identity and times; `None` when one cannot be read.
    fn stamp(dir: &Path, manifest: &Manifest) -> Option<Stamp> {
        let names = std::iter::once(MANIFEST).chain(manifest.files.iter().map(|f| f.path.as_str()));
        names
            .map(|name| {
                let m = std::fs::metadata(dir.join(name)).ok()?;
                Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
            })
            .collect()
    }

    fn key(dir: &Path) -> PathBuf {
        std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
    }

    /// Whether `dir` was hashed by this process and no file of it changed since.
    pub(super) fn unchanged(dir: &Path, manifest: &Manifest) -> bool {
        let Some(now) = stamp(dir, manifest) else { return false };
        let key = key(dir);
        HASHED.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(d, s)| *d == key && *s == now)
    }

    /// Remember that `dir` matched its manifest's hashes just now.
    pub(super) fn record(dir: &Path, manifest: &Manifest) {
        let Some(now) = stamp(dir, manifest) else { return };
        let key = key(dir);
        let mut all = HASHED.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(d, _)| *d != key);
        all.push((key, now));
    }
}

/// A checkpoint from before manifests: accept it when its state parses and its safetensors files are whole (the
/// header's tensors end exactly at the end of the file), which is what a truncated or emptied file fails.
fn verify_legacy(dir: &Path) -> std::result::Result<Integrity, Damaged> {
    let text = fs::read_to_string(dir.join(STATE_FILE))
        .map_err(|_| Damaged(format!("no {MANIFEST} and no {STATE_FILE} (an incomplete checkpoint)")))?;
    serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| Damaged(format!("{STATE_FILE} is not valid JSON ({e})")))?;
    let weights =
        if dir.join("adapter_model.safetensors").exists() { "adapter_model.safetensors" } else { "model.safetensors" };
    for name in [weights, "optimizer.safetensors"] {
        let file = File::open(dir.join(name)).map_err(|_| Damaged(format!("{name} is missing")))?;
        // SAFETY: read-only map of a file nothing else in this process writes; dropped before returning.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Damaged(format!("{name} cannot be read ({e})")))?;
        safetensors::SafeTensors::read_metadata(&map)
            .map_err(|e| Damaged(format!("{name} is not a whole safetensors file ({e:?})")))?;
    }
    Ok(Integrity::Legacy)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    #[cfg(test)]
    tests::HASHED_FILES.with(|n| n.set(n.get() + 1));
    let mut file = File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&hash.finalize()));
        }
        hash.update(&buf[..n]);
    }
}

/// A checkpoint [`scan`] passed over, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The skipped `step_N` directory.
    pub dir: PathBuf,
    /// What is wrong with it.
    pub reason: Damaged,
}

/// What [`scan`] found: the newest usable checkpoint and the newer ones it skipped (newest first).
#[derive(Clone, Debug, Default)]
pub struct Latest {
    /// The newest checkpoint that passed, if any.
    pub chosen: Option<PathBuf>,
    /// Newer checkpoints that failed, newest first.
    pub skipped: Vec<Skipped>,
}

impl Latest {
    /// One line per skipped checkpoint, for the caller to print: `skipping checkpoint runs/x/checkpoints/step_6:
    /// model.safetensors is 1024 bytes, the manifest says 5242880; using step_3`.
    pub fn messages(&self) -> Vec<String> {
        let using = match &self.chosen {
            Some(c) => format!("using {}", c.file_name().unwrap_or_default().to_string_lossy()),
            None => "no earlier checkpoint is usable".to_string(),
        };
        self.skipped.iter().map(|s| format!("skipping checkpoint {}: {}; {using}", s.dir.display(), s.reason)).collect()
    }
}

/// The `step_N` directories under `checkpoints`, newest (highest N) first. Temporary `.step_N.partial` ones are
/// not among them.
/// Whether `checkpoints` holds any `step_N` directory, usable or not.
pub fn has_checkpoints(checkpoints: &Path) -> bool {
    !steps(checkpoints).is_empty()
}

fn steps(checkpoints: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(checkpoints)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let step = e.file_name().to_str()?.strip_prefix("step_")?.parse().ok()?;
                    e.path().is_dir().then(|| (step, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    found
}

/// The newest checkpoint under `checkpoints` that passes [`verify`] at `level`, and the newer ones it skipped.
pub fn scan(checkpoints: &Path, level: Verify) -> Latest {
    let mut out = Latest::default();
    for (_, dir) in steps(checkpoints) {
        match verify(&dir, level) {
            Ok(_) => {
                out.chosen = Some(dir);
                break;
            }
            Err(reason) => out.skipped.push(Skipped { dir, reason }),
        }
    }
    out
}

/// The newest usable checkpoint (highest step) under `checkpoints`, if any, fully verified. Use [`scan`] to learn
/// what was skipped.
pub fn latest(checkpoints: &Path) -> Option<PathBuf> {
    scan(checkpoints, Verify::Full).chosen
}

/// Delete all but the newest `keep` complete checkpoints under `checkpoints` (transformers' `save_total_limit`;
/// `keep == 0` keeps all), and clear what interrupted saves left (`.step_N.partial`). Call it only after a
/// successful [`save`]: it never deletes the newest complete checkpoint, so the last good one stays until a newer
/// one is on disk. The checkpoint of step `best` (`--metric-for-best-model`) is kept too: beside the newest `keep`
/// when it is older than they are.
/// Damaged `step_N` directories are left alone (they are skipped anyway, and may be worth a look). Returns the
/// deleted directories.
pub fn prune(checkpoints: &Path, keep: usize, best: Option<u64>) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(checkpoints).with_context(|| format!("reading {}", checkpoints.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(step) = name.strip_prefix('.').and_then(|n| n.strip_prefix("step_")) else { continue };
        if step.ends_with(".partial") {
            fs::remove_dir_all(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            removed.push(entry.path());
        } else if let Some(step) = step.strip_suffix(".old") {
            // A same-step save moved the old copy aside; it is garbage once the new one verifies, else restore it.
            let live = checkpoints.join(format!("step_{step}"));
            if verify(&live, Verify::Sizes).is_ok() {
                fs::remove_dir_all(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
                removed.push(entry.path());
            } else if !live.exists() {
                fs::rename(entry.path(), &live).with_context(|| format!("restoring {}", live.display()))?;
            }
        }
    }
    if keep > 0 {
        let complete: Vec<(u64, PathBuf)> =
            steps(checkpoints).into_iter().filter(|(_, d)| verify(d, Verify::Sizes).is_ok()).collect();
        // The best one counts among the newest when it is one of them (transformers keeps one checkpoint, not
        // two, under `save_total_limit` 1 when the best is the latest).
        for (_, dir) in complete.into_iter().skip(keep).filter(|(step, _)| Some(*step) != best) {
            fs::remove_dir_all(&dir).with_context(|| format!("removing the old checkpoint {}", dir.display()))?;
            removed.push(dir);
        }
    }
    if !removed.is_empty() {
        sync_dir(checkpoints).with_context(|| format!("syncing {}", checkpoints.display()))?;
    }
    Ok(removed)
}

/// Read a checkpoint directory, after verifying every file against its manifest (sizes and sha256; the hashes are
/// not computed again when this process already hashed the unchanged directory, as `--resume` does while choosing
/// it). A damaged checkpoint is refused with one line naming the file and the earlier checkpoint to resume from
/// instead.
pub fn load(dir: &Path) -> Result<Loaded> {
    let state_path = dir.join(STATE_FILE);
    if !state_path.exists() && !dir.join(MANIFEST).exists() {
        bail!(user_error!(
            "{} is not a grpo-rs checkpoint (no trainer_state.json); pass a checkpoint or run directory",
            dir.display()
        ));
    }
    if let Err(damage) = verify(dir, Verify::Full) {
        let fix = match dir.parent().map(|p| scan(p, Verify::Sizes)) {
            Some(Latest { chosen: Some(earlier), .. }) if earlier != dir && step_of(&earlier) < step_of(dir) => {
                format!("resume from the one before it: --resume {}", earlier.display())
            }
            _ => "no earlier checkpoint is usable; start the run again without --resume".to_string(),
        };
        bail!(user_error!("checkpoint {} is damaged: {damage}; {fix}", dir.display()));
    }
    let text = fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", state_path.display()))?;
    let optimizer_steps = value["optimizer_steps"].as_i64().unwrap_or(0);
    let model_only = value[MODEL_ONLY].as_bool().unwrap_or(false);
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
    let optimizer = if model_only { BTreeMap::new() } else { read_tensors(&dir.join("optimizer.safetensors"))? };
    Ok(Loaded { dir: dir.to_path_buf(), weights, adapter, optimizer_steps, optimizer, model_only, state })
}

fn step_of(dir: &Path) -> Option<u64> {
    dir.file_name()?.to_str()?.strip_prefix("step_")?.parse().ok()
}

fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let list = Tensor::read_safetensors(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(list.into_iter().collect())
}

/// The checkpoint `--resume` chose, and the newer ones it skipped (one line each, for the caller to print).
#[derive(Clone, Debug)]
pub struct Resume {
    /// The checkpoint directory to load.
    pub checkpoint: PathBuf,
    /// One line per newer checkpoint that was skipped, from [`Latest::messages`].
    pub skipped: Vec<String>,
}

/// The run name a checkpoint's trainer state records, if it can be read (checkpoints from before it was kept
/// have none).
pub fn saved_run_name(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    serde_json::from_str::<TrainerState>(&text).ok()?.run_name.filter(|n| !n.is_empty())
}

/// The checkpoint `path` names for `flag`: itself when it is one, else the newest usable checkpoint of the run
/// directory (its `checkpoints/`) or checkpoints folder it is. A checkpoint named itself is not verified here:
/// [`load`] does, and refuses it with the fix if it is damaged, with no silent fallback to another.
pub fn resolve_named(path: &Path, flag: &str) -> Result<Resume> {
    if path.join(STATE_FILE).exists() || path.join(MANIFEST).exists() {
        return Ok(Resume { checkpoint: path.to_path_buf(), skipped: Vec::new() });
    }
    let shown = path.display();
    for dir in [path.join("checkpoints"), path.to_path_buf()] {
        if steps(&dir).is_empty() {
            continue;
        }
        let none = |note| user_error!("{flag} {shown}: no usable checkpoint in {}{note}", dir.display());
        return chosen(scan(&dir, Verify::Full), none);
    }
    bail!(user_error!(
        "{flag} {shown}: neither a checkpoint (no trainer_state.json) nor a run directory with checkpoints"
    ))
}

/// Resolve `--resume`: a checkpoint directory, a run directory (its latest usable checkpoint), a directory of
/// `step_N` checkpoints, or `auto`. `auto` resumes only the named run: the latest usable checkpoint in
/// `checkpoint_dir` (the run's `--checkpoint-path`) when given, else in `run_dir/checkpoints`; it never picks
/// another run, and when it finds nothing it names the runs under `runs_dir` that do have checkpoints.
pub fn resolve_resume(
    spec: &str,
    runs_dir: &Path,
    run_dir: Option<&Path>,
    checkpoint_dir: Option<&Path>,
) -> Result<Resume> {
    if spec != "auto" {
        return resolve_named(Path::new(spec), "--resume");
    }
    let others = runs_with_checkpoints(runs_dir);
    let dir = match (checkpoint_dir, run_dir) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(run)) => run.join("checkpoints"),
        (None, None) => bail!(user_error!(
            "--resume auto resumes the run named by --run-name (or --checkpoint-path), and neither was given; {others}"
        )),
    };
    chosen(scan(&dir, Verify::Full), |note| {
        user_error!("--resume auto: no usable checkpoint in {}{note}; {others}", dir.display())
    })
}

/// The checkpoint `latest` chose, with a line per newer one it skipped; when it chose none, the error `none` makes
/// from a note naming the skipped ones (` (skipped DIR: WHY)` each, empty without any).
fn chosen(latest: Latest, none: impl FnOnce(String) -> anyhow::Error) -> Result<Resume> {
    let skipped = latest.messages();
    match latest.chosen {
        Some(checkpoint) => Ok(Resume { checkpoint, skipped }),
        None => {
            Err(none(latest.skipped.iter().map(|s| format!(" (skipped {}: {})", s.dir.display(), s.reason)).collect()))
        }
    }
}

/// One phrase naming the runs under `runs_dir` that have a complete checkpoint, for `--resume auto`'s errors.
fn runs_with_checkpoints(runs_dir: &Path) -> String {
    let mut runs: Vec<String> = fs::read_dir(runs_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let latest = scan(&e.path().join("checkpoints"), Verify::Sizes).chosen?;
                    Some(format!("{} ({})", e.file_name().to_string_lossy(), latest.file_name()?.to_string_lossy()))
                })
                .collect()
        })
        .unwrap_or_default();
    runs.sort();
    if runs.is_empty() {
        format!("no run under {} has a checkpoint; start the run without --resume", runs_dir.display())
    } else {
        format!(
            "runs with checkpoints under {}: {}; pass --run-name NAME or --resume DIR",
            runs_dir.display(),
            runs.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    thread_local! {
        /// Files this test thread has hashed (tests run one per thread, so each counts only its own).
        pub(super) static HASHED_FILES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    fn hashed_files() -> u64 {
        HASHED_FILES.with(|n| n.get())
    }

    fn base_model(root: &Path) -> PathBuf {
        let dir = root.join("base");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
        fs::write(dir.join("tokenizer.json"), "{}").unwrap();
        dir
    }

    fn data(base: &Path, step: u64) -> CheckpointData<'_> {
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(step as i64);
        let weights = BTreeMap::from([
            ("model.embed_tokens.weight".to_string(), Tensor::randn([16, 8], (Kind::Float, Device::Cpu))),
            ("model.norm.weight".to_string(), Tensor::randn([8], (Kind::BFloat16, Device::Cpu))),
            ("lm_head.weight".to_string(), Tensor::randn([16, 8], (Kind::Float, Device::Cpu))),
        ]);
        let moments = weights.iter().map(|(k, v)| (format!("exp_avg.{k}"), v.to_kind(Kind::Float) * 0.1)).collect();
        CheckpointData {
            weights,
            adapter: None,
            base_model: base,
            chat_template: None,
            merged: None,
            optimizer: Some((step as i64, moments)),
            state: TrainerState { batch: step / 3, global_step: step, seed: 7, ..Default::default() },
            reference: None,
        }
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let base = base_model(tmp.path());
        let ckpts = tmp.path().join("runs/x/checkpoints");
        (tmp, base, ckpts)
    }

    fn same(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> bool {
        a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| w.kind() == v.kind() && w.equal(v)))
    }

    fn truncate(path: &Path, len: u64) {
        File::options().write(true).open(path).unwrap().set_len(len).unwrap();
    }

    fn one_line(err: &anyhow::Error) -> String {
        crate::error::one_line(err)
    }

    #[test]
    fn a_checkpoint_of_the_weights_alone_has_no_optimizer_file_and_says_so() {
        let (_tmp, base, ckpts) = setup();
        let d = CheckpointData { optimizer: None, ..data(&base, 4) };
        let weights: BTreeMap<String, Tensor> = d.weights.iter().map(|(k, v)| (k.clone(), v.copy())).collect();
        let dir = save(&ckpts, d).unwrap();
        assert!(!dir.join("optimizer.safetensors").exists());
        assert_eq!(verify(&dir, Verify::Full), Ok(Integrity::Manifest));
        let loaded = load(&dir).unwrap();
        assert!(loaded.model_only && loaded.optimizer.is_empty());
        assert!(same(&loaded.weights, &weights));
        assert_eq!(latest(&ckpts), Some(dir), "still a checkpoint: eval and --model read it");
        let full = load(&save(&ckpts, data(&base, 5)).unwrap()).unwrap();
        assert!(!full.model_only && !full.optimizer.is_empty());
    }

    #[test]
    fn save_writes_a_manifest_last_and_loads_back_exactly() {
        let (_tmp, base, ckpts) = setup();
        let d = data(&base, 3);
        let (weights, moments) = (
            d.weights.iter().map(|(k, v)| (k.clone(), v.copy())).collect(),
            d.optimizer.as_ref().unwrap().1.iter().map(|(k, v)| (k.clone(), v.copy())).collect(),
        );
        let dir = save(&ckpts, d).unwrap();
        assert_eq!(dir, ckpts.join("step_3"));
        let manifest: Manifest = serde_json::from_str(&fs::read_to_string(dir.join(MANIFEST)).unwrap()).unwrap();
        let names: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["model.safetensors", "config.json", "tokenizer.json", "optimizer.safetensors", STATE_FILE]);
        for f in &manifest.files {
            assert_eq!(fs::metadata(dir.join(&f.path)).unwrap().len(), f.size, "{}", f.path);
            assert_eq!(sha256_file(&dir.join(&f.path)).unwrap(), f.sha256, "{}", f.path);
        }
        assert_eq!(verify(&dir, Verify::Full), Ok(Integrity::Manifest));
        // tch's own reader (safetensors 0.3) and the host's (0.6, used by Model::load) both accept the stream.
        let read: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("model.safetensors")).unwrap().into_iter().collect();
        assert!(same(&read, &weights));
        let bytes = fs::read(dir.join("model.safetensors")).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        assert_eq!(safetensors::SafeTensors::deserialize(&bytes).unwrap().len(), 3);
        let loaded = load(&dir).unwrap();
        assert!(same(&loaded.weights, &weights) && same(&loaded.optimizer, &moments));
        assert_eq!((loaded.optimizer_steps, loaded.state.global_step, loaded.adapter), (3, 3, false));
        assert!(!ckpts.join(".step_3.partial").exists());
    }

    /// `d` as a LoRA run's checkpoint with `--save-merged`: its weights stand for the adapter and the merged model.
    fn as_merged_adapter(d: CheckpointData<'_>) -> CheckpointData<'_> {
        let merged = Some(d.weights.iter().map(|(k, v)| (k.clone(), v.copy())).collect());
        let adapter = Some(AdapterInfo {
            rank: 4,
            alpha: 8.0,
            rslora: false,
            dora: false,
            dropout: 0.0,
            target_modules: vec!["q_proj".into()],
            fan_in_fan_out: false,
        });
        CheckpointData { merged, adapter, ..d }
    }

    /// The files the manifest of checkpoint `dir` lists.
    fn manifest_files(dir: &Path) -> Vec<String> {
        let manifest: Manifest = serde_json::from_str(&fs::read_to_string(dir.join(MANIFEST)).unwrap()).unwrap();
        manifest.files.into_iter().map(|f| f.path).collect()
    }

    #[test]
    fn adapter_checkpoints_with_merged_weights_are_in_the_manifest() {
        let (_tmp, base, ckpts) = setup();
        let dir = save(&ckpts, as_merged_adapter(data(&base, 2))).unwrap();
        let names = manifest_files(&dir);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert!(names.contains(&"merged/model.safetensors") && names.contains(&"merged/config.json"), "{names:?}");
        assert!(names.contains(&"adapter_config.json") && names.contains(&"adapter_model.safetensors"));
        truncate(&dir.join("merged/model.safetensors"), 10);
        assert_eq!(verify(&dir, Verify::Sizes).unwrap_err().0.split(" is ").next(), Some("merged/model.safetensors"));
    }

    /// `--chat-template`'s text is saved as chat_template.jinja in a full checkpoint (in place of the base model's),
    /// beside an adapter and in its merged weights, each in the manifest; without it the base model's is copied.
    #[test]
    fn a_replaced_chat_template_is_saved_with_the_weights_and_the_adapter() {
        let (_tmp, base, ckpts) = setup();
        fs::write(base.join(TEMPLATE_FILE), "base's").unwrap();
        let dir = save(&ckpts, data(&base, 1)).unwrap();
        assert_eq!(fs::read_to_string(dir.join(TEMPLATE_FILE)).unwrap(), "base's");
        let dir = save(&ckpts, CheckpointData { chat_template: Some("ours"), ..data(&base, 2) }).unwrap();
        assert_eq!(fs::read_to_string(dir.join(TEMPLATE_FILE)).unwrap(), "ours");
        let dir =
            save(&ckpts, as_merged_adapter(CheckpointData { chat_template: Some("ours"), ..data(&base, 3) })).unwrap();
        let files = manifest_files(&dir);
        for file in [TEMPLATE_FILE.to_string(), format!("merged/{TEMPLATE_FILE}")] {
            assert_eq!(fs::read_to_string(dir.join(&file)).unwrap(), "ours", "{file}");
            assert!(files.contains(&file), "{files:?}");
        }
        assert_eq!(verify(&dir, Verify::Full).ok(), Some(Integrity::Manifest));
    }

    #[test]
    fn a_truncated_file_is_skipped_named_and_the_previous_checkpoint_used() {
        let (_tmp, base, ckpts) = setup();
        let step3 = save(&ckpts, data(&base, 3)).unwrap();
        let step6 = save(&ckpts, data(&base, 6)).unwrap();
        let full = fs::metadata(step6.join("model.safetensors")).unwrap().len();
        truncate(&step6.join("model.safetensors"), 100);

        let found = scan(&ckpts, Verify::Sizes);
        assert_eq!(found.chosen.as_deref(), Some(step3.as_path()));
        assert_eq!(
            found.messages(),
            [format!(
                "skipping checkpoint {}: model.safetensors is 100 bytes, the manifest says {full}; using step_3",
                step6.display()
            )]
        );
        assert_eq!(latest(&ckpts), Some(step3.clone()));
        let resume = resolve_resume("auto", &ckpts.join("../.."), Some(ckpts.parent().unwrap()), None).unwrap();
        assert_eq!((resume.checkpoint, resume.skipped), (step3.clone(), found.messages()));

        // Named explicitly, it is refused with the file and the fix, as a user error.
        let err = load(&step6).err().unwrap();
        assert_eq!(crate::error::exit_code(&err), 2);
        let line = one_line(&err);
        assert!(line.contains("model.safetensors is 100 bytes"), "{line}");
        assert!(line.ends_with(&format!("--resume {}", step3.display())), "{line}");
    }

    #[test]
    fn an_emptied_file_is_skipped_and_the_previous_checkpoint_used() {
        let (_tmp, base, ckpts) = setup();
        let step3 = save(&ckpts, data(&base, 3)).unwrap();
        let step6 = save(&ckpts, data(&base, 6)).unwrap();
        truncate(&step6.join("optimizer.safetensors"), 0);
        let found = scan(&ckpts, Verify::Sizes);
        assert_eq!(found.chosen, Some(step3));
        assert!(found.skipped[0].reason.0.starts_with("optimizer.safetensors is 0 bytes, the manifest says "));
        // An emptied trainer_state.json, and one removed, too.
        let step9 = save(&ckpts, data(&base, 9)).unwrap();
        fs::write(step9.join(STATE_FILE), "").unwrap();
        let step12 = save(&ckpts, data(&base, 12)).unwrap();
        fs::remove_file(step12.join(STATE_FILE)).unwrap();
        let found = scan(&ckpts, Verify::Sizes);
        let reasons: Vec<&str> = found.skipped.iter().map(|s| s.reason.0.as_str()).collect();
        assert_eq!(reasons[0], "trainer_state.json is missing");
        assert!(reasons[1].starts_with("trainer_state.json is 0 bytes"), "{reasons:?}");
        assert_eq!(found.chosen.unwrap().file_name().unwrap(), "step_3");
    }

    #[test]
    fn changed_bytes_of_the_same_size_fail_the_hash() {
        let (_tmp, base, ckpts) = setup();
        let step3 = save(&ckpts, data(&base, 3)).unwrap();
        let step6 = save(&ckpts, data(&base, 6)).unwrap();
        let path = step6.join("model.safetensors");
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert_eq!(verify(&step6, Verify::Sizes), Ok(Integrity::Manifest));
        assert!(verify(&step6, Verify::Full).unwrap_err().0.contains("model.safetensors's sha256 differs"));
        assert_eq!(latest(&ckpts), Some(step3));
        assert!(one_line(&load(&step6).err().unwrap()).contains("sha256"));
    }

    #[test]
    fn checkpoints_without_a_manifest_load_as_legacy_and_are_still_checked() {
        let (_tmp, base, ckpts) = setup();
        let step3 = save(&ckpts, data(&base, 3)).unwrap();
        // A checkpoint as the previous version wrote it: tch's writer, no manifest.
        let d = data(&base, 6);
        let legacy = ckpts.join("step_6");
        fs::create_dir_all(&legacy).unwrap();
        let list = |m: &BTreeMap<String, Tensor>| m.iter().map(|(k, v)| (k.clone(), v.copy())).collect::<Vec<_>>();
        Tensor::write_safetensors(&list(&d.weights), legacy.join("model.safetensors")).unwrap();
        Tensor::write_safetensors(&list(&d.optimizer.as_ref().unwrap().1), legacy.join("optimizer.safetensors"))
            .unwrap();
        fs::write(legacy.join(STATE_FILE), serde_json::to_string(&d.state).unwrap()).unwrap();
        assert_eq!(verify(&legacy, Verify::Full), Ok(Integrity::Legacy));
        assert_eq!(latest(&ckpts), Some(legacy.clone()));
        assert!(same(&load(&legacy).unwrap().weights, &d.weights));

        truncate(&legacy.join("model.safetensors"), 64);
        let found = scan(&ckpts, Verify::Full);
        assert_eq!(found.chosen, Some(step3.clone()));
        assert!(found.skipped[0].reason.0.starts_with("model.safetensors is not a whole safetensors file"));
        assert!(one_line(&load(&legacy).err().unwrap()).contains(&format!("--resume {}", step3.display())));

        // A step_N directory with neither manifest nor state is an interrupted save of some older version.
        fs::create_dir_all(ckpts.join("step_9")).unwrap();
        assert!(scan(&ckpts, Verify::Sizes).skipped[0].reason.0.contains("incomplete"));
    }

    #[test]
    fn partial_directories_are_ignored_and_cleaned() {
        let (_tmp, base, ckpts) = setup();
        let step3 = save(&ckpts, data(&base, 3)).unwrap();
        // What a kill during the save of step 6 leaves, even one that had copied a manifest in.
        let partial = ckpts.join(".step_6.partial");
        fs::create_dir_all(&partial).unwrap();
        for f in fs::read_dir(&step3).unwrap() {
            let f = f.unwrap();
            fs::copy(f.path(), partial.join(f.file_name())).unwrap();
        }
        let found = scan(&ckpts, Verify::Full);
        assert_eq!((found.chosen.as_deref(), found.skipped.len()), (Some(step3.as_path()), 0));
        assert_eq!(prune(&ckpts, 0, None).unwrap(), std::slice::from_ref(&partial));
        assert!(!partial.exists() && step3.exists());
        // A new save of the same step also replaces a leftover partial directory.
        fs::create_dir_all(&partial).unwrap();
        fs::write(partial.join("junk"), "x").unwrap();
        let step6 = save(&ckpts, data(&base, 6)).unwrap();
        assert!(!partial.exists() && !step6.join("junk").exists());
    }

    #[test]
    fn prune_keeps_the_newest_complete_checkpoints() {
        let (_tmp, base, ckpts) = setup();
        for step in 1..=5 {
            save(&ckpts, data(&base, step)).unwrap();
        }
        let left = |c: &Path| {
            let mut v: Vec<u64> = steps(c).into_iter().map(|(s, _)| s).collect();
            v.sort();
            v
        };
        assert!(prune(&ckpts, 0, None).unwrap().is_empty());
        assert_eq!(left(&ckpts), [1, 2, 3, 4, 5]);
        // The best checkpoint stays beside the newest two.
        assert_eq!(prune(&ckpts, 2, Some(2)).unwrap(), [ckpts.join("step_3"), ckpts.join("step_1")]);
        assert_eq!(left(&ckpts), [2, 4, 5]);
        // A best among the newest is one of them.
        assert_eq!(prune(&ckpts, 2, Some(5)).unwrap(), [ckpts.join("step_2")]);
        assert_eq!(left(&ckpts), [4, 5]);
        // A damaged newer checkpoint does not count: the newest verified one stays, the damaged one is left alone.
        let step6 = save(&ckpts, data(&base, 6)).unwrap();
        truncate(&step6.join("model.safetensors"), 1);
        assert_eq!(prune(&ckpts, 1, None).unwrap(), [ckpts.join("step_4")]);
        assert_eq!(left(&ckpts), [5, 6]);
        assert_eq!(latest(&ckpts), Some(ckpts.join("step_5")));
    }

    #[test]
    fn a_full_disk_fails_in_one_line_and_leaves_the_previous_checkpoint_intact() {
        let (_tmp, base, ckpts) = setup();
        let step3 = save(&ckpts, data(&base, 3)).unwrap();
        let before = fs::read(step3.join(MANIFEST)).unwrap();
        for file in ["model.safetensors", "optimizer.safetensors", MANIFEST] {
            let fault = Fault { file: file.to_string(), after: 100 };
            let err = save_with(&ckpts, data(&base, 6), Some(&fault)).err().unwrap();
            let line = one_line(&err);
            assert_eq!(
                line,
                format!(
                    "writing checkpoint {}: {file}: No space left on device (os error 28); the previous checkpoint {} \
                     is intact; free disk space there and resume",
                    ckpts.join("step_6").display(),
                    step3.display()
                )
            );
            assert_eq!(crate::error::exit_code(&err), 2);
            assert!(!ckpts.join(".step_6.partial").exists() && !ckpts.join("step_6").exists());
            assert_eq!(fs::read(step3.join(MANIFEST)).unwrap(), before);
            assert_eq!(verify(&step3, Verify::Full), Ok(Integrity::Manifest));
            assert_eq!(latest(&ckpts), Some(step3.clone()));
        }
        // With no earlier checkpoint the line says so.
        let (_tmp2, base2, empty) = setup();
        let fault = Fault { file: "model.safetensors".into(), after: 0 };
        let line = one_line(&save_with(&empty, data(&base2, 1), Some(&fault)).err().unwrap());
        assert!(line.contains(&format!("there is no earlier checkpoint under {}", empty.display())), "{line}");
    }

    #[test]
    fn saving_the_same_step_again_replaces_it_whole() {
        let (_tmp, base, ckpts) = setup();
        save(&ckpts, data(&base, 3)).unwrap();
        let mut again = data(&base, 3);
        again.state.batch = 42;
        let dir = save(&ckpts, again).unwrap();
        assert_eq!(load(&dir).unwrap().state.batch, 42);
        assert_eq!(fs::read_dir(&ckpts).unwrap().count(), 1, "no .old or .partial left");
        // A failed re-save keeps the old one.
        let fault = Fault { file: STATE_FILE.into(), after: 5 };
        assert!(save_with(&ckpts, data(&base, 3), Some(&fault)).is_err());
        assert_eq!(load(&dir).unwrap().state.batch, 42);
    }

    #[test]
    fn a_resume_hashes_the_chosen_checkpoint_once_unless_it_changes() {
        let (_tmp, base, ckpts) = setup();
        let step3 = save(&ckpts, data(&base, 3)).unwrap();
        let files = ckpts.join("step_3/manifest.json");
        let listed = serde_json::from_str::<Manifest>(&fs::read_to_string(files).unwrap()).unwrap().files.len() as u64;
        let before = hashed_files();
        let chosen = resolve_resume("auto", ckpts.parent().unwrap(), Some(ckpts.parent().unwrap()), None).unwrap();
        assert_eq!(chosen.checkpoint, step3);
        assert_eq!(hashed_files() - before, listed, "choosing hashes every file once");
        load(&chosen.checkpoint).unwrap();
        assert_eq!(hashed_files() - before, listed, "loading the chosen checkpoint does not hash it again");

        // A file written since (same size, other bytes) is hashed again, and the change is caught.
        let weights = step3.join("model.safetensors");
        let mut bytes = fs::read(&weights).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&weights, bytes).unwrap();
        assert!(one_line(&load(&step3).err().unwrap()).contains("model.safetensors's sha256 differs"));
    }

    #[test]
    fn resume_auto_only_resumes_the_named_run() {
        let tmp = tempfile::tempdir().unwrap();
        let base = base_model(tmp.path());
        let runs = tmp.path().join("runs");
        let a3 = save(&runs.join("a/checkpoints"), data(&base, 3)).unwrap();
        let b5 = save(&runs.join("b/checkpoints"), data(&base, 5)).unwrap();
        fs::create_dir_all(runs.join("c")).unwrap();

        let got = resolve_resume("auto", &runs, Some(&runs.join("a")), None).unwrap();
        assert_eq!((got.checkpoint, got.skipped.len()), (a3.clone(), 0));
        // The old fallback picked b, the most recent run; now the named run without checkpoints is an error naming
        // the runs that have some.
        let err = resolve_resume("auto", &runs, Some(&runs.join("c")), None).err().unwrap();
        assert_eq!(crate::error::exit_code(&err), 2);
        let line = one_line(&err);
        assert!(line.contains(&format!("no usable checkpoint in {}", runs.join("c/checkpoints").display())), "{line}");
        assert!(line.contains(&format!("runs with checkpoints under {}: a (step_3), b (step_5)", runs.display())));
        let line = one_line(&resolve_resume("auto", &runs, None, None).err().unwrap());
        assert!(line.contains("--run-name") && line.contains("a (step_3), b (step_5)"), "{line}");
        let empty = tmp.path().join("nothing");
        let line = one_line(&resolve_resume("auto", &empty, Some(&empty.join("x")), None).err().unwrap());
        assert!(line.ends_with("has a checkpoint; start the run without --resume"), "{line}");

        // --run-name x --checkpoint-path DIR: auto looks in DIR.
        let custom = tmp.path().join("elsewhere/ckpts");
        let x4 = save(&custom, data(&base, 4)).unwrap();
        let got = resolve_resume("auto", &runs, Some(&runs.join("x")), Some(&custom)).unwrap();
        assert_eq!(got.checkpoint, x4);

        // --resume DIR: a checkpoint, a run, or a directory of checkpoints.
        let s = |p: &Path| p.to_str().unwrap().to_string();
        assert_eq!(resolve_resume(&s(&b5), &runs, None, None).unwrap().checkpoint, b5);
        assert_eq!(resolve_resume(&s(&runs.join("b")), &runs, None, None).unwrap().checkpoint, b5);
        assert_eq!(resolve_resume(&s(&custom), &runs, None, None).unwrap().checkpoint, x4);
        assert_eq!(resolve_resume(&s(&runs.join("a")), &runs, None, None).unwrap().checkpoint, a3);
        let err = resolve_resume(&s(&runs.join("c")), &runs, None, None).err().unwrap();
        assert!(one_line(&err).contains("neither a checkpoint"));
    }

    /// The cost of verification on a real checkpoint: `GRPO_CHECKPOINT_BENCH=runs/x/checkpoints/step_N cargo test
    /// -p grpo-host --lib checkpoint::tests::cost -- --ignored --nocapture` re-saves it into a tempdir (timing the
    /// fsynced, hashed save) and times both verification levels.
    #[test]
    #[ignore]
    fn cost_on_a_real_checkpoint() {
        let Ok(src) = std::env::var("GRPO_CHECKPOINT_BENCH") else { return };
        let src = PathBuf::from(src);
        let loaded = load(&src).unwrap();
        let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let data = CheckpointData {
            weights: loaded.weights,
            adapter: None,
            base_model: &src,
            chat_template: None,
            merged: None,
            optimizer: Some((loaded.optimizer_steps, loaded.optimizer)),
            state: loaded.state,
            reference: None,
        };
        // Baseline: the previous save's tch writer, no hashing, then the fsyncs alone.
        let old = tmp.path().join("old");
        fs::create_dir(&old).unwrap();
        let list =
            |m: &BTreeMap<String, Tensor>| m.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect::<Vec<_>>();
        let t = std::time::Instant::now();
        Tensor::write_safetensors(&list(&data.weights), old.join("model.safetensors")).unwrap();
        Tensor::write_safetensors(&list(&data.optimizer.as_ref().unwrap().1), old.join("optimizer.safetensors"))
            .unwrap();
        let old_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        for f in ["model.safetensors", "optimizer.safetensors"] {
            File::open(old.join(f)).unwrap().sync_all().unwrap();
        }
        let fsync_s = t.elapsed().as_secs_f64();
        eprintln!("previous writer: {old_s:.2} s unsynced, then fsync {fsync_s:.2} s");
        let t = std::time::Instant::now();
        let dir = save(tmp.path(), data).unwrap();
        let save_s = t.elapsed().as_secs_f64();
        let bytes: u64 = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        let t = std::time::Instant::now();
        verify(&dir, Verify::Sizes).unwrap();
        let sizes_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        verify(&dir, Verify::Full).unwrap();
        let full_s = t.elapsed().as_secs_f64();
        eprintln!(
            "{:.0} MB: save {save_s:.2} s (write + fsync + hash), verify sizes {:.3} ms, verify sha256 {full_s:.2} s \
             ({:.0} MB/s)",
            bytes as f64 / 1e6,
            sizes_s * 1e3,
            bytes as f64 / 1e6 / full_s
        );
    }
}
