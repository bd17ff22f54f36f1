//! The two-turn tool-call protocol of re-grpo's multi-turn experiments, shared by `calc_tools` and `multiturn_qa`.
//!
//! Turn one: the model reasons and calls a tool; the environment runs it and shows the result. Turn two: the model
//! answers inside `<answer>...</answer>`. Four reward components score the episode (values from re-grpo, all
//! configurable): the tool-call format, the tool's execution, the answer's format and the answer's content. The
//! gating is re-grpo's: no tool call, or a failed call, ends the episode early.
//!
//! This module is plain Rust with no SDK types, so it can be tested on its own; [`crate::env`] translates [`Turn`]
//! into the SDK's messages and rewards.

use serde::{Deserialize, Serialize};

/// How the model writes a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ToolFormat {
    /// re-grpo's tags: `<tool:NAME>INPUT</tool>`; the result comes back as a user message.
    #[default]
    Native,
    /// The Hermes / Qwen2.5 format: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; the tools are
    /// declared to the chat template and the result comes back as a tool message.
    Hermes,
}

/// A tool call found in a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The tool's name as the model wrote it.
    pub name: String,
    /// The input text (native: the tag's content, trimmed; Hermes: the tool's main argument).
    pub input: String,
}

/// What a reply holds in the tool-call position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallParse {
    /// No tool call at all.
    Missing,
    /// A tool call written in a way we cannot read (Hermes: the JSON between the tags is not a call object).
    Malformed(String),
    /// A well-formed call (which may still name an unknown tool or fail to run).
    Call(ToolCall),
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Find the first `<tool:NAME>INPUT</tool>` as re-grpo's regex `<tool:(\w+)>(.*?)</tool>` (DOTALL) does: the
/// leftmost opening tag whose name is followed by `>` and that has a closing `</tool>` somewhere after it; the input
/// runs to the nearest closing tag and is trimmed. Later calls in the same reply are ignored.
pub fn find_native_call(text: &str) -> Option<ToolCall> {
    const OPEN: &str = "<tool:";
    const CLOSE: &str = "</tool>";
    let mut from = 0;
    while let Some(rel) = text[from..].find(OPEN) {
        let start = from + rel;
        let name_start = start + OPEN.len();
        let name_len: usize = text[name_start..].chars().take_while(|c| is_word_char(*c)).map(char::len_utf8).sum();
        let name_end = name_start + name_len;
        if name_len > 0 && text[name_end..].starts_with('>') {
            let body = name_end + 1;
            if let Some(close) = text[body..].find(CLOSE) {
                return Some(ToolCall {
                    name: text[name_start..name_end].to_string(),
                    input: text[body..body + close].trim().to_string(),
                });
            }
            // No closing tag after this opening tag means none after any later one either.
            return None;
        }
        from = name_start;
    }
    None
}

/// Find the first `<tool_call>...</tool_call>` and read the JSON call object inside. `arg_key` names the argument
/// that becomes [`ToolCall::input`] (`expression` for the calculator, `query` for search); a string, number or
/// boolean there is taken as its text. Arguments given as a JSON string holding an object (some models do this) are
/// accepted too.
pub fn find_hermes_call(text: &str, arg_key: &str) -> CallParse {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let Some(start) = text.find(OPEN) else {
        return CallParse::Missing;
    };
    let body = start + OPEN.len();
    let Some(close) = text[body..].find(CLOSE) else {
        return CallParse::Malformed("<tool_call> has no closing </tool_call>".into());
    };
    let json = text[body..body + close].trim();
    let value: serde_json::Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => return CallParse::Malformed(format!("the tool call is not valid JSON: {e}")),
    };
    let Some(name) = value.get("name").and_then(|n| n.as_str()) else {
        return CallParse::Malformed("the tool call has no \"name\" string".into());
    };
    let mut args = value.get("arguments").cloned().unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::String(s) = &args {
        if let Ok(inner @ serde_json::Value::Object(_)) = serde_json::from_str(s) {
            args = inner;
        }
    }
    let input = match args.get(arg_key) {
        Some(serde_json::Value::String(s)) => s.trim().to_string(),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
        _ => String::new(),
    };
    CallParse::Call(ToolCall { name: name.to_string(), input })
}

