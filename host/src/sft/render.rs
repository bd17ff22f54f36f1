//! A conversation as the exact token stream a rollout of it would have been, with the assistant mask.
//!
//! The rollout driver (`crate::rollout`) builds an episode as: the opening messages rendered by the chat template
//! with the generation prompt; each assistant turn as the model sampled it, ending with its end-of-turn id; and
//! between turns the template's glue ([`Glue`]). Supervised fine-tuning builds the same stream from text: an
//! assistant turn is its content encoded on its own, followed by the end-of-turn id the template closes assistant
//! turns with (for ChatML `<|im_end|>`), so the model learns to stop exactly where sampling stops. The mask is true
//! on those tokens only: never on system, user or tool tokens, nor on the template's glue.
//!
//! Plain text (TRL's standard rows) has no chat template to follow: [`render_text`] tokenizes it as TRL does.

use anyhow::{anyhow, bail, Result};
use grpo_sdk::Message;
use serde_json::Value as Json;

use serde::{Deserialize, Serialize};

use super::data::{Example, PlainText};
use super::Conversation;
use crate::rollout::Glue;
use crate::tokenizer::Tokenizer;
use crate::user_error;

/// A private-use marker for the text of an assistant turn, to find what the template writes after it.
const SENTINEL: &str = "\u{E000}grpo-rs:sft-turn\u{E001}";

/// One conversation as training input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// The token ids, as a rollout's token stream.
    pub tokens: Vec<u32>,
    /// True where the loss is taken: the assistant's tokens (a plain row's text or completion), unless
    /// [`Rendered::train_on_every_token`] widened it.
    pub assistant: Vec<bool>,
}

impl Rendered {
    /// How many tokens the loss covers.
    pub fn assistant_tokens(&self) -> usize {
        self.assistant.iter().filter(|a| **a).count()
    }

    /// Train on every token (but the first, which nothing predicts): TRL's loss without `assistant_only_loss` or
    /// `completion_only_loss`.
    pub fn train_on_every_token(&mut self) {
        for (i, trained) in self.assistant.iter_mut().enumerate() {
            *trained = i > 0;
        }
    }

    /// Keep the first `max_length` tokens (TRL's `max_length` truncation); a shorter stream is left as it is.
    pub fn truncate(&mut self, max_length: usize) {
        self.tokens.truncate(max_length);
        self.assistant.truncate(max_length);
    }
}

/// Which tokens of a row the loss covers (TRL's `assistant_only_loss` and `completion_only_loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossOn {
    /// A conversation's assistant turns only (TRL's default is every token; here the turns a rollout samples, so
    /// supervised and reinforcement learning train the same tokens).
    pub assistant_only: bool,
    /// A string prompt-completion row's completion only (TRL's default), or its prompt too.
    pub completion_only: bool,
}

impl Default for LossOn {
    fn default() -> Self {
        LossOn { assistant_only: true, completion_only: true }
    }
}

impl LossOn {
    /// `rendered` as this setting trains it: every token when the example's kind is not restricted.
    pub fn apply(self, example_is_chat: bool, rendered: &mut Rendered) {
        let restricted = if example_is_chat { self.assistant_only } else { self.completion_only };
        if !restricted {
            rendered.train_on_every_token();
        }
    }
}

/// How a dataset's rows become training input: which tokens are trained, and where rows are cut.
#[derive(Debug, Clone, Copy)]
pub struct RenderSettings {
    /// Which tokens the loss covers.
    pub loss_on: LossOn,
    /// Tokens kept of each row (TRL's `max_length`); `None` keeps them all.
    pub max_length: Option<usize>,
}

impl RenderSettings {
    /// `row` trained as these settings say and cut to `max_length`.
    pub fn shape(self, is_chat: bool, row: &mut Rendered) {
        self.loss_on.apply(is_chat, row);
        row.truncate(self.max_length.unwrap_or(usize::MAX));
    }
}

