//! `grpo-host play`: one episode of an environment with scripted assistant replies instead of a model. It is how
//! environment authors try their work, and how tests drive the environments through the real plugin boundary.

use std::collections::BTreeMap;

use clap::Args;
use grpo_sdk::{Message, Role, Split, StepOutcome, Task};
use serde_json::json;

use super::plugins::PluginDirArgs;
use crate::plugins::Registry;
use crate::user_error;

/// `grpo-host play --env NAME [--task N | --question TEXT --answer TEXT] --reply TEXT [--reply TEXT ...]`.
#[derive(Debug, Args)]
pub struct PlayArgs {
    /// The environment plugin to play.
    #[arg(long, value_name = "NAME")]
    pub env: String,

    /// The environment's options: a JSON object, or `@FILE` holding one (as in training).
    #[arg(long = "env-config", value_name = "JSON|@FILE")]
    pub env_config: Option<String>,

    /// Play task number N of the environment's task list (default 0).
    #[arg(long, value_name = "N", conflicts_with = "question")]
    pub task: Option<u64>,

    /// Which split --task counts in.
    #[arg(long, value_name = "SPLIT", default_value = "train")]
    pub split: SplitArg,

    /// The seed that picks generated tasks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Play this question instead of a task from the environment.
    #[arg(long, value_name = "TEXT", requires = "answer")]
    pub question: Option<String>,

    /// The reference answer for --question.
    #[arg(long, value_name = "TEXT", requires = "question")]
    pub answer: Option<String>,

    /// An assistant turn, in order; repeat for each turn. Replies left when the episode ends are not used.
    #[arg(long = "reply", value_name = "TEXT", required_unless_present = "demonstration")]
    pub replies: Vec<String>,

    /// Play the environment's own demonstration for the task instead of --reply turns.
    #[arg(long, conflicts_with = "replies")]
    pub demonstration: bool,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub plugin_dirs: PluginDirArgs,
}

crate::choice_enum! {
    /// `--split`: the environment's task list to count `--task` in.
    pub enum SplitArg {
        /// Training tasks.
        Train = "train",
        /// Held-out tasks.
        Eval = "eval",
    }
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Eval => Split::Eval,
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// A reward for people: at most six decimals, and always one (`2.0`, `-0.1`, `0.5`).
fn show_reward(x: f64) -> String {
    let s = format!("{:.6}", x);
    let s = s.trim_end_matches('0');
    let s = if s.ends_with('.') { format!("{s}0") } else { s.to_string() };
    if s == "-0.0" {
        "0.0".into()
    } else {
        s
    }
}

fn print_message(m: &Message) {
    let who = match (&m.role, &m.name) {
        (Role::Tool, Some(name)) => format!("tool {name}"),
        (role, _) => role_name(*role).to_string(),
    };
    println!("--- {who} ---");
    println!("{}", m.content);
}

/// Run the episode; returns the exit code.
pub fn run(args: PlayArgs) -> anyhow::Result<i32> {
    let config = super::args::json_option(args.env_config.as_deref(), "--env-config")?;
    let registry = Registry::discover(&args.plugin_dirs.discovery())?;
    let env = registry.environment(&args.env, &config)?;
    let split = Split::from(args.split);
    let task = match (args.question, args.answer) {
        (Some(question), answer) => Task::new("cli", question, answer.unwrap_or_default()),
        (None, _) => {
            let index = args.task.unwrap_or(0);
            if let Some(n) = env.task_count(split)? {
                if index >= n {
                    return Err(user_error!(
                        "--task {index}: {} has {n} {} tasks (0..{n}); pick a smaller number or use --question",
                        args.env,
                        args.split
                    ));
                }
            }
            env.task(split, args.seed, index)?
        }
    };
    let replies = if args.demonstration {
        env.demonstration(&task)?.ok_or_else(|| {
            user_error!(
                "--demonstration: {} has no demonstration for task {}; pass --reply turns instead",
                args.env,
                task.id
            )
        })?
    } else {
        args.replies
    };
    let (mut episode, opening) = env.reset(&task)?;
    let mut transcript: Vec<Message> = opening.clone();
    let mut steps = Vec::new();
    let mut totals: BTreeMap<String, f64> = BTreeMap::new();
    let mut done = false;
    let mut used = 0;
    if !args.json {
        println!("task {}: {}", task.id, task.question);
        if !task.answer.is_empty() {
            println!("reference answer: {}", task.answer);
        }
        opening.iter().for_each(print_message);
    }
    for reply in &replies {
        used += 1;
        let outcome: StepOutcome = episode.step(reply)?;
        let assistant = Message::assistant(reply.clone());
        if !args.json {
            print_message(&assistant);
            for r in &outcome.rewards {
                println!("  reward {} = {}", r.name, show_reward(r.value));
            }
            outcome.messages.iter().for_each(print_message);
        }
        transcript.push(assistant);
        transcript.extend(outcome.messages.iter().cloned());
        for r in &outcome.rewards {
            *totals.entry(r.name.clone()).or_insert(0.0) += r.value;
        }
        done = outcome.done;
        steps.push(json!({
            "reply": reply,
            "messages": outcome.messages,
            "rewards": outcome.rewards,
            "done": outcome.done,
        }));
        if done {
            break;
        }
    }
    let total: f64 = totals.values().sum();
    let unused = replies.len() - used;
    let metrics = env.metrics()?;
    if args.json {
        let out = json!({
            "env": args.env,
            "task": task,
            "messages": transcript,
            "steps": steps,
            "rewards": totals,
            "total_reward": total,
            "done": done,
            "unused_replies": unused,
            "metrics": metrics,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    println!("=== result ===");
    for (name, value) in &totals {
        println!("{name}: {}", show_reward(*value));
    }
    println!("total reward: {}", show_reward(total));
    if done {
        println!("done: true");
    } else {
        println!("done: false (the episode expects another --reply)");
    }
    if unused > 0 {
        println!("({unused} reply(s) not used: the episode ended first)");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_print_with_one_decimal_at_least() {
        assert_eq!(show_reward(2.0), "2.0");
        assert_eq!(show_reward(0.2 + 0.5 - 0.8), "-0.1");
        assert_eq!(show_reward(0.5), "0.5");
        assert_eq!(show_reward(-0.0), "0.0");
        assert_eq!(show_reward(1.0 / 3.0), "0.333333");
    }

    #[test]
    fn env_config_reads_inline_json_or_an_at_file() {
        let read = |v: Option<&str>| super::super::args::json_option(v, "--env-config");
        assert_eq!(read(None).unwrap(), serde_json::Value::Null);
        assert_eq!(read(Some("{\"a\": 1}")).unwrap()["a"], 1);
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "{\"b\": 2}").unwrap();
        assert_eq!(read(Some(&format!("@{}", f.path().display()))).unwrap()["b"], 2);
        let err = read(Some("@/no/such/file.json")).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2);
        let err = read(Some("{oops")).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"));
    }
}
