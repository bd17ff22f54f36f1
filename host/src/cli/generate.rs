//! `grpo-host generate`: sample from a model. With one sample and no `--json` the text streams to the terminal;
//! `--json` prints ids, text, log-probs, finish reasons and tokens/s as one JSON object.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::args::{ModelArgs, SamplingArgs};
use crate::generate::{generate, GenerateRequest, SamplingParams};
use crate::model::Model;
use crate::user_error;

/// Flags of `grpo-host generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The model, device, dtype and threads.
    #[command(flatten)]
    pub model: ModelArgs,
    /// User message, rendered through the model's chat template with a generation prompt.
    #[arg(long, conflicts_with = "raw")]
    pub prompt: Option<String>,
    /// System message placed before --prompt.
    #[arg(long, requires = "prompt")]
    pub system: Option<String>,
    /// Raw text to continue, tokenized as is (no chat template).
    #[arg(long)]
    pub raw: Option<String>,
    /// Number of samples.
    #[arg(short = 'n', long = "num-samples", default_value_t = 1)]
    pub num_samples: usize,
    /// Maximum new tokens per sample.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Temperature and sampling filters (greedy by default).
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Stop a sample when its text contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Random seed; the same seed reproduces the same samples on CPU.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Samples decoding at once, each with its cache slot (default: all of them, as memory allows); a sample that
    /// ends frees its slot for the next.
    #[arg(long)]
    pub max_batch_rows: Option<usize>,
    /// Decode scheduling.
    #[command(flatten)]
    pub decode: super::args::DecodeArgs,
    /// Print one JSON object (ids, text, log-probs, finish reasons, tokens/s) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run `grpo-host generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<i32> {
    args.model.apply_threads()?;
    if args.num_samples == 0 {
        return Err(user_error!("-n must be at least 1"));
    }
    if args.max_new_tokens == 0 {
        return Err(user_error!("--max-new-tokens must be at least 1"));
    }
    let sampling = args.sampling.resolve(SamplingParams::greedy())?;
    let device = args.model.device.resolve()?;
    let dtype = args.model.dtype.resolve(device);
    let dir: PathBuf = args.model.model_dir()?;
    let load_start = std::time::Instant::now();
    let tokenizer = args.model.tokenizer(&dir)?;
    let model = Model::load(&dir, device, dtype)?;
    let load_secs = load_start.elapsed().as_secs_f64();

    let prompt_ids = match (&args.prompt, &args.raw) {
        (Some(p), _) => {
            tokenizer.require_chat_template("--prompt is rendered with it (give the text as --raw TEXT instead)")?;
            let mut messages = Vec::new();
            if let Some(s) = &args.system {
                messages.push(json!({"role": "system", "content": s}));
            }
            messages.push(json!({"role": "user", "content": p}));
            let text = tokenizer.render_chat(&messages, None, true)?;
            // The rendered template already holds its special tokens; adding more would double the BOS.
            tokenizer.encode(&text, false)?
        }
        (None, Some(raw)) => tokenizer.encode(raw, true)?,
        (None, None) => return Err(user_error!("give --prompt TEXT (chat) or --raw TEXT")),
    };
    let req = GenerateRequest {
        prompts: vec![prompt_ids.clone()],
        group_size: args.num_samples,
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop_strings: args.stop.clone(),
        eos_ids: if args.sampling.ignore_eos { Vec::new() } else { tokenizer.eos_token_ids().to_vec() },
        seed: args.seed,
        row_seeds: Vec::new(),
        max_batch_rows: args.max_batch_rows,
        multi_step: args.decode.multi_step()?,
    };

    let stream = args.num_samples == 1 && !args.json;
    let mut streamed: Vec<u32> = Vec::new();
    let mut printed = String::new();
    let mut stdout = std::io::stdout();
    let mut on_token = |_: usize, t: u32| {
        streamed.push(t);
        if let Ok(text) = tokenizer.decode(&streamed, true) {
            // Print only once the bytes form whole characters and extend what is already on screen.
            if !text.ends_with('\u{fffd}') && text.starts_with(&printed) {
                let _ = write!(stdout, "{}", &text[printed.len()..]);
                let _ = stdout.flush();
                printed = text;
            }
        }
    };
    let out = generate(&model, Some(&tokenizer), &req, if stream { Some(&mut on_token) } else { None })?;

    if args.json {
        let completions: Vec<_> = out
            .completions
            .iter()
            .map(|c| {
                json!({
                    "index": c.sample_index,
                    "text": c.text,
                    "token_ids": c.tokens,
                    "logprobs": c.logprobs,
                    "model_logprobs": c.model_logprobs,
                    "finish_reason": c.finish_reason.as_str(),
                    "stop_string": match &c.finish_reason { crate::generate::FinishReason::Stop(s) => Some(s), _ => None },
                })
            })
            .collect();
        let s = &out.stats;
        let report = json!({
            "model": dir.display().to_string(),
            "device": format!("{device:?}"),
            "dtype": format!("{dtype:?}"),
            "threads": tch::get_num_threads(),
            "prompt_token_ids": prompt_ids,
            "completions": completions,
            "stats": {
                "load_secs": load_secs,
                "prefill_tokens": s.prefill_tokens,
                "generated_tokens": s.generated_tokens,
                "prefill_secs": s.prefill_secs,
                "decode_secs": s.decode_secs,
                "tokens_per_second": s.tokens_per_second(),
            }
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if stream {
        let full = &out.completions[0].text;
        if full.len() > printed.len() && full.starts_with(&printed) {
            print!("{}", &full[printed.len()..]);
        }
        println!();
    } else {
        for c in &out.completions {
            println!("--- sample {} ({}) ---\n{}", c.sample_index, c.finish_reason.as_str(), c.text);
        }
    }
    Ok(0)
}
