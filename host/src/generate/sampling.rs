//! Token sampling on the device: temperature, then top-k, top-p and min-p filters (transformers' order), then one
//! draw per row by inverse transform with a uniform from libtorch's generator.

use tch::{Kind, Tensor};

use crate::user_error;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches top_p; 1 disables.
    pub top_p: f64,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f64,
    /// transformers' repetition penalty: the logit of every token already in the sequence (prompt included) is
    /// divided by it when positive and multiplied by it when negative, before the temperature; 1 disables.
    #[serde(default = "no_repetition_penalty")]
    pub repetition_penalty: f64,
}

/// 1: no repetition penalty (and what settings saved before it existed read back as).
fn no_repetition_penalty() -> f64 {
    1.0
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0 }
    }
}

impl SamplingParams {
    /// Argmax decoding.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    /// Whether this is argmax decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether sampling uses the plain model distribution (temperature 1, no filters, no penalty), so the
    /// sampling log-probs equal the model log-probs.
    pub fn is_plain(&self) -> bool {
        self.temperature == 1.0
            && self.top_k == 0
            && self.top_p >= 1.0
            && self.min_p <= 0.0
            && self.repetition_penalty == 1.0
    }

    /// Reject out-of-range settings with a one-line user error.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(user_error!("temperature {} must be >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(user_error!("top-p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(user_error!("min-p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(user_error!("repetition penalty {} must be a number > 0 (1 is none)", self.repetition_penalty));
        }
        Ok(())
    }
}

/// Sample one token per row of `logits` `[n, vocab]`, with the uniform draws `uniforms` (`[n]` f64 in [0, 1)) when
/// given, else from libtorch's generator. `seen` (`[n, vocab]` bool: the tokens already in each row's sequence) is
/// needed when `p` has a repetition penalty. Returns `(tokens [n] int64, sampling log-probs [n] f32, model log-probs
/// [n] f32)`, the last at `model_temperature` without filters or penalty (1: the plain model distribution; see
/// [`crate::model::Model::set_logprob_temperature`]).
pub fn sample(
    logits: &Tensor,
    p: &SamplingParams,
    uniforms: Option<&Tensor>,
    model_temperature: f64,
    seen: Option<&Tensor>,
) -> (Tensor, Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    let model_lp = if model_temperature == 1.0 {
        logits.log_softmax(-1, Kind::Float)
    } else {
        (&logits / model_temperature).log_softmax(-1, Kind::Float)
    };
    let logits = match seen {
        Some(seen) if p.repetition_penalty != 1.0 => penalized(&logits, seen, p.repetition_penalty),
        _ => logits,
    };
    if p.is_greedy() {
        let tok = logits.argmax(-1, true);
        let mlp = model_lp.gather(-1, &tok, false).squeeze_dim(-1);
        return (tok.squeeze_dim(-1), mlp.zeros_like(), mlp);
    }
    // The plain distribution is the model's unless its log-probs are scored at another temperature.
    let lp = match (p.is_plain(), model_temperature == 1.0) {
        (true, true) => model_lp.shallow_clone(),
        (true, false) => logits.log_softmax(-1, Kind::Float),
        (false, _) => filtered_log_probs(&logits, p),
    };
    let tok = draw(&lp, uniforms);
    let slp = lp.gather(-1, &tok, false).squeeze_dim(-1);
    let mlp = model_lp.gather(-1, &tok, false).squeeze_dim(-1);
    (tok.squeeze_dim(-1), slp, mlp)
}

/// One token per row of `lp` `[n, vocab]` (log-probs), `[n, 1]` int64, by inverse transform: the first index whose
/// running probability mass reaches `(1 - u) * total` for a uniform `u` in [0, 1). The target is above zero, so a
/// token of zero probability is never chosen. Hand-written rather than libtorch's `multinomial`, which for a single
/// draw uses the exponential-race trick: one logarithm per vocabulary entry in a serial loop, measured at a sixth
/// of a 64-row decode step of the default model on a CPU. The running sum is kept in f64 so that a 150k vocabulary
/// adds no visible rounding to the draw.
fn draw(lp: &Tensor, uniforms: Option<&Tensor>) -> Tensor {
    let n = lp.size()[0];
    let cdf = lp.exp().cumsum(-1, Kind::Double);
    let total = cdf.narrow(1, cdf.size()[1] - 1, 1);
    let u = match uniforms {
        Some(u) => u.to_device(lp.device()).to_kind(Kind::Double).view([n, 1]),
        None => Tensor::rand([n, 1], (Kind::Double, lp.device())),
    };
    let target: Tensor = (1.0 - u) * total;
    // Only rounding can put the target past the end; the last token with mass is then the right answer, and
    // a non-finite row (NaN logits) lands there too, to be caught by the caller through its log-prob.
    let last = lp.size()[1] - 1;
    target.searchsorted(&cdf, false, false, "left", None::<Tensor>).clamp_max(last)
}

/// `logits` with transformers' repetition penalty on the `seen` tokens: a positive logit divided by `penalty`, a
/// negative one multiplied, so a penalty above 1 makes every seen token less likely.
pub fn penalized(logits: &Tensor, seen: &Tensor, penalty: f64) -> Tensor {
    let scaled = (logits * penalty).where_self(&logits.lt(0.0), &(logits / penalty));
    scaled.where_self(seen, logits)
}

