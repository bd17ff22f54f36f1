//! The plugin loader against the real plugin libraries, deliberately broken ones (one per error class of the
//! issue), and plugins that fail or panic mid-run.

mod common;

use common::*;
use grpo_host::error::{exit_code, one_line};
use grpo_host::plugins::{DiscoveryOptions, PluginKind, Registry};
use grpo_sdk::tch::{Kind, Tensor};
use grpo_sdk::{
    Algorithm, Environment, LossOutput, LossSettings, Message, MetricSource, Plugin, PolicyBatch, Split, StepOutcome,
    Task,
};
use serde_json::{json, Value};
use std::path::Path;

fn shipped_registry() -> Registry {
    Registry::discover(&DiscoveryOptions::only(vec![shipped_dir().to_path_buf()])).unwrap()
}

/// The shipped algorithms take their batch on any device and return advantages, the loss, its gradient and their
/// device metrics on that device: nothing is moved to the CPU on the way through the library.
#[test]
fn shipped_algorithms_keep_every_tensor_on_the_batch_device() {
    let registry = shipped_registry();
    for device in devices("shipped_algorithms_keep_every_tensor_on_the_batch_device") {
        for name in ["grpo", "drgrpo"] {
            let algo = registry.algorithm(name, &Value::Null).unwrap();
            assert!(algo.keeps_metrics_on_device(), "{name} is built against this SDK");
            let rewards = Tensor::from_slice(&[1.0f32, 0.0, 0.5, 0.25]).to_device(device);
            let adv = algo.advantages(&rewards, &[2, 2]).unwrap();
            assert_eq!(adv.device(), device, "{name}: advantages");
            let opts = (Kind::Float, device);
            let log_probs = (Tensor::rand([4, 5], opts) - 2.0).set_requires_grad(true);
            let batch = PolicyBatch {
                log_probs: log_probs.shallow_clone(),
                old_log_probs: log_probs.detach() + 0.3,
                ref_log_probs: Some(log_probs.detach() - 0.1),
                advantages: adv,
                action_mask: Tensor::rand([4, 5], opts).gt(0.3),
                settings: LossSettings { generate_max_length: 5, ..LossSettings::default() },
                is_weights: None,
                step_token_divisor: None,
            };
            let out = algo.loss(&batch).unwrap();
            assert_eq!(out.loss.device(), device, "{name}: loss");
            assert!(!out.device_metrics.is_empty(), "{name} returns device metrics");
            for (metric, t) in &out.device_metrics {
                assert_eq!(t.device(), device, "{name}: {metric}");
            }
            assert!(out.number("training_step/kl").unwrap() > 0.0, "{name}: the KL to a shifted reference");
            out.loss.backward();
            assert_eq!(log_probs.grad().device(), device, "{name}: gradient");
        }
    }
}

/// The error as the user sees it: one line, with its exit code.
fn user_message<T>(result: anyhow::Result<T>) -> (String, i32) {
    let err = result.err().expect("expected an error");
    let line = one_line(&err);
    assert!(!line.contains('\n'));
    (line, exit_code(&err))
}

