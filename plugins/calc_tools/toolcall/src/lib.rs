//! The pieces the `calc_tools` and `multiturn_qa` environments share: a safe calculator with Python's arithmetic
//! ([`calc`]); the two-turn tool-call protocol ([`protocol`]): finding a tool call or an answer in a reply, the
//! reward table of re-grpo's multi-turn experiments, and answer comparison; its translation into the SDK's messages
//! and outcomes ([`env`]); the episode metrics ([`stats`]) and the seeded task streams ([`rng`]).

pub mod calc;
pub mod env;
pub mod fuzz;
pub mod protocol;
pub mod pyfloat;
pub mod rng;
pub mod stats;