/// Find a tool call in `format`.
pub fn find_call(text: &str, format: ToolFormat, arg_key: &str) -> CallParse {
    match format {
        ToolFormat::Native => find_native_call(text).map_or(CallParse::Missing, CallParse::Call),
        ToolFormat::Hermes => find_hermes_call(text, arg_key),
    }
}

/// Write a call of `tool` with `input` in `format`, as a demonstration's tool turn: `<tool:NAME>INPUT</tool>`, or a
/// Hermes `<tool_call>` whose argument `arg_key` holds `input`. [`find_call`] reads it back as this call.
pub fn write_call(format: ToolFormat, tool: &str, arg_key: &str, input: &str) -> String {
    match format {
        ToolFormat::Native => format!("<tool:{tool}>{input}</tool>"),
        ToolFormat::Hermes => {
            // Written by hand so the keys come in the order Hermes-style templates show them (name first).
            let text = |s: &str| serde_json::Value::from(s).to_string();
            format!(
                "<tool_call>{{\"name\": {}, \"arguments\": {{{}: {}}}}}</tool_call>",
                text(tool),
                text(arg_key),
                text(input)
            )
        }
    }
}

/// Write a final answer as [`parse_answer`] reads it: `<answer>ANSWER</answer>`.
pub fn write_answer(answer: &str) -> String {
    format!("<answer>{}</answer>", answer.trim())
}

/// The answer in a reply that consists of exactly one `<answer>...</answer>`, surrounded by nothing but whitespace,
/// as re-grpo's `^\s*<answer>(.*?)</answer>\s*$` (DOTALL): the content runs from the first opening tag to the last
/// closing tag and is trimmed. Text before or after the tags is a format error.
pub fn parse_answer(text: &str) -> Option<&str> {
    const OPEN: &str = "<answer>";
    const CLOSE: &str = "</answer>";
    let t = text.trim();
    if t.len() >= OPEN.len() + CLOSE.len() && t.starts_with(OPEN) && t.ends_with(CLOSE) {
        Some(t[OPEN.len()..t.len() - CLOSE.len()].trim())
    } else {
        None
    }
}

/// Reward values of the four components. The defaults are re-grpo's; reachable totals are -0.5 (no tool call),
/// -0.8 (tool failed), -0.1 (bad answer format), 0.5 (wrong answer) and 2.0 (correct).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardTable {
    /// `step1_tool_call_format` when the first turn calls a tool.
    pub tool_call_format_ok: f64,
    /// `step1_tool_call_format` when it does not (the episode ends).
    pub tool_call_format_bad: f64,
    /// `step1_tool_execution` when the tool runs.
    pub tool_execution_ok: f64,
    /// `step1_tool_execution` when the tool fails or is unknown (the episode ends).
    pub tool_execution_bad: f64,
    /// `step2_answer_format` for a well-formed answer.
    pub answer_format_ok: f64,
    /// `step2_answer_format` otherwise (the episode ends).
    pub answer_format_bad: f64,
    /// `step2_answer_content` for a correct answer.
    pub answer_correct: f64,
    /// `step2_answer_content` for a well-formed wrong answer.
    pub answer_wrong: f64,
}

impl Default for RewardTable {
    fn default() -> Self {
        RewardTable {
            tool_call_format_ok: 0.2,
            tool_call_format_bad: -0.5,
            tool_execution_ok: 0.5,
            tool_execution_bad: -1.0,
            answer_format_ok: 0.3,
            answer_format_bad: -0.8,
            answer_correct: 1.0,
            answer_wrong: -0.5,
        }
    }
}

