//! The supervised rows in training order: a dataset's, rendered once and reshuffled each pass, or an environment's
//! demonstrations, rendered as they are played. Resumable from a position (`grpo-host sft` checkpoints it).

use anyhow::Result;
use grpo_sdk::rng::{mix, SplitMix64};

use super::data::{Demonstrations, Example};
use super::render::{self, RenderSettings, Rendered, Renderer};
use crate::tokenizer::Tokenizer;

/// The examples in training order, rendered as token streams, resumable from a position.
pub enum Stream<'a> {
    /// A dataset's examples, rendered once at the start (so a bad row fails before the first step), and
    /// reshuffled each pass (epoch `e` in the order `seed` and `e` give), as a data loader with `shuffle=True` does.
    Data { rows: Vec<Rendered>, seed: u64, position: u64, order: (u64, Vec<usize>) },
    /// An environment's demonstrations, rendered as they are played.
    Demos(Box<Demonstrations>, Renderer<'a>),
}

impl<'a> Stream<'a> {
    /// A dataset's examples, rendered at once for `tokenizer` ([`render::render_rows`]); `flag` names the data
    /// in messages.
    pub fn data(
        examples: &[Example],
        tokenizer: &Tokenizer,
        settings: RenderSettings,
        seed: u64,
        flag: &str,
    ) -> Result<Stream<'a>> {
        let rows = render::render_rows(examples, tokenizer, settings, flag)?;
        Ok(Stream::Data { rows, seed, position: 0, order: (0, Vec::new()) })
    }

    /// The next `n` rows, shaped by `settings`.
    pub fn take(&mut self, n: usize, settings: RenderSettings) -> Result<Vec<Rendered>> {
        match self {
            Stream::Data { rows, seed, position, order } => {
                let len = rows.len() as u64;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let epoch = *position / len;
                    if order.0 != epoch || order.1.is_empty() {
                        let mut perm: Vec<usize> = (0..rows.len()).collect();
                        SplitMix64::new(mix(*seed, epoch)).shuffle(&mut perm);
                        *order = (epoch, perm);
                    }
                    out.push(rows[order.1[(*position % len) as usize]].clone());
                    *position += 1;
                }
                Ok(out)
            }
            Stream::Demos(demos, renderer) => demos
                .take(n)?
                .iter()
                .map(|c| {
                    let mut row = renderer
                        .render_conversation(c)
                        .map_err(|e| anyhow::anyhow!("demonstration of {}: {e}", c.origin))?;
                    settings.shape(true, &mut row);
                    Ok(row)
                })
                .collect(),
        }
    }

    /// Rows drawn so far (demonstrated tasks, for demonstrations), to resume from.
    pub fn position(&self) -> u64 {
        match self {
            Stream::Data { position, .. } => *position,
            Stream::Demos(demos, _) => demos.position(),
        }
    }

    /// Continue from `to`.
    pub fn seek(&mut self, to: u64) {
        match self {
            Stream::Data { position, .. } => *position = to,
            Stream::Demos(demos, _) => demos.seek(to),
        }
    }

    /// Passes over the dataset so far (`sft/epoch`); `None` for demonstrations, which never run out.
    pub fn epoch(&self) -> Option<f64> {
        match self {
            Stream::Data { rows, position, .. } => Some(*position as f64 / rows.len() as f64),
            Stream::Demos(..) => None,
        }
    }
}
