//! Final answers: finding them in a text (re-grpo's `<answer>` tags, MATH's `\boxed{...}`, GSM8K's `#### 42`) and
//! deciding whether two of them are the same number or expression. The equivalence is deliberately small and
//! exact: numbers become fractions of integers (so `0.5`, `1/2` and `\frac{1}{2}` are one value, and no rounding
//! tolerance is needed), and the LaTeX and unit decorations that graders of GSM8K and MATH strip are stripped.
//! Anything else is compared as text with the spaces removed. The table in docs/environments.md is pinned by
//! `tests/answers.rs`.

use serde::{Deserialize, Serialize};

/// Where a reference answer sits in a dataset's answer column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceFormat {
    /// After GSM8K's `####` if there is one, else the last `\boxed{}`, else the first `<answer>` tags, else the
    /// whole text.
    Auto,
    /// After the last `####` (GSM8K's solutions end with `#### 42`); rows without one are skipped.
    Gsm8k,
    /// Inside the last `\boxed{...}` (MATH's solutions); rows without one are skipped.
    Boxed,
    /// The whole text, trimmed.
    Plain,
}

/// A way a reply may state its final answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyFormat {
    /// The first `<answer>...</answer>` (re-grpo's protocol; the captured text is not trimmed).
    AnswerTag,
    /// The last `\boxed{...}`.
    Boxed,
    /// The text after the last `####`, to the end of its line.
    Hashes,
}

/// How a found answer is compared with the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    /// Byte for byte (re-grpo).
    String,
    /// As decimal numbers (`" 42 "` and `42.0` are equal), else byte for byte.
    Numeric,
    /// [`equivalent`]: numbers with separators, decimals, fractions, `\frac`, signs and units; else text without
    /// spaces.
    Math,
}

/// The text between the first `<answer>` and the next `</answer>`, untrimmed.
pub fn answer_tag(text: &str) -> Option<&str> {
    let open = text.find("<answer>")?;
    let rest = &text[open + "<answer>".len()..];
    let close = rest.find("</answer>")?;
    Some(&rest[..close])
}

/// The contents of the last `\boxed{...}` (or `\fbox{...}`), braces balanced.
pub fn boxed(text: &str) -> Option<&str> {
    let start = ["\\boxed{", "\\fbox{"].iter().filter_map(|m| text.rfind(m).map(|i| i + m.len() - 1)).max()?;
    braced(&text[start..]).map(|(body, _)| body)
}

/// For `s` starting with `{`: the text up to the matching `}` and what follows it.
fn braced(s: &str) -> Option<(&str, &str)> {
    let inner = s.strip_prefix('{')?;
    let mut depth = 1usize;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&inner[..i], &inner[i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
}

/// The text after the last `####`, to the end of its line, trimmed (GSM8K).
pub fn after_hashes(text: &str) -> Option<&str> {
    let at = text.rfind("####")?;
    let rest = &text[at + 4..];
    let line = rest.lines().next().unwrap_or_default().trim();
    (!line.is_empty()).then_some(line)
}

/// A reply's answer in the first of `formats` that finds one.
pub fn find_reply_answer<'a>(text: &'a str, formats: &[ReplyFormat]) -> Option<&'a str> {
    formats.iter().find_map(|f| match f {
        ReplyFormat::AnswerTag => answer_tag(text),
        ReplyFormat::Boxed => boxed(text),
        ReplyFormat::Hashes => after_hashes(text),
    })
}

/// The reference answer in a dataset's answer text; `None` when `format` asks for a marker the text lacks.
pub fn reference(text: &str, format: ReferenceFormat) -> Option<String> {
    let found = match format {
        ReferenceFormat::Auto => {
            after_hashes(text).or_else(|| boxed(text)).or_else(|| answer_tag(text).map(str::trim)).or(Some(text.trim()))
        }
        ReferenceFormat::Gsm8k => after_hashes(text),
        ReferenceFormat::Boxed => boxed(text).map(str::trim),
        ReferenceFormat::Plain => Some(text.trim()),
    };
    found.filter(|s| !s.is_empty()).map(str::to_string)
}

