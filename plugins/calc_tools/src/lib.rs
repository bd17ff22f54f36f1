//! The `calc_tools` environment: re-grpo's multi-turn calculator tool calling.
//!
//! Turn one: the model reasons and calls `<tool:calc>EXPRESSION</tool>` (or a Hermes `<tool_call>`); the
//! environment evaluates the expression with a safe calculator ([`grpo_toolcall::calc`]) and shows the result.
//! Turn two: the model answers `<answer>...</answer>`. Rewards follow re-grpo's table and gating
//! ([`grpo_toolcall::protocol`]); the differences from re-grpo are documented in docs/environments.md.
//!
//! `--env-config` accepts the JSON object described by [`CalcConfig`].

use std::path::PathBuf;

use grpo_sdk::{Environment, Error, Message, Metric, MetricSource, Result, Split, StepOutcome, Task, ToolSpec};
use grpo_toolcall::env::{self, Wording};
use grpo_toolcall::protocol::{self, Episode, RewardTable, ToolCall, ToolFormat};
use grpo_toolcall::{calc, stats::FlagCounters};
use serde::{Deserialize, Serialize};

pub mod tasks;

/// How an answer is compared with the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compare {
    /// As numbers when both sides read as numbers (`7.0` equals `7`, `1,024` equals `1024`), else as strings.
    #[default]
    Number,
    /// Exact string equality after trimming, as re-grpo.
    Exact,
}

/// The `--env-config` of `calc_tools`. Every field is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalcConfig {
    /// A JSONL file of training tasks in re-grpo's schema; without it, tasks come from the built-in generator.
    pub data_path: Option<PathBuf>,
    /// A JSONL file of evaluation tasks; without it (and with `data_path`), there is no evaluation split.
    pub eval_data_path: Option<PathBuf>,
    /// Most rows kept from a file (re-grpo's `--max-prompts`).
    pub max_prompts: usize,
    /// File rows whose question has this many characters or more are skipped (re-grpo: 128).
    pub max_question_len: usize,
    /// Fewest terms in a generated expression.
    pub min_terms: u32,
    /// Most terms in a generated expression; file rows with more `num_terms` are skipped.
    pub max_terms: u32,
    /// Most digits per generated number; file rows with more `num_digits` are skipped.
    pub max_digits: u32,
    /// Size of the generator's evaluation split.
    pub eval_tasks: u64,
    /// `native` (`<tool:calc>...</tool>`, re-grpo) or `hermes` (`<tool_call>{...}</tool_call>`).
    pub tool_format: ToolFormat,
    /// Assistant turns per episode (at least 2). With more than 2, the model may call the calculator again before
    /// answering; only the first call is rewarded.
    pub max_turns: u32,
    /// `number` (default) or `exact` answer comparison.
    pub compare: Compare,
    /// Reward values (re-grpo's by default).
    pub rewards: RewardTable,
    /// Replaces the built-in system prompt.
    pub system_prompt: Option<String>,
}

impl Default for CalcConfig {
    fn default() -> Self {
        CalcConfig {
            data_path: None,
            eval_data_path: None,
            max_prompts: 1024,
            max_question_len: 128,
            min_terms: 2,
            max_terms: 3,
            max_digits: 3,
            eval_tasks: 200,
            tool_format: ToolFormat::Native,
            max_turns: 2,
            compare: Compare::Number,
            rewards: RewardTable::default(),
            system_prompt: None,
        }
    }
}

const NATIVE_SYSTEM: &str = "You solve arithmetic problems with the help of a calculator, in two turns.\n\
First turn: think briefly, then call the calculator once by writing <tool:calc>EXPRESSION</tool>. The expression \
may use numbers, parentheses and the operators + - * / // % **.\n\
Second turn: you will see the calculator's result. Reply with the final answer only, as <answer>NUMBER</answer>.";

const HERMES_SYSTEM: &str = "You solve arithmetic problems with the help of the calc tool, in two turns.\n\
First turn: think briefly, then call the calc tool once with the expression to evaluate. The expression may use \
numbers, parentheses and the operators + - * / // % **.\n\
Second turn: you will see the tool's result. Reply with the final answer only, as <answer>NUMBER</answer>.";

const WORDING: Wording = Wording {
    native_system: NATIVE_SYSTEM,
    hermes_system: HERMES_SYSTEM,
    result_labels: &[],
    separator: ": ",
    answer_now: "Now reply with the final answer only, as <answer>...</answer>.",
    call_or_answer: "Call the tool again if you need to, or reply with the final answer only, as <answer>...</answer>.",
};

/// The calculator's name, as the model calls it.
pub const TOOL_NAME: &str = calc::TOOL_NAME;

/// The environment. Cheap to share: tasks are generated on demand or held in memory.
pub struct CalcTools {
    config: CalcConfig,
    shape: tasks::Shape,
    train: Option<Vec<Task>>,
    eval: Option<Vec<Task>>,
    counters: FlagCounters,
}

/// One episode: the protocol's progress and the reference answer.
pub struct CalcState {
    episode: Episode,
    answer: String,
}

impl CalcTools {
    /// The resolved configuration.
    pub fn settings(&self) -> &CalcConfig {
        &self.config
    }

    fn run_tool(&self, call: &ToolCall) -> std::result::Result<String, String> {
        if call.name != TOOL_NAME {
            return Err(format!("unknown tool '{}'; the only tool is '{TOOL_NAME}'", call.name));
        }
        calc::run_tool(&call.input)
    }

    fn is_correct(&self, given: &str, expected: &str) -> bool {
        match self.config.compare {
            Compare::Number => protocol::answers_match_numerically(given, expected),
            Compare::Exact => given.trim() == expected.trim(),
        }
    }
}

