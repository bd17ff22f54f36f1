//! The generation engine on tiny random models: greedy output equals transformers' `generate`, batching and
//! group expansion do not change results, log-probs agree with a full forward, and every stop condition works.
//! Fixtures: `tests/oracles/model_fixtures.py`.

mod common;

use std::path::{Path, PathBuf};

use common::TINY_FAMILIES as FAMILIES;
use grpo_host::generate::{generate, Engine, EngineConfig, FinishReason, GenerateRequest, SamplingParams, Turn};
use grpo_host::model::Model;
use grpo_host::tokenizer::Tokenizer;
use tch::{Device, Kind, Tensor};

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/model/tiny").join(name)
}

struct Greedy {
    prompts: Vec<Vec<u32>>,
    max_new: usize,
    completions: Vec<Vec<u32>>,
}

fn greedy_fixture(dir: &Path) -> Greedy {
    greedy_file(&dir.join("greedy.json"))
}

/// A file of transformers' greedy continuations (`greedy.json`, Phi-3's `greedy_long.json`).
fn greedy_file(path: &Path) -> Greedy {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |x: &serde_json::Value| -> Vec<Vec<u32>> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
            .collect()
    };
    Greedy {
        prompts: ids(&v["prompts"]),
        max_new: v["max_new_tokens"].as_u64().unwrap() as usize,
        completions: ids(&v["completions"]),
    }
}

#[test]
fn greedy_matches_transformers_one_at_a_time_and_batched() {
    for fam in FAMILIES {
        let dir = tiny(fam);
        let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let g = greedy_fixture(&dir);
        for (p, want) in g.prompts.iter().zip(&g.completions) {
            let req = GenerateRequest::new(vec![p.clone()], 1, g.max_new, Vec::new());
            let out = generate(&model, None, &req, None).unwrap();
            assert_eq!(&out.completions[0].tokens, want, "{fam}: prompt of {} tokens", p.len());
            assert_eq!(out.completions[0].finish_reason, FinishReason::Length);
        }
        // All prompts (lengths 5, 9, 2) in one batch, each copied to a group of 3.
        let req = GenerateRequest::new(g.prompts.clone(), 3, g.max_new, Vec::new());
        let out = generate(&model, None, &req, None).unwrap();
        assert_eq!(out.completions.len(), 9);
        for c in &out.completions {
            assert_eq!(
                c.tokens, g.completions[c.prompt_index],
                "{fam}: batched prompt {} sample {}",
                c.prompt_index, c.sample_index
            );
        }
        assert_eq!(out.stats.generated_tokens, 9 * g.max_new);
    }
}

/// Phi-3's LongRoPE across its pre-training context (32 positions in the tiny model): transformers' `generate`
/// re-encodes a sequence with the long factors when it first grows past it, and so does the engine, for prompts that
/// cross it after 5, 2 and 1 new tokens, one at a time, batched beside each other in groups, and in multi-step
/// blocks.
#[test]
fn longrope_reencodes_a_sequence_crossing_its_context_as_transformers_does() {
    let dir = tiny("phi3");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let Greedy { prompts, max_new, completions } = greedy_file(&dir.join("greedy_long.json"));
    for multi_step in [1, 4] {
        for (p, want) in prompts.iter().zip(&completions) {
            let req = GenerateRequest { multi_step, ..GenerateRequest::new(vec![p.clone()], 1, max_new, Vec::new()) };
            let out = generate(&model, None, &req, None).unwrap();
            assert_eq!(&out.completions[0].tokens, want, "prompt of {} tokens, blocks of {multi_step}", p.len());
        }
        let req = GenerateRequest { multi_step, ..GenerateRequest::new(prompts.clone(), 2, max_new, Vec::new()) };
        let out = generate(&model, None, &req, None).unwrap();
        for c in &out.completions {
            assert_eq!(
                c.tokens, completions[c.prompt_index],
                "batched prompt {}, blocks of {multi_step}",
                c.prompt_index
            );
        }
    }
}

