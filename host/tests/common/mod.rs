//! Finding (and building) the plugin libraries the loader tests load.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

/// The shipped plugins, by package and library file stem.
pub const SHIPPED: [(&str, &str); 5] = [
    ("grpo-plugin-grpo", "grpo_grpo"),
    ("grpo-plugin-drgrpo", "grpo_drgrpo"),
    ("grpo-plugin-math", "grpo_math"),
    ("grpo-plugin-calc-tools", "grpo_calc_tools"),
    ("grpo-plugin-multiturn-qa", "grpo_multiturn_qa"),
];

/// The tiny transformers-made models of tests/fixtures/model/tiny (`tests/oracles/model_fixtures.py`), one per
/// family and layout, which the parity and generation tests run through.
pub const TINY_FAMILIES: &[&str] = &[
    "llama",
    "llama3",
    "qwen2",
    "qwen3",
    "mistral",
    "smollm3",
    "olmo2",
    "mistral_window",
    "gemma3",
    "qwen2_window",
    "phi3",
    "olmo3",
    "ministral",
    "qwen3_moe",
    "qwen2_moe",
    "mixtral",
    "olmoe",
    "gemma2",
    "granite",
    "ernie4_5",
    "glm",
    "glm4",
    "granitemoe",
    "arcee",
    "exaone4",
    "gpt_oss",
    "hunyuan_v1_dense",
    "seed_oss",
    "starcoder2",
    "stablelm",
    "nemotron",
    "cohere2",
    "cohere",
    "phi",
    "gpt_neox",
    "gpt2",
    "gemma",
    "olmo",
    "nanochat",
    "exaone",
    "helium",
    "stablelm_12b",
];

/// `target/<profile>`: the test binary lives in its `deps/` folder.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// Held by a test while it seeds or draws from libtorch's global generator, which the tests of one binary share
/// across their threads: a draw in between would shift another test's seeded sequence.
pub fn torch_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A fresh `target/<profile>/plugin-tests/<kind>-<pid>` for this test process. The folders of processes that are
/// gone are removed first: `installed` holds a hard link to grpo-host, which keeps every old build's binary on disk
/// (64 MB each) for as long as the folder stays.
fn process_dir(kind: &str) -> PathBuf {
    let root = profile_dir().join("plugin-tests");
    // Whether a process is alive is read from /proc; without it, nothing is swept.
    let listing = if Path::new("/proc/self").exists() { std::fs::read_dir(&root).ok() } else { None };
    for entry in listing.into_iter().flatten().flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|n| n.strip_prefix(kind)?.strip_prefix('-')?.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = root.join(format!("{kind}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A directory holding links to the shipped plugin libraries, built first with cargo when needed (`cargo test`
/// builds a cdylib only for the crate under test, so the host's tests build them: with up-to-date libraries this
/// is a no-op costing about a second). It builds the whole workspace, exactly as `cargo xtask test` does before the
/// tests, so that cargo resolves the same features and reuses those artifacts instead of rebuilding libtorch's glue.
pub fn shipped_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let profile_dir = profile_dir();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_string(),
            Some(other) => other.to_string(),
            None => panic!("unexpected target layout {}", profile_dir.display()),
        };
        // The GPU bundle (`cargo xtask gpu-bundle`) carries the libraries, built, to a machine without cargo.
        if std::env::var_os("GRPO_TESTS_PREBUILT").is_none() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(workspace_root())
                .args(["build", "--quiet", "--workspace", "--profile", &profile])
                .status()
                .expect("run cargo build for the plugin libraries");
            assert!(status.success(), "building the plugin libraries failed");
        }
        let dir = process_dir("shipped");
        for (_, stem) in SHIPPED {
            let file = library_file(stem);
            let link = dir.join(&file);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(profile_dir.join(&file), &link).unwrap();
        }
        dir
    })
}

/// A directory holding a link to the test-only `faulty` algorithm (tests/fault_plugin: a GRPO-family loss that fails
/// on the call `GRPO_TEST_FAULT` names), for `--plugin-dir`. The workspace build of [`shipped_dir`] builds it.
pub fn fault_plugin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        shipped_dir();
        let dir = process_dir("faulty");
        let file = library_file("grpo_test_faulty");
        let link = dir.join(&file);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(profile_dir().join(&file), &link).unwrap();
        dir
    })
}

/// A folder with a copy (hard link) of grpo-host and links to the shipped plugins beside it, as after an install:
/// the executable's directory is one of the places searched, and target/<profile> may hold other libraries.
pub fn installed() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = process_dir("installed");
        let exe = dir.join("grpo-host");
        let _ = std::fs::remove_file(&exe);
        std::fs::hard_link(env!("CARGO_BIN_EXE_grpo-host"), &exe).unwrap();
        for (_, stem) in SHIPPED {
            let link = dir.join(library_file(stem));
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(shipped(stem), link).unwrap();
        }
        dir
    })
}

/// The installed copy of grpo-host (see [`installed`]).
pub fn host_exe() -> PathBuf {
    installed().join("grpo-host")
}

