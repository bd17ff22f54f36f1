//! Where `calc_tools` tasks come from: a seeded arithmetic generator, or JSONL files in re-grpo's schema
//! (`{"question", "answer", "num_terms", "num_digits"}` per line).

use std::path::Path;

use grpo_sdk::{Error, Result, Task};
use grpo_toolcall::rng::{self, SplitMix64};
use grpo_toolcall::{calc, env::json_text};

/// Settings of the generator and of the file filter.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Fewest terms in a generated expression.
    pub min_terms: u32,
    /// Most terms (generator) and the `num_terms` filter for files.
    pub max_terms: u32,
    /// Most digits per number (generator) and the `num_digits` filter for files.
    pub max_digits: u32,
    /// Questions this long (in characters) or longer are skipped in files, as re-grpo does.
    pub max_question_len: usize,
}

/// Our own question wordings; `{}` is the expression.
const TEMPLATES: [&str; 5] = ["{}", "What is {}?", "Calculate {}.", "Evaluate {}", "{} = ?"];

/// Task `index` of the generator's stream `stream` (0 for training, 1 for evaluation) for `seed`. Terms are
/// integers with 1 to `max_digits` digits (the first may be negative), joined by `+`, `-` or `*`, with one pair of
/// parentheses around two or more adjacent terms about half the time. Expressions whose value is 10^8 or more in
/// magnitude are drawn again, so the answers stay readable.
pub fn generate(shape: &Shape, seed: u64, stream: u64, index: u64) -> Task {
    let mut rng = rng::for_task(seed, stream, index);
    loop {
        let n = rng.between(u64::from(shape.min_terms), u64::from(shape.max_terms.max(shape.min_terms))) as usize;
        let digits = rng.between(1, u64::from(shape.max_digits.max(1))) as u32;
        let terms: Vec<String> = (0..n)
            .map(|i| {
                let v = rng.between(0, 10u64.pow(digits) - 1);
                if i == 0 && chance(&mut rng, 0.15) && v != 0 {
                    format!("-{v}")
                } else {
                    v.to_string()
                }
            })
            .collect();
        let ops: Vec<&str> = (1..n).map(|_| *rng.pick(&["+", "-", "*"])).collect();
        let paren = if n >= 3 && chance(&mut rng, 0.5) {
            let start = rng.between(0, n as u64 - 2) as usize;
            let end = rng.between(start as u64 + 1, n as u64 - 1) as usize;
            // Parentheses around the whole expression add nothing.
            (start > 0 || end < n - 1).then_some((start, end))
        } else {
            None
        };
        let mut expr = String::new();
        for (i, term) in terms.iter().enumerate() {
            if i > 0 {
                expr.push_str(&format!(" {} ", ops[i - 1]));
            }
            if paren.is_some_and(|(s, _)| s == i) {
                expr.push('(');
            }
            expr.push_str(term);
            if paren.is_some_and(|(_, e)| e == i) {
                expr.push(')');
            }
        }
        let Ok(calc::Value::Int(answer)) = calc::evaluate(&expr) else {
            continue;
        };
        let answer = answer.to_string();
        if answer.trim_start_matches('-').len() > 8 {
            continue;
        }
        let template = rng.pick(&TEMPLATES);
        let split = if stream == 0 { "train" } else { "eval" };
        let mut task = Task::new(format!("{split}-{index}"), template.replace("{}", &expr), answer);
        task.meta = serde_json::json!({ "num_terms": n, "num_digits": digits });
        return task;
    }
}

/// The arithmetic expression in a question (`What is (3 + 4) * 2?` gives `(3 + 4) * 2`): the longest run of
/// digits, operators, parentheses, dots and spaces that holds a digit and an operator, trimmed, without a
/// sentence's final dot. `None` when the question has no such run (`What is 2 to the 10th?`).
pub fn expression_in(question: &str) -> Option<&str> {
    let allowed = |c: char| c.is_ascii_digit() || " +-*/%().".contains(c);
    let mut best: Option<&str> = None;
    let mut rest = question;
    while let Some(start) = rest.find(allowed) {
        let run = &rest[start..];
        let len = run.find(|c: char| !allowed(c)).unwrap_or(run.len());
        let candidate = run[..len].trim().trim_end_matches('.').trim();
        let has_digit = candidate.contains(|c: char| c.is_ascii_digit());
        // An operator after the first character: a lone negative number is not an expression to calculate.
        let has_op = candidate.char_indices().any(|(i, c)| i > 0 && "+-*/%".contains(c));
        if has_digit && has_op && best.is_none_or(|b| candidate.len() > b.len()) {
            best = Some(candidate);
        }
        rest = &run[len..];
    }
    best
}

/// True with probability `p`; `<=` rather than `<`, as the generator has always drawn, so tasks stay the same.
fn chance(rng: &mut SplitMix64, p: f64) -> bool {
    rng.unit() <= p
}

/// One row in re-grpo's schema (`question`, `answer`, optional `id`, `num_terms`, `num_digits`) as a task:
/// `None` when the shape filters it out (`len(question) < max_question_len`, `num_terms <= max_terms`,
/// `num_digits <= max_digits`; missing counts pass), an error naming the missing field.
pub fn row_task(row: &serde_json::Value, shape: &Shape, default_id: impl FnOnce() -> String) -> Result<Option<Task>> {
    let question =
        row.get("question").and_then(|q| q.as_str()).ok_or_else(|| Error::msg("missing the \"question\" string"))?;
    let answer = json_text(row.get("answer")).ok_or_else(|| Error::msg("missing the \"answer\" string"))?;
    let count = |key: &str| row.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
    if question.chars().count() >= shape.max_question_len
        || count("num_terms") > u64::from(shape.max_terms)
        || count("num_digits") > u64::from(shape.max_digits)
    {
        return Ok(None);
    }
    let id = json_text(row.get("id")).unwrap_or_else(default_id);
    let mut task = Task::new(id, question, answer);
    task.meta = serde_json::json!({ "num_terms": count("num_terms"), "num_digits": count("num_digits") });
    Ok(Some(task))
}

/// Read tasks from a JSONL file in re-grpo's schema ([`row_task`]), up to `max_rows`. Blank lines are skipped; any
/// other line that is not such an object is an error naming the file and line.
pub fn load_jsonl(path: &Path, shape: &Shape, max_rows: usize) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::msg(format!("cannot read task file {}: {e}", path.display())))?;
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if tasks.len() >= max_rows {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{}:{}", path.display(), i + 1);
        let row: serde_json::Value =
            serde_json::from_str(line).map_err(|e| Error::msg(format!("{}: not a JSON object: {e}", where_())))?;
        let task = row_task(&row, shape, || format!("line-{}", i + 1))
            .map_err(|e| Error::msg(format!("{}: {e}", where_())))?;
        tasks.extend(task);
    }
    if tasks.is_empty() {
        return Err(Error::msg(format!(
            "no usable tasks in {}: each line needs \"question\" and \"answer\", a question shorter than {} characters, \
             num_terms <= {} and num_digits <= {} (change max_terms / max_digits in --env-config to keep more)",
            path.display(),
            shape.max_question_len,
            shape.max_terms,
            shape.max_digits
        )));
    }
    Ok(tasks)
}