/// A later turn whose tokens carry a Phi-3 sequence past LongRoPE's context is encoded again from its first token:
/// its greedy turn equals a fresh generation from the whole stream (which takes the long factors throughout).
#[test]
fn longrope_reencodes_a_later_turn_that_crosses_its_context() {
    let dir = tiny("phi3");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let prompt = greedy_file(&dir.join("greedy_long.json")).prompts[0].clone();
    assert_eq!(prompt.len(), 28);
    let cfg = EngineConfig {
        max_rows: 2,
        max_new_tokens: 2,
        sampling: SamplingParams::greedy(),
        eos_ids: Vec::new(),
        stop_strings: Vec::new(),
        multi_step: 1,
    };
    let reply = [10u32, 20, 30, 40, 50];
    let mut turns: Vec<Turn> = Vec::new();
    tch::no_grad(|| {
        let mut engine = Engine::new(&model, None, cfg).unwrap();
        engine.submit(0, prompt.clone(), None, None).unwrap();
        while engine.runnable() {
            for (id, turn) in engine.step(&mut |_, _| {}).unwrap() {
                turns.push(turn);
                match turns.len() {
                    1 => engine.resume(id, &reply, None).unwrap(),
                    _ => engine.release(id),
                }
            }
        }
    });
    // 28 + 2 + 5 = 35 tokens before the second turn: past the 32 of the context.
    let stream = [prompt, turns[0].tokens.clone(), reply.to_vec()].concat();
    let fresh = generate(&model, None, &GenerateRequest::new(vec![stream], 1, 2, Vec::new()), None).unwrap();
    assert_eq!(turns[1].tokens, fresh.completions[0].tokens);
}

/// `--repetition-penalty` against transformers' `generate(repetition_penalty=...)` (tests/oracles/repetition_penalty.py):
/// greedy continuations with a penalty above 1 and below, one prompt at a time, batched in groups with rows of
/// other lengths beside them, and in multi-step blocks, where the tokens drawn inside a block count as seen.
#[test]
fn repetition_penalty_matches_transformers() {
    for fam in FAMILIES {
        let dir = tiny(fam);
        let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("greedy_repetition_penalty.json")).unwrap())
                .unwrap();
        let ids = |x: &serde_json::Value| -> Vec<Vec<u32>> { serde_json::from_value(x.clone()).unwrap() };
        let prompts = ids(&fixture["prompts"]);
        let plain = greedy_fixture(&dir).completions;
        for case in fixture["cases"].as_array().unwrap() {
            let penalty = case["repetition_penalty"].as_f64().unwrap();
            let want = ids(&case["completions"]);
            assert_ne!(want, plain, "{fam}: the penalty {penalty} changes no continuation");
            for (group, multi_step) in [(1, 1), (3, 1), (2, 3)] {
                let mut req = GenerateRequest::new(prompts.clone(), group, 12, Vec::new());
                req.sampling.repetition_penalty = penalty;
                req.multi_step = multi_step;
                let out = generate(&model, None, &req, None).unwrap();
                for c in &out.completions {
                    let what = format!("{fam}: penalty {penalty}, group {group}, multi-step {multi_step}");
                    assert_eq!(c.tokens, want[c.prompt_index], "{what}, prompt {}", c.prompt_index);
                }
            }
        }
    }
}

#[test]
fn model_logprobs_equal_a_full_forward() {
    let dir = tiny("llama3");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let g = greedy_fixture(&dir);
    let mut req = GenerateRequest::new(g.prompts.clone(), 2, g.max_new, Vec::new());
    req.sampling = SamplingParams { temperature: 1.0, top_k: 20, top_p: 0.9, min_p: 0.0, repetition_penalty: 1.0 };
    req.seed = Some(3);
    let out = generate(&model, None, &req, None).unwrap();
    for c in &out.completions {
        let prompt = &g.prompts[c.prompt_index];
        let full: Vec<i64> = prompt.iter().chain(&c.tokens).map(|&t| t as i64).collect();
        let ids = Tensor::from_slice(&full).unsqueeze(0);
        let lp = tch::no_grad(|| model.token_log_probs(&ids, &ids.ones_like()));
        let want: Vec<f32> =
            Vec::try_from(lp.squeeze_dim(0).narrow(0, prompt.len() as i64 - 1, c.tokens.len() as i64)).unwrap();
        for (a, b) in c.model_logprobs.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "decode log-prob {a} vs full forward {b}");
        }
        // Filtering only renormalises over fewer tokens: each sampled token is at least as likely under the
        // sampling distribution as under the model.
        for (s, m) in c.logprobs.iter().zip(&c.model_logprobs) {
            assert!(*s <= 1e-6 && *s + 1e-5 >= *m, "sampling log-prob {s} vs model log-prob {m}");
        }
    }
}

#[test]
fn plain_sampling_logprobs_are_model_logprobs() {
    let dir = tiny("qwen2");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let mut req = GenerateRequest::new(vec![vec![1, 2, 3]], 4, 8, Vec::new());
    req.sampling = SamplingParams::default();
    let out = generate(&model, None, &req, None).unwrap();
    for c in &out.completions {
        assert_eq!(c.logprobs, c.model_logprobs);
        assert_eq!(c.tokens.len(), 8);
    }
}

