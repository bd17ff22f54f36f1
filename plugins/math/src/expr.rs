//! Generating arithmetic expressions and evaluating them exactly (integers, usual precedence, parentheses).

use crate::GeneratorConfig;
use grpo_sdk::rng::SplitMix64;

/// A random expression as text, with its number of terms and of digits per number.
pub fn generate(rng: &mut SplitMix64, g: &GeneratorConfig) -> (String, u32, u32) {
    let terms = rng.between(g.min_terms as u64, g.max_terms as u64) as u32;
    let digits = rng.between(g.min_digits as u64, g.max_digits as u64) as u32;
    let ops: Vec<char> = g.ops.chars().collect();
    (build(rng, g, &ops, terms, digits), terms, digits)
}

fn build(rng: &mut SplitMix64, g: &GeneratorConfig, ops: &[char], terms: u32, digits: u32) -> String {
    if terms == 1 {
        return rng.below(10u64.pow(digits)).to_string();
    }
    // A random binary split; a multi-term part is parenthesised with the configured probability.
    let left_terms = rng.between(1, terms as u64 - 1) as u32;
    let op = ops[rng.below(ops.len() as u64) as usize];
    let part = |n: u32, rng: &mut SplitMix64| {
        let text = build(rng, g, ops, n, digits);
        if n > 1 && rng.unit() < g.parentheses {
            format!("({text})")
        } else {
            text
        }
    };
    let left = part(left_terms, rng);
    let right = part(terms - left_terms, rng);
    format!("{left} {op} {right}")
}

/// The exact value of `text` (integers, `+ - *`, parentheses, usual precedence), or `None` if it does not parse
/// or overflows.
pub fn evaluate(text: &str) -> Option<i128> {
    let tokens: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut pos = 0;
    let value = sum(&tokens, &mut pos)?;
    (pos == tokens.len()).then_some(value)
}

fn sum(t: &[char], pos: &mut usize) -> Option<i128> {
    let mut acc = product(t, pos)?;
    while let Some(&op) = t.get(*pos) {
        if op != '+' && op != '-' {
            break;
        }
        *pos += 1;
        let rhs = product(t, pos)?;
        acc = if op == '+' { acc.checked_add(rhs)? } else { acc.checked_sub(rhs)? };
    }
    Some(acc)
}

fn product(t: &[char], pos: &mut usize) -> Option<i128> {
    let mut acc = atom(t, pos)?;
    while t.get(*pos) == Some(&'*') {
        *pos += 1;
        acc = acc.checked_mul(atom(t, pos)?)?;
    }
    Some(acc)
}

fn atom(t: &[char], pos: &mut usize) -> Option<i128> {
    match t.get(*pos)? {
        '(' => {
            *pos += 1;
            let v = sum(t, pos)?;
            (t.get(*pos) == Some(&')')).then(|| *pos += 1)?;
            Some(v)
        }
        '-' => {
            *pos += 1;
            atom(t, pos)?.checked_neg()
        }
        c if c.is_ascii_digit() => {
            let start = *pos;
            while t.get(*pos).is_some_and(|c| c.is_ascii_digit()) {
                *pos += 1;
            }
            t[start..*pos].iter().collect::<String>().parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_parentheses() {
        assert_eq!(evaluate("2 + 3 * 4"), Some(14));
        assert_eq!(evaluate("(2 + 3) * 4"), Some(20));
        assert_eq!(evaluate("10 - 4 - 3"), Some(3));
        assert_eq!(evaluate("7 * (1 - 9)"), Some(-56));
        assert_eq!(evaluate("-(2 + 3)"), Some(-5));
        assert_eq!(evaluate("2 +"), None);
        assert_eq!(evaluate("(2"), None);
    }
}
