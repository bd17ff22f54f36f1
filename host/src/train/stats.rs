//! Summary statistics of logged quantities, with the conventions re-grpo's dashboards were built on
//! (`torch.std` is the unbiased estimator).

/// Mean, unbiased standard deviation, min and max of a sample; all 0 for an empty one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
}

/// Summarise `xs`. The standard deviation of a single value is 0 (torch would say NaN; a dashboard wants 0).
pub fn summarize(xs: &[f64]) -> Summary {
    if xs.is_empty() {
        return Summary::default();
    }
    let n = xs.len() as f64;
    let sum: f64 = xs.iter().sum();
    let mean = sum / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    Summary {
        mean,
        std: var.sqrt(),
        min: xs.iter().copied().fold(f64::INFINITY, f64::min),
        max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        sum,
    }
}

/// The `q`-quantile of `xs` (q in [0, 1]) with linear interpolation between the two nearest ranks, as
/// `torch.quantile` computes it by default; `None` for an empty sample. Sorts `xs`.
pub fn quantile(xs: &mut [f32], q: f64) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f32::total_cmp);
    let at = q.clamp(0.0, 1.0) * (xs.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    let (a, b) = (f64::from(xs[lo]), f64::from(xs[hi]));
    Some(a + (b - a) * (at - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_libtorch() {
        tch::manual_seed(3);
        for n in [1, 2, 7, 100] {
            // Rounded to tenths, so that ties occur.
            let t = (tch::Tensor::rand([n], (tch::Kind::Float, tch::Device::Cpu)) * 10.0).round() / 10.0;
            let mut xs = Vec::<f32>::try_from(&t).unwrap();
            for q in [0.0, 0.2, 0.5, 0.8, 0.95, 1.0] {
                let want = t.quantile_scalar(q, None::<i64>, false, "linear").double_value(&[]);
                let got = quantile(&mut xs, q).unwrap();
                assert!((got - want).abs() < 1e-6, "n {n}, q {q}: {got} against libtorch's {want}");
            }
        }
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn matches_torch_conventions() {
        let s = summarize(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.mean, 2.5);
        assert!((s.std - 1.2909944487358056).abs() < 1e-12);
        assert_eq!((s.min, s.max, s.sum), (1.0, 4.0, 10.0));
        assert_eq!(summarize(&[5.0]).std, 0.0);
        assert_eq!(summarize(&[]), Summary::default());
    }
}
