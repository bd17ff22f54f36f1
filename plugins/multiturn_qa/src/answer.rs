//! Comparing a free-form answer with the reference.

use serde::{Deserialize, Serialize};

/// How answers are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AnswerMatch {
    /// Equal after [`normalize`] (default).
    #[default]
    Normalized,
    /// The normalized reference appears, as whole words, inside the normalized answer.
    Contains,
    /// Equal after trimming, as re-grpo.
    Exact,
}

/// Lowercase; drop thousands separators inside numbers (`1,234` to `1234`) and trailing zeros of decimals
/// (`3.50` to `3.5`, `7.0` to `7`); turn other punctuation into spaces; drop the articles `a`, `an`, `the`; collapse
/// whitespace.
pub fn normalize(text: &str) -> String {
    let lower = text.to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let mut cleaned = String::with_capacity(lower.len());
    for (i, &c) in chars.iter().enumerate() {
        let digit_before = i > 0 && chars[i - 1].is_ascii_digit();
        let digit_after = chars.get(i + 1).is_some_and(|d| d.is_ascii_digit());
        if c.is_alphanumeric() || c.is_whitespace() {
            cleaned.push(c);
        } else if c == ',' && digit_before && digit_after {
            // A thousands separator: keep the digits together.
        } else if c == '.' && digit_before && digit_after {
            cleaned.push('.');
        } else {
            cleaned.push(' ');
        }
    }
    let words: Vec<String> = cleaned
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| {
            if w.contains('.') && w.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                w.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    words.join(" ")
}

/// Whether `given` matches `expected` under `mode`.
pub fn matches(mode: AnswerMatch, given: &str, expected: &str) -> bool {
    match mode {
        AnswerMatch::Exact => given.trim() == expected.trim(),
        AnswerMatch::Normalized => {
            let e = normalize(expected);
            !e.is_empty() && normalize(given) == e
        }
        AnswerMatch::Contains => {
            let e = normalize(expected);
            !e.is_empty() && format!(" {} ", normalize(given)).contains(&format!(" {e} "))
        }
    }
}

/// Token-level F1 between the normalized answers (SQuAD's measure): a softer score, reported as a metric.
pub fn token_f1(given: &str, expected: &str) -> f64 {
    let g = normalize(given);
    let e = normalize(expected);
    let g: Vec<&str> = g.split(' ').filter(|w| !w.is_empty()).collect();
    let e: Vec<&str> = e.split(' ').filter(|w| !w.is_empty()).collect();
    if g.is_empty() || e.is_empty() {
        return f64::from(u8::from(g.is_empty() && e.is_empty()));
    }
    let mut remaining = e.clone();
    let mut common = 0usize;
    for w in &g {
        if let Some(pos) = remaining.iter().position(|x| x == w) {
            remaining.swap_remove(pos);
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let p = common as f64 / g.len() as f64;
    let r = common as f64 / e.len() as f64;
    2.0 * p * r / (p + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        assert_eq!(normalize("  The Oxygen-Tank  #2! "), "oxygen tank 2");
        assert_eq!(normalize("1,234.50 km"), "1234.5 km");
        assert_eq!(normalize("7.0"), "7");
        assert!(matches(AnswerMatch::Normalized, "a lidar array.", "a lidar array"));
        assert!(matches(AnswerMatch::Normalized, "Mara  okafor", "Mara Okafor"));
        assert!(!matches(AnswerMatch::Normalized, "Okafor", "Mara Okafor"));
        assert!(matches(AnswerMatch::Contains, "It was founded in 1987.", "1987"));
        assert!(!matches(AnswerMatch::Contains, "It was founded in 19870.", "1987"));
        assert!(!matches(AnswerMatch::Exact, "1987 ", "1988"));
        assert!(matches(AnswerMatch::Exact, " 1987 ", "1987"));
        assert!(!matches(AnswerMatch::Normalized, "!!!", "?"));
        assert!((token_f1("Mara Okafor", "Okafor") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_f1("x", "y"), 0.0);
    }
}