impl MetricSource for CalcTools {
    /// `group_rates/{tool_called,tool_exec_ok,answer_format_ok,answer_correct}` and
    /// `calc_tools/{tool_calls_per_episode,tool_failures_per_episode,episodes}` over the episodes since the last call.
    fn metrics(&self) -> Vec<Metric> {
        self.counters.take_sdk_metrics("calc_tools")
    }
}

impl grpo_sdk::Plugin for CalcTools {
    const NAME: &'static str = "calc_tools";
    const DESCRIPTION: &'static str = "Arithmetic with a calculator tool: call <tool:calc>, then <answer> (re-grpo)";

    fn new(config: serde_json::Value) -> Result<Self> {
        let config: CalcConfig = grpo_sdk::parse_config(config)?;
        if config.min_terms < 1 || config.max_terms < config.min_terms || config.max_digits < 1 || config.max_digits > 9
        {
            return Err(Error::msg(
                "invalid calc_tools config: need 1 <= min_terms <= max_terms and 1 <= max_digits <= 9",
            ));
        }
        let shape = tasks::Shape {
            min_terms: config.min_terms,
            max_terms: config.max_terms,
            max_digits: config.max_digits,
            max_question_len: config.max_question_len,
        };
        let train = match &config.data_path {
            Some(p) => Some(tasks::load_jsonl(p, &shape, config.max_prompts)?),
            None => None,
        };
        let eval = match &config.eval_data_path {
            Some(p) => Some(tasks::load_jsonl(p, &shape, usize::MAX)?),
            None => None,
        };
        Ok(CalcTools { config, shape, train, eval, counters: FlagCounters::default() })
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or(serde_json::Value::Null)
    }
}

impl Environment for CalcTools {
    type State = CalcState;

    fn tools(&self) -> Vec<ToolSpec> {
        match self.config.tool_format {
            ToolFormat::Native => Vec::new(),
            ToolFormat::Hermes => vec![ToolSpec {
                name: TOOL_NAME.into(),
                description: "Evaluate an arithmetic expression with integers and decimals, parentheses and + - * / \
                              // % ** (Python semantics), and return the result."
                    .into(),
                parameters: serde_json::json!({
                    "type": "object",
                    "properties": {
                        "expression": { "type": "string", "description": "The expression, such as (12 + 7) * 3" }
                    },
                    "required": ["expression"]
                }),
            }],
        }
    }

    fn task_count(&self, split: Split) -> Option<u64> {
        match (split, &self.train, &self.eval) {
            (Split::Train, Some(rows), _) | (Split::Eval, _, Some(rows)) => Some(rows.len() as u64),
            (Split::Train, None, _) => None,
            (Split::Eval, None, None) => Some(self.config.eval_tasks),
            (Split::Eval, Some(_), None) => Some(0),
        }
    }

    fn task(&self, split: Split, seed: u64, index: u64) -> Result<Task> {
        let rows = match split {
            Split::Train => &self.train,
            Split::Eval => &self.eval,
        };
        match rows {
            Some(rows) => rows
                .get(index as usize)
                .cloned()
                .ok_or_else(|| Error::msg(format!("task index {index} out of range (0..{})", rows.len()))),
            None if split == Split::Eval && self.train.is_some() => {
                Err(Error::msg("calc_tools has no evaluation tasks: set eval_data_path in --env-config"))
            }
            None => Ok(tasks::generate(&self.shape, seed, split as u64, index)),
        }
    }

    fn reset(&self, task: &Task) -> Result<(CalcState, Vec<Message>)> {
        self.counters.episode_started();
        let system = WORDING.system_prompt(self.config.system_prompt.as_deref(), self.config.tool_format);
        let user = format!("Use the calculator to solve: {}", task.question);
        Ok((
            CalcState { episode: Episode::new(self.config.max_turns), answer: task.answer.clone() },
            vec![Message::system(system), Message::user(user)],
        ))
    }

    fn step(&self, state: &mut CalcState, assistant_text: &str) -> Result<StepOutcome> {
        let format = self.config.tool_format;
        let answer = &state.answer;
        Ok(env::step(&mut state.episode, &self.counters, format, &WORDING, |episode| {
            episode.step(
                assistant_text,
                &self.config.rewards,
                |t| protocol::find_call(t, format, "expression"),
                |c| self.run_tool(c),
                |a| self.is_correct(a, answer),
            )
        }))
    }

    /// A row of `--dataset` / `--eval-data` in the schema of `data_path` (`question`, `answer`, optional `id`,
    /// `num_terms`, `num_digits`), filtered by the same shape limits.
    fn task_from_row(&self, _split: Split, index: u64, row: &serde_json::Value) -> Result<Option<Task>> {
        tasks::row_task(row, &self.shape, || format!("row-{index}"))
    }

    /// Call the calculator with the question's expression, then answer with its result: the best return of the
    /// reward table. `None` when the question holds no expression whose value is the reference answer.
    fn demonstration(&self, task: &Task) -> Result<Option<Vec<String>>> {
        let Some(expression) = tasks::expression_in(&task.question) else {
            return Ok(None);
        };
        let Ok(result) = calc::run_tool(expression) else {
            return Ok(None);
        };
        if !self.is_correct(&result, &task.answer) {
            return Ok(None);
        }
        let call = protocol::write_call(self.config.tool_format, TOOL_NAME, "expression", expression);
        Ok(Some(vec![call, protocol::write_answer(&result)]))
    }
}

grpo_sdk::export_plugins!(environment CalcTools);
