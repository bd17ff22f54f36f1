//! {{project-name}}: a grpo-rs environment plugin, selected with `--env {{plugin_name}}`.
//!
//! The model is asked to spell a word backwards and to put the result inside `<answer></answer>`. A wrong answer
//! gets another try (the environment says so in a user turn), up to `max_attempts`, so this one small task shows
//! both halves of the protocol: rewards for a turn, and an episode that goes on. The reward lives in one function,
//! [`score`]: change it, rebuild, and train.

use grpo_sdk::{
    Environment, Error, Message, Metric, MetricSource, Plugin, Result, Reward, Split, StepOutcome,
    Task,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// The built-in words. The last [`EVAL_WORDS`] are held out as the eval split.
const WORDS: &[&str] = &[
    "apple", "river", "garden", "pencil", "window", "silver", "planet", "candle", "forest",
    "mirror", "rocket", "basket", "orange", "bridge", "pillow", "island", "tunnel", "button",
    "violin", "carpet", "meadow", "anchor", "jacket", "lemon", "spider", "castle", "harbor",
    "puzzle", "marble", "kitten", "ladder", "saddle", "velvet", "wizard", "yellow", "zipper",
    "butter", "copper", "dragon", "falcon",
];

/// How many of [`WORDS`] form the eval split.
const EVAL_WORDS: usize = 8;

/// Our instruction; the `<answer>` tag is what [`score`] looks for.
const DEFAULT_SYSTEM_PROMPT: &str =
    "Spell the word the user gives you backwards, letter by letter. Write only the result inside \
<answer> </answer>, for example <answer>tac</answer> for cat.";

/// Options, given as JSON with `--env-config`. Unknown keys are rejected, so a misspelt option is an error
/// instead of being silently ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Assistant turns per episode: after a wrong answer the model may try again until this many were used.
    pub max_attempts: u32,
    /// Replace the system prompt.
    pub system_prompt: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_attempts: 2,
            system_prompt: None,
        }
    }
}

/// One episode: the word spelt backwards and which attempt the model is on.
pub struct Episode {
    answer: String,
    attempt: u32,
}

/// The reward of one assistant turn, as named components (they are logged one by one and summed for training):
/// `format` 0.1 for an answer inside the tags, `correct` 1.0 for the right answer on the first attempt and 0.5
/// on a later one. Returns the components and whether the answer was right.
pub fn score(text: &str, answer: &str, attempt: u32) -> (Vec<Reward>, bool) {
    let tagged = tagged_answer(text);
    let right = tagged.is_some_and(|t| t.trim() == answer);
    let correct = match (right, attempt) {
        (false, _) => 0.0,
        (true, 1) => 1.0,
        (true, _) => 0.5,
    };
    let format = if tagged.is_some() { 0.1 } else { 0.0 };
    (
        vec![
            Reward::new("format", format),
            Reward::new("correct", correct),
        ],
        right,
    )
}

/// The text inside the first `<answer>...</answer>`, if there is one.
fn tagged_answer(text: &str) -> Option<&str> {
    let start = text.find("<answer>")? + "<answer>".len();
    let len = text[start..].find("</answer>")?;
    Some(&text[start..start + len])
}

/// The plugin.
pub struct ReverseWord {
    config: Config,
    episodes: AtomicU64,
    solved: AtomicU64,
}

impl MetricSource for ReverseWord {
    /// The share of episodes that ended with the right answer since the last call.
    fn metrics(&self) -> Vec<Metric> {
        let episodes = self.episodes.swap(0, Ordering::Relaxed);
        let solved = self.solved.swap(0, Ordering::Relaxed);
        if episodes == 0 {
            return Vec::new();
        }
        vec![Metric::number(
            "{{plugin_name}}/solved_rate",
            solved as f64 / episodes as f64,
        )]
    }
}