/// Every stop condition, one step at a time and in blocks of `--multi-step` that the stops fall inside.
#[test]
fn stops_on_eos_and_stop_strings_without_disturbing_other_rows() {
    for multi_step in [1, 2, 4] {
        stops_with(multi_step);
    }
}

fn stops_with(multi_step: usize) {
    let dir = tiny("qwen3");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let g = greedy_fixture(&dir);
    // Make the 4th greedy token of prompt 0 an eos id; rows that never produce it must be unaffected.
    let eos = g.completions[0][3];
    let first = g.completions[0].iter().position(|&t| t == eos).unwrap();
    let mut req = GenerateRequest::new(g.prompts.clone(), 2, g.max_new, vec![eos]);
    req.multi_step = multi_step;
    let out = generate(&model, Some(&tok), &req, None).unwrap();
    for c in &out.completions {
        let want = &g.completions[c.prompt_index];
        match want.iter().position(|&t| t == eos) {
            Some(i) => {
                assert_eq!(c.tokens, want[..=i].to_vec());
                assert_eq!(c.finish_reason, FinishReason::Eos);
            }
            None => {
                assert_eq!(&c.tokens, want);
                assert_eq!(c.finish_reason, FinishReason::Length);
            }
        }
        assert_eq!(c.text, tok.decode(&c.tokens, true).unwrap());
        assert_eq!(c.logprobs.len(), c.tokens.len());
    }
    assert_eq!(out.completions[0].tokens.len(), first + 1);

    // A stop string taken from the middle of prompt 1's greedy text.
    let text = tok.decode(&g.completions[1], true).unwrap();
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let mut req = GenerateRequest::new(vec![g.prompts[1].clone()], 1, g.max_new, Vec::new());
    req.stop_strings = vec![stop.clone()];
    req.multi_step = multi_step;
    let out = generate(&model, Some(&tok), &req, None).unwrap();
    let c = &out.completions[0];
    assert_eq!(c.finish_reason, FinishReason::Stop(stop.clone()));
    assert!(c.text.contains(&stop));
    let shorter = tok.decode(&c.tokens[..c.tokens.len() - 1], true).unwrap();
    assert!(!shorter.contains(&stop), "stopped at the first token that completes the stop string");
    assert_eq!(c.tokens, g.completions[1][..c.tokens.len()].to_vec());
}

#[test]
fn streaming_callback_sees_every_token_in_order() {
    let dir = tiny("llama");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let g = greedy_fixture(&dir);
    let mut seen: Vec<(usize, u32)> = Vec::new();
    let mut cb = |i: usize, t: u32| seen.push((i, t));
    let req = GenerateRequest::new(g.prompts[..2].to_vec(), 1, 5, Vec::new());
    let out = generate(&model, None, &req, Some(&mut cb)).unwrap();
    for (i, c) in out.completions.iter().enumerate() {
        let mine: Vec<u32> = seen.iter().filter(|(j, _)| *j == i).map(|(_, t)| *t).collect();
        assert_eq!(mine, c.tokens);
    }
}

#[test]
fn bad_requests_are_user_errors() {
    let model = Model::load(&tiny("llama"), Device::Cpu, Kind::Float).unwrap();
    let bad = [
        GenerateRequest::new(vec![vec![]], 1, 4, Vec::new()),
        GenerateRequest::new(vec![vec![1]], 0, 4, Vec::new()),
        GenerateRequest::new(vec![vec![100_000]], 1, 4, Vec::new()),
        GenerateRequest { multi_step: 0, ..GenerateRequest::new(vec![vec![1]], 1, 4, Vec::new()) },
    ];
    for req in &bad {
        let err = generate(&model, None, req, None).unwrap_err();
        assert_eq!(grpo_host::error::exit_code(&err), 2, "{err}");
    }
}

