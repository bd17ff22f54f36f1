//! LoRA adapters (Hu et al. 2021) on the decoder's linear layers except `lm_head` (all of them by default, or those
//! [`LoraTargets`] names): `y = W x + (alpha / r) *
//! B A dropout(x)`, with A `[r, in]` initialised like PEFT (uniform +-1/sqrt(in)) and B `[out, r]` zero, so an
//! attached adapter starts as the identity change. Adapter variables live in their own var store, named
//! `<linear>.lora_A.weight` / `<linear>.lora_B.weight` (PEFT's names without its `base_model.model.` prefix), so
//! the optimizer sees only them and the base weights stay frozen. With adapters switched off
//! ([`super::Model::set_adapters_enabled`]) the same model is the reference policy.
//!
//! DoRA (Liu et al. 2024; PEFT's `use_dora`) adds a trained magnitude `m` `[out]` per adapted layer, named
//! `<linear>.lora_magnitude_vector` as PEFT saves it: the layer computes `(m / |W + s B A|) (W + s B A) x`, the norm
//! taken per output row and, as in PEFT, held constant in backward, so only its numerator learns the scale. `m`
//! starts at the row norms of `W`, so a fresh DoRA adapter is also the identity change.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;
use tch::{nn, Kind, Tensor};

use super::Ctx;
use crate::user_error;

/// LoRA hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    /// Rank r of the update.
    pub rank: i64,
    /// Scale numerator: the update is multiplied by `alpha / rank` (`alpha / sqrt(rank)` under `rslora`).
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    pub dropout: f64,
    /// The projections that get adapters (`--lora-target-modules`; a run saved before the flag had them all).
    #[serde(default)]
    pub targets: LoraTargets,
    /// Rank-stabilized LoRA (Kalajdzievski, 2023; PEFT's `use_rslora`): scale by `alpha / sqrt(rank)`, so that a
    /// higher rank does not shrink the update.
    #[serde(default)]
    pub rslora: bool,
    /// Weight-decomposed LoRA (DoRA; PEFT's `use_dora`): a trained magnitude per output rescales the adapted
    /// weight's rows (see the module's documentation).
    #[serde(default)]
    pub dora: bool,
}

impl LoraConfig {
    /// Rank `rank` and alpha `alpha` on every projection, without dropout, rsLoRA or DoRA.
    pub fn new(rank: i64, alpha: f64) -> Self {
        LoraConfig { rank, alpha, dropout: 0.0, targets: LoraTargets::ALL, rslora: false, dora: false }
    }

    /// What the update `B A x` is multiplied by: `alpha / rank`, or `alpha / sqrt(rank)` under rsLoRA.
    pub fn scale(&self) -> f64 {
        match self.rslora {
            true => self.alpha / (self.rank as f64).sqrt(),
            false => self.alpha / self.rank as f64,
        }
    }
}

/// The linear layers of a decoder layer, by their Hugging Face names: where adapters can go (Phi-3 stores q, k and v
/// as one `qkv_proj`, and gate and up as one `gate_up_proj`; StarCoder2 names its MLP `c_fc` and `c_proj`; Phi its
/// output projection `dense` and its MLP `fc1` and `fc2`; GPT-NeoX its fused `query_key_value`, `dense`, and
/// `dense_h_to_4h` and `dense_4h_to_h`; GPT-2 its fused `c_attn`, `c_proj` and `c_fc`).
pub const PROJECTIONS: [&str; 18] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "gate_up_proj",
    "down_proj",
    "c_fc",
    "c_proj",
    "dense",
    "fc1",
    "fc2",
    "query_key_value",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "c_attn",
];

/// Which of [`PROJECTIONS`] get adapters (PEFT's `target_modules`): `all-linear` (PEFT's name for all of them,
/// `lm_head` aside), or a comma-separated list such as `q_proj,v_proj`. Saved as the list of names, or
/// `["all-linear"]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct LoraTargets(u32);

impl LoraTargets {
    /// Every projection.
    pub const ALL: LoraTargets = LoraTargets((1 << PROJECTIONS.len()) - 1);
    /// No projection: only a start for [`LoraTargets::union`], never a valid setting.
    pub const NONE: LoraTargets = LoraTargets(0);

