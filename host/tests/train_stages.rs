//! The training stages driven one by one, as a library user would, with no command line and no logger: tasks ->
//! rollouts -> scored -> experience -> updates -> metrics, on the tiny Llama fixture with the shipped `grpo` and
//! `math` plugins.

mod common;

use std::sync::atomic::AtomicBool;

use grpo_host::checkpoint::TrainerState;
use grpo_host::generate::SamplingParams;
use grpo_host::model::{DeviceSpec, DtypeSpec};
use grpo_host::plugins::{DiscoveryOptions, Registry};
use grpo_host::rollout::{run_episodes, RolloutConfig};
use grpo_host::train::config::{BatchSettings, ModelSettings, ObjectiveSettings, RecomputeOld};
use grpo_host::train::optimizer::{AdamW, AdamWConfig, Schedule};
use grpo_host::train::policy::Policy;
use grpo_host::train::tasks::TaskSource;
use grpo_host::train::update::Updater;
use grpo_host::train::{experience, metrics, scored};
use grpo_sdk::tch::Kind;

#[test]
fn one_batch_through_every_stage() {
    let registry = Registry::discover(&DiscoveryOptions::only(vec![common::shipped_dir().to_path_buf()])).unwrap();
    let algo = registry.algorithm("grpo", &serde_json::Value::Null).unwrap();
    let env_config = serde_json::json!({"generator": {"max_terms": 2, "max_digits": 1, "ops": "+"}});
    let env = registry.environment("math", &env_config).unwrap();
    let model = common::workspace_root().join("tests/fixtures/model/tiny/llama");
    let settings = ModelSettings {
        model: Some(model.display().to_string()),
        allow_download: false,
        device: DeviceSpec::Cpu,
        dtype: DtypeSpec::F32,
        threads: None,
        lora: None,
    };
    let objective = ObjectiveSettings {
        clip_eps_low: 0.2,
        clip_eps_high: 0.2,
        kl_weight: 0.01,
        recompute_old_logprobs: RecomputeOld::Auto,
    };
    let policy = Policy::load(&settings, objective.kl_weight, 7).unwrap();
    let batch = BatchSettings {
        max_steps: 1,
        rollouts_per_step: 2,
        group_size: 3,
        train_batch_size: 2,
        gradient_accumulation_steps: 2,
        epochs_per_step: 1,
        max_new_tokens: 6,
        max_length: 512,
        max_turns: 1,
    };

    // tasks: the same batch twice gives the same tasks.
    let mut source = TaskSource::new(env.clone(), 7).unwrap();
    let tasks = source.batch(0, batch.rollouts_per_step).unwrap();
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].question, TaskSource::new(env.clone(), 7).unwrap().batch(0, 2).unwrap()[0].question);

    // rollouts
    let cfg = RolloutConfig {
        group_size: batch.group_size,
        max_new_tokens: batch.max_new_tokens,
        max_turns: batch.max_turns,
        max_length: batch.max_length,
        sampling: SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0 },
        ignore_eos: false,
    };
    let rollouts = run_episodes(policy.model(), policy.tokenizer(), &env, &tasks, &cfg, 11).unwrap();
    assert_eq!(rollouts.len(), 6);

    // scored: GRPO advantages are standardised within each group.
    let mut scored = scored::score(&algo, rollouts, batch.group_size).unwrap();
    assert_eq!(scored.advantage_values.len(), 6);
    for group in scored.advantage_values.chunks(3) {
        assert!(group.iter().sum::<f32>().abs() < 1e-4, "{group:?}");
    }
    // The random tiny model earns the same reward in every episode, so every advantage is 0 and no update would
    // move a weight; stages are plain values, so the test gives the episodes advantages of its own.
    let advantages = [1.0f32, -0.5, -0.5, 0.5, 0.5, -1.0];
    scored.advantages = grpo_sdk::tch::Tensor::from_slice(&advantages);
    scored.advantage_values = advantages.to_vec();

    // experience: f32 sampling log-probs are reused; the reference copy equals the policy before any update.
    let exp = experience::prepare(&scored, &policy, &objective, batch.train_batch_size).unwrap();
    assert_eq!(exp.len(), 6);
    let reference = exp.ref_log_probs.as_ref().expect("kl_weight > 0 gives reference log-probs");
    let mask = exp.action_mask.to_kind(Kind::Float);
    let gap = ((reference - &exp.old_log_probs).abs() * &mask).max().double_value(&[]);
    assert!(gap < 1e-3, "reference and sampler disagree by {gap}");

    // updates: 6 sequences in micro-batches of 2, two per step: 2 optimizer steps.
    let before = policy.trainable()[0].1.copy();
    let mut optimizer = AdamW::new(
        policy.trainable(),
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
    );
    let schedule = Schedule { base_lr: 1e-3, warmup_steps: 0, cosine: false, total_steps: 2 };
    let mut state = TrainerState { seed: 7, ..Default::default() };
    let mut seen = Vec::new();
    let mut updater = Updater {
        policy: &policy,
        optimizer: &mut optimizer,
        algo: &algo,
        schedule: &schedule,
        batch: &batch,
        loss: objective.for_algorithm(batch.max_new_tokens),
        max_norm: 1.0,
        seed: 7,
    };
    let updates = updater.run(&exp, &mut state, &AtomicBool::new(false), &mut |r, _| seen.push(r.step)).unwrap();
    assert_eq!(updates.steps.len() as u64, batch.updates_per_batch());
    assert_eq!(seen, vec![0, 1]);
    assert_eq!(state.global_step, 2);
    assert!(!updates.stopped);
    let moved = (policy.trainable()[0].1.copy() - before).abs().max().double_value(&[]);
    assert!(moved > 0.0, "the optimizer steps changed no weight");

    // metrics: the schema, from the stages' values.
    let m = metrics::rollout(&scored, &exp, 0.0);
    for name in ["rollouts/returns_mean", "rollouts/advantages_std", "rollouts/kl_mean", "completions/mean_length"] {
        assert!(m.contains_key(name), "{name} missing from {:?}", m.keys().collect::<Vec<_>>());
    }
    let step = metrics::step(&updates.steps[0], &state);
    let kl = step["training_step/kl"].as_f64().expect("the algorithm reports the KL");
    assert!(kl.is_finite() && kl >= 0.0);
    let epoch = metrics::epoch(&updates, &state, 1.0);
    let kls: Vec<f64> = updates.steps.iter().map(|s| s.algorithm["training_step/kl"]).collect();
    let mean = kls.iter().sum::<f64>() / kls.len() as f64;
    assert!((epoch["training_epoch/kl_mean"].as_f64().unwrap() - mean).abs() < 1e-12);
}