/// With a seed per completion, what a completion samples depends on its seed alone: the same prompt and seed give
/// the same tokens alone, batched with other prompts of other lengths, or as another group member, and another seed
/// gives other tokens. (This is what keeps a task's rollouts the same on whichever data-parallel rank runs it.)
#[test]
fn row_seeds_make_each_completion_independent_of_its_batch() {
    let dir = tiny("llama");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let sampled = |prompts: Vec<Vec<u32>>, group: usize, seeds: Vec<u64>| {
        let mut req = GenerateRequest::new(prompts, group, 12, Vec::new());
        req.sampling = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 };
        req.row_seeds = seeds;
        generate(&model, None, &req, None).unwrap().completions.into_iter().map(|c| c.tokens).collect::<Vec<_>>()
    };
    let alone = sampled(vec![vec![5, 6, 7]], 1, vec![11]);
    let batched = sampled(vec![vec![9, 8, 7, 6, 5, 4, 3], vec![5, 6, 7]], 2, vec![1, 2, 3, 11]);
    assert_eq!(alone[0], batched[3], "the same seed, in another batch and group slot");
    let other = sampled(vec![vec![5, 6, 7]], 1, vec![12]);
    assert_ne!(alone[0], other[0], "another seed samples otherwise");
    let mut req = GenerateRequest::new(vec![vec![5, 6, 7]], 2, 4, Vec::new());
    req.row_seeds = vec![1];
    assert!(generate(&model, None, &req, None).is_err(), "one seed for two completions");
}

/// Continuous batching: with two slots for four prompts of different lengths, rows end at different steps (on an
/// end-of-sequence id taken from the reference outputs), waiting prompts take the freed slots, and one prompt is
/// submitted only after decoding has started. Every completion equals generating its prompt alone (greedy), with
/// the same log-probs, one step per host read or in blocks of `--multi-step` (the rows then join and leave at
/// block ends).
#[test]
fn continuous_batching_equals_one_at_a_time() {
    for multi_step in [1, 3, 5] {
        continuous_batching_with(multi_step);
    }
}

fn continuous_batching_with(multi_step: usize) {
    let dir = tiny("qwen2");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let mut prompts = greedy_fixture(&dir).prompts;
    prompts.push(vec![7, 3, 11, 19, 2, 5, 8]);
    let max_new = 12;
    let alone = |eos: &[u32]| -> Vec<(Vec<u32>, Vec<f32>)> {
        prompts
            .iter()
            .map(|p| {
                let req = GenerateRequest::new(vec![p.clone()], 1, max_new, eos.to_vec());
                let c = generate(&model, None, &req, None).unwrap().completions.remove(0);
                (c.tokens, c.model_logprobs)
            })
            .collect()
    };
    // End-of-sequence: a token the first prompt's completion produces early, so rows finish at different steps.
    let eos = vec![alone(&[])[0].0[2]];
    let want = alone(&eos);
    let lengths: Vec<usize> = want.iter().map(|(t, _)| t.len()).collect();
    assert!(lengths.iter().any(|&l| l < max_new) && lengths.iter().any(|&l| l != lengths[0]), "{lengths:?}");

    let cfg = EngineConfig {
        max_rows: 2,
        max_new_tokens: max_new,
        sampling: SamplingParams::greedy(),
        eos_ids: eos,
        stop_strings: Vec::new(),
        multi_step,
    };
    let mut got: Vec<Option<Turn>> = vec![None; prompts.len()];
    let late = prompts.len() - 1;
    tch::no_grad(|| {
        let mut engine = Engine::new(&model, None, cfg).unwrap();
        for (i, p) in prompts.iter().enumerate().take(late) {
            engine.submit(i, p.clone(), None, None).unwrap();
        }
        let mut steps = 0;
        while engine.runnable() || got[late].is_none() {
            if steps == 3 {
                engine.submit(late, prompts[late].clone(), None, None).unwrap();
            }
            for (id, turn) in engine.step(&mut |_, _| {}).unwrap() {
                engine.release(id);
                got[id] = Some(turn);
            }
            steps += 1;
        }
        assert!(engine.stats.decode_rows_mean() > 1.0, "{:?}", engine.stats);
        let reads = engine.stats.host_reads;
        assert!(if multi_step == 1 { reads == engine.stats.steps } else { reads < engine.stats.steps }, "{reads}");
    });
    for (i, (turn, (tokens, logprobs))) in got.iter().zip(&want).enumerate() {
        let turn = turn.as_ref().unwrap();
        assert_eq!(&turn.tokens, tokens, "multi-step {multi_step}, prompt {i}");
        for (a, b) in turn.model_logprobs.iter().zip(logprobs) {
            assert!((a - b).abs() < 1e-5, "multi-step {multi_step}, prompt {i}: log-prob {a} vs {b} alone");
        }
    }
}

