//! Logits and log-prob parity with transformers on tiny random models of each family, plus loading errors and
//! LoRA behaviour. Fixtures: `tests/oracles/model_fixtures.py`.

mod common;

use std::path::{Path, PathBuf};

use grpo_host::model::recompute::checkpointed_runs;
use grpo_host::model::{EntropyGrad, LoraConfig, Model, Padding, RouterScores};
use tch::{Device, Kind, Tensor};

use common::TINY_FAMILIES as FAMILIES;

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/model/tiny").join(name)
}

/// transformers' inputs and outputs for the tiny model in `dir`, on `device`.
fn reference(dir: &Path, device: Device) -> std::collections::HashMap<String, Tensor> {
    reference_file(&dir.join("reference.safetensors"), device)
}

/// The tensors of an oracle file, on `device`.
fn reference_file(path: &Path, device: Device) -> std::collections::HashMap<String, Tensor> {
    let tensors = Tensor::read_safetensors(path).unwrap();
    tensors.into_iter().map(|(name, t)| (name, t.to_device(device))).collect()
}

/// The largest difference where `mask` is set, compared on the CPU in f32.
fn max_abs_where(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let cpu = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Float);
    let d = (cpu(a) - cpu(b)).abs() * cpu(mask);
    d.max().double_value(&[])
}

/// The f32 tolerance against transformers (computed on the CPU) on `device`: CUDA's kernels sum in other orders.
fn f32_tolerance(device: Device) -> f64 {
    if device.is_cuda() {
        1e-3
    } else {
        1e-4
    }
}

#[test]
fn logits_match_transformers() {
    for device in common::devices("logits_match_transformers") {
        let tol = f32_tolerance(device);
        for fam in FAMILIES {
            let dir = tiny(fam);
            let model = Model::load(&dir, device, Kind::Float).unwrap();
            let r = reference(&dir, device);
            let (ids, mask, pos) = (&r["input_ids"], &r["attention_mask"], &r["position_ids"]);
            assert_eq!(Model::position_ids(mask), *pos, "{fam}: position ids from the mask");
            let logits = tch::no_grad(|| model.forward(ids, mask, pos));
            assert_eq!(logits.device(), device);
            let real = mask.unsqueeze(-1).expand_as(&logits);
            let diff = max_abs_where(&logits, &r["logits"], &real);
            assert!(diff <= tol, "{fam} on {device:?}: max |logits - transformers| = {diff}");
            // Padding must matter: comparing against all positions' logits of a shifted batch would fail.
            assert!(r["logits"].abs().max().double_value(&[]) > 0.1, "{fam}: reference logits are degenerate");

            // The full and the right-padded rows alone take the maskless causal path; they must agree too.
            let rows = Tensor::from_slice(&[0i64, 2]).to_device(device);
            let (ids, mask, pos) =
                (ids.index_select(0, &rows), mask.index_select(0, &rows), pos.index_select(0, &rows));
            let logits = tch::no_grad(|| model.forward(&ids, &mask, &pos));
            let real = mask.unsqueeze(-1).expand_as(&logits);
            let diff = max_abs_where(&logits, &r["logits"].index_select(0, &rows), &real);
            assert!(diff <= tol, "{fam} on {device:?}, right-padded rows only: max |logits - transformers| = {diff}");
        }
    }
}

/// Phi-3's LongRoPE around its pre-training context (32 positions in the tiny model): in one padded batch, a row of
/// 40 takes the long factors and a row of 30 the short ones, each as transformers scores that sequence on its own.
#[test]
fn longrope_takes_its_long_factors_per_row_past_the_pretraining_context() {
    for device in common::devices("longrope_takes_its_long_factors_per_row_past_the_pretraining_context") {
        let dir = tiny("phi3");
        let model = Model::load(&dir, device, Kind::Float).unwrap();
        let r = reference_file(&dir.join("reference_long.safetensors"), device);
        let (ids, mask, pos) = (&r["input_ids"], &r["attention_mask"], &r["position_ids"]);
        let logits = tch::no_grad(|| model.forward(ids, mask, pos));
        let diff = max_abs_where(&logits, &r["logits"], &mask.unsqueeze(-1).expand_as(&logits));
        assert!(
            diff <= f32_tolerance(device),
            "phi3 past its context on {device:?}: max |logits - transformers| = {diff}"
        );
    }
}

#[test]
fn token_log_probs_match_transformers_in_any_chunking() {
    for device in common::devices("token_log_probs_match_transformers_in_any_chunking") {
        let tol = f32_tolerance(device);
        for fam in FAMILIES {
            let dir = tiny(fam);
            let model = Model::load(&dir, device, Kind::Float).unwrap();
            let r = reference(&dir, device);
            let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
            let t = ids.size()[1];
            let both_real = mask.narrow(1, 0, t - 1).logical_and(&mask.narrow(1, 1, t - 1));
            for chunk in [1, 4, 100] {
                let lp = tch::no_grad(|| model.token_log_probs_chunked(ids, mask, chunk));
                assert_eq!(lp.size(), vec![3, t - 1]);
                assert_eq!((lp.kind(), lp.device()), (Kind::Float, device));
                let diff = max_abs_where(&lp, &r["token_log_probs"], &both_real);
                assert!(diff <= tol, "{fam} on {device:?}, chunk {chunk}: max |log p - transformers| = {diff}");
            }
            let auto = tch::no_grad(|| model.token_log_probs(ids, mask));
            assert!(max_abs_where(&auto, &r["token_log_probs"], &both_real) <= tol);
        }
    }
}

/// The plain autograd expression `token_log_probs` replaced: f32 logits per chunk, kept for backward.
fn plain_token_log_probs(model: &Model, ids: &Tensor, mask: &Tensor, chunk: i64) -> Tensor {
    let t = ids.size()[1];
    let hidden = model.hidden_states(ids, mask, &Model::position_ids(mask));
    let mut parts = Vec::new();
    for s in (0..t - 1).step_by(chunk as usize) {
        let c = chunk.min(t - 1 - s);
        let logits = model.lm_head(&hidden.narrow(1, s, c)).to_kind(Kind::Float);
        let picked = logits.gather(-1, &ids.narrow(1, s + 1, c).unsqueeze(-1), false).squeeze_dim(-1);
        parts.push(picked - logits.logsumexp([-1i64].as_slice(), false));
    }
    Tensor::cat(&parts, 1)
}

/// Gradients of every parameter after backpropagating `weights * log p`, then zeroed.
fn grads(model: &Model, lp: &Tensor, weights: &Tensor) -> Vec<(String, Tensor)> {
    (lp * weights).sum(Kind::Float).backward();
    taken_grads(model)
}

