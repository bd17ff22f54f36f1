//! Supervised fine-tuning: the cold start before reinforcement learning (`grpo-host sft`, and `--sft-warmup-steps`
//! in `train`).
//!
//! ```text
//! data::{examples, Demonstrations}       -> Example: Conversation (messages, declared tools) or PlainText
//! render::{Renderer, render_text}        -> Rendered (the rollout's exact token stream, assistant mask)
//! step::SftStep::run                     -> SftRecord (mean token cross-entropy on assistant tokens, AdamW)
//! eval::held_out                         -> HeldOut (the same loss on --eval-data, without gradients)
//! ```
//!
//! A conversation's token stream is the one a rollout of it would have produced, so supervised and reinforcement
//! learning train on the same tokens; the loss covers the assistant's tokens, each turn's final end-of-turn token
//! included, and never a system, user or tool token. Plain text (TRL's standard formats) is tokenized as TRL's
//! `SFTTrainer` does, with no chat template.

pub mod data;
pub mod eval;
pub mod loss;
pub mod render;
pub mod run;
pub mod step;
pub mod stream;
pub mod warmup;

pub use data::{Conversation, Demonstrations, Example, PlainText};
pub use render::{Rendered, Renderer};
pub use step::{SftRecord, SftStep};

use grpo_sdk::ToolSpec;
use serde_json::Value as Json;

/// Tools as chat templates expect them (OpenAI's function format), as the rollouts declare them; `None` for none.
pub fn tools_json(tools: &[ToolSpec]) -> Option<Vec<Json>> {
    if tools.is_empty() {
        return None;
    }
    let one = |t: &ToolSpec| {
        serde_json::json!({
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters}
        })
    };
    Some(tools.iter().map(one).collect())
}
