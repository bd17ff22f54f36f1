//! Token sampling on the device: temperature, then top-k, top-p and min-p filters (transformers' order), then a
//! multinomial draw from libtorch's generator.

use tch::{Kind, Tensor};

use crate::user_error;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose mass reaches top_p; 1 disables.
    pub top_p: f64,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0 }
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

    /// Whether sampling uses the plain model distribution (temperature 1, no filters), so the sampling
    /// log-probs equal the model log-probs.
    pub fn is_plain(&self) -> bool {
        self.temperature == 1.0 && self.top_k == 0 && self.top_p >= 1.0 && self.min_p <= 0.0
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
        Ok(())
    }
}

/// Sample one token per row of `logits` `[n, vocab]`. Returns `(tokens [n] int64, sampling log-probs [n] f32,
/// plain model log-probs [n] f32)`.
pub fn sample(logits: &Tensor, p: &SamplingParams) -> (Tensor, Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    let model_lp = logits.log_softmax(-1, Kind::Float);
    if p.is_greedy() {
        let tok = logits.argmax(-1, true);
        let mlp = model_lp.gather(-1, &tok, false).squeeze_dim(-1);
        return (tok.squeeze_dim(-1), mlp.zeros_like(), mlp);
    }
    let lp = if p.is_plain() { model_lp.shallow_clone() } else { filtered_log_probs(&logits, p) };
    let tok = lp.exp().multinomial(1, false);
    let slp = lp.gather(-1, &tok, false).squeeze_dim(-1);
    let mlp = model_lp.gather(-1, &tok, false).squeeze_dim(-1);
    (tok.squeeze_dim(-1), slp, mlp)
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

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = Tensor::from_slice(&[0.1f32, 2.0, 0.3, 1.9, 0.0, 0.0]).view([2, 3]);
        let (tok, slp, _) = sample(&logits, &SamplingParams::greedy());
        assert_eq!(Vec::<i64>::try_from(tok).unwrap(), vec![1, 0]);
        assert_eq!(Vec::<f32>::try_from(slp).unwrap(), vec![0.0, 0.0]);
        let p = SamplingParams { temperature: 1.3, ..Default::default() };
        tch::manual_seed(7);
        let a = Vec::<i64>::try_from(sample(&logits.repeat([50, 1]), &p).0).unwrap();
        tch::manual_seed(7);
        let b = Vec::<i64>::try_from(sample(&logits.repeat([50, 1]), &p).0).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().any(|&t| t != a[0]), "100 draws at temperature 1.3 should not all agree");
    }
}