impl ReverseWord {
    /// The words of a split, in a fixed order (the host shuffles the indices itself).
    fn words(split: Split) -> &'static [&'static str] {
        let (train, eval) = WORDS.split_at(WORDS.len() - EVAL_WORDS);
        match split {
            Split::Train => train,
            Split::Eval => eval,
        }
    }
}

impl Plugin for ReverseWord {
    const NAME: &'static str = "{{plugin_name}}";
    const DESCRIPTION: &'static str =
        "Spell a word backwards, with another try after a wrong answer";

    fn new(config: serde_json::Value) -> Result<Self> {
        let config: Config = grpo_sdk::parse_config(config)?;
        if config.max_attempts == 0 {
            return Err(Error::msg(
                "invalid config: max_attempts must be at least 1",
            ));
        }
        Ok(ReverseWord {
            config,
            episodes: AtomicU64::new(0),
            solved: AtomicU64::new(0),
        })
    }

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}

impl Environment for ReverseWord {
    type State = Episode;

    fn task_count(&self, split: Split) -> Option<u64> {
        Some(Self::words(split).len() as u64)
    }

    /// The same task for the same arguments, whatever the seed: the list is finite, so the host does the shuffling.
    fn task(&self, split: Split, _seed: u64, index: u64) -> Result<Task> {
        let words = Self::words(split);
        let word = words.get(index as usize).ok_or_else(|| {
            Error::msg(format!(
                "task index {index} is out of range: the {split:?} split has {} words",
                words.len()
            ))
        })?;
        let reversed: String = word.chars().rev().collect();
        Ok(Task::new(
            *word,
            format!("Spell \"{word}\" backwards."),
            reversed,
        ))
    }

    fn reset(&self, task: &Task) -> Result<(Episode, Vec<Message>)> {
        let system = self
            .config
            .system_prompt
            .as_deref()
            .unwrap_or(DEFAULT_SYSTEM_PROMPT);
        let episode = Episode {
            answer: task.answer.clone(),
            attempt: 1,
        };
        Ok((
            episode,
            vec![Message::system(system), Message::user(&task.question)],
        ))
    }

    fn step(&self, episode: &mut Episode, assistant_text: &str) -> Result<StepOutcome> {
        let (rewards, right) = score(assistant_text, &episode.answer, episode.attempt);
        if right || episode.attempt >= self.config.max_attempts {
            self.episodes.fetch_add(1, Ordering::Relaxed);
            if right {
                self.solved.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(StepOutcome::finished(rewards));
        }
        episode.attempt += 1;
        let retry = Message::user(
            "That is not it. Try again, and put only the result inside <answer> </answer>.",
        );
        Ok(StepOutcome::continues(vec![retry], rewards))
    }

    /// What an expert writes: the right answer on the first attempt, the best reward. `grpo-host sft --env` and
    /// `--sft-warmup-steps` train on these before reinforcement learning. Without this method an environment has
    /// no demonstrations (the SDK's default returns `None`).
    fn demonstration(&self, task: &Task) -> Result<Option<Vec<String>>> {
        Ok(Some(vec![format!("<answer>{}</answer>", task.answer)]))
    }
}

// The one line that makes this library a grpo-rs plugin: it exports the entry symbol grpo-host looks for.
grpo_sdk::export_plugins!(environment ReverseWord);

#[cfg(test)]
mod tests {
    use super::*;

    fn env(config: serde_json::Value) -> ReverseWord {
        ReverseWord::new(config).unwrap()
    }

    fn component(outcome: &StepOutcome, name: &str) -> f64 {
        outcome
            .rewards
            .iter()
            .find(|r| r.name == name)
            .unwrap()
            .value
    }

