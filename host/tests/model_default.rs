//! Greedy generation with the default model (SmolLM2-135M-Instruct) equals transformers' greedy output, for each
//! prompt alone and for all prompts in one batch. Needs the default model, which `cargo xtask setup` installs and
//! `cargo xtask test` sets up first (about 5 s in a debug build). Fixture: `~/.cache/grpo-rs/venv/bin/python tests/oracles/model_default_greedy.py`.

mod common;

use std::path::Path;

use grpo_host::generate::{generate, GenerateRequest};
use grpo_host::model::Model;
use grpo_host::tokenizer::Tokenizer;
use serde_json::Value;
use tch::{Device, Kind};

#[test]
fn default_model_greedy_matches_transformers() {
    let dir = grpo_host::paths::default_model_dir();
    assert!(
        dir.join("config.json").exists(),
        "the default model is missing at {}; run `cargo xtask setup`",
        dir.display()
    );
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/model/default_greedy.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    for device in common::devices("default_model_greedy_matches_transformers") {
        greedy_matches(&dir, &tok, &v, device);
    }
}

/// The fixture's greedy completions, alone and batched, from the model on `device` in f32.
fn greedy_matches(dir: &Path, tok: &Tokenizer, v: &Value, device: Device) {
    let model = Model::load(dir, device, Kind::Float).unwrap();
    let max_new = v["max_new_tokens"].as_u64().unwrap() as usize;
    let ids = |x: &Value| -> Vec<u32> { x.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect() };
    let mut prompts = Vec::new();
    let mut wants = Vec::new();
    for case in v["cases"].as_array().unwrap() {
        let rendered = tok.render_chat(case["messages"].as_array().unwrap(), None, true).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
        let prompt = tok.encode(&rendered, false).unwrap();
        assert_eq!(prompt, ids(&case["prompt_ids"]));
        let want = ids(&case["completion_ids"]);
        let req = GenerateRequest::new(vec![prompt.clone()], 1, max_new, tok.eos_token_ids().to_vec());
        let out = generate(&model, Some(tok), &req, None).unwrap();
        assert_eq!(out.completions[0].tokens, want, "{device:?}: prompt {rendered:?}");
        assert_eq!(out.completions[0].text, case["completion_text"].as_str().unwrap());
        prompts.push(prompt);
        wants.push(want);
    }
    assert!(prompts.len() >= 3);
    let req = GenerateRequest::new(prompts, 2, max_new, tok.eos_token_ids().to_vec());
    let out = generate(&model, Some(tok), &req, None).unwrap();
    for c in &out.completions {
        assert_eq!(c.tokens, wants[c.prompt_index], "{device:?}: batched prompt {}", c.prompt_index);
    }
}
