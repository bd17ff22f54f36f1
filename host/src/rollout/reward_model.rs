//! Learned reward models (TRL's `reward_funcs` given sequence-classification checkpoints, `--reward-model`): each
//! finished episode's conversation, rendered with a reward model's own chat template and tokenizer, is scored by its
//! `score` head on the last token, and the first label's value becomes that model's reward component
//! ([`REWARD_MODEL`] unless named).

use std::path::Path;
use std::rc::Rc;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tch::{Device, Kind};

use crate::model::{right_padded, Model, OutputHead};
use crate::tokenizer::Tokenizer;
use crate::user_error;

/// The reward component of a reward model given without a name (weighed by `--reward-weights` like the
/// environment's).
pub const REWARD_MODEL: &str = "reward_model";

/// One `--reward-model [NAME=]MODEL`: the reward component it writes and the model (a directory or hub id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardModelSpec {
    /// The reward component.
    pub name: String,
    /// The checkpoint's directory or hub id.
    pub model: String,
}

impl RewardModelSpec {
    /// Each of `specs` as `[NAME=]MODEL` (NAME of letters, digits, `_` and `-`; [`REWARD_MODEL`] without one); two
    /// that write the same component are refused.
    pub fn parse_all(specs: &[String]) -> Result<Vec<RewardModelSpec>> {
        let mut out: Vec<RewardModelSpec> = Vec::new();
        for spec in specs {
            let named = spec.split_once('=').filter(|(name, model)| {
                !name.is_empty()
                    && !model.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
            });
            let (name, model) = named.unwrap_or((REWARD_MODEL, spec.as_str()));
            if out.iter().any(|o| o.name == name) {
                return Err(user_error!(
                    "--reward-model {spec}: another reward model already writes the component {name}; give each its \
                     own name, as --reward-model helpful=MODEL --reward-model safe=MODEL"
                ));
            }
            out.push(RewardModelSpec { name: name.to_string(), model: model.to_string() });
        }
        Ok(out)
    }
}

/// Conversations scored per forward pass: a bound on the padded batch the reward model holds at once.
const ROWS_PER_PASS: usize = 8;

/// A sequence-classification model and its tokenizer, loaded once per run and shared by its rollouts.
pub struct RewardModel {
    model: Model,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for RewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardModel").field("dir", &self.model.dir()).finish()
    }
}

impl RewardModel {
    /// Load the `*ForSequenceClassification` checkpoint in `dir` onto `device` in `kind`; it must have a chat
    /// template, through which every conversation is rendered.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Rc<RewardModel>> {
        let model = Model::load_with_head(dir, device, kind, OutputHead::Score)?;
        let tokenizer = Tokenizer::from_dir(dir)?;
        tokenizer.require_chat_template("--reward-model renders each episode's conversation with it")?;
        model.set_training(false);
        Ok(Rc::new(RewardModel { model, tokenizer }))
    }

    /// The score of each conversation (chat messages, the episode's opening, turns and replies): the reward model's
    /// first label on the last token of its chat template's rendering (no generation prompt, no special tokens added
    /// by the tokenizer), as TRL scores a prompt with its completion.
    pub fn score(&self, conversations: &[Vec<Json>]) -> Result<Vec<f64>> {
        let mut scores = Vec::with_capacity(conversations.len());
        for part in conversations.chunks(ROWS_PER_PASS) {
            let rows = part
                .iter()
                .map(|messages| {
                    let text = self.tokenizer.render_chat(messages, None, false)?;
                    let ids = self.tokenizer.encode(&text, false)?;
                    if ids.is_empty() {
                        return Err(user_error!("--reward-model: a conversation renders to no tokens"));
                    }
                    Ok(ids)
                })
                .collect::<Result<Vec<Vec<u32>>>>()?;
            let longest = rows.iter().map(Vec::len).max().unwrap_or(1);
            self.model.check_length(longest as i64, "--reward-model: a conversation", "keep episodes within it")?;
            let lengths: Vec<i64> = rows.iter().map(|r| r.len() as i64).collect();
            let ids = right_padded(rows.iter().map(Vec::as_slice), longest, self.model.device());
            let values = tch::no_grad(|| self.model.sequence_scores(&ids, &lengths));
            let first = values.select(1, 0).to_kind(Kind::Double).to_device(Device::Cpu);
            scores.extend(Vec::<f64>::try_from(&first)?);
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_take_an_optional_component_name() {
        let specs = |args: &[&str]| RewardModelSpec::parse_all(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let parsed = specs(&["Org/rm-7b", "safe=./rms/safety", "x=y=z"]).unwrap();
        let pairs: Vec<(&str, &str)> = parsed.iter().map(|s| (s.name.as_str(), s.model.as_str())).collect();
        assert_eq!(pairs, [("reward_model", "Org/rm-7b"), ("safe", "./rms/safety"), ("x", "y=z")]);
        // A path with '=' after a slash is a model, not a name.
        assert_eq!(specs(&["./a=b"]).unwrap()[0], RewardModelSpec { name: REWARD_MODEL.into(), model: "./a=b".into() });
        let err = specs(&["a", "b"]).unwrap_err();
        assert!(err.to_string().contains("already writes the component reward_model"), "{err}");
        assert_eq!(crate::error::exit_code(&err), 2);
    }
}
