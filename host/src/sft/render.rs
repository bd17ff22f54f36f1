//! A conversation as the exact token stream a rollout of it would have been, with the assistant mask.
//!
//! The rollout driver (`crate::rollout`) builds an episode as: the opening messages rendered by the chat template
//! with the generation prompt; each assistant turn as the model sampled it, ending with its end-of-turn id; and
//! between turns the template's glue ([`Glue`]). Supervised fine-tuning builds the same stream from text: an
//! assistant turn is its content encoded on its own, followed by the end-of-turn id the template closes assistant
//! turns with (for ChatML `<|im_end|>`), so the model learns to stop exactly where sampling stops. The mask is true
//! on those tokens only: never on system, user or tool tokens, nor on the template's glue.

use anyhow::{bail, Result};
use grpo_sdk::{Message, Role};
use serde_json::Value as Json;

use crate::rollout::Glue;
use crate::tokenizer::Tokenizer;

/// A private-use marker for the text of an assistant turn, to find what the template writes after it.
const SENTINEL: &str = "\u{E000}grpo-rs:sft-turn\u{E001}";

/// One conversation as training input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The token ids, as a rollout's token stream.
    pub tokens: Vec<u32>,
    /// True where the token is the assistant's (the loss is taken on these).
    pub assistant: Vec<bool>,
}

impl Rendered {
    /// How many tokens the loss covers.
    pub fn assistant_tokens(&self) -> usize {
        self.assistant.iter().filter(|a| **a).count()
    }

    /// Keep the first `max_length` tokens (TRL's `max_length` truncation); a shorter stream is left as it is.
    pub fn truncate(&mut self, max_length: usize) {
        self.tokens.truncate(max_length);
        self.assistant.truncate(max_length);
    }
}

/// Renders conversations for one model and tool list.
pub struct Renderer<'a> {
    tokenizer: &'a Tokenizer,
    tools: Option<&'a [Json]>,
    glue: Glue<'a>,
    end_of_turn: u32,
}

impl<'a> Renderer<'a> {
    /// A renderer for `tokenizer`'s chat template with `tools` declared (as the rollouts declare them).
    pub fn new(tokenizer: &'a Tokenizer, tools: Option<&'a [Json]>) -> Result<Self> {
        let end_of_turn = end_of_turn_id(tokenizer, tools)?;
        Ok(Renderer { tokenizer, tools, glue: Glue::new(tokenizer, tools)?, end_of_turn })
    }

    /// The id that ends every assistant turn.
    pub fn end_of_turn(&self) -> u32 {
        self.end_of_turn
    }

    /// The stream and mask of `messages`. Messages after the last assistant turn are dropped (nothing follows them
    /// that the model would learn from); a conversation without an assistant turn, or starting with one, is an error.
    pub fn render(&self, messages: &[Message]) -> Result<Rendered> {
        let Some(first) = messages.iter().position(|m| m.role == Role::Assistant) else {
            bail!("it has no assistant message, so there is nothing to learn from");
        };
        if first == 0 {
            bail!("it starts with an assistant message; put the system or user turn it answers before it");
        }
        let last = messages.iter().rposition(|m| m.role == Role::Assistant).expect("one exists");
        let json: Vec<Json> = messages[..=last].iter().map(message_json).collect();
        let opening = self.tokenizer.render_chat(&json[..first], self.tools, true)?;
        let mut tokens = self.tokenizer.encode(&opening, false)?;
        let mut assistant = vec![false; tokens.len()];
        let mut i = first;
        while i <= last {
            // An assistant turn: its text as the model writes it, then the end-of-turn id it stops on.
            let turn = self.tokenizer.encode(&messages[i].content, false)?;
            assistant.extend(std::iter::repeat_n(true, turn.len() + 1));
            tokens.extend(turn);
            tokens.push(self.end_of_turn);
            if i == last {
                break;
            }
            let next = i + 1 + messages[i + 1..].iter().position(|m| m.role == Role::Assistant).expect("last");
            let glue = self.glue.between_turns(&json[..=i], &json[i + 1..next], true)?;
            assistant.extend(std::iter::repeat_n(false, glue.len()));
            tokens.extend(glue);
            i = next;
        }
        Ok(Rendered { tokens, assistant })
    }
}

/// The end-of-sequence id the template writes right after an assistant's text; the first eos id when it writes
/// none (the model still stops on it).
fn end_of_turn_id(tokenizer: &Tokenizer, tools: Option<&[Json]>) -> Result<u32> {
    let Some(&first) = tokenizer.eos_token_ids().first() else {
        bail!("the model's tokenizer names no end-of-sequence token, so a turn's end cannot be learnt");
    };
    let messages = [
        serde_json::json!({"role": "user", "content": "?"}),
        serde_json::json!({"role": "assistant", "content": SENTINEL}),
    ];
    let rendered = tokenizer.render_chat(&messages, tools, false)?;
    let Some(pos) = rendered.rfind(SENTINEL) else {
        bail!("the model's chat template does not show the assistant's text verbatim; use a model whose does");
    };
    let after = &rendered[pos + SENTINEL.len()..];
    for &id in tokenizer.eos_token_ids() {
        let text = tokenizer.decode(&[id], false)?;
        if !text.is_empty() && after.starts_with(&text) {
            return Ok(id);
        }
    }
    Ok(first)
}

fn message_json(m: &Message) -> Json {
    serde_json::to_value(m).expect("messages serialize")
}
