//! Supervised fine-tuning against the oracle (tests/oracles/sft_mask_loss.py, fixture tests/fixtures/sft/): the
//! token stream and assistant mask of each conversation, the loss and accuracy alone and in a padded batch, and a
//! few steps of training that lower the loss.

use std::path::{Path, PathBuf};

use grpo_host::distributed::World;
use grpo_host::model::Model;
use grpo_host::sft::loss::{sft_loss, SftBatch};
use grpo_host::sft::render::render_text;
use grpo_host::sft::{Conversation, PlainText, Renderer, SftStep};
use grpo_host::tokenizer::Tokenizer;
use grpo_host::train::experience::Chunking;
use grpo_host::train::optimizer::{AdamW, AdamWConfig};
use grpo_host::train::precision::LossScaler;
use grpo_sdk::tch::{Device, Kind};
use grpo_sdk::Message;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("tests/fixtures/sft/tiny_llama.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tiny() -> (Model, Tokenizer) {
    let dir = root().join("tests/fixtures/model/tiny/llama");
    (Model::load(&dir, Device::Cpu, Kind::Float).unwrap(), Tokenizer::from_dir(&dir).unwrap())
}

fn messages(case: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(case["messages"].clone()).unwrap()
}

/// `steps` supervised steps of every weight of `model` on `rows` at learning rate `lr`, in one process.
fn run_steps(
    model: &Model,
    rows: &[grpo_host::sft::Rendered],
    micro: Chunking,
    max_norm: f64,
    lr: f64,
    steps: usize,
) -> Vec<grpo_host::sft::SftRecord> {
    let params: Vec<_> = model.var_store().variables().into_iter().collect();
    let config = AdamWConfig { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut optimizer = AdamW::without_master_weights(params, config);
    let mut scaler = LossScaler::disabled();
    let world = World::single();
    let (scaler, world, seed) = (&mut scaler, &world, 7);
    let mut step = SftStep { model, optimizer: &mut optimizer, scaler, micro_batch: micro, max_norm, world, seed };
    (0..steps as u64).map(|k| step.run(rows, lr, k).unwrap().unwrap()).collect()
}

#[test]
fn streams_and_masks_match_the_oracle() {
    let (_, tokenizer) = tiny();
    let renderer = Renderer::new(&tokenizer, None).unwrap();
    for case in fixture()["cases"].as_array().unwrap() {
        let r = renderer.render(&messages(case)).unwrap();
        let tokens: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let mask: Vec<bool> = serde_json::from_value(case["assistant"].clone()).unwrap();
        assert_eq!(r.tokens, tokens, "{}", case["messages"]);
        assert_eq!(r.assistant, mask, "{}", case["messages"]);
        // The loss covers the assistant's text and each turn's end-of-turn token, nothing else.
        let picked: Vec<u32> = r.tokens.iter().zip(&r.assistant).filter(|(_, a)| **a).map(|(t, _)| *t).collect();
        assert_eq!(tokenizer.decode(&picked, false).unwrap(), case["assistant_text"].as_str().unwrap());
        assert_eq!(picked.last(), Some(&renderer.end_of_turn()));
    }
}

/// Structured tool calls against tests/oracles/sft_tool_calls.py (Qwen2.5 and Llama-3.1 templates, each row's own
/// tools): the call is trained on as the template writes it, and the rest of the stream is as without calls.
#[test]
fn structured_tool_calls_are_trained_as_the_template_writes_them() {
    let text = std::fs::read_to_string(root().join("tests/fixtures/sft/tool_calls.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let family = case["family"].as_str().unwrap();
        let tokenizer = Tokenizer::from_dir(&root().join("tests/fixtures/model/chat").join(family)).unwrap();
        let renderer = Renderer::new(&tokenizer, None).unwrap();
        let conversation = Conversation {
            origin: family.to_string(),
            messages: case["messages"].as_array().unwrap().clone(),
            tools: Some(case["tools"].as_array().unwrap().clone()),
        };
        let r = renderer.render_conversation(&conversation).unwrap();
        let tokens: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let mask: Vec<bool> = serde_json::from_value(case["assistant"].clone()).unwrap();
        let picked: Vec<u32> = r.tokens.iter().zip(&r.assistant).filter(|(_, a)| **a).map(|(t, _)| *t).collect();
        assert_eq!(tokenizer.decode(&picked, false).unwrap(), case["assistant_text"].as_str().unwrap(), "{family}");
        assert_eq!(r.tokens, tokens, "{family}");
        assert_eq!(r.assistant, mask, "{family}");
    }
    // Qwen3 opens the last assistant turn with an empty thinking block, which a plain turn's text does not hold
    // either: the call is trained on without it.
    let tokenizer = Tokenizer::from_dir(&root().join("tests/fixtures/model/chat/qwen3")).unwrap();
    let renderer = Renderer::new(&tokenizer, None).unwrap();
    let call = serde_json::json!({"function": {"name": "calc", "arguments": {"expression": "1 + 1"}}});
    let conversation = Conversation {
        origin: "qwen3".into(),
        messages: vec![
            serde_json::json!({"role": "user", "content": "1 + 1?"}),
            serde_json::json!({"role": "assistant", "content": "", "tool_calls": [call]}),
        ],
        tools: None,
    };
    let r = renderer.render_conversation(&conversation).unwrap();
    let picked: Vec<u32> = r.tokens.iter().zip(&r.assistant).filter(|(_, a)| **a).map(|(t, _)| *t).collect();
    let want = "<tool_call>\n{\"name\": \"calc\", \"arguments\": {\"expression\": \"1 + 1\"}}\n</tool_call><|im_end|>";
    assert_eq!(tokenizer.decode(&picked, false).unwrap(), want);
    // A template that has no place for tool calls (SmolLM2's) is refused, naming the call it would drop.
    let (_, tokenizer) = tiny();
    let renderer = Renderer::new(&tokenizer, None).unwrap();
    let conversation =
        Conversation { origin: "row".into(), messages: cases[0]["messages"].as_array().unwrap().clone(), tools: None };
    let err = renderer.render_conversation(&conversation).unwrap_err().to_string();
    assert!(err.contains("does not write") && err.contains("`calc`"), "{err}");
}

/// TRL's standard rows (`text`, string `prompt`/`completion`) against tests/oracles/sft_text.py: ids with the
/// tokenizer's special tokens (a BOS where one is added), the eos appended unless there, the loss on every token
/// or on what follows the prompt's own token count, and the seam where a prompt's last token merges with the
/// completion's (the default model's BPE) flagged.
#[test]
fn plain_text_rows_are_tokenized_as_trl_does() {
    let text = std::fs::read_to_string(root().join("tests/fixtures/sft/text.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let default = grpo_host::paths::default_model_dir();
    assert!(default.join("tokenizer.json").exists(), "run `cargo xtask setup`: {} is missing", default.display());
    let (mut seams, mut bos) = (0, 0);
    for case in fixture["cases"].as_array().unwrap() {
        let dir = match case["family"].as_str().unwrap() {
            "byte-level" => root().join("tests/fixtures/model/tiny/llama"),
            "bos" => root().join("tests/fixtures/sft/bos_tokenizer"),
            "default" => default.clone(),
            other => panic!("unknown family {other}"),
        };
        let tokenizer = Tokenizer::from_dir(&dir).unwrap();
        let row = &case["row"];
        let plain = PlainText {
            origin: "row".into(),
            prompt: row["prompt"].as_str().map(String::from),
            completion: row.get("text").unwrap_or(&row["completion"]).as_str().unwrap().to_string(),
        };
        let (r, seamless) = render_text(&tokenizer, &plain).unwrap();
        let tokens: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let trained: Vec<bool> = serde_json::from_value(case["trained"].clone()).unwrap();
        assert_eq!(r.tokens, tokens, "{case}");
        assert_eq!(r.assistant, trained, "{case}");
        assert_eq!(seamless, case["seamless"].as_bool().unwrap(), "{case}");
        seams += usize::from(!seamless);
        bos += usize::from(tokenizer.decode(&r.tokens[..1], false).unwrap() == "<|begin_of_text|>");
    }
    // The fixture covers both rules that depend on the tokenizer.
    assert!(seams >= 1 && bos >= 1, "{seams} seams, {bos} BOS");
}

/// A row longer than a model's learned positions (the tiny GPT-2's 512) is a one-line error naming `--max-length`,
/// not an out-of-range lookup; a row that fits trains.
#[test]
fn a_row_past_learned_positions_is_refused_in_one_line() {
    let dir = root().join("tests/fixtures/model/tiny/gpt2");
    let (model, tokenizer) = (Model::load(&dir, Device::Cpu, Kind::Float).unwrap(), Tokenizer::from_dir(&dir).unwrap());
    let row = |chars: usize| {
        let plain = PlainText { origin: "test".into(), prompt: None, completion: "ab".repeat(chars / 2) };
        render_text(&tokenizer, &plain).unwrap().0
    };
    let long = row(600);
    assert!(long.tokens.len() > 512);
    let err = sft_loss(&model, &SftBatch::new(&[&long], Device::Cpu)).err().unwrap().to_string();
    assert!(err.contains("512 learned positions") && err.contains("--max-length"), "{err}");
    let short = row(20);
    assert!(sft_loss(&model, &SftBatch::new(&[&short], Device::Cpu)).is_ok());
}

#[test]
fn loss_and_accuracy_match_the_oracle_alone_and_padded() {
    let (model, tokenizer) = tiny();
    let renderer = Renderer::new(&tokenizer, None).unwrap();
    let fx = fixture();
    let cases = fx["cases"].as_array().unwrap();
    let rendered: Vec<_> = cases.iter().map(|c| renderer.render(&messages(c)).unwrap()).collect();
    for (case, r) in cases.iter().zip(&rendered) {
        let out = sft_loss(&model, &SftBatch::new(&[r], Device::Cpu)).unwrap();
        let loss = out.sum.double_value(&[]) / out.tokens as f64;
        assert_eq!(out.tokens, case["assistant_tokens"].as_i64().unwrap());
        assert!((loss - case["loss"].as_f64().unwrap()).abs() < 1e-5, "{loss} vs {}", case["loss"]);
        let correct = out.correct.int64_value(&[]) as f64;
        assert!((correct / out.tokens as f64 - case["accuracy"].as_f64().unwrap()).abs() < 1e-12);
        let entropy = out.entropy.double_value(&[]) / out.tokens as f64;
        assert!((entropy - case["entropy"].as_f64().unwrap()).abs() < 1e-5, "{entropy} vs {}", case["entropy"]);
    }
    let refs: Vec<_> = rendered.iter().collect();
    let out = sft_loss(&model, &SftBatch::new(&refs, Device::Cpu)).unwrap();
    let batch = &fx["batch"];
    assert_eq!(out.tokens, batch["assistant_tokens"].as_i64().unwrap());
    let loss = out.sum.double_value(&[]) / out.tokens as f64;
    assert!((loss - batch["loss"].as_f64().unwrap()).abs() < 1e-5, "{loss} vs {}", batch["loss"]);
    let entropy = out.entropy.double_value(&[]) / out.tokens as f64;
    assert!((entropy - batch["entropy"].as_f64().unwrap()).abs() < 1e-5, "{entropy} vs {}", batch["entropy"]);
}

#[test]
fn rendering_refuses_conversations_without_something_to_learn() {
    let (_, tokenizer) = tiny();
    let renderer = Renderer::new(&tokenizer, None).unwrap();
    let err = renderer.render(&[Message::user("hi")]).unwrap_err().to_string();
    assert!(err.contains("no assistant message"), "{err}");
    let err = renderer.render(&[Message::assistant("hi")]).unwrap_err().to_string();
    assert!(err.contains("starts with an assistant message"), "{err}");
}

#[test]
fn steps_lower_the_loss_and_micro_batches_do_not_change_the_step() {
    let fx = fixture();
    let run = |micro: Chunking| {
        let (model, tokenizer) = tiny();
        let renderer = Renderer::new(&tokenizer, None).unwrap();
        let rows: Vec<_> =
            fx["cases"].as_array().unwrap().iter().map(|c| renderer.render(&messages(c)).unwrap()).collect();
        run_steps(&model, &rows, micro, 1.0, 1e-2, 5)
    };
    let whole = run(Chunking::Rows(3));
    assert!((whole[0].loss - fx["batch"]["loss"].as_f64().unwrap()).abs() < 1e-5);
    assert!(whole[4].loss < whole[0].loss - 0.5, "{whole:?}");
    // One row per pass, and passes by tokens: a budget of twice the longest row groups the rows longest first.
    let longest = {
        let (_, tokenizer) = tiny();
        let renderer = Renderer::new(&tokenizer, None).unwrap();
        let rows = fx["cases"].as_array().unwrap().iter().map(|c| renderer.render(&messages(c)).unwrap());
        rows.map(|r| r.tokens.len()).max().unwrap()
    };
    for split in [run(Chunking::Rows(1)), run(Chunking::Tokens(2 * longest))] {
        for (a, b) in whole.iter().zip(&split) {
            assert!((a.loss - b.loss).abs() < 1e-4, "{a:?} vs {b:?}");
            assert_eq!(a.tokens, b.tokens);
        }
    }
}

/// A mixture's load-balancing loss joins the supervised loss weighed by the model's coefficient: the step's gradient
/// is that of the mean cross-entropy plus the coefficient times the loss over the rows' real tokens, logged as
/// `sft/aux_loss`; `sft/loss` stays the cross-entropy. Nothing is logged at 0.
#[test]
fn a_mixtures_load_balancing_loss_joins_the_supervised_step() {
    let fx = fixture();
    let dir = root().join("tests/fixtures/model/tiny/qwen2_moe");
    let load = |coef: f64| {
        let mut model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
        model.set_router_aux_loss_coef(coef);
        model
    };
    let tokenizer = Tokenizer::from_dir(&dir).unwrap();
    let renderer = Renderer::new(&tokenizer, None).unwrap();
    let rows: Vec<_> = fx["cases"].as_array().unwrap().iter().map(|c| renderer.render(&messages(c)).unwrap()).collect();
    let step = |coef: f64| run_steps(&load(coef), &rows, Chunking::Rows(rows.len()), 0.0, 1e-3, 1).remove(0);
    let off = step(0.0);
    assert!(off.aux_loss.is_none() && !off.metrics().contains_key("sft/aux_loss"), "{off:?}");

    let coef = 0.5;
    let model = load(coef);
    let refs: Vec<_> = rows.iter().collect();
    let out = sft_loss(&model, &SftBatch::new(&refs, Device::Cpu)).unwrap();
    let aux = out.aux.expect("a mixture weighing the loss records it");
    let total = out.tokens as f64;
    (&out.sum / total + &aux * coef).backward();
    let norm = model
        .var_store()
        .variables()
        .values()
        .filter(|v| v.grad().defined())
        .map(|v| v.grad().square().sum(Kind::Double).double_value(&[]))
        .sum::<f64>()
        .sqrt();
    let on = step(coef);
    let logged = on.aux_loss.expect("sft/aux_loss");
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol * a.abs().max(b.abs());
    assert!(close(logged, aux.double_value(&[]), 1e-5), "{logged} vs {}", aux.double_value(&[]));
    assert!(close(on.loss, off.loss, 1e-6), "sft/loss is the cross-entropy: {} vs {}", on.loss, off.loss);
    assert!(close(on.grad_norm, norm, 1e-4), "gradient norm {}, oracle {norm}", on.grad_norm);
    assert!(!close(on.grad_norm, off.grad_norm, 1e-3), "the loss moves the gradient");
    assert_eq!(on.metrics()["sft/aux_loss"], grpo_sdk::MetricValue::Number(logged));
}
