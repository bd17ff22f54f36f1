//! Ten thousand random and adversarial replies per format: the environment never panics, never returns an error
//! for bad model output, and every episode's total is one of re-grpo's reachable values.

use grpo_calc_tools::CalcTools;
use grpo_sdk::{Environment, Plugin, Task};
use grpo_toolcall::fuzz;

const REACHABLE: [f64; 5] = [-0.5, -0.8, -0.1, 0.5, 2.0];

fn drive(config: serde_json::Value, seed: u64, episodes: u64) {
    let env = CalcTools::new(config).unwrap();
    let task = Task::new("t", "What is 2 to the 10th?", "1024");
    let mut replies = 0;
    for ep in 0..episodes {
        let (mut state, _) = env.reset(&task).unwrap();
        let mut total = 0.0;
        let mut ended = false;
        // Two or three replies: the third lands after the end and must be harmless.
        for turn in 0..(2 + ep % 2) {
            let reply = if turn == 0 && ep % 3 == 0 {
                // Often start with a real call so that the second turn is exercised too.
                "<tool:calc>2**10</tool>".to_string()
            } else {
                fuzz::reply(seed, ep * 4 + turn)
            };
            replies += 1;
            let out = env.step(&mut state, &reply).expect("bad replies are not environment errors");
            assert!(out.rewards.iter().all(|r| r.value.is_finite()));
            if ended {
                assert!(out.done && out.rewards.is_empty() && out.messages.is_empty());
            }
            total += out.total_reward();
            ended |= out.done;
        }
        assert!(ended, "two turns always end a two-turn episode");
        assert!(REACHABLE.iter().any(|r| (r - total).abs() < 1e-9), "total {total}");
    }
    assert!(replies >= 10_000);
}

#[test]
fn native_format_survives_fuzzing() {
    drive(serde_json::Value::Null, 1, 4_000);
}

#[test]
fn hermes_format_survives_fuzzing() {
    drive(serde_json::json!({"tool_format": "hermes"}), 2, 4_000);
}