/// A dataset's examples rendered for `tokenizer` (conversations through its chat template, plain text as TRL
/// tokenizes it) and shaped by `settings`; an error names the first row that cannot be rendered, with `flag`. Rows
/// with no trained token (an empty text, or all of it past `max_length`) are left out, with a line saying how many;
/// none left is an error.
pub fn render_rows(
    examples: &[Example],
    tokenizer: &Tokenizer,
    settings: RenderSettings,
    flag: &str,
) -> Result<Vec<Rendered>> {
    let total = examples.len();
    let mut rows = Vec::with_capacity(total);
    let (mut renderer, mut seams, mut empty) = (None, 0, 0);
    for example in examples {
        let rendered = match example {
            Example::Chat(c) => {
                if renderer.is_none() {
                    let what = "such a model trains on plain `text` or string `prompt`/`completion` rows only";
                    tokenizer.require_chat_template(what).map_err(|e| user_error!("{flag} {}: {e}", c.origin))?;
                    renderer = Some(Renderer::new(tokenizer, None)?);
                }
                renderer.as_ref().expect("just made").render_conversation(c)
            }
            Example::Text(t) => render_text(tokenizer, t).map(|(rendered, seamless)| {
                seams += usize::from(!seamless && settings.loss_on.completion_only);
                rendered
            }),
        };
        let mut row = rendered.map_err(|e| user_error!("{flag} {}: {e}", example.origin()))?;
        let is_chat = matches!(example, Example::Chat(_));
        settings.loss_on.apply(is_chat, &mut row);
        if row.assistant_tokens() == 0 {
            // An empty text: its one token (the eos) has nothing before it to predict it from.
            empty += 1;
            continue;
        }
        row.truncate(settings.max_length.unwrap_or(usize::MAX));
        if row.assistant_tokens() > 0 {
            rows.push(row);
        }
    }
    let cut = total - empty - rows.len();
    let length = settings.max_length.unwrap_or_default();
    if rows.is_empty() {
        return Err(match cut {
            0 => user_error!("{flag}: no row has a token to train on (their texts or completions are empty)"),
            _ => user_error!(
                "{flag}: every row's trained tokens (assistant turns, completions) start after --max-length {length} \
                 tokens; raise it"
            ),
        });
    }
    if empty > 0 {
        eprintln!("{flag}: {empty} of {total} rows have no token to train on (an empty text) and are left out");
    }
    if cut > 0 {
        eprintln!("{flag}: {cut} of {total} rows have no trained token within --max-length {length} and are left out");
    }
    if seams > 0 {
        eprintln!(
            "{flag}: in {seams} of {total} rows the prompt's last token merges with the completion's first when \
             tokenized together (a prompt ending in a space, say); as in TRL, their loss starts after the prompt's \
             own token count"
        );
    }
    Ok(rows)
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
        tokenizer.require_chat_template("conversations are rendered with it")?;
        let end_of_turn = end_of_turn_id(tokenizer, tools)?;
        Ok(Renderer { tokenizer, tools, glue: Glue::new(tokenizer, tools)?, end_of_turn })
    }

    /// The id that ends every assistant turn.
    pub fn end_of_turn(&self) -> u32 {
        self.end_of_turn
    }

    /// The stream and mask of `messages`, with the renderer's tools. Messages after the last assistant turn are
    /// dropped (nothing follows them that the model would learn from); a conversation without an assistant turn, or
    /// starting with one, is an error.
    pub fn render(&self, messages: &[Message]) -> Result<Rendered> {
        self.render_conversation(&Conversation::new("", messages))
    }

    /// The stream and mask of a conversation, as [`Renderer::render`], with its own tools when it declares them. An
    /// assistant message's structured `tool_calls` are trained on as the text the chat template writes for them
    /// (for Qwen2.5, `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`): the text the model has to
    /// produce for a rollout to hold that call.
    pub fn render_conversation(&self, conversation: &Conversation) -> Result<Rendered> {
        let messages = &conversation.messages;
        let is_assistant = |m: &Json| m["role"] == "assistant";
        let Some(first) = messages.iter().position(is_assistant) else {
            bail!("it has no assistant message, so there is nothing to learn from");
        };
        if first == 0 {
            bail!("it starts with an assistant message; put the system or user turn it answers before it");
        }
        let last = messages.iter().rposition(is_assistant).expect("one exists");
        let own_glue;
        let (tools, glue) = match conversation.tools.as_deref() {
            Some(tools) => {
                own_glue = Glue::new(self.tokenizer, Some(tools))?;
                (Some(tools), &own_glue)
            }
            None => (self.tools, &self.glue),
        };
        let json = messages[..=last].iter().map(|m| self.as_text(m, tools)).collect::<Result<Vec<Json>>>()?;
        let opening = self.tokenizer.render_chat(&json[..first], tools, true)?;
        let mut tokens = self.tokenizer.encode(&opening, false)?;
        let mut assistant = vec![false; tokens.len()];
        let mut i = first;
        while i <= last {
            // An assistant turn: its text as the model writes it, then the end-of-turn id it stops on.
            let turn = self.tokenizer.encode(json[i]["content"].as_str().unwrap_or_default(), false)?;
            assistant.extend(std::iter::repeat_n(true, turn.len() + 1));
            tokens.extend(turn);
            tokens.push(self.end_of_turn);
            if i == last {
                break;
            }
            let next = i + 1 + json[i + 1..].iter().position(is_assistant).expect("last");
            let glue = glue.between_turns(&json[..=i], &json[i + 1..next], true)?;
            assistant.extend(std::iter::repeat_n(false, glue.len()));
            tokens.extend(glue);
            i = next;
        }
        Ok(Rendered { tokens, assistant })
    }

    /// `message` with any structured tool calls turned into the text the template writes for them, after the
    /// message's content, so the turn is trained on what a sampled turn would be.
    fn as_text(&self, message: &Json, tools: Option<&[Json]>) -> Result<Json> {
        let calls = match message.get("tool_calls") {
            Some(Json::Array(calls)) if !calls.is_empty() && message["role"] == "assistant" => calls,
            _ => return Ok(message.clone()),
        };
        // The template's text for the message, alone after a placeholder question, between what it writes for any
        // assistant turn before and after the text (Qwen3's empty thinking block; the closing `<|im_end|>\n`).
        let prompt = self.tokenizer.render_chat(&[placeholder_question()], tools, true)?;
        let framed = answered(self.tokenizer, tools, serde_json::json!({"role": "assistant", "content": SENTINEL}))?;
        let (lead, tail) = framed
            .strip_prefix(&prompt)
            .and_then(|body| body.split_once(SENTINEL))
            .ok_or_else(|| anyhow!("the model's chat template does not show the assistant's text verbatim"))?;
        // No content reads as empty content, as templates without a place for tool calls expect a string there.
        let mut message = message.clone();
        let fields = message.as_object_mut().expect("a checked message is an object");
        if fields.get("content").is_none_or(Json::is_null) {
            fields.insert("content".into(), Json::String(String::new()));
        }
        let written = answered(self.tokenizer, tools, message.clone())?;
        let text = written.strip_prefix(&prompt).and_then(|body| body.strip_suffix(tail));
        let text = text.map(|t| t.strip_prefix(lead).unwrap_or(t));
        let missing =
            calls.iter().filter_map(super::data::call_name).find(|name| !text.is_some_and(|t| t.contains(name)));
        let (Some(text), None) = (text, missing) else {
            bail!(
                "the model's chat template does not write an assistant message's `tool_calls`{}; write each call into \
                 the message's `content` in the format the model should produce, or use a model whose template \
                 renders tool calls",
                missing.map(|n| format!(" (the call to `{n}` is not in what it renders)")).unwrap_or_default()
            );
        };
        let fields = message.as_object_mut().expect("an object");
        fields.remove("tool_calls");
        fields.insert("content".into(), Json::String(text.to_string()));
        Ok(message)
    }
}

