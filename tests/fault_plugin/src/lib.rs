//! `faulty`: a test-only algorithm plugin for host/tests/fault_tolerance.rs. It is a plain GRPO-family algorithm
//! (group-centred advantages, the SDK's clipped surrogate plus k3 KL, per-sequence mean) that fails on one chosen
//! call, so that the harness can make a run fail in the middle of a batch and check what the host leaves behind.
//!
//! The fault is chosen by the environment variable `GRPO_TEST_FAULT=<entry>:<n>[:panic|:nan]`: call number `n`
//! (counted from 1) of `advantages` or `loss` in this process returns an error (or panics, with `:panic`; or, for
//! `loss` with `:nan`, returns a NaN loss, as a diverging run would). It is read from the environment rather than
//! `--algo-config` so that the failed run and its resume have the same saved config (the resume guard compares
//! configs) while only the first one fails. Without the variable it never fails.
//!
//! Built by `cargo build --workspace` (it is a workspace member, not a default member, so release builds and
//! installs never carry it).

use std::sync::atomic::{AtomicU64, Ordering};

use grpo_sdk::ops::{split_groups, PolicyTerms};
use grpo_sdk::tch::Tensor;
use grpo_sdk::{Algorithm, Error, LossOutput, MetricSource, PolicyBatch, Result};

/// The variable that arms the fault.
pub const FAULT_ENV: &str = "GRPO_TEST_FAULT";

/// Which call fails, and how.
#[derive(Clone, Debug, PartialEq)]
struct Fault {
    entry: String,
    nth: u64,
    how: How,
}

/// What the failing call does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum How {
    Error,
    Panic,
    /// A NaN loss (on `loss` only): the host must skip the update, not fail.
    Nan,
}

impl Fault {
    fn parse(spec: &str) -> Result<Fault> {
        let bad = || Error::msg(format!("{FAULT_ENV}={spec:?}: expected advantages|loss:<n>[:panic|:nan], n >= 1"));
        let mut parts = spec.split(':');
        let entry = parts.next().filter(|e| matches!(*e, "advantages" | "loss")).ok_or_else(bad)?.to_string();
        let nth = parts.next().and_then(|n| n.parse().ok()).filter(|&n| n >= 1).ok_or_else(bad)?;
        let how = match parts.next() {
            None => How::Error,
            Some("panic") => How::Panic,
            Some("nan") if entry == "loss" => How::Nan,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Fault { entry, nth, how })
    }
}

/// The algorithm: counts its calls and fails on the armed one.
pub struct Faulty {
    fault: Option<Fault>,
    advantages_calls: AtomicU64,
    loss_calls: AtomicU64,
}

impl Faulty {
    /// Count a call of `entry`; fail it if it is the armed one. `Ok(true)`: this call must return a NaN loss.
    fn call(&self, entry: &str, counter: &AtomicU64) -> Result<bool> {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let message = format!("injected fault: {entry} call {n} ({FAULT_ENV})");
        match &self.fault {
            Some(f) if f.entry == entry && f.nth == n => match f.how {
                How::Error => Err(Error::msg(message)),
                How::Panic => panic!("{message}"),
                How::Nan => Ok(true),
            },
            _ => Ok(false),
        }
    }
}

impl MetricSource for Faulty {}

impl grpo_sdk::Plugin for Faulty {
    const NAME: &'static str = "faulty";
    const DESCRIPTION: &'static str = "test only: GRPO-family loss that fails on the call GRPO_TEST_FAULT names";

    fn new(config: serde_json::Value) -> Result<Self> {
        if !(config.is_null() || config.as_object().is_some_and(|o| o.is_empty())) {
            return Err(Error::msg(format!("invalid config: faulty takes no options, got {config}")));
        }
        let fault = match std::env::var(FAULT_ENV) {
            Ok(spec) if !spec.is_empty() => Some(Fault::parse(&spec)?),
            _ => None,
        };
        Ok(Faulty { fault, advantages_calls: AtomicU64::new(0), loss_calls: AtomicU64::new(0) })
    }

    fn config(&self) -> serde_json::Value {
        serde_json::json!({})
    }
}

impl Algorithm for Faulty {
    /// `r - mean` per group (a group of one gets 0).
    fn advantages(&self, rewards: &Tensor, groups: &[usize]) -> Result<Tensor> {
        self.call("advantages", &self.advantages_calls)?;
        let parts: Vec<Tensor> = split_groups(rewards, groups)?.iter().map(|g| g - g.mean(g.kind())).collect();
        Ok(Tensor::cat(&parts, 0))
    }

    fn loss(&self, batch: &PolicyBatch) -> Result<LossOutput> {
        let nan = self.call("loss", &self.loss_calls)?;
        let terms = PolicyTerms::new(batch)?;
        let loss = terms.sequence_mean(&terms.per_token_loss(batch.settings.kl_weight));
        // Through the graph, so the gradients are NaN too.
        Ok(LossOutput::new(if nan { loss * f64::NAN } else { loss }))
    }
}

grpo_sdk::export_plugins!(algorithm Faulty);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse_or_name_the_format() {
        assert_eq!(Fault::parse("loss:5").unwrap(), Fault { entry: "loss".into(), nth: 5, how: How::Error });
        assert_eq!(Fault::parse("advantages:1:panic").unwrap().how, How::Panic);
        assert_eq!(Fault::parse("loss:2:nan").unwrap().how, How::Nan);
        for bad in ["", "loss", "loss:0", "step:2", "loss:2:boom", "loss:2:panic:x", "advantages:1:nan"] {
            assert!(Fault::parse(bad).is_err(), "{bad}");
        }
    }
}