/// Every parameter's gradient by name (f32, sorted; zeros where none reached it), each zeroed after it is read.
fn taken_grads(model: &Model) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(name, v)| {
            if !v.grad().defined() {
                return (name, v.zeros_like().to_kind(Kind::Float));
            }
            let g = v.grad().to_kind(Kind::Float).copy();
            let _ = v.grad().zero_();
            (name, g)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn token_log_probs_keep_no_logits_yet_give_the_plain_gradients() {
    let _rng = common::torch_rng_lock();
    // Tied (qwen2) and separate (llama) output heads; chunks that divide the length and ones that do not.
    for (fam, kind, tol) in [("qwen2", Kind::Float, 1e-5), ("llama", Kind::Float, 1e-5), ("llama", Kind::BFloat16, 0.1)]
    {
        let model = Model::load(&tiny(fam), Device::Cpu, kind).unwrap();
        let r = reference(&tiny(fam), Device::Cpu);
        let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
        let t = ids.size()[1];
        tch::manual_seed(7);
        // Like a policy-gradient loss: per-token weights of both signs, zero on padding.
        let weights = Tensor::randn([3, t - 1], (Kind::Float, Device::Cpu)) * mask.narrow(1, 1, t - 1);
        for chunk in [1, 3, 100] {
            let plain = plain_token_log_probs(&model, ids, mask, chunk);
            let expected = grads(&model, &plain, &weights);
            let lp = model.token_log_probs_chunked(ids, mask, chunk);
            assert!(lp.equal(&plain.detach()), "{fam} {kind:?} chunk {chunk}: forward values differ");
            let got = grads(&model, &lp, &weights);
            for ((name, e), (_, g)) in expected.iter().zip(&got) {
                let scale = e.abs().max().double_value(&[]).max(1e-6);
                let diff = (e - g).abs().max().double_value(&[]) / scale;
                assert!(diff <= tol, "{fam} {kind:?} chunk {chunk}: {name} gradient differs by {diff} (relative)");
            }
            let head = expected.iter().find(|(n, _)| n.contains("embed_tokens") || n.contains("lm_head")).unwrap();
            assert!(head.1.abs().max().double_value(&[]) > 0.0, "{fam}: the head received a gradient");
        }
    }
    // A frozen head (LoRA) gets no gradient and the hidden states still do.
    let hidden = Tensor::randn([2, 5, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let head = Tensor::randn([11, 8], (Kind::Float, Device::Cpu));
    let targets = Tensor::randint(11, [2, 5], (Kind::Int64, Device::Cpu));
    grpo_host::model::token_log_probs_of(&hidden, &head, &targets, 2).sum(Kind::Float).backward();
    let expected_hidden = {
        let h = hidden.detach().set_requires_grad(true);
        let logits = h.linear::<Tensor>(&head, None);
        let lp = logits.gather(-1, &targets.unsqueeze(-1), false).squeeze_dim(-1)
            - logits.logsumexp([-1i64].as_slice(), false);
        lp.sum(Kind::Float).backward();
        h.grad()
    };
    assert!((hidden.grad() - &expected_hidden).abs().max().double_value(&[]) < 1e-5);
    assert!(!head.grad().defined());
    // One chunk keeps its softmax for the backward pass; a second pass over the retained graph recomputes it and
    // gives the same gradients as the first.
    let head = head.set_requires_grad(true);
    for chunk in [100, 2] {
        let total = grpo_host::model::token_log_probs_of(&hidden, &head, &targets, chunk).sum(Kind::Float);
        let first = Tensor::run_backward(&[&total], &[&hidden, &head], true, false);
        let second = Tensor::run_backward(&[&total], &[&hidden, &head], true, false);
        for (a, b) in first.iter().zip(&second) {
            assert!((a - b).abs().max().double_value(&[]) < 1e-6, "chunk {chunk}: a second backward pass differs");
        }
        assert!((&first[0] - &expected_hidden).abs().max().double_value(&[]) < 1e-5, "chunk {chunk}");
    }
    // Hits (is the target the most likely token?) read in any chunking equal the argmax of the plain logits; the
    // first row's targets are the argmax, the second's random.
    let best = hidden.linear::<Tensor>(&head, None).argmax(-1, false);
    let targets = Tensor::stack(&[best.get(0), targets.get(1)], 0);
    let want = best.eq_tensor(&targets);
    assert!(want.sum(Kind::Int64).int64_value(&[]) >= 5);
    for chunk in [1, 2, 100] {
        let (lp, hits) = grpo_host::model::token_log_probs_and_hits(&hidden, &head, &targets, chunk);
        assert!(hits.equal(&want), "chunk {chunk}: hits differ from the argmax");
        assert!(lp.equal(&grpo_host::model::token_log_probs_of(&hidden, &head, &targets, chunk)));
    }
}

/// The entropy the node reads from its logits is the plain distribution's, in any chunking, and asking for it
/// changes neither the log-probs nor their gradients (it rewrites the chunk's logits in place, which the kept
/// softmax of a single chunk must survive).
#[test]
fn token_entropy_is_the_plain_distributions_and_changes_no_log_prob_or_gradient() {
    let _rng = common::torch_rng_lock();
    tch::manual_seed(11);
    let hidden = (Tensor::randn([2, 5, 8], (Kind::Float, Device::Cpu)) * 2.0).set_requires_grad(true);
    let head = Tensor::randn([11, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let targets = Tensor::randint(11, [2, 5], (Kind::Int64, Device::Cpu));
    let log_p = tch::no_grad(|| hidden.linear::<Tensor>(&head, None).log_softmax(-1, Kind::Float));
    let plain = -(log_p.exp() * &log_p).sum_dim_intlist(-1, false, Kind::Float);
    let weights = Tensor::randn([2, 5], (Kind::Float, Device::Cpu));
    for chunk in [1, 2, 100] {
        let lp = grpo_host::model::token_log_probs_of(&hidden, &head, &targets, chunk);
        let expected = Tensor::run_backward(&[&(&lp * &weights).sum(Kind::Float)], &[&hidden, &head], false, false);
        let (with, entropy) =
            grpo_host::model::token_log_probs_and_entropy_of(&hidden, &head, &targets, chunk, EntropyGrad::No);
        assert!(with.equal(&lp), "chunk {chunk}: the log-probs changed");
        assert!(!entropy.requires_grad(), "chunk {chunk}: the entropy is outside autograd");
        let diff = (&entropy - &plain).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "chunk {chunk}: entropy differs from the plain distribution's by {diff}");
        let got = Tensor::run_backward(&[&(&with * &weights).sum(Kind::Float)], &[&hidden, &head], false, false);
        for (e, g) in expected.iter().zip(&got) {
            assert!((e - g).abs().max().double_value(&[]) < 1e-6, "chunk {chunk}: the gradients changed");
        }
    }
    // A vocabulary so long that the CPU computes the entropy in slices of a few rows.
    let head = Tensor::randn([300_000, 8], (Kind::Float, Device::Cpu));
    let (_, entropy) =
        grpo_host::model::token_log_probs_and_entropy_of(&hidden.detach(), &head, &targets, 100, EntropyGrad::No);
    let log_p = hidden.detach().linear::<Tensor>(&head, None).log_softmax(-1, Kind::Float);
    let plain = -(log_p.exp() * &log_p).sum_dim_intlist(-1, false, Kind::Float);
    // About ln(300,000) = 12.6 nats, summed over 300,000 f32 terms in another order than log_softmax's.
    let diff = (&entropy - &plain).abs().max().double_value(&[]) / plain.max().double_value(&[]);
    assert!(diff < 1e-4, "sliced entropy differs from the plain distribution's by {diff} (relative)");
    // The model's own path: the entropy of each position's next-token distribution, the log-probs unchanged.
    let dir = tiny("llama");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let r = reference(&dir, Device::Cpu);
    let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
    let t = ids.size()[1];
    let (lp, entropy) = tch::no_grad(|| {
        model.token_log_probs_and_entropy(ids, mask, grpo_host::model::Padding::Any, EntropyGrad::No, None)
    });
    assert!(lp.equal(&tch::no_grad(|| model.token_log_probs(ids, mask))));
    let logits = tch::no_grad(|| model.forward(ids, mask, &Model::position_ids(mask)));
    let log_p = logits.narrow(1, 0, t - 1).log_softmax(-1, Kind::Float);
    let plain = -(log_p.exp() * &log_p).sum_dim_intlist(-1, false, Kind::Float);
    let real = mask.narrow(1, 0, t - 1);
    assert!(max_abs_where(&entropy, &plain, &real) < 1e-4);
    let most = (256f64).ln();
    assert!(entropy.max().double_value(&[]) <= most + 1e-4 && entropy.min().double_value(&[]) >= 0.0);
}

/// The entropy as a differentiable output (`--entropy-coeff`): the log-probs are the plain node's, the entropy the
/// plain distribution's, and the gradients of the log-probs, the entropies or any mix of them are plain autograd's
/// over the full logits, in any chunking, with the head trained or frozen (LoRA), and again in a second backward pass
/// over the retained graph. The model's own path gives the values its no-gradient path gives.
#[test]
fn a_differentiable_entropy_has_plain_autograds_gradients() {
    let _rng = common::torch_rng_lock();
    tch::manual_seed(13);
    let opts = (Kind::Float, Device::Cpu);
    let hidden = (Tensor::randn([2, 5, 8], opts) * 2.0).set_requires_grad(true);
    let targets = Tensor::randint(11, [2, 5], (Kind::Int64, Device::Cpu));
    let (a, b) = (Tensor::randn([2, 5], opts), Tensor::randn([2, 5], opts));
    // Which outputs the loss uses: an unused one reaches the node's backward pass as an undefined gradient.
    let loss = |lp: &Tensor, h: &Tensor, (use_lp, use_h): (bool, bool)| match (use_lp, use_h) {
        (true, true) => (lp * &a + h * &b).sum(Kind::Float),
        (true, false) => (lp * &a).sum(Kind::Float),
        _ => (h * &b).sum(Kind::Float),
    };
    for train_head in [true, false] {
        let head = Tensor::randn([11, 8], opts).set_requires_grad(train_head);
        let inputs: Vec<&Tensor> = if train_head { vec![&hidden, &head] } else { vec![&hidden] };
        let log_p = hidden.linear::<Tensor>(&head, None).log_softmax(-1, Kind::Float);
        let plain_lp = log_p.gather(-1, &targets.unsqueeze(-1), false).squeeze_dim(-1);
        let plain_h = -(log_p.exp() * &log_p).sum_dim_intlist(-1, false, Kind::Float);
        for uses in [(true, true), (true, false), (false, true)] {
            let expected = Tensor::run_backward(&[&loss(&plain_lp, &plain_h, uses)], &inputs, true, false);
            for chunk in [1, 2, 100] {
                let (lp, h) =
                    grpo_host::model::token_log_probs_and_entropy_of(&hidden, &head, &targets, chunk, EntropyGrad::Yes);
                let node = grpo_host::model::token_log_probs_of(&hidden, &head, &targets, chunk);
                assert!(lp.equal(&node), "chunk {chunk}: the log-probs differ from the plain node's");
                let diff = (&h - &plain_h).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "chunk {chunk}: the entropy differs from the plain distribution's by {diff}");
                // Twice over the retained graph: one chunk's log p, kept from the forward pass, serves the first
                // backward pass only, and the second recomputes it.
                let total = loss(&lp, &h, uses);
                for pass in 0..2 {
                    let got = Tensor::run_backward(&[&total], &inputs, true, false);
                    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
                        let scale = e.abs().max().double_value(&[]);
                        let diff = (e - g).abs().max().double_value(&[]) / scale;
                        let at = format!("chunk {chunk}, {uses:?}, pass {pass}, input {i}");
                        assert!(scale > 0.0 && diff < 1e-5, "{at}: off by {diff} (relative)");
                    }
                }
            }
        }
    }
    let dir = tiny("qwen2");
    let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let r = reference(&dir, Device::Cpu);
    let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
    let padding = grpo_host::model::Padding::Any;
    let (lp, h) = model.token_log_probs_and_entropy(ids, mask, padding, EntropyGrad::Yes, None);
    let (want_lp, want_h) =
        tch::no_grad(|| model.token_log_probs_and_entropy(ids, mask, padding, EntropyGrad::No, None));
    assert!(lp.requires_grad() && h.requires_grad());
    assert!(lp.detach().equal(&want_lp));
    assert!((h.detach() - want_h).abs().max().double_value(&[]) < 1e-5);
}

/// Gemma 2's final soft cap through the log-prob node: at a log-prob temperature the node's log-probs, entropies and
/// every parameter's gradient (of the log-probs, and of the log-probs and entropies together) are plain autograd's
/// over `log_softmax(cap tanh(z / cap) / T)`, the temperature after the cap, in one chunk and in several.
#[test]
fn capped_logits_at_a_temperature_have_plain_autograds_values_and_gradients() {
    let _rng = common::torch_rng_lock();
    let dir = tiny("gemma2");
    let mut model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let temperature = 0.7;
    model.set_logprob_temperature(temperature);
    let r = reference(&dir, Device::Cpu);
    let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
    let t = ids.size()[1];
    tch::manual_seed(5);
    let (a, b) =
        (Tensor::randn([3, t - 1], (Kind::Float, Device::Cpu)), Tensor::randn([3, t - 1], (Kind::Float, Device::Cpu)));
    let plain = || {
        let hidden = model.hidden_states(ids, mask, &Model::position_ids(mask)).narrow(1, 0, t - 1);
        let log_p = (model.lm_head(&hidden) / temperature).log_softmax(-1, Kind::Float);
        let lp = log_p.gather(-1, &ids.narrow(1, 1, t - 1).unsqueeze(-1), false).squeeze_dim(-1);
        let entropy = -(log_p.exp() * &log_p).sum_dim_intlist(-1, false, Kind::Float);
        (lp, entropy)
    };
    let real = mask.narrow(1, 0, t - 1).logical_and(&mask.narrow(1, 1, t - 1));
    let weights = real.to_kind(Kind::Float);
    let compare = |expected: &[(String, Tensor)], got: &[(String, Tensor)], what: &str| {
        let (diff, name) = worst_relative(expected, got);
        assert!(diff <= 1e-4, "{what}: {name} gradient differs by {diff} (relative)");
    };
    let lp_only = grads(&model, &plain().0, &(&a * &weights));
    let (plain_lp, plain_h) = plain();
    let both = grads(&model, &(plain_lp + &plain_h * &b), &weights);
    for chunk in [4, 100] {
        let lp = model.token_log_probs_chunked(ids, mask, chunk);
        let diff = max_abs_where(&lp, &plain().0, &real);
        assert!(diff < 1e-5, "chunk {chunk}: the capped log-probs differ from plain autograd's by {diff}");
        compare(&lp_only, &grads(&model, &lp, &(&a * &weights)), &format!("chunk {chunk}, log-probs"));
    }
    let (lp, h) = model.token_log_probs_and_entropy(ids, mask, grpo_host::model::Padding::Any, EntropyGrad::Yes, None);
    assert!(max_abs_where(&h, &plain_h, &real) < 1e-5, "the capped entropy differs from plain autograd's");
    compare(&both, &grads(&model, &(lp + &h * &b), &weights), "log-probs and entropy");
}

/// `--logprob-temperature sampling`: the model scores tokens under its logits divided by the temperature, in the
/// log-probs (with their gradient) and the entropy alike, and the sampler records the drawn tokens' log-probs under
/// the same distribution, so the trainer's and the sampler's agree.
#[test]
fn log_probs_at_a_temperature_are_the_scaled_logits_distribution() {
    // Its unseeded sampling draws from libtorch's global generator, which the dropout replay of
    // `gradient_checkpointing_changes_no_value_gradient_or_random_draw` must have to itself.
    let _rng = common::torch_rng_lock();
    let dir = tiny("llama");
    let mut model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let r = reference(&dir, Device::Cpu);
    let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
    let t = ids.size()[1];
    let logits = tch::no_grad(|| model.forward(ids, mask, &Model::position_ids(mask))).narrow(1, 0, t - 1);
    let targets = ids.narrow(1, 1, t - 1).unsqueeze(-1);
    let real = mask.narrow(1, 0, t - 1);
    let plain = tch::no_grad(|| model.token_log_probs(ids, mask));
    model.set_logprob_temperature(0.5);
    let (lp, entropy) = tch::no_grad(|| {
        model.token_log_probs_and_entropy(ids, mask, grpo_host::model::Padding::Any, EntropyGrad::No, None)
    });
    let log_p = (&logits / 0.5).log_softmax(-1, Kind::Float);
    assert!(max_abs_where(&lp, &log_p.gather(-1, &targets, false).squeeze_dim(-1), &real) < 1e-4);
    assert!(max_abs_where(&lp, &plain, &real) > 0.1, "the temperature changed nothing");
    let scaled_entropy = -(log_p.exp() * &log_p).sum_dim_intlist(-1, false, Kind::Float);
    assert!(max_abs_where(&entropy, &scaled_entropy, &real) < 1e-4);
    // The gradient reaches the weights through the division.
    let lp = model.token_log_probs(ids, mask);
    (lp * real.to_kind(Kind::Float)).sum(Kind::Float).backward();
    let head = model.var_store().variables().into_iter().find(|(n, _)| n.contains("lm_head") || n.contains("embed"));
    let (name, weight) = head.expect("an output or embedding weight");
    assert!(weight.grad().defined() && weight.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}");

    // The sampler's record of a drawn token: at the model's temperature, not at the sampling one.
    let row = logits.select(1, 3);
    let params = grpo_host::generate::SamplingParams {
        temperature: 0.5,
        top_k: 5,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
    };
    let (tok, _, recorded) = grpo_host::generate::sampling::sample(&row, &params, None, 0.5, None);
    let want = (&row / 0.5).log_softmax(-1, Kind::Float).gather(-1, &tok.unsqueeze(-1), false).squeeze_dim(-1);
    assert!((&recorded - &want).abs().max().double_value(&[]) < 1e-5);
    let (tok, _, recorded) = grpo_host::generate::sampling::sample(&row, &params, None, 1.0, None);
    let want = row.log_softmax(-1, Kind::Float).gather(-1, &tok.unsqueeze(-1), false).squeeze_dim(-1);
    assert!((&recorded - &want).abs().max().double_value(&[]) < 1e-5);
}

/// Each variable's gradient in `vs` (sorted by name), then zeroed.
fn take_grads(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, v)| {
            let g = v.grad();
            let g = if g.defined() { g.to_kind(Kind::Float).copy() } else { v.zeros_like().to_kind(Kind::Float) };
            if v.grad().defined() {
                let _ = v.grad().zero_();
            }
            (name, g)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The largest difference between two gradient lists, relative to the largest gradient of each variable.
fn worst_relative(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let scale = x.abs().max().double_value(&[]).max(1e-12);
        let d = (x - y).abs().max().double_value(&[]) / scale;
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    worst
}

#[test]
fn gradient_checkpointing_changes_no_value_gradient_or_random_draw() {
    let _rng = common::torch_rng_lock();
    // Full fine-tuning: the recomputed layers give the same log-probs and gradients, on rows padded on the right
    // (the causal path) and on the fixture's rows (an explicit mask).
    for fam in ["llama", "qwen3"] {
        let model = Model::load(&tiny(fam), Device::Cpu, Kind::Float).unwrap();
        let r = reference(&tiny(fam), Device::Cpu);
        let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
        let t = ids.size()[1];
        tch::manual_seed(3);
        let weights = Tensor::randn([3, t - 1], (Kind::Float, Device::Cpu)) * mask.narrow(1, 1, t - 1);
        let right = Tensor::ones_like(mask);
        model.set_training(true);
        for m in [mask, &right] {
            model.set_gradient_checkpointing(false);
            let plain = model.token_log_probs(ids, m);
            (&plain * &weights).sum(Kind::Float).backward();
            let expected = take_grads(model.var_store());
            model.set_gradient_checkpointing(true);
            let before = checkpointed_runs();
            let lp = model.token_log_probs(ids, m);
            assert!(lp.equal(&plain.detach()), "{fam}: checkpointed log-probs differ");
            (&lp * &weights).sum(Kind::Float).backward();
            let got = take_grads(model.var_store());
            let layers = model.config().num_hidden_layers as u64;
            assert_eq!(checkpointed_runs() - before, 2 * layers, "{fam}: each layer runs twice under checkpointing");
            let (diff, name) = worst_relative(&expected, &got);
            assert!(diff <= 1e-5, "{fam}: {name}'s gradient differs by {diff} (relative) under checkpointing");
            let embed = &got.iter().find(|(n, _)| n == "model.embed_tokens.weight").unwrap().1;
            assert!(embed.abs().max().double_value(&[]) > 0.0, "{fam}: the embedding received no gradient");
        }
    }

    // LoRA with dropout: the frozen embedding's output needs no gradient, yet every layer's adapters get theirs,
    // the recomputation replays the forward's dropout, and the generator goes on as without checkpointing.
    let dir = tiny("llama");
    let r = reference(&dir, Device::Cpu);
    let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
    let mut model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(5);
    model.attach_lora(LoraConfig { dropout: 0.3, ..LoraConfig::new(4, 8.0) }).unwrap();
    tch::no_grad(|| {
        for (name, v) in model.lora_var_store().unwrap().variables() {
            if name.contains("lora_B") {
                v.shallow_clone().copy_(&(Tensor::randn_like(&v) * 0.05));
            }
        }
    });
    model.set_training(true);
    let mut runs = Vec::new();
    for on in [false, true] {
        model.set_gradient_checkpointing(on);
        tch::manual_seed(11);
        let before = checkpointed_runs();
        let lp = model.token_log_probs(ids, mask);
        (&lp * mask.narrow(1, 1, ids.size()[1] - 1)).sum(Kind::Float).backward();
        let layers = model.config().num_hidden_layers as u64;
        assert_eq!(checkpointed_runs() - before, if on { 2 * layers } else { 0 });
        let next = Tensor::rand([4], (Kind::Float, Device::Cpu));
        runs.push((lp.detach(), take_grads(model.lora_var_store().unwrap()), next));
    }
    let ((lp0, g0, next0), (lp1, g1, next1)) = (&runs[0], &runs[1]);
    assert!(lp0.equal(lp1), "checkpointed LoRA log-probs differ");
    let (diff, name) = worst_relative(g0, g1);
    assert!(diff <= 1e-5, "{name}'s gradient differs by {diff} (relative) under checkpointing with dropout");
    assert!(next0.equal(next1), "checkpointing changed the random draws that follow it");
    for (name, g) in g1 {
        assert!(g.abs().max().double_value(&[]) > 0.0, "{name} received no gradient under checkpointing");
    }
}

#[test]
fn parameters_carry_hf_names_and_gradients_flow() {
    let model = Model::load(&tiny("qwen2"), Device::Cpu, Kind::Float).unwrap();
    let vars = model.var_store().variables();
    for name in ["model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.bias", "model.norm.weight"] {
        assert!(vars.contains_key(name), "missing {name}; have {:?}", vars.keys().take(5).collect::<Vec<_>>());
    }
    assert!(!vars.contains_key("lm_head.weight"), "qwen2 tiny model ties lm_head to the embedding");
    let r = reference(&tiny("qwen2"), Device::Cpu);
    let lp = model.token_log_probs(&r["input_ids"], &r["attention_mask"]);
    lp.sum(Kind::Float).backward();
    let g = vars["model.layers.0.mlp.up_proj.weight"].grad();
    assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// A mixture of experts' gradients equal transformers' for every parameter (`reference_grads.safetensors`, split
/// into one tensor per expert as the checkpoint stores them): the router learns through the chosen experts'
/// weights, and each expert from the tokens sent to it, at the weight the router gave them.
#[test]
fn mixture_of_experts_gradients_match_transformers() {
    let _rng = common::torch_rng_lock();
    let mixtures = families_with("reference_grads.safetensors");
    assert_eq!(mixtures.len(), 6, "the six tiny mixtures have reference gradients");
    for (fam, dir, expected_file) in mixtures {
        let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let r = reference(&dir, Device::Cpu);
        let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
        let t = ids.size()[1];
        let both_real = mask.narrow(1, 0, t - 1) * mask.narrow(1, 1, t - 1);
        let ours = grads(&model, &model.token_log_probs(ids, mask), &both_real.to_kind(Kind::Float));
        let expected = reference_file(&expected_file, Device::Cpu);
        assert_grads_match(&ours, &expected, 1e-3, fam);
        let router = ours.iter().find(|(n, _)| n.ends_with(".gate.weight") || n.contains(".router."));
        let router = router.expect("a router");
        assert!(router.1.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{fam}: the router learns");
    }
}

/// The tiny families that have the oracle file `name`, each with its folder and that file's path.
fn families_with(name: &str) -> Vec<(&'static str, PathBuf, PathBuf)> {
    FAMILIES.iter().map(|fam| (*fam, tiny(fam), tiny(fam).join(name))).filter(|(_, _, file)| file.exists()).collect()
}

/// Each gradient of `ours` against transformers' of the same name in `expected`, one each: within 1e-4 of the
/// larger of transformers' largest magnitude and `floor`. `case` names the comparison in a failure.
fn assert_grads_match(
    ours: &[(String, Tensor)],
    expected: &std::collections::HashMap<String, Tensor>,
    floor: f64,
    case: &str,
) {
    assert_eq!(ours.len(), expected.len(), "{case}: one gradient per parameter");
    for (name, g) in ours {
        let want = expected.get(name).unwrap_or_else(|| panic!("{case}: transformers has no gradient for {name}"));
        let scale = want.abs().max().double_value(&[]).max(floor);
        let diff = (g - want).abs().max().double_value(&[]);
        assert!(diff <= 1e-4 * scale, "{case}: gradient of {name} differs from transformers' by {diff} (of {scale})");
    }
}

/// A mixture's load-balancing loss is transformers' `aux_loss` (`output_router_logits`) over the real tokens of a
/// padded batch, and its gradient is transformers' for every parameter, with and without gradient checkpointing
/// (where the router scores leave each layer's recomputing node beside its hidden state).
/// Oracle: tests/oracles/load_balancing.py.
#[test]
fn the_load_balancing_loss_and_its_gradients_match_transformers() {
    let _rng = common::torch_rng_lock();
    let mixtures = families_with("load_balancing.safetensors");
    assert_eq!(mixtures.len(), 6, "the six tiny mixtures have load-balancing oracles");
    for (fam, dir, expected_file) in mixtures {
        let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
        let r = reference(&dir, Device::Cpu);
        let (ids, mask, pos) = (&r["input_ids"], &r["attention_mask"], &r["position_ids"]);
        let mut expected = reference_file(&expected_file, Device::Cpu);
        let want = expected.remove("aux_loss").unwrap().double_value(&[0]);
        for checkpointing in [false, true] {
            model.set_gradient_checkpointing(checkpointing);
            model.set_training(true);
            let mut routers = RouterScores::new();
            let hidden = model.hidden_states_padded(ids, mask, pos, Padding::Any, Some(&mut routers));
            model.set_training(false);
            let sparse = model.config().moe.as_ref().unwrap().sparse_layers.iter().filter(|&&s| s).count();
            assert_eq!(routers.layers(), sparse, "{fam}: one record per sparse layer");
            let aux = model.load_balancing_loss(&routers, mask).unwrap();
            let got = aux.double_value(&[]);
            assert!((got - want).abs() <= 1e-5 * want, "{fam}: aux_loss {got}, transformers {want}");
            // The hidden states take part with no weight, as in training, where the log-probs come from them.
            (aux + hidden.sum(Kind::Float) * 0.0).backward();
            let ours = taken_grads(&model);
            assert_grads_match(&ours, &expected, 1e-4, &format!("{fam} (checkpointing {checkpointing})"));
            let reached = expected.values().filter(|want| want.abs().max().double_value(&[]) > 0.0).count();
            assert!(reached > 0, "{fam}: the loss has a gradient");
        }
        model.set_gradient_checkpointing(false);
    }
    let dense = Model::load(&tiny("llama"), Device::Cpu, Kind::Float).unwrap();
    let r = reference(&tiny("llama"), Device::Cpu);
    let mut routers = RouterScores::new();
    let _ = tch::no_grad(|| {
        dense.hidden_states_padded(
            &r["input_ids"],
            &r["attention_mask"],
            &r["position_ids"],
            Padding::Any,
            Some(&mut routers),
        )
    });
    assert!(dense.load_balancing_loss(&routers, &r["attention_mask"]).is_none(), "a dense model has no such loss");
}

/// gpt-oss's MXFP4 experts, as the hub stores them, are dequantized on loading exactly as transformers'
/// `Mxfp4Config(dequantize=True)` does them (in f32, and in bf16, where every value is exact), and the model then
/// gives transformers' logits. Oracle: tests/oracles/mxfp4_checkpoint.py.
#[test]
fn gpt_oss_mxfp4_experts_load_as_transformers_dequantizes_them() {
    let dir = tiny("gpt_oss_mxfp4");
    let r = reference(&dir, Device::Cpu);
    for kind in [Kind::Float, Kind::BFloat16] {
        let model = Model::load(&dir, Device::Cpu, kind).unwrap();
        let vars = model.var_store().variables();
        for name in ["gate_up_proj", "down_proj"] {
            let ours = &vars[&format!("model.layers.0.mlp.experts.{name}")];
            assert!(ours.to_kind(Kind::Float).equal(&r[name]), "{name} in {kind:?}");
        }
        assert!(!vars.keys().any(|n| n.ends_with("_blocks") || n.ends_with("_scales")));
        if kind == Kind::Float {
            let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
            let logits = tch::no_grad(|| model.forward(ids, mask, &Model::position_ids(mask)));
            let diff = max_abs_where(&logits, &r["logits"], &mask.unsqueeze(-1));
            assert!(diff < 1e-4, "logits differ from transformers' by {diff}");
        }
    }
}

/// `cast_lm_head_to_f32` in a bf16 model, tied (qwen2), untied (llama) and with a bias (phi): the head holds the
/// checkpoint's f32 values, the layers compute exactly as before (a tied embedding still looks up in bf16), and
/// every log-prob is the f32 computation from the bf16 hidden states, with an f32 gradient for the head.
#[test]
fn an_f32_head_in_a_bf16_model_scores_in_f32() {
    for fam in ["llama", "qwen2", "phi"] {
        let dir = tiny(fam);
        let r = reference(&dir, Device::Cpu);
        let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
        let pos = Model::position_ids(mask);
        let plain = Model::load(&dir, Device::Cpu, Kind::BFloat16).unwrap();
        let mut cast = Model::load(&dir, Device::Cpu, Kind::BFloat16).unwrap();
        assert!(!cast.lm_head_in_f32());
        cast.cast_lm_head_to_f32().unwrap();
        assert!(cast.lm_head_in_f32(), "{fam}");
        let head = if fam == "qwen2" { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let f32_vars = Model::load(&dir, Device::Cpu, Kind::Float).unwrap().var_store().variables();
        let stored = f32_vars[head].copy();
        let weight = cast.var_store().variables()[head].shallow_clone();
        assert!(weight.equal(&stored), "{fam}: the head holds the checkpoint's f32 values");
        let bias = f32_vars.get("lm_head.bias").map(Tensor::copy);
        assert_eq!(bias.is_some(), fam == "phi");
        if let Some(bias) = &bias {
            assert!(cast.var_store().variables()["lm_head.bias"].equal(bias), "{fam}: the bias is f32 too");
        }
        let hidden = tch::no_grad(|| cast.hidden_states(ids, mask, &pos));
        assert!(hidden.equal(&tch::no_grad(|| plain.hidden_states(ids, mask, &pos))), "{fam}: the layers changed");
        assert_eq!(hidden.kind(), Kind::BFloat16);

        let lp = cast.token_log_probs(ids, mask);
        let t = ids.size()[1];
        let logits = hidden.narrow(1, 0, t - 1).to_kind(Kind::Float).linear(&stored, bias.as_ref());
        let expected = logits.log_softmax(-1, Kind::Float).gather(-1, &ids.narrow(1, 1, t - 1).unsqueeze(-1), false);
        let real = mask.narrow(1, 1, t - 1);
        let diff = max_abs_where(&lp, &expected.squeeze_dim(-1), &real);
        assert!(diff < 1e-5, "{fam}: f32-head log-probs differ from the f32 computation by {diff}");
        let bf16 = tch::no_grad(|| plain.token_log_probs(ids, mask));
        assert!(max_abs_where(&bf16, &lp, &real) > 1e-3, "{fam}: bf16 logits are no different");
        assert_eq!(cast.forward(ids, mask, &pos).kind(), Kind::Float);

        (&lp * &real.to_kind(Kind::Float)).sum(Kind::Float).backward();
        let grad = weight.grad();
        assert!(grad.defined() && grad.kind() == Kind::Float && grad.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}

#[test]
fn bf16_is_close_to_f32() {
    for device in common::devices("bf16_is_close_to_f32") {
        for fam in FAMILIES {
            let dir = tiny(fam);
            let r = reference(&dir, device);
            let model = Model::load(&dir, device, Kind::BFloat16).unwrap();
            let logits = tch::no_grad(|| model.forward(&r["input_ids"], &r["attention_mask"], &r["position_ids"]));
            assert_eq!((logits.kind(), logits.device()), (Kind::BFloat16, device));
            let real = r["attention_mask"].unsqueeze(-1).expand_as(&logits);
            // A mixture of experts is held to transformers' bf16 logits: bf16 rounding moves some tokens to other
            // experts, in transformers too (0.25 from f32 on the tiny Mixtral).
            let (expected, of) = match r.get("logits_bf16") {
                Some(bf16) => (bf16, "bf16"),
                None => (&r["logits"], "f32"),
            };
            let diff = max_abs_where(&logits, expected, &real);
            assert!(diff < 0.1, "{fam} on {device:?}: bf16 drifted by {diff} from transformers' {of} logits");
        }
    }
}

fn load_err(dir: &Path) -> String {
    let err = Model::load(dir, Device::Cpu, Kind::Float).unwrap_err();
    assert_eq!(grpo_host::error::exit_code(&err), 2, "a broken checkpoint is a user error: {err}");
    grpo_host::error::one_line(&err)
}

/// GPT-NeoX and GPT-2 checkpoints as they come. Older ones keep each layer's causal-mask buffers (GPT-NeoX's
/// `attention.bias` and `attention.masked_bias`, GPT-2's `attn.bias` and `attn.masked_bias`), which are skipped as
/// transformers skips them. GPT-NeoX's head is `embed_out` on the hub but `lm_head` where transformers 5 saved the
/// renamed model; both load, under the name read. GPT-2's original checkpoints leave out the `transformer.` prefix;
/// they load, and are kept (and saved) under transformers' full names. Each loads to the fixture's logits.
#[test]
fn gpt_neox_and_gpt2_checkpoints_load_as_the_hub_stores_them() {
    let tmp = tempfile::tempdir().unwrap();
    for (fam, buffers) in [("gpt_neox", "attention"), ("gpt2", "attn")] {
        let expected = forward_logits(&Model::load(&tiny(fam), Device::Cpu, Kind::Float).unwrap());
        let dir = tmp.path().join(fam);
        common::copy_dir(&tiny(fam), &dir);
        let file = dir.join("model.safetensors");
        let weights: Vec<(String, Tensor)> = Tensor::read_safetensors(&file).unwrap();
        let prefix = if fam == "gpt2" { "transformer." } else { "gpt_neox." };
        let mut old: Vec<(String, Tensor)> = weights
            .iter()
            .map(|(n, t)| (if fam == "gpt2" { n.replace(prefix, "") } else { n.clone() }, t.shallow_clone()))
            .collect();
        for i in 0..2 {
            let layer = if fam == "gpt2" { format!("h.{i}") } else { format!("{prefix}layers.{i}") };
            let mask = Tensor::ones([1, 1, 8, 8], (Kind::Bool, Device::Cpu)).tril(0);
            old.push((format!("{layer}.{buffers}.bias"), mask));
            old.push((format!("{layer}.{buffers}.masked_bias"), Tensor::from(-1e9f32)));
        }
        Tensor::write_safetensors(&old, &file).unwrap();
        let mut model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
        assert!(forward_logits(&model).equal(&expected), "{fam}");
        let names = model.var_store().variables();
        let head = if fam == "gpt2" { "transformer.wte.weight" } else { "embed_out.weight" };
        assert!(names.contains_key(head) && names.keys().all(|n| n.starts_with(prefix) || n == head), "{fam}");
        // A tied head read back in f32 finds its stored name too.
        model.cast_lm_head_to_f32().unwrap();

        if fam == "gpt_neox" {
            let renamed: Vec<(String, Tensor)> = weights
                .iter()
                .map(|(n, t)| {
                    (if n == "embed_out.weight" { "lm_head.weight".into() } else { n.clone() }, t.shallow_clone())
                })
                .collect();
            Tensor::write_safetensors(&renamed, &file).unwrap();
            let model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
            assert!(forward_logits(&model).equal(&expected));
            assert!(model.var_store().variables().contains_key("lm_head.weight"));
        }
    }
}

/// A model with learned positions (the tiny GPT-2's 512) refuses, in one line, a cached forward pass that reaches
/// past them, and takes one that ends at the last.
#[test]
fn learned_positions_bound_the_sequence_length() {
    let model = Model::load(&tiny("gpt2"), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.position_limit(), Some(512));
    let mut cache = model.new_cache(1, 520);
    let ids = Tensor::zeros([1, 8], (Kind::Int64, Device::Cpu));
    let rows = grpo_host::model::CacheRows::Prefix(1);
    let fits = model.forward_slots(&ids, &[504], &[8], &rows, &mut cache);
    assert!(fits.is_ok());
    let err = model.forward_slots(&ids, &[505], &[8], &rows, &mut cache).unwrap_err().to_string();
    assert!(err.contains("a sequence has 513 tokens, but this gpt2 model has 512 learned positions"), "{err}");
    assert!(model.check_length(512, "a row", "").is_ok() && model.check_length(513, "a row", "").is_err());
    assert!(model.check_max_length(Some(512)).is_ok());
    for refused in [Some(513), None] {
        let err = model.check_max_length(refused).unwrap_err().to_string();
        assert!(err.contains("512 learned positions; give --max-length 512 or less"), "{err}");
    }
    let rope = Model::load(&tiny("llama"), Device::Cpu, Kind::Float).unwrap();
    assert!(rope.position_limit().is_none() && rope.check_length(1 << 20, "a row", "").is_ok());
}

/// The model's logits on the reference batch of the fixture it was loaded from (or a copy of one).
fn forward_logits(model: &Model) -> Tensor {
    let r = reference(model.dir(), Device::Cpu);
    let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
    tch::no_grad(|| model.forward(ids, mask, &Model::position_ids(mask)))
}

#[test]
fn broken_checkpoints_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_dir(&tiny("llama"), tmp.path());
    let weights: Vec<(String, Tensor)> = Tensor::read_safetensors(tmp.path().join("model.safetensors")).unwrap();

    // A missing tensor.
    let fewer: Vec<(String, Tensor)> = weights
        .iter()
        .filter(|(n, _)| n != "model.layers.1.mlp.down_proj.weight")
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    Tensor::write_safetensors(&fewer, tmp.path().join("model.safetensors")).unwrap();
    assert!(load_err(tmp.path()).contains("model.layers.1.mlp.down_proj.weight"));

    // An unexpected tensor.
    let mut more: Vec<(String, Tensor)> = weights.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    more.push(("model.layers.9.extra.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu))));
    Tensor::write_safetensors(&more, tmp.path().join("model.safetensors")).unwrap();
    assert!(load_err(tmp.path()).contains("model.layers.9.extra.weight"));

    // A shape mismatch (config says wider MLP than the weights).
    Tensor::write_safetensors(&weights, tmp.path().join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        cfg.replace("\"intermediate_size\": 64", "\"intermediate_size\": 65"),
    )
    .unwrap();
    let e = load_err(tmp.path());
    assert!(e.contains("gate_proj.weight") && e.contains("shape"), "{e}");

    // An unsupported architecture.
    std::fs::write(tmp.path().join("config.json"), cfg.replace("\"llama\"", "\"bloom\"")).unwrap();
    assert!(load_err(tmp.path()).contains("bloom"));

    // Not a model directory at all.
    let empty = tempfile::tempdir().unwrap();
    assert!(load_err(empty.path()).contains("config.json"));
}

#[test]
fn lora_starts_as_identity_and_switches_off() {
    let _rng = common::torch_rng_lock();
    let dir = tiny("qwen3");
    let r = reference(&dir, Device::Cpu);
    let (ids, mask, pos) = (&r["input_ids"], &r["attention_mask"], &r["position_ids"]);
    let mut model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let base = tch::no_grad(|| model.forward(ids, mask, pos));
    model.attach_lora(LoraConfig::new(4, 8.0)).unwrap();
    let lvs = model.lora_var_store().unwrap();
    let lora_vars = lvs.variables();
    // 7 adapted projections per layer, two matrices each.
    assert_eq!(lora_vars.len(), 2 * 7 * 2);
    let b = &lora_vars["model.layers.0.self_attn.v_proj.lora_B.weight"];
    let same = tch::no_grad(|| model.forward(ids, mask, pos));
    assert!(max_abs_where(&same, &base, &mask.unsqueeze(-1).expand_as(&base)) < 1e-6, "B = 0 must not change outputs");
    tch::no_grad(|| {
        let mut b = b.shallow_clone();
        let _ = b.fill_(0.05);
    });
    let changed = tch::no_grad(|| model.forward(ids, mask, pos));
    assert!((&changed - &base).abs().max().double_value(&[]) > 1e-3, "a non-zero adapter must change outputs");
    model.set_adapters_enabled(false);
    let reference_policy = tch::no_grad(|| model.forward(ids, mask, pos));
    assert!((&reference_policy - &base).abs().max().double_value(&[]) < 1e-6);
    // Base weights are frozen: only adapters train.
    assert!(!model.var_store().variables()["model.norm.weight"].requires_grad());
    assert!(b.requires_grad());
}

/// DoRA (`--use-dora`): a fresh adapter is the identity change (its magnitudes are the weight's row norms). While the
/// weights are held fixed, as a generation engine holds them, the row norms are computed once; the next hold, after
/// the adapter changed, computes them again and agrees with a forward pass outside any hold.
#[test]
fn dora_starts_as_identity_and_its_kept_norms_follow_the_weights() {
    let _rng = common::torch_rng_lock();
    let dir = tiny("qwen3");
    let r = reference(&dir, Device::Cpu);
    let (ids, mask, pos) = (&r["input_ids"], &r["attention_mask"], &r["position_ids"]);
    let mut model = Model::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let forward = |model: &Model| tch::no_grad(|| model.forward(ids, mask, pos));
    let base = forward(&model);
    let dora = LoraConfig { dora: true, ..LoraConfig::new(4, 8.0) };
    model.attach_lora(dora).unwrap();
    let vars = model.lora_var_store().unwrap().variables();
    assert_eq!(vars.len(), 2 * 7 * 3, "A, B and a magnitude per adapted projection");
    let v_proj = "model.layers.0.self_attn.v_proj";
    let (magnitude, b) = (&vars[&format!("{v_proj}.lora_magnitude_vector")], &vars[&format!("{v_proj}.lora_B.weight")]);
    let weight = &model.var_store().variables()[&format!("{v_proj}.weight")];
    let norms = weight.square().sum_dim_intlist(1, false, Kind::Float).sqrt();
    assert!((magnitude - norms).abs().max().double_value(&[]) < 1e-6 && magnitude.requires_grad());
    let gap = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert!(gap(&forward(&model), &base) < 1e-5, "a fresh DoRA adapter changes the outputs");

    let set_b = |value: f64| {
        tch::no_grad(|| {
            let _ = b.shallow_clone().fill_(value);
        })
    };
    set_b(0.05);
    let outside = forward(&model);
    assert!(gap(&outside, &base) > 1e-3, "a non-zero adapter must change outputs");
    let stale = {
        let _hold = model.hold_weights_fixed();
        assert!(gap(&forward(&model), &outside) < 1e-6, "the kept norms are not the adapter's");
        // Changing the weights inside a hold breaks its promise: the norms kept from its start still apply, which
        // shows they are kept rather than computed at every forward pass.
        set_b(0.2);
        forward(&model)
    };
    let fresh = forward(&model);
    assert!(gap(&stale, &fresh) > 1e-4, "the norms are computed at every forward pass, not kept");
    let _hold = model.hold_weights_fixed();
    assert!(gap(&forward(&model), &fresh) < 1e-6, "the next hold kept the last one's norms");
}

/// LoRA on a mixture adapts attention and the dense MLPs or the shared expert, as PEFT's `all-linear` does on
/// transformers 5's MoE models; the routed experts and the router stay as they are, and a named target the model
/// lacks is refused.
#[test]
fn lora_on_a_mixture_adapts_attention_and_the_shared_expert() {
    let _rng = common::torch_rng_lock();
    let all = || LoraConfig::new(2, 4.0);
    let attention = ["q_proj", "k_proj", "v_proj", "o_proj"];
    let mlp = ["gate_proj", "up_proj", "down_proj"];
    // Qwen2-MoE: a shared expert in both layers; Qwen3-MoE: a dense MLP in layer 1; Mixtral: experts only.
    for (fam, modules, adapted) in [
        ("qwen2_moe", [&attention[..], &mlp].concat(), 14),
        ("qwen3_moe", [&attention[..], &mlp].concat(), 11),
        ("mixtral", attention.to_vec(), 8),
    ] {
        let mut model = Model::load(&tiny(fam), Device::Cpu, Kind::Float).unwrap();
        model.attach_lora(all()).unwrap();
        assert_eq!(model.lora_modules(), modules, "{fam}");
        let names: Vec<String> = model.lora_var_store().unwrap().variables().into_keys().collect();
        assert_eq!(names.len(), 2 * adapted, "{fam}: two matrices per adapted projection: {names:?}");
        assert!(!names.iter().any(|n| n.contains("experts.") || n.contains(".gate.")), "{fam}: {names:?}");
    }
    let mut mixtral = Model::load(&tiny("mixtral"), Device::Cpu, Kind::Float).unwrap();
    let err = mixtral.attach_lora(LoraConfig { targets: "q_proj,gate_proj".parse().unwrap(), ..all() }).unwrap_err();
    assert!(
        err.to_string().contains("this model has no gate_proj (its projections: q_proj,k_proj,v_proj,o_proj)"),
        "{err}"
    );
}

/// NEFTune (`--neftune-noise-alpha`): the noise is uniform within `+-alpha / sqrt(T * hidden)` (its extremes near
/// the bound, mean 0, variance bound^2 / 3), and the model adds it in training mode only, from libtorch's seeded
/// generator.
#[test]
fn neftune_noise_is_uniform_at_its_scale_and_only_in_training() {
    let _rng = common::torch_rng_lock();
    tch::manual_seed(11);
    let x = Tensor::ones([2, 50, 64], (Kind::Float, Device::Cpu));
    let noise = grpo_host::model::neftune_noise(&x, 5.0) - &x;
    let bound = 5.0 / (50.0f64 * 64.0).sqrt();
    let n = noise.numel() as f64;
    let (max, mean) = (noise.abs().max().double_value(&[]), noise.mean(Kind::Double).double_value(&[]));
    let var = noise.square().mean(Kind::Double).double_value(&[]);
    assert!(max <= bound * (1.0 + 1e-6) && max > 0.99 * bound, "max |noise| {max}, bound {bound}");
    assert!(mean.abs() < 5.0 * bound / (3.0 * n).sqrt(), "mean {mean}");
    assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.05, "variance {var} against {}", bound * bound / 3.0);

    let mut model = Model::load(&tiny("llama"), Device::Cpu, Kind::Float).unwrap();
    let r = reference(&tiny("llama"), Device::Cpu);
    let (ids, mask) = (&r["input_ids"], &r["attention_mask"]);
    let pos = Model::position_ids(mask);
    let plain = tch::no_grad(|| model.hidden_states(ids, mask, &pos));
    model.set_neftune_noise_alpha(5.0);
    let hidden = |model: &Model, seed: i64| {
        tch::manual_seed(seed);
        tch::no_grad(|| model.hidden_states(ids, mask, &pos))
    };
    assert!(hidden(&model, 1).equal(&plain), "eval mode must see the embeddings as they are");
    model.set_training(true);
    let noisy = hidden(&model, 1);
    assert!(!noisy.equal(&plain), "training mode with NEFTune changed nothing");
    assert!(noisy.equal(&hidden(&model, 1)), "the same seed must draw the same noise");
    assert!(!noisy.equal(&hidden(&model, 2)), "another seed must draw other noise");
}