/// A plain-text example as TRL's `SFTTrainer` tokenizes standard rows: the tokenizer's `eos_token` is appended
/// to the text (the completion) unless it already ends with it, and the result is tokenized with the tokenizer's
/// special tokens (a BOS where it adds one). Language modeling trains on every token but the first (which nothing
/// predicts). Prompt-completion tokenizes the prompt alone as well, and trains on the whole's tokens after as many as
/// the prompt has.
///
/// The flag is false when the prompt's tokens are not the start of the whole's: the two merged at the seam (a prompt
/// ending in a space, say), and the mask's start cuts into the completion's first token as TRL's does.
pub fn render_text(tokenizer: &Tokenizer, text: &PlainText) -> Result<(Rendered, bool)> {
    let Some(eos) = tokenizer.eos_token_id() else {
        bail!("the model's tokenizer names no end-of-sequence token, so where a text ends cannot be learnt");
    };
    let eos = tokenizer.decode(&[eos], false)?;
    let mut whole = format!("{}{}", text.prompt.as_deref().unwrap_or_default(), text.completion);
    if !text.completion.ends_with(&eos) {
        whole.push_str(&eos);
    }
    let tokens = tokenizer.encode(&whole, true)?;
    let (untrained, seamless) = match &text.prompt {
        None => (0, true),
        Some(prompt) => {
            let ids = tokenizer.encode(prompt, true)?;
            (ids.len().min(tokens.len()), tokens.starts_with(&ids))
        }
    };
    // The first token is never trained on: nothing predicts it.
    let assistant = (0..tokens.len()).map(|i| i >= untrained.max(1)).collect();
    Ok((Rendered { tokens, assistant }, seamless))
}

/// The end-of-sequence id the template writes right after an assistant's text; the first eos id when it writes
/// none (the model still stops on it).
fn end_of_turn_id(tokenizer: &Tokenizer, tools: Option<&[Json]>) -> Result<u32> {
    let Some(&first) = tokenizer.eos_token_ids().first() else {
        bail!("the model's tokenizer names no end-of-sequence token, so a turn's end cannot be learnt");
    };
    let rendered = answered(tokenizer, tools, serde_json::json!({"role": "assistant", "content": SENTINEL}))?;
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

/// The user turn the template's framing of an assistant turn is measured after.
fn placeholder_question() -> Json {
    serde_json::json!({"role": "user", "content": "?"})
}

/// The template's rendering of the placeholder question answered by `assistant`.
fn answered(tokenizer: &Tokenizer, tools: Option<&[Json]>, assistant: Json) -> Result<String> {
    tokenizer.render_chat(&[placeholder_question(), assistant], tools, false)
}
