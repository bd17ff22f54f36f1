//! The tokens between two assistant turns, taken from the model's own chat template.
//!
//! After the model's turn the template closes it (for ChatML, `<|im_end|>\n`), renders the environment's reply,
//! and opens the next assistant turn. We render the conversation with a sentinel in place of the last assistant
//! text and take everything after the sentinel: that is exactly what the template puts there, whatever the family.
//! When the model stopped on an end-of-sequence id that the template also writes (`<|im_end|>`, `<|eot_id|>`), that
//! id is already in the stream as the model's own action, so it is not repeated.

use anyhow::{bail, Result};
use serde_json::Value as Json;

use crate::tokenizer::Tokenizer;

/// Private-use characters: no chat template or tokenizer gives them a meaning, and no model writes them.
const SENTINEL: &str = "\u{E000}grpo-rs:assistant-turn\u{E001}";

/// Renders the glue between turns for one model and tool list.
pub struct Glue<'a> {
    tokenizer: &'a Tokenizer,
    tools: Option<&'a [Json]>,
    eos_texts: Vec<String>,
}

impl<'a> Glue<'a> {
    /// Glue for `tokenizer`'s template with the environment's `tools` declared.
    pub fn new(tokenizer: &'a Tokenizer, tools: Option<&'a [Json]>) -> Result<Self> {
        let eos_texts =
            tokenizer.eos_token_ids().iter().map(|&id| tokenizer.decode(&[id], false)).collect::<Result<Vec<_>>>()?;
        Ok(Glue { tokenizer, tools, eos_texts })
    }

    /// The ids that follow the last assistant turn of `history` when the environment answers with `reply`, up to and
    /// including the opening of the next assistant turn. `ended_on_eos`: the turn's last sampled id was an eos id.
    pub fn between_turns(&self, history: &[Json], reply: &[Json], ended_on_eos: bool) -> Result<Vec<u32>> {
        let text = self.text_between_turns(history, reply, ended_on_eos)?;
        self.tokenizer.encode(&text, false)
    }

    fn text_between_turns(&self, history: &[Json], reply: &[Json], ended_on_eos: bool) -> Result<String> {
        let mut messages: Vec<Json> = history.to_vec();
        match messages.last_mut() {
            Some(last) if last["role"] == "assistant" => last["content"] = Json::String(SENTINEL.to_string()),
            _ => bail!("internal: the history must end with the assistant's turn"),
        }
        messages.extend_from_slice(reply);
        let rendered = self.tokenizer.render_chat(&messages, self.tools, true)?;
        let Some(pos) = rendered.rfind(SENTINEL) else {
            bail!(
                "the model's chat template does not show the assistant's text verbatim, so multi-turn token streams \
                 cannot be built from it; use a model whose template renders assistant messages as given"
            );
        };
        let mut after = &rendered[pos + SENTINEL.len()..];
        if ended_on_eos {
            if let Some(eos) = self.eos_texts.iter().find(|e| !e.is_empty() && after.starts_with(e.as_str())) {
                after = &after[eos.len()..];
            }
        }
        Ok(after.to_string())
    }
}
