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

#[cfg(test)]
mod tests {
    use super::*;

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