/// `lib<stem>.so` on this platform.
pub fn library_file(stem: &str) -> String {
    format!("{}{stem}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX)
}

/// The path of a shipped library (built by [`shipped_dir`]).
pub fn shipped(stem: &str) -> PathBuf {
    shipped_dir().join(library_file(stem))
}

/// Compile tests/broken_plugins/broken.rs with `--cfg case="<case>"` into its own directory and return the
/// library's path. Plain rustc, no dependencies: a second or two per case.
pub fn broken_plugin(case: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = profile_dir().join("plugin-tests").join(format!("broken-{case}"));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(library_file(&format!("broken_{case}")));
    let src = workspace_root().join("tests/broken_plugins/broken.rs");
    let fresh = match (std::fs::metadata(&out), std::fs::metadata(&src)) {
        (Ok(o), Ok(s)) => o.modified().unwrap() >= s.modified().unwrap(),
        _ => false,
    };
    if !fresh {
        let tmp = dir.join(format!("building-{}", std::process::id()));
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let output = Command::new(rustc)
            .args(["--edition", "2021", "--crate-type", "cdylib", "-C", "debuginfo=0"])
            .args(["--crate-name", &format!("broken_{case}"), "--cfg", &format!("case=\"{case}\"")])
            .arg("-o")
            .arg(&tmp)
            .arg(&src)
            .env("BROKEN_HOST_LIBTORCH", grpo_sdk::LIBTORCH_VERSION)
            .output()
            .expect("run rustc");
        assert!(output.status.success(), "rustc failed: {}", String::from_utf8_lossy(&output.stderr));
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// The Python of the venv that `cargo xtask setup` makes (torch, transformers, peft, ...), for oracle scripts.
/// The test command runs setup first, so a missing venv is a failure, not a skip.
#[allow(dead_code)]
pub fn venv_python() -> PathBuf {
    let p = grpo_host::paths::cache_dir().join("venv/bin/python");
    assert!(p.exists(), "{} is missing; run `cargo xtask setup`", p.display());
    p
}

/// The devices a device-generic test runs on: the CPU, then CUDA device 0 when libtorch can use it (CUDA alone with
/// `GRPO_TESTS_CUDA_ONLY` set). Without CUDA the reason is written straight to stderr, past the test harness's
/// capture, so a run always shows what it skipped.
pub fn devices(test: &str) -> Vec<tch::Device> {
    use std::io::Write;
    if tch::Cuda::is_available() {
        // xtask/gpu-check.sh sets it: on a lent GPU machine every minute is the GPU's, and the CPU half ran at home.
        if std::env::var_os("GRPO_TESTS_CUDA_ONLY").is_some() {
            return vec![tch::Device::Cuda(0)];
        }
        return vec![tch::Device::Cpu, tch::Device::Cuda(0)];
    }
    let reason = grpo_host::model::device::cuda_unavailable_reason();
    let _ = writeln!(std::io::stderr(), "{test}: CUDA part skipped: {reason}");
    vec![tch::Device::Cpu]
}

/// A `Sync` home for an emulated library's descriptor, whose raw pointers point at leaked, never-mutated data.
pub struct Static<T>(pub T);
// SAFETY: what it wraps is immutable after construction and points at leaked or static data.
unsafe impl<T> Sync for Static<T> {}
unsafe impl<T> Send for Static<T> {}

/// The descriptor of an emulated library built against an older grpo-sdk (ABI 1.`abi_minor`): one plugin of ABI
/// `kind` named `name`, whose function table is `vtable`. Leaked, as the host keeps libraries for the process's life.
pub fn emulated_old_library(
    kind: u32,
    name: &'static str,
    description: &'static str,
    vtable: *const std::ffi::c_void,
    abi_minor: u32,
) -> &'static grpo_sdk::ffi::PluginLibrary {
    use grpo_sdk::ffi::{FfiSlice, FfiStr, PluginEntry, PluginLibrary, ABI_MAJOR};
    let entries = Box::leak(Box::new([PluginEntry {
        kind,
        name: FfiStr::new(name),
        version: FfiStr::new("0.0.1"),
        description: FfiStr::new(description),
        vtable,
    }]));
    Box::leak(Box::new(PluginLibrary {
        abi_major: ABI_MAJOR,
        abi_minor,
        sdk_version: FfiStr::new("0.1.0-old"),
        libtorch_version: FfiStr::new(grpo_sdk::LIBTORCH_VERSION),
        libtorch_cxx11_abi: grpo_sdk::LIBTORCH_CXX11_ABI as u32,
        plugins: FfiSlice::new(&entries[..]),
    }))
}

/// The stderr of a run refused for a mistake in what it was given: exit code 2 and one line.
pub fn refused(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    err
}

/// A copy of the tiny `family` model (tests/fixtures/model/tiny/<family>) in `dir/name` whose tokenizer carries the
/// chat template of a real model, `template` (a file of tests/fixtures/model/templates/).
pub fn tiny_with_template(dir: &Path, name: &str, family: &str, template: &str) -> PathBuf {
    let model = dir.join(name);
    std::fs::create_dir_all(&model).unwrap();
    let tiny = workspace_root().join("tests/fixtures/model/tiny").join(family);
    for file in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny.join(file), model.join(file)).unwrap();
    }
    let config = std::fs::read_to_string(tiny.join("tokenizer_config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let template = workspace_root().join("tests/fixtures/model/templates").join(template);
    config["chat_template"] = std::fs::read_to_string(template).unwrap().into();
    std::fs::write(model.join("tokenizer_config.json"), config.to_string()).unwrap();
    model
}

/// The names of the `step_N` checkpoints in `dir`, sorted.
pub fn checkpoint_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step_"))
        .collect();
    names.sort();
    names
}

/// Copy the folder `from` into `to` (created where missing), subfolders included.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