/// Log-probs of the sampling distribution: temperature, top-k, top-p, min-p, renormalised.
pub fn filtered_log_probs(logits: &Tensor, p: &SamplingParams) -> Tensor {
    let vocab = logits.size()[1];
    let mut s = logits / p.temperature;
    if p.top_k > 0 && (p.top_k as i64) < vocab {
        let k = p.top_k as i64;
        let (vals, _) = s.topk(k, -1, true, true);
        let kth = vals.narrow(1, k - 1, 1);
        s = s.masked_fill(&s.lt_tensor(&kth), f64::NEG_INFINITY);
    }
    if p.top_p < 1.0 {
        let (sorted, idx) = s.sort(-1, true);
        let probs = sorted.softmax(-1, Kind::Float);
        // Drop a token when the mass strictly before it already reaches top_p; the first is always kept.
        let before = probs.cumsum(-1, Kind::Float) - &probs;
        let drop_sorted = before.ge(p.top_p);
        let drop = drop_sorted.scatter(1, &idx, &drop_sorted);
        s = s.masked_fill(&drop, f64::NEG_INFINITY);
    }
    if p.min_p > 0.0 {
        let probs = s.softmax(-1, Kind::Float);
        let top = probs.amax([-1i64].as_slice(), true);
        s = s.masked_fill(&probs.lt_tensor(&(top * p.min_p)), f64::NEG_INFINITY);
    }
    s.log_softmax(-1, Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(lp: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(lp.exp().to_kind(Kind::Double).view([-1])).unwrap()
    }

    #[test]
    fn filters_keep_the_right_tokens() {
        // Probabilities 0.5, 0.25, 0.15, 0.1.
        let logits = Tensor::from_slice(&[0.5f32, 0.25, 0.15, 0.1]).log().view([1, 4]);
        let top_k = probs(&filtered_log_probs(&logits, &SamplingParams { top_k: 2, ..Default::default() }));
        assert!((top_k[0] - 2.0 / 3.0).abs() < 1e-6 && top_k[2] == 0.0 && top_k[3] == 0.0, "{top_k:?}");
        let top_p = probs(&filtered_log_probs(&logits, &SamplingParams { top_p: 0.7, ..Default::default() }));
        // 0.5 < 0.7, 0.75 >= 0.7: the first two tokens survive.
        assert!(top_p[1] > 0.0 && top_p[2] == 0.0, "{top_p:?}");
        let min_p = probs(&filtered_log_probs(&logits, &SamplingParams { min_p: 0.3, ..Default::default() }));
        // Threshold 0.15: tokens with p < 0.15 go.
        assert!(min_p[2] > 0.0 && min_p[3] == 0.0, "{min_p:?}");
        let cold = probs(&filtered_log_probs(&logits, &SamplingParams { temperature: 0.5, ..Default::default() }));
        // Temperature 0.5 squares the probabilities before renormalising.
        let z: f64 = [0.5f64, 0.25, 0.15, 0.1].iter().map(|p| p * p).sum();
        assert!((cold[0] - 0.25 / z).abs() < 1e-5, "{cold:?}");
    }

    /// The inverse-transform draw against known probabilities: 40,000 rows, one draw each, frequencies within
    /// five standard errors; tokens without mass, including the first, are never drawn.
    #[test]
    fn draws_follow_the_distribution() {
        let p = [0.0f64, 0.5, 0.25, 0.0, 0.15, 0.1];
        let rows = 40_000i64;
        let lp = Tensor::from_slice(&p).log().to_kind(Kind::Float).view([1, 6]).repeat([rows, 1]);
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(3);
        let tok = Vec::<i64>::try_from(draw(&lp, None).view([-1])).unwrap();
        let mut counts = [0usize; 6];
        for t in tok {
            counts[t as usize] += 1;
        }
        assert_eq!((counts[0], counts[3]), (0, 0), "{counts:?}");
        for (i, &pi) in p.iter().enumerate() {
            let freq = counts[i] as f64 / rows as f64;
            let se = (pi * (1.0 - pi) / rows as f64).sqrt();
            assert!((freq - pi).abs() <= 5.0 * se + 1e-12, "token {i}: {freq} vs {pi} ({counts:?})");
        }
    }

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = Tensor::from_slice(&[0.1f32, 2.0, 0.3, 1.9, 0.0, 0.0]).view([2, 3]);
        let (tok, slp, _) = sample(&logits, &SamplingParams::greedy(), None, 1.0, None);
        assert_eq!(Vec::<i64>::try_from(tok).unwrap(), vec![1, 0]);
        assert_eq!(Vec::<f32>::try_from(slp).unwrap(), vec![0.0, 0.0]);
        let p = SamplingParams { temperature: 1.3, ..Default::default() };
        let _rng = crate::torch_rng_lock();
        tch::manual_seed(7);
        let a = Vec::<i64>::try_from(sample(&logits.repeat([50, 1]), &p, None, 1.0, None).0).unwrap();
        tch::manual_seed(7);
        let b = Vec::<i64>::try_from(sample(&logits.repeat([50, 1]), &p, None, 1.0, None).0).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().any(|&t| t != a[0]), "100 draws at temperature 1.3 should not all agree");
    }
}
