//! Turning `--model` into a directory: a path, a hub id found in the local Hugging Face cache, or a hub id
//! downloaded into that cache (only when the network is allowed), or the default model when none is given.

use std::path::{Path, PathBuf};

use crate::user_error;

/// The files a model directory needs besides its weights; generation_config.json is optional.
const MODEL_FILES: &[&str] = &["config.json", "tokenizer.json", "tokenizer_config.json"];

/// The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hf_hub_cache() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("HF_HUB_CACHE") {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    let home = var("HOME").unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("huggingface").join("hub")
}

/// Whether `spec` reads as a hub id (`org/name`) rather than a path.
fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && *p != "." && *p != "..")
        && !spec.starts_with('.')
        && !spec.starts_with('~')
}

/// The snapshot directory of `id` in the hub cache `hub`, if one holds a config.json. At `revision`: the commit a
/// branch or tag of that name points at (the cache's `refs/`), else the snapshot of that commit hash. Without one:
/// the commit `refs/main` points at, else the most recently modified snapshot.
pub fn find_in_hub_cache(hub: &Path, id: &str, revision: Option<&str>) -> Option<PathBuf> {
    let repo = hub.join(format!("models--{}", id.replace('/', "--")));
    let snapshot = |commit: &str| Some(repo.join("snapshots").join(commit)).filter(|s| s.join("config.json").exists());
    let named = std::fs::read_to_string(repo.join("refs").join(revision.unwrap_or("main")));
    if let Some(snap) = named.ok().and_then(|commit| snapshot(commit.trim())) {
        return Some(snap);
    }
    if let Some(commit) = revision {
        // A hash names its snapshot; another revision the cache lacks is not replaced by whatever it has.
        return snapshot(commit).filter(|_| !commit.contains(['/', '\\']) && commit != "..");
    }
    let mut snaps: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(repo.join("snapshots"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("config.json").exists())
        .map(|p| (std::fs::metadata(&p).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), p))
        .collect();
    snaps.sort();
    snaps.pop().map(|(_, p)| p)
}

/// Resolve `--model` (a hub id at `revision`, `main` by default; a directory is used as it is, as transformers
/// does). `None` is the default model (`grpo_host::paths::default_model_dir()`). A hub id missing from the cache
/// is downloaded only when `allow_download` is true and `HF_HUB_OFFLINE` is not set.
pub fn resolve_model_dir(spec: Option<&str>, revision: Option<&str>, allow_download: bool) -> anyhow::Result<PathBuf> {
    let Some(spec) = spec else {
        let dir = crate::paths::default_model_dir();
        if !dir.join("config.json").exists() {
            return Err(user_error!(
                "the default model is not installed at {}; run `cargo xtask setup` or pass --model DIR|ORG/NAME",
                dir.display()
            ));
        }
        return Ok(dir);
    };
    let path = PathBuf::from(spec);
    if path.is_dir() {
        if !path.join("config.json").exists() {
            return Err(user_error!(
                "--model {spec}: the directory has no config.json; pass a Hugging Face model directory"
            ));
        }
        return Ok(path);
    }
    if looks_like_hub_id(spec) {
        let hub = hf_hub_cache();
        if let Some(dir) = find_in_hub_cache(&hub, spec, revision) {
            return Ok(dir);
        }
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        if allow_download && !offline {
            return download(&hub, spec, revision);
        }
        return Err(user_error!(
            "{}: not a directory and not in the Hugging Face cache at {} (downloads are off)",
            flags(spec, revision),
            hub.display()
        ));
    }
    Err(user_error!(
        "--model {spec}: no such directory; pass a model directory or a hub id like Qwen/Qwen2.5-0.5B-Instruct"
    ))
}

/// The flags that named a hub model, for the messages about it: `--model ID`, and `--model-revision REV` if given.
fn flags(id: &str, revision: Option<&str>) -> String {
    match revision {
        Some(revision) => format!("--model {id} --model-revision {revision}"),
        None => format!("--model {id}"),
    }
}

/// Fetch a model's config, tokenizer and safetensors weights at `revision` (`main` by default) into the hub cache
/// with `hf-hub`.
fn download(hub: &Path, id: &str, revision: Option<&str>) -> anyhow::Result<PathBuf> {
    let named = flags(id, revision);
    let fail = |e: &dyn std::fmt::Display| user_error!("{named}: download from the Hugging Face hub failed: {e}");
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(hub.to_path_buf()))
        .with_progress(true)
        .build()
        .map_err(|e| fail(&e))?;
    let revision = revision.unwrap_or("main").to_string();
    let repo = api.repo(hf_hub::Repo::with_revision(id.to_string(), hf_hub::RepoType::Model, revision));
    let mut config = None;
    for f in MODEL_FILES {
        let p = repo.get(f).map_err(|e| fail(&e))?;
        if *f == "config.json" {
            config = Some(p);
        }
    }
    let _ = repo.get("generation_config.json");
    match repo.get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index)?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let mut shards: Vec<String> = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| m.values().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                repo.get(&s).map_err(|e| fail(&e))?;
            }
        }
        Err(_) => {
            repo.get("model.safetensors").map_err(|e| fail(&e))?;
        }
    }
    let config = config.ok_or_else(|| fail(&"no config.json"))?;
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_snapshot_through_refs_main() {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        std::fs::write(repo.join("snapshots/abc123/config.json"), "{}").unwrap();
        assert_eq!(find_in_hub_cache(hub.path(), "org/tiny", None), Some(repo.join("snapshots/abc123")));
        assert_eq!(find_in_hub_cache(hub.path(), "org/other", None), None);
    }

    /// `--model-revision`: a branch or tag through the cache's refs, a commit by its hash; a revision the cache
    /// lacks is not found (rather than another snapshot), and a path in its place finds nothing.
    #[test]
    fn finds_a_revision_by_ref_or_commit() {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("models--org--tiny");
        for commit in ["abc123", "def456"] {
            std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
            std::fs::write(repo.join("snapshots").join(commit).join("config.json"), "{}").unwrap();
        }
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        std::fs::write(repo.join("refs/v1"), "def456\n").unwrap();
        let found = |rev: Option<&str>| find_in_hub_cache(hub.path(), "org/tiny", rev);
        assert_eq!(found(None), Some(repo.join("snapshots/abc123")));
        assert_eq!(found(Some("main")), Some(repo.join("snapshots/abc123")));
        assert_eq!(found(Some("v1")), Some(repo.join("snapshots/def456")));
        assert_eq!(found(Some("def456")), Some(repo.join("snapshots/def456")));
        assert_eq!(found(Some("v2")), None);
        assert_eq!(found(Some("../snapshots/abc123")), None);
        let err = resolve_model_dir(Some("org/not-cached"), Some("v2"), false).unwrap_err().to_string();
        assert!(err.starts_with("--model org/not-cached --model-revision v2: not a directory"), "{err}");
    }

    #[test]
    fn missing_path_is_a_user_error() {
        let err = resolve_model_dir(Some("/definitely/not/here"), None, false).unwrap_err();
        assert_eq!(crate::error::exit_code(&err), 2);
        assert!(err.to_string().contains("/definitely/not/here"));
        assert!(looks_like_hub_id("Qwen/Qwen2.5-0.5B-Instruct"));
        assert!(!looks_like_hub_id("./a"));
    }
}