impl RewardTable {
    /// The best return an episode can earn: a tool call that runs, then a well-formed correct answer.
    pub fn best_total(&self) -> f64 {
        self.tool_call_format_ok + self.tool_execution_ok + self.answer_format_ok + self.answer_correct
    }
}

/// Reward component names, as re-grpo logs them.
pub mod names {
    /// Did the first turn call a tool.
    pub const TOOL_CALL_FORMAT: &str = "step1_tool_call_format";
    /// Did that call run.
    pub const TOOL_EXECUTION: &str = "step1_tool_execution";
    /// Is the final reply one `<answer>` tag.
    pub const ANSWER_FORMAT: &str = "step2_answer_format";
    /// Is the answer right.
    pub const ANSWER_CONTENT: &str = "step2_answer_content";
}

/// The facts of one episode that the host aggregates into `group_rates/*` and the tool metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeFlags {
    /// The first turn called a tool (well-formed, any name).
    pub tool_called: bool,
    /// That first call ran without error.
    pub tool_exec_ok: bool,
    /// The final reply was a well-formed answer.
    pub answer_format_ok: bool,
    /// The answer was right.
    pub answer_correct: bool,
    /// Tool calls made in the episode (one per turn at most).
    pub tool_calls: u32,
    /// Of those, how many failed (unknown tool, bad input, tool error).
    pub tool_failures: u32,
}