#[test]
fn finds_the_shipped_plugins_with_kind_version_and_file() {
    let registry = shipped_registry();
    let found: Vec<(String, PluginKind)> = registry.plugins().map(|p| (p.name.clone(), p.kind)).collect();
    assert_eq!(
        found,
        vec![
            ("calc_tools".to_string(), PluginKind::Environment),
            ("drgrpo".to_string(), PluginKind::Algorithm),
            ("grpo".to_string(), PluginKind::Algorithm),
            ("math".to_string(), PluginKind::Environment),
            ("multiturn_qa".to_string(), PluginKind::Environment),
        ]
    );
    for p in registry.plugins() {
        assert_eq!(p.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(p.sdk_version, grpo_sdk::SDK_VERSION);
        assert!(p.file.starts_with(shipped_dir()), "{}", p.file.display());
    }
}

#[test]
fn unknown_names_list_what_is_available() {
    let registry = shipped_registry();
    let (line, code) = user_message(registry.algorithm("ppo", &Value::Null));
    assert_eq!(code, 2);
    assert_eq!(line, "--algo ppo: unknown algorithm; available: drgrpo, grpo");
    let (line, _) = user_message(registry.environment("grpo", &Value::Null));
    assert_eq!(line, "--env grpo: unknown environment; available: calc_tools, math, multiturn_qa");
    let (line, _) = user_message(Registry::default().environment("math", &Value::Null));
    assert!(line.contains("no environment plugins found"), "{line}");
}

/// A golden fixture's loss and gradient, computed through the dynamically loaded plugin.
#[test]
fn losses_through_the_boundary_match_the_golden_values() {
    let registry = shipped_registry();
    let dir = workspace_root().join("tests/fixtures/losses");
    for (algo_name, file) in [("grpo", "grpo_ref_masks.json"), ("drgrpo", "drgrpo_ref_masks.json")] {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        let algo = registry.algorithm(algo_name, &Value::Null).unwrap();
        let t = |v: &Value| -> Tensor {
            let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
            Tensor::from_slice(&rows.concat()).view([rows.len() as i64, -1])
        };
        let log_probs = t(&case["log_probs"]).set_requires_grad(true);
        let mask: Vec<Vec<bool>> = serde_json::from_value(case["action_mask"].clone()).unwrap();
        let adv: Vec<f64> = serde_json::from_value(case["advantages"].clone()).unwrap();
        let s = &case["settings"];
        let batch = PolicyBatch {
            log_probs: log_probs.shallow_clone(),
            old_log_probs: t(&case["old_log_probs"]),
            ref_log_probs: Some(t(&case["ref_log_probs"])),
            advantages: Tensor::from_slice(&adv),
            action_mask: Tensor::from_slice(&mask.concat()).view(log_probs.size().as_slice()),
            settings: LossSettings {
                clip_eps_low: s["clip_eps_low"].as_f64().unwrap(),
                clip_eps_high: s["clip_eps_high"].as_f64().unwrap(),
                kl_weight: s["kl_weight"].as_f64().unwrap(),
                generate_max_length: s["generate_max_length"].as_i64().unwrap(),
            },
            is_weights: None,
            step_token_divisor: None,
        };
        let out = algo.loss(&batch).unwrap();
        let loss = &out.loss;
        assert!((loss.double_value(&[]) - case["expected_loss"].as_f64().unwrap()).abs() < 1e-6);
        loss.backward();
        let diff = (log_probs.grad() - t(&case["expected_grad"])).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{algo_name}: gradient differs by {diff}");
        // GRPO and DR-GRPO return it as a device metric, which crosses the boundary as a tensor.
        assert!(out.metrics.iter().all(|m| m.name != "training_step/kl"));
        let kl = out.number("training_step/kl").unwrap();
        let want = case["expected_metrics"]["training_step/kl"].as_f64().unwrap();
        assert!((kl - want).abs() < 1e-6);
    }
}

#[test]
fn environment_episodes_cross_the_boundary_and_run_in_parallel() {
    let registry = shipped_registry();
    let env = registry.environment("math", &json!({"generator": {"max_terms": 2, "ops": "+"}})).unwrap();
    assert_eq!(env.config().unwrap()["generator"]["ops"], "+");
    assert_eq!(env.task_count(Split::Train).unwrap(), None);
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let env = env.clone();
            std::thread::spawn(move || {
                let task = env.task(Split::Train, 11, i).unwrap();
                let (mut episode, opening) = env.reset(&task).unwrap();
                assert_eq!(opening.last().unwrap().content, task.question);
                let answer = if i % 2 == 0 { task.answer.clone() } else { "wrong".into() };
                episode.step(&format!("<answer>{answer}</answer>")).unwrap().total_reward()
            })
        })
        .collect();
    let rewards: Vec<f64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(rewards, vec![1.0, 0.01, 1.0, 0.01]);
    let metrics = env.metrics().unwrap();
    let exact = metrics.iter().find(|m| m.name == "math/exact_rate").unwrap();
    assert_eq!(exact.as_number(), Some(0.5));
}

// --- Bad input: one line naming the file and the cause, exit code 2. ------------------------------------------

#[test]
fn a_text_file_named_like_a_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("libfoo.so"), "not a library\n").unwrap();
    let (line, code) = user_message(Registry::discover(&DiscoveryOptions::only(vec![dir.path().to_path_buf()])));
    assert_eq!(code, 2);
    assert!(line.contains("libfoo.so") && line.contains("not a loadable shared library"), "{line}");
}

#[test]
fn a_library_without_the_entry_symbol_is_refused() {
    let (line, code) = user_message(Registry::default().load_file(&broken_plugin("no_entry")));
    assert_eq!(code, 2);
    assert!(line.contains("libbroken_no_entry.so") && line.contains("no `grpo_plugin_library` entry symbol"), "{line}");
}

