//! The pieces the `calc_tools` and `multiturn_qa` environments share: a safe calculator with Python's arithmetic
//! ([`calc`]), and the two-turn tool-call protocol ([`protocol`]): finding a tool call or an answer in a reply, the
//! reward table of re-grpo's multi-turn experiments, and answer comparison.

pub mod calc;
pub mod fuzz;
pub mod protocol;
pub mod pyfloat;
pub mod rng;
pub mod stats;