    #[test]
    fn tasks_are_deterministic_and_splits_are_disjoint() {
        let env = env(serde_json::Value::Null);
        let train = env.task_count(Split::Train).unwrap();
        let eval = env.task_count(Split::Eval).unwrap();
        assert_eq!((train + eval) as usize, WORDS.len());
        assert_eq!(
            env.task(Split::Train, 7, 3).unwrap(),
            env.task(Split::Train, 0, 3).unwrap()
        );
        let eval_words: Vec<String> = (0..eval)
            .map(|i| env.task(Split::Eval, 0, i).unwrap().id)
            .collect();
        for i in 0..train {
            assert!(!eval_words.contains(&env.task(Split::Train, 0, i).unwrap().id));
        }
        let task = env.task(Split::Train, 0, 0).unwrap();
        assert_eq!((task.id.as_str(), task.answer.as_str()), ("apple", "elppa"));
        assert!(env.task(Split::Train, 0, train).is_err());
    }

    #[test]
    fn right_first_answer_ends_the_episode_with_full_reward() {
        let env = env(serde_json::Value::Null);
        let (mut episode, opening) = env.reset(&env.task(Split::Train, 0, 0).unwrap()).unwrap();
        assert_eq!(opening.len(), 2);
        assert_eq!(opening[1].content, "Spell \"apple\" backwards.");
        let outcome = env
            .step(&mut episode, "Sure. <answer> elppa </answer>")
            .unwrap();
        assert!(outcome.done);
        assert_eq!(
            (
                component(&outcome, "format"),
                component(&outcome, "correct")
            ),
            (0.1, 1.0)
        );
    }

    #[test]
    fn a_wrong_answer_gets_one_more_try_worth_half() {
        let env = env(serde_json::Value::Null);
        let (mut episode, _) = env.reset(&env.task(Split::Train, 0, 0).unwrap()).unwrap();
        let first = env.step(&mut episode, "<answer>elpap</answer>").unwrap();
        assert!(!first.done);
        assert_eq!(first.messages.len(), 1);
        assert_eq!(first.total_reward(), 0.1);
        let second = env.step(&mut episode, "<answer>elppa</answer>").unwrap();
        assert!(second.done);
        assert_eq!(component(&second, "correct"), 0.5);
        assert_eq!(env.metrics()[0].as_number(), Some(1.0));
        assert!(
            env.metrics().is_empty(),
            "the counts start over after each pull"
        );
    }

    #[test]
    fn the_last_attempt_ends_the_episode_unsolved() {
        let env = env(serde_json::json!({ "max_attempts": 1 }));
        let (mut episode, _) = env.reset(&env.task(Split::Eval, 0, 0).unwrap()).unwrap();
        let outcome = env.step(&mut episode, "no tags at all").unwrap();
        assert!(outcome.done);
        assert_eq!(outcome.total_reward(), 0.0);
        assert_eq!(env.metrics()[0].as_number(), Some(0.0));
    }

    #[test]
    fn the_demonstration_earns_the_best_reward() {
        let env = env(serde_json::Value::Null);
        for index in 0..env.task_count(Split::Train).unwrap() {
            let task = env.task(Split::Train, 0, index).unwrap();
            let turns = env.demonstration(&task).unwrap().unwrap();
            let (mut episode, _) = env.reset(&task).unwrap();
            let outcome = env.step(&mut episode, &turns[0]).unwrap();
            assert!(outcome.done);
            assert!((outcome.total_reward() - 1.1).abs() < 1e-12);
        }
    }

    #[test]
    fn options_are_checked() {
        let unknown = ReverseWord::new(serde_json::json!({ "max_attempt": 3 }))
            .err()
            .unwrap();
        assert!(unknown.to_string().contains("unknown field"), "{unknown}");
        let zero = ReverseWord::new(serde_json::json!({ "max_attempts": 0 }))
            .err()
            .unwrap();
        assert!(zero.to_string().contains("max_attempts"), "{zero}");
        let env = env(serde_json::json!({ "system_prompt": "Reverse it." }));
        let (_, opening) = env.reset(&env.task(Split::Train, 0, 1).unwrap()).unwrap();
        assert_eq!(opening[0].content, "Reverse it.");
    }
}
