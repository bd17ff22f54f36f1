//! Chat templates render byte-identically to transformers' `apply_chat_template` for the SmolLM2, Qwen2.5,
//! Qwen3 and Llama-3.1 templates, with and without tools and the generation prompt.
//! Fixtures: `tests/oracles/model_fixtures.py` (the template texts are in tests/fixtures/model/templates/).

use std::path::Path;

use grpo_host::tokenizer::Tokenizer;
use serde_json::Value;

#[test]
fn templates_match_transformers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/model/chat");
    let mut checked = 0;
    for family in ["smollm2", "qwen2.5", "qwen3", "llama3.1"] {
        let dir = root.join(family);
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let cases: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
        assert!(cases.len() >= 4, "{family}: too few cases");
        for case in &cases {
            let messages = case["messages"].as_array().unwrap();
            let tools = case["tools"].as_array().map(|t| t.as_slice());
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            let extra = case.get("extra").and_then(Value::as_object).cloned().unwrap_or_default();
            let got = tok.render_chat_with(messages, tools, gen, &extra).unwrap();
            let want = case["expected"].as_str().unwrap();
            assert_eq!(got, want, "{family} / {}", case["name"]);
            if !extra.is_empty() {
                // The same variables set once on the tokenizer (`--chat-template-kwargs`) render the same.
                let mut set = Tokenizer::from_dir(&dir).unwrap();
                set.set_template_vars(extra.clone());
                assert_eq!(set.render_chat(messages, tools, gen).unwrap(), want, "{family} / {} (set)", case["name"]);
                assert_ne!(
                    tok.render_chat(messages, tools, gen).unwrap(),
                    want,
                    "{family} / {}: no effect",
                    case["name"]
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20);
}

#[test]
fn special_tokens_and_eos_ids_come_from_the_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/model/chat/llama3.1");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let eot = tok.token_to_id("<|eot_id|>").unwrap();
    assert!(tok.eos_token_ids().contains(&eot));
    let ids = tok.encode("<|begin_of_text|>hé", false).unwrap();
    assert_eq!(ids[0], tok.token_to_id("<|begin_of_text|>").unwrap());
    assert_eq!(tok.decode(&ids, true).unwrap(), "hé");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|begin_of_text|>hé");
}