/// Whether `found` equals `reference` under `compare`.
pub fn same(found: &str, reference: &str, compare: Compare) -> bool {
    match compare {
        Compare::String => found == reference,
        Compare::Numeric => match (found.trim().parse::<f64>(), reference.trim().parse::<f64>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => found == reference,
        },
        Compare::Math => equivalent(found, reference),
    }
}

/// A rational number `num / den`, reduced, `den > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ratio {
    num: i128,
    den: i128,
}

impl Ratio {
    fn new(num: i128, den: i128) -> Option<Ratio> {
        if den == 0 {
            return None;
        }
        let g = gcd(num.unsigned_abs(), den.unsigned_abs()).max(1) as i128;
        let sign = if den < 0 { -1 } else { 1 };
        Some(Ratio { num: sign * num / g, den: sign * den / g })
    }

    fn div(self, other: Ratio) -> Option<Ratio> {
        Ratio::new(self.num.checked_mul(other.den)?, self.den.checked_mul(other.num)?)
    }

    fn neg(self) -> Ratio {
        Ratio { num: -self.num, den: self.den }
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Whether two answers are the same: as numbers when both read as one ([`parse_number`]), else as text after
/// [`normalize`] with every space removed.
pub fn equivalent(a: &str, b: &str) -> bool {
    let (na, nb) = (normalize(a), normalize(b));
    match (parse_number(&na), parse_number(&nb)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => {
            let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            squash(&na) == squash(&nb)
        }
        _ => false,
    }
}

/// Strip what does not change an answer's value: math delimiters (`$`, `\(`, `\[`), spacing commands, `\left` and
/// `\right`, `\dfrac`/`\tfrac` (as `\frac`), `\text{}`-like wrappers (their words stay, as units), degree and
/// percent signs, currency dollars, LaTeX's `{,}` thousands separator and Unicode thin spaces, the Unicode minus, a
/// final full stop and outer braces.
pub fn normalize(s: &str) -> String {
    let mut t = s.trim().to_string();
    for (open, close) in [("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")] {
        if t.len() >= open.len() + close.len() && t.starts_with(open) && t.ends_with(close) {
            t = t[open.len()..t.len() - close.len()].trim().to_string();
        }
    }
    for w in ["\\text", "\\textbf", "\\mathrm", "\\mbox", "\\textrm"] {
        t = unwrap_command(&t, w);
    }
    const DROP: [&str; 19] = [
        "\\left",
        "\\right",
        "\\!",
        "\\,",
        "\\;",
        "\\:",
        "\\ ",
        "~",
        "^{\\circ}",
        "^\\circ",
        "\\circ",
        "°",
        // Thin and narrow no-break spaces: SI-style thousands separators (`1 000`), as LaTeX's `\,` above.
        "\u{2009}",
        "\u{202F}",
        "\\%",
        "%",
        "\\$",
        "$",
        "{,}",
    ];
    for d in DROP {
        t = t.replace(d, if d == "\\ " || d == "~" { " " } else { "" });
    }
    t = t.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace('\u{2212}', "-");
    let mut t = t.trim().trim_end_matches('.').trim().to_string();
    while let Some((body, "")) = braced(&t) {
        t = body.trim().to_string();
    }
    t
}

/// `\cmd{x}` replaced by ` x` everywhere (the space keeps `5\text{cm}` a number and a unit).
fn unwrap_command(s: &str, cmd: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    let pattern = format!("{cmd}{{");
    while let Some(at) = rest.find(&pattern) {
        out.push_str(&rest[..at]);
        match braced(&rest[at + pattern.len() - 1..]) {
            Some((body, after)) => {
                out.push(' ');
                out.push_str(body);
                rest = after;
            }
            None => {
                out.push_str(&rest[at..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A normalized answer read as one number (perhaps in parentheses): an optional sign; an integer (thousands separated by `,` in groups of
/// three, or not at all), a decimal, `a/b`, or `\frac{a}{b}` (`\frac12` too); then nothing, or units (words after
/// a space). `None` for anything else (expressions, intervals, several numbers, numbers too long for i128).
pub fn parse_number(s: &str) -> Option<Ratio> {
    let s = s.trim();
    // One number in parentheses is that number (`(-3)`); `(1, 2)` is not one number and stays text.
    if let Some(inner) = s.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        return parse_number(inner);
    }
    let (negative, body) = match s.as_bytes().first()? {
        b'-' => (true, s[1..].trim_start()),
        b'+' => (false, s[1..].trim_start()),
        _ => (false, s),
    };
    let (value, rest) = if let Some(frac) = body.strip_prefix("\\frac") {
        let (a, rest) = frac_argument(frac)?;
        let (b, rest) = frac_argument(rest)?;
        (parse_number(a)?.div(parse_number(b)?)?, rest)
    } else {
        let (a, rest) = literal(body)?;
        match rest.strip_prefix('/') {
            Some(after) => {
                let (b, rest) = literal(after)?;
                (a.div(b)?, rest)
            }
            None => (a, rest),
        }
    };
    units_only(rest).then_some(if negative { value.neg() } else { value })
}

/// One argument of `\frac`: `{...}` or a single character.
fn frac_argument(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.starts_with('{') {
        return braced(s);
    }
    let c = s.chars().next()?;
    Some((&s[..c.len_utf8()], &s[c.len_utf8()..]))
}

/// A decimal literal at the start of `s` and what follows it.
fn literal(s: &str) -> Option<(Ratio, &str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut digits = String::new();
    while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b',') {
        i += 1;
    }
    let int_part = &s[..i];
    if int_part.contains(',') {
        // Thousands separators only: 1,000 and 12,345,678, never 1,2 or 1,0000.
        let groups: Vec<&str> = int_part.split(',').collect();
        let first = groups[0].len();
        if !(1..=3).contains(&first) || groups[1..].iter().any(|g| g.len() != 3) {
            return None;
        }
    }
    digits.extend(int_part.chars().filter(|c| *c != ','));
    let mut scale: u32 = 0;
    if i < bytes.len() && bytes[i] == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            digits.push(bytes[i] as char);
            scale += 1;
            i += 1;
        }
    }
    if digits.is_empty() {
        return None;
    }
    let num: i128 = digits.parse().ok()?;
    Some((Ratio::new(num, 10i128.checked_pow(scale)?)?, &s[i..]))
}

/// Whether what follows a number is nothing, or units: a space, then words (letters, with `^2`, `/` or `.`).
fn units_only(rest: &str) -> bool {
    if rest.trim().is_empty() {
        return true;
    }
    rest.starts_with(char::is_whitespace) && {
        let words = rest.trim();
        words.starts_with(|c: char| c.is_alphabetic())
            && words
                .chars()
                .all(|c| c.is_alphabetic() || c.is_whitespace() || "^/.²³".contains(c) || c.is_ascii_digit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extractors_find_the_answer() {
        assert_eq!(answer_tag("x <answer> 4 </answer> <answer>5</answer>"), Some(" 4 "));
        assert_eq!(boxed("so \\boxed{\\frac{1}{2}} or \\boxed{3}"), Some("3"));
        assert_eq!(boxed("\\boxed{\\frac{1}{2}}"), Some("\\frac{1}{2}"));
        assert_eq!(boxed("\\boxed{unclosed"), None);
        assert_eq!(after_hashes("She pays 5+3=8.\n#### 8"), Some("8"));
        assert_eq!(after_hashes("no marker"), None);
        assert_eq!(reference("Natalia sold 48/2 = 24 clips.\n#### 72", ReferenceFormat::Auto).as_deref(), Some("72"));
        assert_eq!(reference("so it is $\\boxed{5}$.", ReferenceFormat::Auto).as_deref(), Some("5"));
        assert_eq!(reference(" 42 ", ReferenceFormat::Auto).as_deref(), Some("42"));
        assert_eq!(reference("no box", ReferenceFormat::Boxed), None);
    }

    #[test]
    fn numbers_parse_exactly() {
        let r = |a, b| Ratio::new(a, b).unwrap();
        assert_eq!(parse_number("1,234.50"), Some(r(2469, 2)));
        assert_eq!(parse_number("-\\frac{3}{4}"), Some(r(-3, 4)));
        assert_eq!(parse_number("\\frac12"), Some(r(1, 2)));
        assert_eq!(parse_number("6/8"), Some(r(3, 4)));
        assert_eq!(parse_number("12 apples"), Some(r(12, 1)));
        assert_eq!(parse_number("3x"), None);
        assert_eq!(parse_number("1,2"), None);
        assert_eq!(parse_number("2, 3"), None);
        assert_eq!(parse_number("x"), None);
    }
}