    /// The projections of both.
    pub fn union(self, other: LoraTargets) -> LoraTargets {
        LoraTargets(self.0 | other.0)
    }

    /// The set of `names`, each one of [`PROJECTIONS`] (PEFT's `all-linear` stands for all); an unknown name, or
    /// none, is an error naming the valid ones.
    pub fn from_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<Self, String> {
        let mut bits = 0u32;
        for name in names {
            let name = name.as_ref().trim();
            match PROJECTIONS.iter().position(|p| *p == name) {
                Some(i) => bits |= 1 << i,
                None if name == "all-linear" => bits |= Self::ALL.0,
                None => {
                    return Err(format!(
                        "`{name}` is not a projection: use all-linear or some of {}",
                        PROJECTIONS.join(",")
                    ))
                }
            }
        }
        if bits == 0 {
            return Err(format!("no projection named: use all-linear or some of {}", PROJECTIONS.join(",")));
        }
        Ok(LoraTargets(bits))
    }

    /// Whether the projection named `name` (its last path segment, such as `q_proj`) gets an adapter.
    pub fn contains(self, name: &str) -> bool {
        PROJECTIONS.iter().position(|p| *p == name).is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// The projections with adapters, in decoder order.
    pub fn names(self) -> Vec<&'static str> {
        PROJECTIONS.into_iter().filter(|p| self.contains(p)).collect()
    }
}

impl Default for LoraTargets {
    fn default() -> Self {
        LoraTargets::ALL
    }
}

impl std::str::FromStr for LoraTargets {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        LoraTargets::from_names(spec.split(',').filter(|s| !s.trim().is_empty()))
    }
}

impl std::fmt::Display for LoraTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            LoraTargets::ALL => f.write_str("all-linear"),
            _ => f.write_str(&self.names().join(",")),
        }
    }
}

impl TryFrom<Vec<String>> for LoraTargets {
    type Error = String;

    fn try_from(names: Vec<String>) -> Result<Self, String> {
        // Runs saved before the fused projections existed wrote all-linear as the seven separate ones.
        let separate = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
        if names.len() == separate.len() && separate.iter().all(|p| names.iter().any(|n| n == p)) {
            return Ok(LoraTargets::ALL);
        }
        LoraTargets::from_names(names)
    }
}

impl From<LoraTargets> for Vec<String> {
    fn from(t: LoraTargets) -> Vec<String> {
        match t {
            LoraTargets::ALL => vec!["all-linear".to_string()],
            _ => t.names().into_iter().map(String::from).collect(),
        }
    }
}

/// The adapter attached to one linear layer.
#[derive(Debug)]
pub struct LoraAdapter {
    /// Down projection `[r, in]`.
    pub a: Tensor,
    /// Up projection `[out, r]`.
    pub b: Tensor,
    /// DoRA's magnitude `[out]`, when the adapter is one.
    pub magnitude: Option<Tensor>,
    scale: f64,
    dropout: f64,
    /// DoRA's row norms, kept for the [`super::WeightsFixed`] period that computed them.
    norms: Mutex<Option<(u64, Tensor)>>,
}

impl LoraAdapter {
    /// Create the adapter's variables under `path` (the linear layer's HF name) for the base weight `weight`, seen
    /// `[out, in]`.
    pub(crate) fn new(path: &nn::Path, cfg: &LoraConfig, weight: &Tensor) -> Self {
        let (out_dim, in_dim) = (weight.size()[0], weight.size()[1]);
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a = path.sub("lora_A").uniform("weight", &[cfg.rank, in_dim], -bound, bound);
        let b = path.sub("lora_B").zeros("weight", &[out_dim, cfg.rank]);
        // B is zero, so the adapted weight is W itself and m = |W| leaves the layer unchanged.
        let magnitude = cfg
            .dora
            .then(|| path.var_copy("lora_magnitude_vector", &tch::no_grad(|| row_norms(&weight.to_kind(Kind::Float)))));
        LoraAdapter { a, b, magnitude, scale: cfg.scale(), dropout: cfg.dropout, norms: Mutex::new(None) }
    }

