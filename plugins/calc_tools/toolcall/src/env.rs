//! What the tool-using environments do around the [`protocol`](crate::protocol), in the SDK's types: the system
//! prompt, the messages after a tool turn, and the step outcome of a protocol [`Turn`]. Each environment keeps
//! only its own wording ([`Wording`]).

use grpo_sdk::{Message, Reward, StepOutcome};

use crate::protocol::{Episode, ToolFormat, Turn};
use crate::stats::FlagCounters;

/// An environment's fixed texts.
#[derive(Debug, Clone, Copy)]
pub struct Wording {
    /// The default system prompt for the native format.
    pub native_system: &'static str,
    /// The default system prompt for the Hermes format.
    pub hermes_system: &'static str,
    /// Native format: the label before a tool's successful output, by tool name; any other tool's is
    /// `Tool result`, and a failure's is `Tool error`.
    pub result_labels: &'static [(&'static str, &'static str)],
    /// Native format: what stands between the label and the output (`": "`, `":\n"`).
    pub separator: &'static str,
    /// The instruction after a tool turn when the next turn must be the answer.
    pub answer_now: &'static str,
    /// The instruction after a tool turn when the model may still call a tool.
    pub call_or_answer: &'static str,
}

impl Wording {
    /// The configured system prompt, or the default for `format`.
    pub fn system_prompt(&self, configured: Option<&str>, format: ToolFormat) -> String {
        configured
            .unwrap_or(match format {
                ToolFormat::Native => self.native_system,
                ToolFormat::Hermes => self.hermes_system,
            })
            .to_string()
    }

    /// The reply to a tool turn: the output of `tool` (or its error, when `ok` is false) and what to do next.
    /// Native: one user message; Hermes: a tool message, then the instruction as a user message.
    pub fn tool_messages(
        &self,
        format: ToolFormat,
        tool: &str,
        text: &str,
        ok: bool,
        last_turn_next: bool,
    ) -> Vec<Message> {
        let next = if last_turn_next { self.answer_now } else { self.call_or_answer };
        match format {
            ToolFormat::Native => {
                let label = if ok {
                    self.result_labels.iter().find(|(t, _)| *t == tool).map_or("Tool result", |(_, l)| l)
                } else {
                    "Tool error"
                };
                vec![Message::user(format!("{label}{}{text}\n\n{next}", self.separator))]
            }
            ToolFormat::Hermes => {
                let content = if ok { text.to_string() } else { format!("error: {text}") };
                vec![Message::tool(tool, content), Message::user(next)]
            }
        }
    }
}

/// Play one assistant turn of `episode` (`play` calls [`Episode::step`] with the environment's tools and judge),
/// count the flags it raised in `counters`, and translate the resulting [`Turn`] into the SDK's outcome.
pub fn step(
    episode: &mut Episode,
    counters: &FlagCounters,
    format: ToolFormat,
    wording: &Wording,
    play: impl FnOnce(&mut Episode) -> Turn,
) -> StepOutcome {
    let before = episode.flags.clone();
    let turn = play(episode);
    counters.record(&before, &episode.flags);
    match turn {
        Turn::ToolResult { tool, text, ok, rewards } => {
            let last_next = episode.turns + 1 >= episode.max_turns;
            StepOutcome::continues(wording.tool_messages(format, &tool, &text, ok, last_next), to_rewards(rewards))
        }
        // Solved means a well-formed, right final answer (for evaluation's accuracy and pass@k).
        Turn::Done { rewards } => StepOutcome::finished(to_rewards(rewards)).judged(episode.flags.answer_correct),
    }
}

fn to_rewards(rewards: Vec<(&'static str, f64)>) -> Vec<Reward> {
    rewards.into_iter().map(|(n, v)| Reward::new(n, v)).collect()
}

/// A data file's text field: a JSON string as it is, a number as JSON writes it (re-grpo's files hold both for
/// answers and ids); `None` for anything else or a missing field.
pub fn json_text(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        v @ serde_json::Value::Number(_) => Some(v.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RewardTable;
    use grpo_sdk::Role;

    const WORDING: Wording = Wording {
        native_system: "native",
        hermes_system: "hermes",
        result_labels: &[("search", "Search results")],
        separator: ":\n",
        answer_now: "Answer now.",
        call_or_answer: "Call again or answer.",
    };

    #[test]
    fn native_labels_follow_the_tool_and_the_outcome() {
        let text = |tool, ok, last| WORDING.tool_messages(ToolFormat::Native, tool, "out", ok, last)[0].content.clone();
        assert_eq!(text("search", true, true), "Search results:\nout\n\nAnswer now.");
        assert_eq!(text("calc", true, false), "Tool result:\nout\n\nCall again or answer.");
        assert_eq!(text("search", false, true), "Tool error:\nout\n\nAnswer now.");
    }

    #[test]
    fn hermes_sends_a_tool_message_then_the_instruction() {
        let m = WORDING.tool_messages(ToolFormat::Hermes, "calc", "bad input", false, true);
        assert_eq!((m[0].role, m[0].content.as_str()), (Role::Tool, "error: bad input"));
        assert_eq!((m[1].role, m[1].content.as_str()), (Role::User, "Answer now."));
        assert_eq!(WORDING.system_prompt(None, ToolFormat::Hermes), "hermes");
        assert_eq!(WORDING.system_prompt(Some("mine"), ToolFormat::Hermes), "mine");
    }

    #[test]
    fn step_counts_flags_and_carries_rewards() {
        let counters = FlagCounters::default();
        let mut episode = Episode::new(3);
        counters.episode_started();
        let table = RewardTable::default();
        let play = |episode: &mut Episode, reply: &str| {
            step(episode, &counters, ToolFormat::Native, &WORDING, |e| {
                e.step(
                    reply,
                    &table,
                    |t| crate::protocol::find_call(t, ToolFormat::Native, "expression"),
                    |c| Ok(c.input.clone()),
                    |a| a == "4",
                )
            })
        };
        let first = play(&mut episode, "<tool:calc>2+2</tool>");
        assert!(!first.done);
        assert_eq!(first.messages[0].content, "Tool result:\n2+2\n\nCall again or answer.");
        let second = play(&mut episode, "<tool:calc>2*2</tool>");
        // Turn three of three must answer, so the instruction says so.
        assert_eq!(second.messages[0].content, "Tool result:\n2*2\n\nAnswer now.");
        let last = play(&mut episode, "<answer>4</answer>");
        assert!(last.done);
        assert_eq!(last.solved, Some(true));
        assert_eq!(first.solved, None);
        assert_eq!(last.total_reward(), table.answer_format_ok + table.answer_correct);
        let m: std::collections::HashMap<_, _> = counters.take_metrics("t").into_iter().collect();
        assert_eq!(m["t/tool_calls_per_episode"], 2.0);
        assert_eq!(m["group_rates/answer_correct"], 1.0);
    }

    #[test]
    fn json_text_reads_strings_and_numbers_only() {
        let row = serde_json::json!({"a": "x", "n": 7, "f": 1.5, "b": true});
        assert_eq!(json_text(row.get("a")).as_deref(), Some("x"));
        assert_eq!(json_text(row.get("n")).as_deref(), Some("7"));
        assert_eq!(json_text(row.get("f")).as_deref(), Some("1.5"));
        assert_eq!(json_text(row.get("b")), None);
        assert_eq!(json_text(row.get("missing")), None);
    }
}