#[test]
fn another_abi_major_is_refused() {
    let (line, code) = user_message(Registry::default().load_file(&broken_plugin("abi_major")));
    assert_eq!(code, 2);
    assert!(
        line.contains("libbroken_abi_major.so") && line.contains("built for plugin ABI 99 but this host speaks ABI 1"),
        "{line}"
    );
}

#[test]
fn another_libtorch_is_refused() {
    let (line, code) = user_message(Registry::default().load_file(&broken_plugin("libtorch")));
    assert_eq!(code, 2);
    let expected = format!(
        "built against libtorch 1.13.1 (C++11 ABI true) but this host uses libtorch {}",
        grpo_sdk::LIBTORCH_VERSION
    );
    assert!(line.contains("libbroken_libtorch.so") && line.contains(&expected), "{line}");
}

#[test]
fn two_plugins_with_one_name_are_refused() {
    let (line, code) = user_message(Registry::default().load_file(&broken_plugin("duplicate_in_library")));
    assert_eq!(code, 2);
    assert!(line.contains("libbroken_duplicate_in_library.so") && line.contains("two plugins named `twin`"), "{line}");

    let other = broken_plugin("duplicate_of_grpo");
    let dirs = vec![shipped_dir().to_path_buf(), other.parent().unwrap().to_path_buf()];
    let (line, code) = user_message(Registry::discover(&DiscoveryOptions::only(dirs)));
    assert_eq!(code, 2);
    assert!(
        line.contains("two plugins are named `grpo`")
            && line.contains("libgrpo_grpo.so")
            && line.contains("libbroken_duplicate_of_grpo.so"),
        "{line}"
    );
}

#[test]
fn the_same_file_reached_twice_loads_once() {
    let dirs = vec![shipped_dir().to_path_buf(), shipped_dir().to_path_buf()];
    let registry = Registry::discover(&DiscoveryOptions::only(dirs)).unwrap();
    assert_eq!(registry.plugins().count(), SHIPPED.len());
    // A symlink and the file it points at.
    let mut r = Registry::default();
    r.load_file(&shipped("grpo_grpo")).unwrap();
    r.load_file(&profile_dir().join(library_file("grpo_grpo"))).unwrap();
    assert_eq!(r.plugins().count(), 1);
}

#[test]
fn a_constructor_that_rejects_its_config_names_plugin_file_and_cause() {
    let registry = shipped_registry();
    let (line, code) = user_message(registry.algorithm("grpo", &json!({"std_epz": 0.1})));
    assert_eq!(code, 2);
    assert!(line.starts_with("algorithm `grpo` (") && line.contains("libgrpo_grpo.so"), "{line}");
    assert!(
        line.contains("could not be created with config {\"std_epz\":0.1}: invalid config: unknown field `std_epz`"),
        "{line}"
    );
    let (line, _) = user_message(registry.environment("math", &json!({"data_path": "/no/such/tasks.jsonl"})));
    assert!(line.contains("data_path /no/such/tasks.jsonl: cannot read it"), "{line}");

    let mut r = Registry::default();
    r.load_file(&broken_plugin("constructor_fails")).unwrap();
    let (line, code) = user_message(r.algorithm("unbuildable", &Value::Null));
    assert_eq!(code, 2);
    assert!(
        line.contains("libbroken_constructor_fails.so") && line.contains("this test plugin cannot be created"),
        "{line}"
    );
}

// --- Plugins that fail or panic mid-run, defined in this test binary and registered in-process. ---------------

/// The `MetricSource` and `Plugin` halves of a unit-struct test plugin without options or metrics.
macro_rules! plain_plugin {
    ($ty:ident, $name:literal, $description:literal) => {
        impl MetricSource for $ty {}
        impl Plugin for $ty {
            const NAME: &'static str = $name;
            const DESCRIPTION: &'static str = $description;
            fn new(_: Value) -> grpo_sdk::Result<Self> {
                Ok($ty)
            }
            fn config(&self) -> Value {
                Value::Null
            }
        }
    };
}

/// Panics in `loss`.
struct Boom;
plain_plugin!(Boom, "boom", "panics in loss");
impl Algorithm for Boom {
    fn advantages(&self, rewards: &Tensor, _: &[usize]) -> grpo_sdk::Result<Tensor> {
        Ok(rewards.zeros_like())
    }
    fn loss(&self, _: &PolicyBatch) -> grpo_sdk::Result<LossOutput> {
        panic!("the loss exploded");
    }
}