    /// The adapted projection of `x`, given the base layer's output for it, `y = W x + bias`, and its weight `[out,
    /// in]`. Dropout applies to the adapter's input only when `ctx.train` is set.
    pub(crate) fn apply(&self, x: &Tensor, y: Tensor, weight: &Tensor, bias: Option<&Tensor>, ctx: Ctx) -> Tensor {
        let dropped = ctx.train && self.dropout > 0.0;
        let input = if dropped { x.dropout(self.dropout, true) } else { x.shallow_clone() };
        let update = input.linear::<Tensor>(&self.a, None).linear::<Tensor>(&self.b, None) * self.scale;
        let Some(magnitude) = &self.magnitude else {
            return y + update;
        };
        let gain = magnitude / self.row_norms(weight, ctx.fixed);
        // PEFT's form: the base output rescaled by (gain - 1) on top of `y`; under dropout the base term is taken of
        // the dropped input, as the adapter's is.
        let base = match (dropped, bias) {
            (true, _) => input.linear::<Tensor>(weight, None),
            (false, Some(bias)) => &y - bias,
            (false, None) => y.shallow_clone(),
        };
        y + (&gain - 1.0) * base + gain * update
    }

    /// `|W + s B A|` per output row, constant for backward; within a period of fixed weights computed once.
    fn row_norms(&self, weight: &Tensor, fixed: Option<u64>) -> Tensor {
        let compute = || tch::no_grad(|| row_norms(&(weight + self.b.matmul(&self.a) * self.scale)));
        let Some(period) = fixed else {
            return compute();
        };
        let mut kept = self.norms.lock().unwrap_or_else(|e| e.into_inner());
        match &*kept {
            Some((p, norms)) if *p == period => norms.shallow_clone(),
            _ => {
                let norms = compute();
                *kept = Some((period, norms.shallow_clone()));
                norms
            }
        }
    }
}

/// The Euclidean norm of each row of `w` `[out, in]`, in its dtype.
fn row_norms(w: &Tensor) -> Tensor {
    w.norm_scalaropt_dim(2, [1], false)
}

/// A base weight `[out, in]` with its adapter `a`, `b` (and DoRA's `magnitude`) merged in, in f32: `W + s B A`,
/// under DoRA with each row rescaled to its magnitude, which is what the adapted layer computes without dropout.
pub fn merged_weight(weight: &Tensor, a: &Tensor, b: &Tensor, magnitude: Option<&Tensor>, scale: f64) -> Tensor {
    let f32 = |t: &Tensor| t.to_kind(Kind::Float);
    let adapted = f32(weight) + f32(b).matmul(&f32(a)) * scale;
    match magnitude {
        Some(m) => (f32(m) / row_norms(&adapted)).unsqueeze(1) * adapted,
        None => adapted,
    }
}

/// A LoRA adapter as PEFT saves it (`adapter_config.json` and `adapter_model.safetensors`): what TRL, PEFT or a
/// LoRA checkpoint of this host writes.
pub struct PeftAdapter {
    /// Rank, alpha, dropout and targets, from `r`, `lora_alpha`, `lora_dropout` and `target_modules`.
    pub config: LoraConfig,
    /// `base_model_name_or_path`: the model the adapter was trained on.
    pub base_model: Option<String>,
}

/// adapter_config.json fields of PEFT features this host's adapters do not have, each with the value that means
/// "not used". (`fan_in_fan_out` is not among them: PEFT sets it from the wrapped layer's kind, a GPT-2 `Conv1D` or
/// a linear layer, whatever the file says, and so does this host.)
const UNSUPPORTED: [(&str, &str); 9] = [
    ("use_qalora", "false"),
    ("lora_bias", "false"),
    ("bias", "\"none\""),
    ("modules_to_save", "null"),
    ("layers_to_transform", "null"),
    ("layer_replication", "null"),
    ("target_parameters", "null"),
    ("trainable_token_indices", "null"),
    ("exclude_modules", "null"),
];

