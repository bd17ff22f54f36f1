//! The third-party flow, as a plugin author goes through it: generate a crate from each template in `templates/`
//! with cargo-generate, outside the workspace; run its unit tests; build it; load it with
//! `grpo-host plugins check`; and train one step with it through `--plugin-dir` on the tiny model fixture. A
//! template that does not render, compile, pass its tests, load or train fails here.
//!
//! Needs `cargo generate` (`cargo xtask setup` and `cargo xtask test` install it). The generated crates live in
//! `<temp>/grpo-rs-third-party-<hash of this checkout's path>/`, emptied at the start of each run, so that their
//! paths, and with them cargo's fingerprints, stay the same from run to run.
//!
//! Cost: the generated crates are built with the workspace's `target/` as cargo's build directory
//! (`CARGO_BUILD_BUILD_DIR`), so whatever they share with the workspace build is reused. tch and torch-sys (with its
//! libtorch C++ glue) are not among it: the workspace turns on libc's `extra_traits` feature, which changes the
//! hash of everything above libc, so a standalone crate compiles its own copy once per checkout (about four
//! minutes on two cores; the whole test took 226 s the first time, before the clippy step, which adds a check
//! build of the dependencies). After that a run takes about 12 s: only the regenerated plugin crates compile. Final artifacts go to `target/third-party/<template>/`
//! (`CARGO_TARGET_DIR`): never beside grpo-host, where the host would load them in every other test.

use grpo_tests::{cargo, check_host_args, doc_commands, grpo_host, library_file, profile_dir, run_ok, try_run};
use grpo_tests::{host_args, workspace_root};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A crate generated from one of the templates.
struct Generated {
    /// The crate's directory.
    dir: PathBuf,
    /// `--algo` or `--env` name.
    plugin: String,
    /// Where its build puts the library (`CARGO_TARGET_DIR`).
    target_dir: PathBuf,
}

/// This checkout's own directory for generated crates, outside the workspace.
fn third_party_root() -> PathBuf {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same checkout maps to the same directory in every run.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    workspace_root().hash(&mut hasher);
    std::env::temp_dir().join(format!("grpo-rs-third-party-{:016x}", hasher.finish()))
}

/// `cargo generate` of `templates/<template>` as `name` into a fresh directory. With `grpo_sdk` `None` the
/// template's default (`../grpo-rs/sdk`) is used, with the crate generated beside a `grpo-rs` link to this
/// checkout, the layout the plugin guide describes.
fn generate(template: &str, name: &str, plugin: &str, grpo_sdk: Option<&Path>) -> Generated {
    let parent = third_party_root().join(template);
    if parent.exists() {
        std::fs::remove_dir_all(&parent).unwrap();
    }
    std::fs::create_dir_all(&parent).unwrap();
    let mut cmd = cargo();
    cmd.current_dir(&parent)
        .arg("generate")
        .arg("--path")
        .arg(workspace_root().join("templates").join(template))
        .args(["--name", name, "--vcs", "none", "--silent"])
        .args(["--define", &format!("plugin_name={plugin}")]);
    match grpo_sdk {
        Some(path) => {
            cmd.args(["--define", &format!("grpo_sdk={}", path.display())]);
        }
        None => std::os::unix::fs::symlink(workspace_root(), parent.join("grpo-rs")).unwrap(),
    }
    if let Err(e) = try_run(&mut cmd, &format!("cargo generate of templates/{template}")) {
        panic!("{e}\n(is cargo-generate installed? `cargo xtask setup` installs it)");
    }
    let dir = parent.join(name);
    assert!(dir.join("Cargo.toml").is_file(), "cargo generate made no {}", dir.join("Cargo.toml").display());
    Generated {
        dir,
        plugin: plugin.to_string(),
        target_dir: profile_dir().parent().unwrap().join("third-party").join(template),
    }
}

impl Generated {
    /// Cargo in the generated crate, building as described in the module comment.
    fn cargo(&self, args: &[&str]) -> Command {
        let mut cmd = cargo();
        cmd.current_dir(&self.dir)
            .args(args)
            .env("CARGO_TARGET_DIR", &self.target_dir)
            .env("CARGO_BUILD_BUILD_DIR", profile_dir().parent().unwrap())
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        cmd
    }

