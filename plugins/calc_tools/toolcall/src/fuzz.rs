//! Random and adversarial model replies, for testing that an environment never panics on bad input.

use crate::rng;

/// Pieces that stress tag parsing: halves of tags, nesting, JSON fragments, hostile expressions, odd characters.
const FRAGMENTS: [&str; 40] = [
    "<tool:calc>",
    "</tool>",
    "<tool:",
    "<tool:search>",
    "<tool:unknown>",
    "<tool:calc ",
    "<tool:>",
    "</tool",
    "<answer>",
    "</answer>",
    "<answer",
    "answer>",
    "<tool_call>",
    "</tool_call>",
    "{\"name\": \"calc\", \"arguments\": {\"expression\": \"",
    "{\"name\": \"search\", \"arguments\": {\"query\": \"",
    "\"}}",
    "{\"name\": 5}",
    "{",
    "}",
    "2**10",
    "1024",
    "9**9**9**9",
    "1/0",
    "(((((",
    ")))))",
    "-",
    "**",
    "apollo oxygen tank",
    " ",
    "\n",
    "\t",
    "\u{0}",
    "é",
    "ж",
    "🙂",
    "\u{200b}",
    "\\",
    "\"",
    "station founded",
];

/// Reply number `index` of the fuzz stream `seed`: a mix of fragments and random characters, now and then a huge
/// reply (up to 100 kB) or a tag around a huge or empty input.
pub fn reply(seed: u64, index: u64) -> String {
    let mut rng = rng::for_task(seed, 0xf022, index);
    let kind = rng.between(0, 9);
    match kind {
        0 => {
            // Huge input inside a tag.
            let n = rng.between(1, 100_000) as usize;
            let body: String = std::iter::repeat_n(*rng.pick(&["9", "(", "a ", "ж", "1+"]), n).collect();
            let tag = *rng.pick(&["<tool:calc>", "<tool:search>", "<answer>", "<tool_call>"]);
            let close = *rng.pick(&["</tool>", "</answer>", "</tool_call>", ""]);
            let mut s = format!("{tag}{body}{close}");
            let mut end = s.len().min(100_000);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s
        }
        1 => {
            // Empty or whitespace tags.
            (*rng.pick(&["<tool:calc></tool>", "<tool:search>  \n </tool>", "<answer></answer>", "", "   "]))
                .to_string()
        }
        2 => {
            // Random code points.
            let n = rng.between(0, 200);
            (0..n).map(|_| char::from_u32(rng.between(0, 0x2_0000) as u32).unwrap_or('\u{fffd}')).collect()
        }
        _ => {
            let n = rng.between(1, 24);
            (0..n).map(|_| *rng.pick(&FRAGMENTS)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replies_are_bounded_and_deterministic() {
        for i in 0..2000 {
            let r = super::reply(1, i);
            assert!(r.len() <= 100_000);
            assert_eq!(r, super::reply(1, i));
        }
    }
}