/// Returns a loss cut from the graph, so no gradient would reach the model.
struct Detached;
plain_plugin!(Detached, "detached", "detaches its loss");
impl Algorithm for Detached {
    fn advantages(&self, rewards: &Tensor, _: &[usize]) -> grpo_sdk::Result<Tensor> {
        Ok(rewards.zeros_like())
    }
    fn loss(&self, batch: &PolicyBatch) -> grpo_sdk::Result<LossOutput> {
        Ok(LossOutput::new(batch.log_probs.sum(Kind::Float).detach()))
    }
}

/// Errors on "fail" and panics on "panic".
struct Flaky;
plain_plugin!(Flaky, "flaky", "fails on request");
impl Environment for Flaky {
    type State = ();
    fn task_count(&self, _: Split) -> Option<u64> {
        Some(1)
    }
    fn task(&self, _: Split, _: u64, _: u64) -> grpo_sdk::Result<Task> {
        Ok(Task::new("0", "say anything", ""))
    }
    fn reset(&self, task: &Task) -> grpo_sdk::Result<((), Vec<Message>)> {
        Ok(((), vec![Message::user(&task.question)]))
    }
    fn step(&self, _: &mut (), text: &str) -> grpo_sdk::Result<StepOutcome> {
        match text {
            "fail" => Err(grpo_sdk::Error::msg("the tool server is down")),
            "panic" => panic!("index out of range in the tool"),
            _ => Ok(StepOutcome::finished(vec![])),
        }
    }
}

grpo_sdk::export_plugins!(algorithm Boom, algorithm Detached, environment Flaky);

fn in_process() -> Registry {
    let mut r = Registry::default();
    // SAFETY: generated by export_plugins! above.
    unsafe { r.add_in_process(grpo_plugin_library, Path::new("in-process")) }.unwrap();
    r
}

/// A batch of two sequences of three zero log-probs, whose log-probs ask for a gradient when `grad`.
fn zero_batch(grad: bool) -> PolicyBatch {
    let x = Tensor::zeros([2, 3], (Kind::Float, grpo_sdk::tch::Device::Cpu));
    PolicyBatch {
        log_probs: x.copy().set_requires_grad(grad),
        old_log_probs: x.shallow_clone(),
        ref_log_probs: None,
        advantages: Tensor::zeros([2], (Kind::Float, grpo_sdk::tch::Device::Cpu)),
        action_mask: x.ones_like().to_kind(Kind::Bool),
        settings: LossSettings::default(),
        is_weights: None,
        step_token_divisor: None,
    }
}

#[test]
fn a_panic_mid_run_is_an_error_naming_the_plugin_and_poisons_it() {
    let algo = in_process().algorithm("boom", &Value::Null).unwrap();
    let (line, code) = user_message(algo.loss(&zero_batch(false)));
    assert_eq!(code, 2);
    assert!(line.starts_with("algorithm `boom` (in-process) panicked: the loss exploded (at "), "{line}");
    assert!(line.ends_with("(in loss)"), "{line}");
    assert!(algo.is_poisoned());
    let (line, _) = user_message(algo.advantages(&Tensor::from_slice(&[1.0f32]), &[1]));
    assert!(line.contains("panicked earlier and is disabled; advantages was not called"), "{line}");
}

#[test]
fn a_loss_without_a_gradient_is_refused_naming_the_plugin() {
    let algo = in_process().algorithm("detached", &Value::Null).unwrap();
    let (line, code) = user_message(algo.loss(&zero_batch(true)));
    assert_eq!(code, 2);
    assert!(line.starts_with("algorithm `detached` (in-process) returned a loss with no gradient"), "{line}");
    // Without gradients asked for (an evaluation of the loss alone), a loss without one is what is expected.
    assert!(algo.loss(&zero_batch(false)).is_ok());
}

#[test]
fn an_error_mid_run_names_the_plugin_and_leaves_it_usable() {
    let env = in_process().environment("flaky", &Value::Null).unwrap();
    let task = env.task(Split::Train, 0, 0).unwrap();
    let (mut episode, _) = env.reset(&task).unwrap();
    let (line, code) = user_message(episode.step("fail"));
    assert_eq!(code, 2);
    assert_eq!(line, "environment `flaky` (in-process) failed in step: the tool server is down");
    assert!(episode.step("fine").unwrap().done);
    let (line, _) = user_message(episode.step("panic"));
    assert!(line.contains("panicked: index out of range in the tool"), "{line}");
    assert!(env.is_poisoned());
    let (line, _) = user_message(env.task(Split::Train, 0, 0));
    assert!(line.contains("panicked earlier and is disabled"), "{line}");
}