    /// The library `cargo build` makes, for `plugins check` and `--plugin-dir`.
    fn library(&self) -> PathBuf {
        let stem = self.dir.file_name().unwrap().to_str().unwrap().replace('-', "_");
        self.target_dir.join(profile_dir().file_name().unwrap()).join(library_file(&stem))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    /// Every placeholder was filled in, and the README's commands use flags grpo-host has.
    fn check_rendering(&self) {
        for file in ["Cargo.toml", ".cargo/config.toml", "README.md", "src/lib.rs"] {
            let text = self.read(file);
            for marker in ["{{", "{%"] {
                assert!(!text.contains(marker), "{file} of the generated crate still holds `{marker}`:\n{text}");
            }
        }
        assert!(!self.dir.join("cargo-generate.toml").exists(), "the template's own config was copied");
        let readme = self.read("README.md");
        let host_commands: Vec<_> =
            doc_commands(&readme).into_iter().filter_map(|c| host_args(&c.words).map(|a| (c.line, a))).collect();
        assert!(host_commands.len() >= 2, "the generated README shows no grpo-host commands");
        for (line, args) in host_commands {
            check_host_args(&args).unwrap_or_else(|e| panic!("generated README.md line {line}: {e}"));
        }
    }

    /// Unit tests, the library build, rustfmt and clippy, as the author runs them. The workspace's Cargo.lock is copied in first,
    /// so the plugin gets exactly the dependency versions the host was built with (and the shared build
    /// directory's compiled tch); a third party gets the same versions from a fresh resolve as long as no newer
    /// tch 0.24 is published.
    fn test_and_build(&self) {
        std::fs::copy(workspace_root().join("Cargo.lock"), self.dir.join("Cargo.lock")).unwrap();
        let out = run_ok(&mut self.cargo(&["test"]), "cargo test in the generated crate");
        let text = String::from_utf8_lossy(&out.stdout);
        let passed: u32 = text
            .lines()
            .filter_map(|l| l.strip_prefix("test result: ok. "))
            .filter_map(|l| l.split(' ').next()?.parse::<u32>().ok())
            .sum();
        assert!(passed >= 4, "the generated crate's unit tests did not run (passed: {passed}):\n{text}");
        run_ok(&mut self.cargo(&["build"]), "cargo build in the generated crate");
        assert!(self.library().is_file(), "cargo build made no {}", self.library().display());
        // What a plugin author starts from should pass the checks the workspace holds itself to.
        run_ok(&mut self.cargo(&["fmt", "--check"]), "cargo fmt --check in the generated crate");
        run_ok(
            &mut self.cargo(&["clippy", "--all-targets", "--", "-D", "warnings"]),
            "cargo clippy -D warnings in the generated crate",
        );
    }

    /// `grpo-host plugins check` on the library; returns its report.
    fn check(&self) -> Result<String, String> {
        let mut cmd = Command::new(grpo_host());
        cmd.args(["plugins", "check"]).arg(self.library());
        try_run(&mut cmd, "grpo-host plugins check").map(|o| String::from_utf8_lossy(&o.stdout).to_string())
    }

    /// One training step with `--plugin-dir`, on the tiny model; returns the run's metrics.jsonl.
    fn train_one_step(&self, plugin_flags: &[&str]) -> String {
        let runs = self.dir.join("runs");
        let mut cmd = Command::new(grpo_host());
        cmd.current_dir(&self.dir)
            .arg("--plugin-dir")
            .arg(self.library().parent().unwrap())
            .args(plugin_flags)
            .arg("--model")
            .arg(workspace_root().join("tests/fixtures/model/tiny/llama"))
            .args(["--device", "cpu", "--max-steps", "1", "--rollouts-per-step", "2", "--group-size", "2"])
            .args(["--max-new-tokens", "8", "--max-length", "256", "--train-batch-size", "4"])
            .args(["--run-name", "one-step", "--no-wandb"])
            .arg("--runs-dir")
            .arg(&runs);
        run_ok(&mut cmd, "training one step with the generated plugin");
        std::fs::read_to_string(runs.join("one-step/metrics.jsonl")).expect("the run wrote metrics.jsonl")
    }
}

/// Metric names logged in a metrics.jsonl.
fn metric_names(jsonl: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).expect("metrics.jsonl holds JSON lines");
        if let Some(object) = value.as_object() {
            names.extend(object.keys().cloned());
        }
    }
    names
}

#[test]
fn algorithm_template_builds_loads_and_trains() {
    let generated = generate("algorithm", "my-reinforce", "my_reinforce", Some(&workspace_root().join("sdk")));
    generated.check_rendering();
    assert!(generated.read("Cargo.toml").contains(&format!("path = \"{}\"", workspace_root().join("sdk").display())));
    generated.test_and_build();
    let report = generated.check().unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains(&format!("ok  algorithm {}", generated.plugin)), "{report}");

    let metrics = generated.train_one_step(&["--algo", "my_reinforce", "--env", "math"]);
    let names = metric_names(&metrics);
    // Logged from the plugin's own loss: proof that the generated algorithm, not a shipped one, trained.
    assert!(names.iter().any(|n| n == "my_reinforce/mean_abs_advantage"), "metrics: {names:?}");
}

#[test]
fn environment_template_builds_loads_and_trains_and_breakage_is_caught() {
    let generated = generate("environment", "my-env", "my_env", None);
    generated.check_rendering();
    assert!(generated.read("Cargo.toml").contains("path = \"../grpo-rs/sdk\""));
    generated.test_and_build();
    let report = generated.check().unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains(&format!("ok  environment {}", generated.plugin)), "{report}");

    let metrics = generated.train_one_step(&["--env", "my_env", "--algo", "grpo"]);
    let names = metric_names(&metrics);
    assert!(names.iter().any(|n| n == "rollout_rewards/correct"), "metrics: {names:?}");

    // A plugin the host must refuse: `plugins check` fails, naming the problem.
    let lib = generated.dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let renamed = source.replace("const NAME: &'static str = \"my_env\";", "const NAME: &'static str = \"my env\";");
    assert_ne!(renamed, source, "the template's NAME line changed; update this test");
    std::fs::write(&lib, &renamed).unwrap();
    run_ok(&mut generated.cargo(&["build"]), "cargo build of the renamed plugin");
    let err = generated.check().expect_err("plugins check accepted a plugin name with a space");
    assert!(err.contains("exit status: 2") && err.contains("not usable on the command line"), "{err}");

    // A compile error fails the build.
    std::fs::write(&lib, format!("{source}\nfn broken() -> u32 {{ \"not a number\" }}\n")).unwrap();
    let err = try_run(&mut generated.cargo(&["build"]), "cargo build").expect_err("a compile error went unnoticed");
    assert!(err.contains("mismatched types"), "{err}");
}