impl PeftAdapter {
    /// Read `dir/adapter_config.json`: a LoRA adapter whose features this host has, or a one-line error naming the
    /// one it lacks.
    pub fn read_config(dir: &Path) -> anyhow::Result<PeftAdapter> {
        let path = dir.join("adapter_config.json");
        let where_ = path.display();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            user_error!("cannot read {where_} ({e}); give the folder of a PEFT LoRA adapter (adapter_config.json)")
        })?;
        let config: Value = serde_json::from_str(&text).map_err(|e| user_error!("{where_} is not JSON ({e})"))?;
        if let Some(kind) = config.get("peft_type").and_then(Value::as_str).filter(|t| *t != "LORA") {
            return Err(user_error!("{where_}: peft_type {kind:?} is not supported (only LORA)"));
        }
        for (field, unused) in UNSUPPORTED {
            let value = config.get(field).unwrap_or(&Value::Null);
            let empty = value.as_array().is_some_and(Vec::is_empty) || value.as_object().is_some_and(|o| o.is_empty());
            let unused_value: Value = serde_json::from_str(unused).expect("UNSUPPORTED holds JSON");
            if !(value.is_null() || empty || *value == unused_value) {
                return Err(user_error!("{where_}: {field} {value} is not supported (only {unused})"));
            }
        }
        for field in ["rank_pattern", "alpha_pattern"] {
            if config.get(field).and_then(Value::as_object).is_some_and(|o| !o.is_empty()) {
                return Err(user_error!("{where_}: {field} is not supported (one rank and alpha for every layer)"));
            }
        }
        let rank = config.get("r").and_then(Value::as_i64).filter(|r| *r > 0);
        let alpha = config.get("lora_alpha").and_then(Value::as_f64).filter(|a| *a > 0.0);
        let (Some(rank), Some(alpha)) = (rank, alpha) else {
            return Err(user_error!("{where_}: r and lora_alpha must be positive numbers"));
        };
        let dropout = config.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
        // PEFT writes a list of module names, or one string ("all-linear", or a single name).
        let targets = match config.get("target_modules").unwrap_or(&Value::Null) {
            Value::Null => Ok(LoraTargets::ALL),
            Value::String(one) => LoraTargets::from_names([one]),
            Value::Array(names) => LoraTargets::from_names(names.iter().map(|n| n.as_str().unwrap_or("?"))),
            other => Err(format!("{other} is neither a name nor a list of names")),
        }
        .map_err(|e| user_error!("{where_}: target_modules: {e}"))?;
        let base_model = config.get("base_model_name_or_path").and_then(Value::as_str).map(str::to_string);
        let switch = |field: &str| match config.get(field).unwrap_or(&Value::Bool(false)) {
            Value::Bool(on) => Ok(*on),
            other => Err(user_error!("{where_}: {field} {other} must be true or false")),
        };
        let (rslora, dora) = (switch("use_rslora")?, switch("use_dora")?);
        Ok(PeftAdapter { config: LoraConfig { rank, alpha, dropout, targets, rslora, dora }, base_model })
    }

    /// The adapter's tensors in `dir/adapter_model.safetensors`, by this host's names (PEFT's, less their
    /// `base_model.model.` prefix).
    pub fn read_weights(dir: &Path) -> anyhow::Result<BTreeMap<String, Tensor>> {
        let path = dir.join("adapter_model.safetensors");
        let tensors =
            Tensor::read_safetensors(&path).map_err(|e| user_error!("cannot read {}: {e}", path.display()))?;
        Ok(tensors
            .into_iter()
            .map(|(name, t)| (name.strip_prefix("base_model.model.").unwrap_or(&name).to_string(), t))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_configs_read_their_settings_and_refuse_what_this_host_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let read = |extra: &str| {
            let text = format!(
                r#"{{"peft_type":"LORA","r":8,"lora_alpha":16,"lora_dropout":0.05,"bias":"none","use_dora":false,
                "rank_pattern":{{}},"modules_to_save":null,"base_model_name_or_path":"Org/base"{extra}}}"#
            );
            std::fs::write(dir.path().join("adapter_config.json"), text).unwrap();
            PeftAdapter::read_config(dir.path())
        };
        let adapter = read(r#","target_modules":["v_proj","q_proj"]"#).unwrap();
        let targets = "q_proj,v_proj".parse().unwrap();
        let expected = LoraConfig { rank: 8, alpha: 16.0, dropout: 0.05, targets, rslora: false, dora: false };
        assert_eq!((adapter.config, adapter.base_model.as_deref()), (expected, Some("Org/base")));
        assert_eq!(read(r#","target_modules":"all-linear""#).unwrap().config.targets, LoraTargets::ALL);
        let rslora = read(r#","use_rslora":true"#).unwrap().config;
        assert!(rslora.rslora && (rslora.scale() - 16.0 / 8f64.sqrt()).abs() < 1e-12);
        assert!(read(r#","use_dora":true"#).unwrap().config.dora && !rslora.dora);
        assert_eq!(expected.scale(), 2.0);
        for (extra, message) in [
            (r#","use_dora":1"#, "use_dora 1 must be true or false"),
            (r#","use_qalora":true"#, "use_qalora true is not supported (only false)"),
            (r#","use_rslora":"yes""#, "use_rslora \"yes\" must be true or false"),
            (r#","bias":"all""#, "bias \"all\" is not supported (only \"none\")"),
            (r#","modules_to_save":["lm_head"]"#, "modules_to_save [\"lm_head\"] is not supported"),
            (r#","rank_pattern":{"q_proj":4}"#, "rank_pattern is not supported"),
            (r#","peft_type":"IA3""#, "peft_type \"IA3\" is not supported (only LORA)"),
            (r#","target_modules":["lm_head"]"#, "target_modules: `lm_head` is not a projection"),
            (r#","r":0"#, "r and lora_alpha must be positive numbers"),
        ] {
            let err = read(extra).err().unwrap_or_else(|| panic!("{extra} was accepted"));
            assert!(err.to_string().contains(message), "{extra}: {err}");
            assert_eq!(crate::error::exit_code(&err), 2);
        }
    }

    #[test]
    fn targets_parse_from_the_flag_and_peft_names_and_save_as_a_list() {
        let qv: LoraTargets = "q_proj, v_proj".parse().unwrap();
        assert_eq!(qv.names(), ["q_proj", "v_proj"]);
        assert!(qv.contains("v_proj") && !qv.contains("k_proj") && !qv.contains("lm_head"));
        assert_eq!(qv.to_string(), "q_proj,v_proj");
        assert_eq!("all-linear".parse::<LoraTargets>().unwrap(), LoraTargets::ALL);
        assert_eq!(LoraTargets::ALL.names(), PROJECTIONS);
        assert_eq!(LoraTargets::ALL.to_string(), "all-linear");
        for bad in ["", "qproj", "q_proj,lm_head"] {
            let err = bad.parse::<LoraTargets>().unwrap_err();
            assert!(err.contains("use all-linear or some of q_proj,k_proj"), "{bad}: {err}");
        }
        // In config.json and adapter_config.json: the list of names; a config saved before the flag has them all.
        let cfg = LoraConfig { targets: qv, ..LoraConfig::new(4, 8.0) };
        let saved = serde_json::to_value(cfg).unwrap();
        assert_eq!(saved["targets"], serde_json::json!(["q_proj", "v_proj"]));
        assert_eq!(serde_json::from_value::<LoraConfig>(saved).unwrap(), cfg);
        let old: LoraConfig =
            serde_json::from_value(serde_json::json!({"rank": 4, "alpha": 8.0, "dropout": 0.0})).unwrap();
        assert_eq!(old.targets, LoraTargets::ALL);
        // all-linear saves as PEFT's own spelling, and a list of the seven separate projections (as runs saved
        // before the fused ones existed) reads back as all-linear.
        let all = LoraConfig { targets: LoraTargets::ALL, ..cfg };
        assert_eq!(serde_json::to_value(all).unwrap()["targets"], serde_json::json!(["all-linear"]));
        let seven = serde_json::json!({"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets":
            ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]});
        assert_eq!(serde_json::from_value::<LoraConfig>(seven).unwrap().targets, LoraTargets::ALL);
    }
}
