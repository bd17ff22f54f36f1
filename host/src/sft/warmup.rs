//! `--sft-warmup-steps N` in `train`: N supervised steps on the environment's demonstrations (or on `--sft-data`)
//! before the first rollout batch, so a small model starts reinforcement learning already writing the environment's
//! protocol.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::data::Example;
use super::render::RenderSettings;
use super::stream::Stream;
use super::{tools_json, Demonstrations, Renderer, SftRecord, SftStep};
use crate::data::DatasetSpec;
use crate::plugins::EnvironmentPlugin;
use crate::train::optimizer::AdamWConfig;
use crate::train::policy::Policy;
use crate::train::precision::LossScaler;

/// The warm-up's settings (part of the run's config; `steps: 0` turns it off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WarmupSettings {
    /// Supervised optimizer steps before the first batch.
    pub steps: u64,
    /// Rows per step.
    pub batch_size: usize,
    /// The warm-up's learning rate (constant).
    pub lr: f64,
    /// A dataset in TRL's formats to warm up on (`--sft-data`) instead of the environment's demonstrations.
    pub data: Option<DatasetSpec>,
}

impl Default for WarmupSettings {
    fn default() -> Self {
        WarmupSettings { steps: 0, batch_size: 8, lr: 5e-5, data: None }
    }
}

/// How a warm-up ended.
pub enum WarmupEnd {
    /// Every step ran; the f32 master weights when the precision keeps them, for the RL optimizer to continue from.
    Done(Option<BTreeMap<String, Tensor>>),
    /// A stop was agreed on after this many steps; the model is part-trained and nothing was saved.
    Stopped(u64),
}

/// What the warm-up trains and where its records go.
pub struct Warmup<'a> {
    /// Its settings.
    pub settings: &'a WarmupSettings,
    /// The model (trained in place).
    pub policy: &'a Policy,
    /// The environment whose demonstrations are the data unless `data` is given.
    pub env: &'a EnvironmentPlugin,
    /// `--sft-data`'s rows, read when the run started.
    pub data: Option<&'a [Example]>,
    /// Tokens kept of each `--sft-data` row (the run's `--max-length`, as `grpo-host sft --max-length`).
    pub max_length: usize,
    /// AdamW's betas, eps and weight decay (the learning rate is the warm-up's).
    pub adamw: AdamWConfig,
    /// How a step's conversations are grouped into forward/backward passes.
    pub micro_batch: crate::train::experience::Chunking,
    /// Gradient-norm clip.
    pub max_norm: f64,
    /// The run seed: the order of the demonstrated tasks.
    pub seed: u64,
    /// Data-parallel ranks: each step's demonstrations are split between them.
    pub world: &'a crate::distributed::World,
}

impl Warmup<'_> {
    /// Run the steps, calling `on_step(step_index, record, seconds)` after each. Its own AdamW (fresh moments, so
    /// the RL optimizer starts from zero as without a warm-up) and loss scale. Before each step after the first,
    /// `stop_now` says whether to stop there (every rank must get the same answer).
    pub fn run(
        &self,
        on_step: &mut dyn FnMut(u64, &SftRecord, f64),
        stop_now: &mut dyn FnMut() -> Result<bool>,
    ) -> Result<WarmupEnd> {
        let s = self.settings;
        // Demonstrations are the environment's own episodes, kept whole as before; a dataset's rows are cut.
        let max_length = self.data.map(|_| self.max_length);
        let shape = RenderSettings { loss_on: Default::default(), max_length };
        let tokenizer = self.policy.tokenizer();
        let tools = if self.data.is_none() { tools_json(&self.env.tools()?) } else { None };
        let mut rows = match self.data {
            Some(examples) => Stream::data(examples, tokenizer, shape, self.seed, "--sft-data")?,
            None => {
                let demos = Demonstrations::new(self.env.clone(), self.seed)?;
                Stream::Demos(Box::new(demos), Renderer::new(tokenizer, tools.as_deref())?)
            }
        };
        let precision = self.policy.precision();
        let mut optimizer = self.policy.optimizer(AdamWConfig { lr: s.lr, ..self.adamw });
        if let Some(weights) = self.policy.initial_master_weights()? {
            optimizer.load_master_weights(&weights)?;
        }
        let mut scaler = LossScaler::new(precision.mode);
        let mut step = SftStep {
            model: self.policy.model(),
            optimizer: &mut optimizer,
            scaler: &mut scaler,
            micro_batch: self.micro_batch,
            max_norm: self.max_norm,
            world: self.world,
            seed: self.seed,
        };
        let per_rank = s.batch_size.max(1);
        for index in 0..s.steps {
            if index > 0 && stop_now()? {
                return Ok(WarmupEnd::Stopped(index));
            }
            let t = Instant::now();
            // The global step takes `per_rank` rows for every rank, in the same order on each.
            let mut taken = rows.take(per_rank * self.world.size, shape)?;
            let mine: Vec<_> = taken.drain(self.world.rank * per_rank..(self.world.rank + 1) * per_rank).collect();
            // The warm-up's steps are the run's global steps 0..N.
            if let Some(record) = step.run(&mine, s.lr, index)? {
                on_step(index, &record, t.elapsed().as_secs_f64());
            }
        }
        Ok(WarmupEnd::Done(optimizer.has_master_weights().then(|| optimizer.master_weights())))
    }
}
