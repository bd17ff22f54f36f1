//! The plain data that crosses the boundary: chat messages, tasks, rewards, tool declarations.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Who speaks a chat message. Chat templates render each role their own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions before the conversation.
    System,
    /// The user (or an environment speaking as the user).
    User,
    /// The model being trained.
    Assistant,
    /// A tool's result, for templates that render tool turns.
    Tool,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What is said.
    pub content: String,
    /// For [`Role::Tool`] messages: the tool that produced the content (some templates show it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into(), name: None }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }

    /// A tool result from the tool called `name`.
    pub fn tool(name: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: Role::Tool, content: content.into(), name: Some(name.into()) }
    }
}

/// Which part of an environment's tasks to draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u32)]
pub enum Split {
    /// Tasks to train on.
    Train = 0,
    /// Held-out tasks for evaluation.
    Eval = 1,
}

/// One task: what the episode starts from. The host logs `question` and `answer`; `meta` is the environment's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// A stable identifier (a row number, a generator index), for logs and reproducibility.
    pub id: String,
    /// The question as a person would read it.
    pub question: String,
    /// The reference answer, if the task has one (empty otherwise).
    #[serde(default)]
    pub answer: String,
    /// Anything else the environment needs in `reset` (difficulty, context, tool data).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
}

impl Task {
    /// A task without extra data.
    pub fn new(id: impl Into<String>, question: impl Into<String>, answer: impl Into<String>) -> Self {
        Task { id: id.into(), question: question.into(), answer: answer.into(), meta: serde_json::Value::Null }
    }
}

/// One named reward component. An episode's return is the sum of every component of every step, so components can
/// be logged separately (`format`, `tool_exec`, `answer`) and still add up to what training uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    /// The component's name, such as `answer` or `step1_format`.
    pub name: String,
    /// Its value; must be finite.
    pub value: f64,
}

impl Reward {
    /// A reward component.
    pub fn new(name: impl Into<String>, value: f64) -> Self {
        Reward { name: name.into(), value }
    }
}

/// What an environment answers to one assistant turn.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepOutcome {
    /// Messages to append after the assistant's turn (tool results, the next user turn). Empty when done.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Reward components earned by this turn.
    #[serde(default)]
    pub rewards: Vec<Reward>,
    /// Whether the episode is over. The host also ends episodes at its turn limit.
    pub done: bool,
    /// Whether the episode solved its task, judged by the environment (usually on the final step); `None` when
    /// this step does not judge. Evaluation's accuracy and pass@k count episodes whose last judgement is `true`;
    /// an environment that never judges gets returns but no accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solved: Option<bool>,
}

impl StepOutcome {
    /// The episode ends with these rewards.
    pub fn finished(rewards: Vec<Reward>) -> Self {
        StepOutcome { messages: Vec::new(), rewards, done: true, solved: None }
    }

    /// The episode goes on with these messages appended; `rewards` are those earned so far by this turn.
    pub fn continues(messages: Vec<Message>, rewards: Vec<Reward>) -> Self {
        StepOutcome { messages, rewards, done: false, solved: None }
    }

    /// The same outcome, judging whether the episode solved its task (see [`StepOutcome::solved`]).
    pub fn judged(mut self, solved: bool) -> Self {
        self.solved = Some(solved);
        self
    }

    /// The sum of this step's reward components.
    pub fn total_reward(&self) -> f64 {
        self.rewards.iter().map(|r| r.value).sum()
    }
}

/// A tool an environment offers, for chat templates that render tool declarations (OpenAI function style).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The name the model calls it by.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// A JSON schema of its arguments.
    pub parameters: serde_json::Value,
}

/// Read a plugin's JSON config into its config struct; `null` (no config given) reads as `{}` so that a struct
/// with `#[serde(default)]` gets its defaults. Unknown keys are an error when the struct says
/// `#[serde(deny_unknown_fields)]`, which is recommended: a misspelt option should not be silently ignored.
///
/// ```
/// #[derive(serde::Deserialize)]
/// #[serde(default, deny_unknown_fields)]
/// struct Config { eps: f64 }
/// impl Default for Config { fn default() -> Self { Config { eps: 1e-8 } } }
///
/// let c: Config = grpo_sdk::parse_config(serde_json::Value::Null).unwrap();
/// assert_eq!(c.eps, 1e-8);
/// let err = grpo_sdk::parse_config::<Config>(serde_json::json!({"epz": 1})).err().unwrap();
/// assert!(err.to_string().contains("unknown field `epz`"));
/// ```
pub fn parse_config<C: DeserializeOwned>(config: serde_json::Value) -> crate::Result<C> {
    let config = if config.is_null() { serde_json::Value::Object(Default::default()) } else { config };
    serde_json::from_value(config).map_err(|e| crate::Error::msg(format!("invalid config: {e}")))
}