/// Multi-turn episodes with seeded sampling: blocks of `--multi-step` sample what single steps do, turn after turn.
/// Turns end inside blocks (an end-of-sequence id, or the turn's token budget), each sequence is resumed with tokens
/// of its own (a tool reply), and its next turn starts from the cache the blocks left behind, with a new seed.
#[test]
fn multi_step_blocks_sample_what_single_steps_do_across_turns() {
    let dir = tiny("qwen2");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let g = greedy_fixture(&dir);
    let run = |multi_step: usize, eos: &[u32]| -> (Vec<Vec<Turn>>, u64, u64) {
        let cfg = EngineConfig {
            max_rows: 3,
            max_new_tokens: 9,
            sampling: SamplingParams { temperature: 0.9, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 },
            eos_ids: eos.to_vec(),
            stop_strings: Vec::new(),
            multi_step,
        };
        let n = g.prompts.len() * 2;
        let mut turns: Vec<Vec<Turn>> = vec![Vec::new(); n];
        tch::no_grad(|| {
            let mut engine = Engine::new(&model, None, cfg).unwrap();
            for id in 0..n {
                let p = &g.prompts[id / 2];
                engine.submit(id, p.clone(), Some(id / 2), Some(100 + id as u64)).unwrap();
            }
            while engine.runnable() {
                for (id, turn) in engine.step(&mut |_, _| {}).unwrap() {
                    turns[id].push(turn);
                    if turns[id].len() < 3 {
                        let reply = [3 + id as u32, 7, 11 + turns[id].len() as u32];
                        engine.resume(id, &reply, Some(1000 * turns[id].len() as u64 + id as u64)).unwrap();
                    } else {
                        engine.release(id);
                    }
                }
            }
            (turns, engine.stats.steps, engine.stats.host_reads)
        })
    };
    // An end-of-sequence id some turns sample, so turns end at different places inside the blocks.
    let (free, _, _) = run(1, &[]);
    let eos = free[0][0].tokens[4];
    let (want, steps, reads) = run(1, &[eos]);
    assert_eq!(steps, reads);
    let ends: Vec<usize> = want.iter().flatten().map(|t| t.tokens.len()).collect();
    assert!(ends.iter().any(|&l| l < 9) && ends.contains(&9), "turn lengths {ends:?}");
    for multi_step in [2, 4, 9] {
        let (got, steps, reads) = run(multi_step, &[eos]);
        assert!(reads < steps, "multi-step {multi_step}: {reads} reads for {steps} steps");
        for (id, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.len(), 3, "sequence {id}");
            for (k, (x, y)) in a.iter().zip(b).enumerate() {
                let at = format!("multi-step {multi_step}, sequence {id}, turn {k}");
                assert_eq!(x.tokens, y.tokens, "{at}");
                assert_eq!(x.finish, y.finish, "{at}");
                for (p, q) in x.logprobs.iter().zip(&y.logprobs).chain(x.model_logprobs.iter().zip(&y.model_logprobs)) {
                    assert!((p - q).abs() < 1e-4, "{at}: log-prob {p} vs {q}");
                }
            }
        }
    }
}

/// `Engine::limit_turn` caps one turn below `max_new_tokens` (a context limit), in single steps and in blocks; the
/// next turn gets the full budget again.
#[test]
fn a_limited_turn_ends_at_its_limit() {
    let dir = tiny("llama");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    for multi_step in [1, 4] {
        let cfg = EngineConfig {
            max_rows: 2,
            max_new_tokens: 8,
            sampling: SamplingParams::greedy(),
            eos_ids: Vec::new(),
            stop_strings: Vec::new(),
            multi_step,
        };
        let mut lengths: Vec<(usize, usize)> = Vec::new();
        tch::no_grad(|| {
            let mut engine = Engine::new(&model, None, cfg).unwrap();
            engine.submit(0, vec![5, 6, 7], None, None).unwrap();
            engine.submit(1, vec![9, 8], None, None).unwrap();
            engine.limit_turn(0, 3).unwrap();
            while engine.runnable() {
                for (id, turn) in engine.step(&mut |_, _| {}).unwrap() {
                    assert_eq!(turn.finish, Some(FinishReason::Length));
                    lengths.push((id, turn.tokens.len()));
                    match (id, lengths.iter().filter(|(i, _)| *i == 0).count()) {
                        // A limit of 0 still gives the turn one token.
                        (0, 1) => {
                            engine.resume(0, &[11], None).unwrap();
                            engine.limit_turn(0, 0).unwrap();
                        }
                        (0, 2) => engine.resume(0, &[12], None).unwrap(),
                        _ => engine.release(id),
                    }
                }
            }
        });
        assert_eq!(lengths, vec![(0, 3), (0, 1), (1, 8), (0, 8)], "multi-step {multi_step}");
    }
}