/// What the environment does after one assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// The model called a tool and it ran (or, after the first call, failed without ending the episode): show the
    /// result and wait for the next turn.
    ToolResult {
        /// The tool that ran.
        tool: String,
        /// Its output, or the error text when `ok` is false.
        text: String,
        /// Whether the tool succeeded.
        ok: bool,
        /// Reward components earned by this turn (name, value).
        rewards: Vec<(&'static str, f64)>,
    },
    /// The episode is over.
    Done {
        /// Reward components earned by this turn (name, value).
        rewards: Vec<(&'static str, f64)>,
    },
}

/// One episode of the protocol: which turn we are in, and the flags so far.
#[derive(Debug, Clone)]
pub struct Episode {
    /// Assistant turns taken so far.
    pub turns: u32,
    /// The turn limit: the last turn must be the answer.
    pub max_turns: u32,
    /// What happened so far.
    pub flags: EpisodeFlags,
    /// Whether the episode has ended; later turns are answered with an error and no reward.
    pub done: bool,
}

impl Episode {
    /// A fresh episode allowing `max_turns` assistant turns (at least 2: one tool call and the answer).
    pub fn new(max_turns: u32) -> Self {
        Episode { turns: 0, max_turns: max_turns.max(2), flags: EpisodeFlags::default(), done: false }
    }

    /// Read one assistant turn. `find` looks for a tool call, `run` executes one (`Err` is a structured failure:
    /// unknown tool, bad input, tool error) and `is_correct` judges an answer's content.
    ///
    /// The first turn must call a tool: no call (or an unreadable one) scores `step1_tool_call_format` negative and
    /// ends the episode; a failed call scores `step1_tool_execution` negative and ends it. After a successful first
    /// call, each later turn may call a tool again (up to the turn limit, with no further reward) or answer; the last
    /// allowed turn must answer. An answer ends the episode with `step2_answer_format` and, when well-formed,
    /// `step2_answer_content`.
    pub fn step(
        &mut self,
        reply: &str,
        rewards: &RewardTable,
        find: impl Fn(&str) -> CallParse,
        run: impl Fn(&ToolCall) -> Result<String, String>,
        is_correct: impl Fn(&str) -> bool,
    ) -> Turn {
        if self.done {
            return Turn::Done { rewards: Vec::new() };
        }
        self.turns += 1;
        let last_turn = self.turns >= self.max_turns;
        if self.turns == 1 {
            let call = match find(reply) {
                CallParse::Call(call) => call,
                CallParse::Missing | CallParse::Malformed(_) => {
                    self.done = true;
                    return Turn::Done { rewards: vec![(names::TOOL_CALL_FORMAT, rewards.tool_call_format_bad)] };
                }
            };
            self.flags.tool_called = true;
            self.flags.tool_calls += 1;
            return match run(&call) {
                Ok(text) => {
                    self.flags.tool_exec_ok = true;
                    Turn::ToolResult {
                        tool: call.name,
                        text,
                        ok: true,
                        rewards: vec![
                            (names::TOOL_CALL_FORMAT, rewards.tool_call_format_ok),
                            (names::TOOL_EXECUTION, rewards.tool_execution_ok),
                        ],
                    }
                }
                Err(_) => {
                    self.flags.tool_failures += 1;
                    self.done = true;
                    Turn::Done {
                        rewards: vec![
                            (names::TOOL_CALL_FORMAT, rewards.tool_call_format_ok),
                            (names::TOOL_EXECUTION, rewards.tool_execution_bad),
                        ],
                    }
                }
            };
        }
        if let Some(answer) = parse_answer(reply) {
            self.done = true;
            self.flags.answer_format_ok = true;
            let correct = is_correct(answer);
            self.flags.answer_correct = correct;
            let content = if correct { rewards.answer_correct } else { rewards.answer_wrong };
            return Turn::Done {
                rewards: vec![(names::ANSWER_FORMAT, rewards.answer_format_ok), (names::ANSWER_CONTENT, content)],
            };
        }
        if !last_turn {
            if let CallParse::Call(call) = find(reply) {
                self.flags.tool_calls += 1;
                let (text, ok) = match run(&call) {
                    Ok(text) => (text, true),
                    Err(e) => {
                        self.flags.tool_failures += 1;
                        (e, false)
                    }
                };
                return Turn::ToolResult { tool: call.name, text, ok, rewards: Vec::new() };
            }
        }
        self.done = true;
        Turn::Done { rewards: vec![(names::ANSWER_FORMAT, rewards.answer_format_bad)] }
    }
}

/// Compare two answers as numbers when both read as numbers (`7`, `7.0`, `-1,234`, `1e3`), else as trimmed strings.
/// Integers compare exactly; otherwise the relative difference must be below 1e-9.
pub fn answers_match_numerically(given: &str, expected: &str) -> bool {
    match (parse_number(given), parse_number(expected)) {
        (Some(a), Some(b)) => numbers_equal(&a, &b),
        _ => given.trim() == expected.trim(),
    }
}

fn numbers_equal(a: &crate::calc::Value, b: &crate::calc::Value) -> bool {
    use crate::calc::Value;
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x == y,
        _ => {
            let f = |v: &Value| match v {
                Value::Int(i) => i.to_string().parse::<f64>().unwrap_or(f64::NAN),
                Value::Float(x) => *x,
            };
            let (x, y) = (f(a), f(b));
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
    }
}

/// Read a plain number: an optional sign, digits with optional thousands separators (`1,234,567`), an optional
/// fraction and exponent. Expressions, units and words are not numbers.
pub fn parse_number(text: &str) -> Option<crate::calc::Value> {
    let t = text.trim();
    let (sign, body) = match t.as_bytes().first()? {
        b'-' => ("-", &t[1..]),
        b'+' => ("", &t[1..]),
        _ => ("", t),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let int_digits = if int_part.contains(',') {
        let groups: Vec<&str> = int_part.split(',').collect();
        let first_ok = (1..=3).contains(&groups[0].len());
        let rest_ok = groups[1..].iter().all(|g| g.len() == 3);
        if !first_ok || !rest_ok {
            return None;
        }
        groups.concat()
    } else {
        int_part.to_string()
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(&int_digits) || int_digits.len() > 400 {
        return None;
    }
    if let Some(f) = frac_part {
        if !all_digits(f) || (int_digits.is_empty() && f.is_empty()) || f.len() > 400 {
            return None;
        }
    } else if int_digits.is_empty() {
        return None;
    }
    if let Some(e) = exponent {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        if e.is_empty() || !all_digits(e) || e.len() > 5 {
            return None;
        }
    }
    if frac_part.is_none() && exponent.is_none() {
        let digits = int_digits.trim_start_matches('0');
        let digits = if digits.is_empty() { "0" } else { digits };
        return format!("{sign}{digits}").parse().ok().map(crate::calc::Value::Int);
    }
    let exp = exponent.map(|e| format!("e{e}")).unwrap_or_default();
    let text = format!(
        "{sign}{}.{}{exp}",
        if int_digits.is_empty() { "0" } else { &int_digits },
        frac_part.filter(|f| !f.is_empty()).unwrap_or("0")
    );
    text.parse::<f64>().ok().map(crate::calc::Value::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_calls_and_answers_read_back() {
        for format in [ToolFormat::Native, ToolFormat::Hermes] {
            let call = write_call(format, "calc", "expression", "(12 + 7) * \"3\"");
            let want = ToolCall { name: "calc".into(), input: "(12 + 7) * \"3\"".into() };
            assert_eq!(find_call(&call, format, "expression"), CallParse::Call(want), "{call}");
        }
        assert_eq!(
            write_call(ToolFormat::Hermes, "search", "query", "x"),
            r#"<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call>"#
        );
        assert_eq!(parse_answer(&write_answer(" 42 ")), Some("42"));
        assert_eq!(RewardTable::default().best_total(), 2.0);
    }

    #[test]
    fn native_call_follows_the_regex() {
        let c = find_native_call("I'll compute. <tool:calc> 2**10 </tool> done").unwrap();
        assert_eq!((c.name.as_str(), c.input.as_str()), ("calc", "2**10"));
        // Only the first call counts; the input stops at the nearest closing tag.
        let c = find_native_call("<tool:calc>1+1</tool><tool:search>x</tool>").unwrap();
        assert_eq!(c.input, "1+1");
        let c = find_native_call("<tool:calc><tool:calc>1</tool></tool>").unwrap();
        assert_eq!(c.input, "<tool:calc>1");
        // A broken first opening tag does not hide a later good one.
        let c = find_native_call("<tool:>x</tool> <tool: calc>y</tool> <tool:calc>3</tool>").unwrap();
        assert_eq!(c.input, "3");
        assert_eq!(find_native_call("<tool:calc>1+1"), None);
        assert_eq!(find_native_call("no call"), None);
        let c = find_native_call("<tool:calc>\n\n</tool>").unwrap();
        assert_eq!(c.input, "");
        let c = find_native_call("<tool:калькулятор>1</tool>").unwrap();
        assert_eq!(c.name, "калькулятор");
    }

    #[test]
    fn hermes_call_reads_json() {
        let t = "<tool_call>\n{\"name\": \"calc\", \"arguments\": {\"expression\": \"2**10\"}}\n</tool_call>";
        assert_eq!(
            find_hermes_call(t, "expression"),
            CallParse::Call(ToolCall { name: "calc".into(), input: "2**10".into() })
        );
        let t = "<tool_call>{\"name\": \"calc\", \"arguments\": \"{\\\"expression\\\": 7}\"}</tool_call>";
        assert_eq!(
            find_hermes_call(t, "expression"),
            CallParse::Call(ToolCall { name: "calc".into(), input: "7".into() })
        );
        assert!(matches!(find_hermes_call("<tool_call>{oops}</tool_call>", "q"), CallParse::Malformed(_)));
        assert!(matches!(find_hermes_call("<tool_call>{\"name\": 1}</tool_call>", "q"), CallParse::Malformed(_)));
        assert!(matches!(find_hermes_call("<tool_call>{\"name\": \"x\"}", "q"), CallParse::Malformed(_)));
        assert_eq!(find_hermes_call("nothing", "q"), CallParse::Missing);
    }

    #[test]
    fn answer_must_be_the_whole_reply() {
        assert_eq!(parse_answer("  <answer> 1024 </answer>\n"), Some("1024"));
        assert_eq!(parse_answer("<answer></answer>"), Some(""));
        assert_eq!(parse_answer("So <answer>1</answer>"), None);
        assert_eq!(parse_answer("<answer>1</answer> ok"), None);
        assert_eq!(parse_answer("<answer>a</answer><answer>b</answer>"), Some("a</answer><answer>b"));
        assert_eq!(parse_answer("<answer>"), None);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(answers_match_numerically("7.0", "7"));
        assert!(answers_match_numerically("1,234", "1234"));
        assert!(answers_match_numerically("-0012", "-12"));
        assert!(answers_match_numerically("1e3", "1000"));
        assert!(!answers_match_numerically("7.5", "7"));
        assert!(!answers_match_numerically("1,23", "123"));
        assert!(!answers_match_numerically("2**10", "1024"));
        assert!(answers_match_numerically(" abc ", "abc"));
        assert!(!answers_match_numerically("", "0"));
        assert!(answers_match_numerically("123456789012345678901234567890", "123456789012345678901234567890"));
        assert!(!answers_match_numerically("123456789012345678901234567891", "123456789012345678901234567890"));
    }

    fn play(replies: &[&str], max_turns: u32) -> (f64, EpisodeFlags, bool) {
        let mut ep = Episode::new(max_turns);
        let mut total = 0.0;
        for r in replies {
            let turn = ep.step(
                r,
                &RewardTable::default(),
                |t| find_call(t, ToolFormat::Native, "expression"),
                |c| {
                    if c.name != "calc" {
                        return Err(format!("unknown tool {}", c.name));
                    }
                    crate::calc::evaluate(&c.input).map(|v| v.to_string()).map_err(|e| e.to_string())
                },
                |a| answers_match_numerically(a, "1024"),
            );
            let rewards = match &turn {
                Turn::ToolResult { rewards, .. } | Turn::Done { rewards } => rewards,
            };
            total += rewards.iter().map(|(_, v)| v).sum::<f64>();
        }
        (total, ep.flags, ep.done)
    }

    #[test]
    fn reward_table_case_by_case() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let (r, f, done) = play(&["I know it: <answer>1024</answer>"], 2);
        assert!(close(r, -0.5) && !f.tool_called && done);
        let (r, f, done) = play(&["<tool:calc>2**</tool>"], 2);
        assert!(close(r, -0.8) && f.tool_called && !f.tool_exec_ok && done);
        let (r, f, _) = play(&["<tool:python>2**10</tool>"], 2);
        assert!(close(r, -0.8) && f.tool_failures == 1);
        let (r, f, done) = play(&["<tool:calc>2**10</tool>", "It is 1024"], 2);
        assert!(close(r, -0.1) && f.tool_exec_ok && !f.answer_format_ok && done);
        let (r, f, _) = play(&["<tool:calc>2**10</tool>", "<answer>1000</answer>"], 2);
        assert!(close(r, 0.5) && f.answer_format_ok && !f.answer_correct);
        let (r, f, _) = play(&["<tool:calc>2**10</tool>", "<answer>1024</answer>"], 2);
        assert!(close(r, 2.0) && f.answer_correct);
        // With a longer limit, a second call is allowed but earns nothing, and failures are counted.
        let (r, f, _) = play(&["<tool:calc>2**10</tool>", "<tool:calc>1/0</tool>", "<answer>1024.0</answer>"], 3);
        assert!(close(r, 2.0) && f.tool_calls == 2 && f.tool_failures == 1);
        // At the last turn a tool call is a bad answer.
        let (r, _, done) = play(&["<tool:calc>2**10</tool>", "<tool:calc>1</tool>"], 2);
        assert!(close(r, -0.1) && done);
        // Turns after the end earn nothing.
        let (r, _, _) = play(&["<answer>1024</answer>", "<tool:calc>1</tool>", "<answer>1024</answer>"], 2);
        assert!(close(r, -0.5));
    }
}
