//! Which files a dataset name means: a file, a directory of shards, a glob, or a Hugging Face hub dataset id
//! resolved from the local hub cache (downloaded with `hf-hub` when online, under the same rules as `--model`).
//!
//! A hub dataset (or a directory laid out like one) holds configs and splits in its file paths, as the hub's
//! Parquet conversions and most uploads do: `main/train-00000-of-00001.parquet` (GSM8K: config `main`, split
//! `train`), `data/test-00000-of-00001.parquet`, `algebra/train.jsonl`. A file belongs to split S when its name is
//! S or starts with `S-`, `S_` or `S.`, or a folder below the config is named S.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::files::{is_data_file, Format};
use super::DatasetSpec;
use crate::model::resolve::hf_hub_cache;
use crate::user_error;

/// The data files of `spec`, in a fixed order (sorted paths), all of a known format. `flag` names the option in
/// messages; `default_split` is the split of a hub layout when `spec` names none; `allow_download` permits
/// fetching a hub dataset missing from the cache.
pub fn resolve_files(
    spec: &DatasetSpec,
    flag: &str,
    default_split: &str,
    allow_download: bool,
) -> Result<Vec<PathBuf>> {
    let source = spec.source.as_str();
    let path = Path::new(source);
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if path.is_dir() {
        let relative = data_files_under(path);
        if relative.is_empty() {
            return Err(user_error!(
                "{flag} {source}: the directory holds no data files (.jsonl, .json, .csv, .tsv, .txt, .parquet, .arrow)"
            ));
        }
        // A plain folder of shards has no split names; with none asked for, it is all one split.
        let chosen = match select(&relative, spec.config.as_deref(), spec.split.as_deref().unwrap_or(default_split)) {
            Ok(chosen) => chosen,
            Err(_) if spec.config.is_none() && spec.split.is_none() => one_format(relative),
            Err(why) => return Err(user_error!("{flag} {source}: {why}")),
        };
        return Ok(chosen.iter().map(|r| path.join(r)).collect());
    }
    if source.contains(['*', '?', '[']) {
        let files = glob(source);
        if files.is_empty() {
            return Err(user_error!(
                "{flag} {source}: the pattern matches no data file (.jsonl, .json, .csv, .tsv, .txt, .parquet, .arrow)"
            ));
        }
        return Ok(files);
    }
    if looks_like_dataset_id(source) {
        return hub_files(spec, flag, spec.split.as_deref().unwrap_or(default_split), allow_download);
    }
    Err(user_error!(
        "{flag} {source}: no such file or directory; pass a .jsonl, .json, .csv or .parquet file, a directory or glob of \
         them (a `save_to_disk` folder too), or a hub dataset id like openai/gsm8k"
    ))
}

/// `org/name` with no data-file extension.
fn looks_like_dataset_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && *p != "." && *p != "..")
        && !spec.starts_with(['.', '~'])
        && Format::of(Path::new(spec)).is_none()
}

/// Data files below `root` as sorted `/`-separated relative paths; hidden folders (`.git`, `.cache`) are skipped.
fn data_files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let path = entry.path();
            if path.is_dir() {
                walk(&path, &rel, out);
            } else if is_data_file(&path) {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, "", &mut out);
    out.sort();
    out
}

/// The files of `config` and `split` among `files` (relative paths), or why there are none (naming what exists).
pub fn select(files: &[String], config: Option<&str>, split: &str) -> std::result::Result<Vec<String>, String> {
    let configs = config_names(files);
    let in_config: Vec<&String> = match config {
        Some(c) => {
            let chosen: Vec<&String> = files.iter().filter(|f| f.split('/').next() == Some(c)).collect();
            if chosen.is_empty() {
                return Err(format!(
                    "no config `{c}`; {}",
                    if configs.is_empty() {
                        "it has none".to_string()
                    } else {
                        format!("configs: {}", configs.join(", "))
                    }
                ));
            }
            chosen
        }
        // Top-level folders named for the split (`train/part-0.parquet`) are splits, not configs.
        None if configs.len() > 1 && !configs.iter().any(|c| c == split) => {
            return Err(format!("it has several configs ({}); pick one with --dataset-config", configs.join(", ")));
        }
        None => files.iter().collect(),
    };
    let skip = usize::from(config.is_some() || (!configs.is_empty() && !configs.iter().any(|c| c == split)));
    let chosen: Vec<String> =
        in_config.iter().filter(|f| split_names(f, skip).iter().any(|s| s == split)).map(|f| f.to_string()).collect();
    if chosen.is_empty() {
        let mut splits: Vec<String> = in_config.iter().flat_map(|f| split_names(f, skip)).collect();
        splits.sort();
        splits.dedup();
        return Err(format!(
            "no `{split}` split; {}",
            if splits.is_empty() {
                "no file is named for a split".to_string()
            } else {
                format!("splits: {}", splits.join(", "))
            }
        ));
    }
    Ok(one_format(chosen))
}

/// The files of one format family among `files`: the most common, Parquet first on a tie (the hub's own
/// conversion sits beside the uploaded files), as `datasets` picks one builder for a split; the same rows are often
/// uploaded in two formats, and reading both would count each row twice. JSON and JSON Lines are one family.
fn one_format(files: Vec<String>) -> Vec<String> {
    let family = |f: &String| Format::of(Path::new(f)).map(Format::family);
    let count = |format: Format| files.iter().filter(|f| family(f) == Some(format)).count();
    let Some(most) = Format::BY_PREFERENCE.into_iter().rev().max_by_key(|f| count(*f)) else { return files };
    files.into_iter().filter(|f| family(f) == Some(most)).collect()
}

/// Top-level folders that hold data files, except `data` (the hub's folder for a dataset with one config).
fn config_names(files: &[String]) -> Vec<String> {
    let mut names: Vec<String> = files
        .iter()
        .filter_map(|f| f.split_once('/').map(|(top, _)| top.to_string()))
        .filter(|top| top != "data")
        .collect();
    names.sort();
    names.dedup();
    if files.iter().any(|f| !f.contains('/') || f.starts_with("data/")) {
        // Files outside config folders: the folders are not configs but a layout of one dataset.
        return Vec::new();
    }
    names
}

/// The split names a relative path can stand for: folders below the first `skip` components, and the file
/// name's stem up to the first `-`, `_` or `.`.
fn split_names(file: &str, skip: usize) -> Vec<String> {
    let parts: Vec<&str> = file.split('/').collect();
    let (dirs, name) = parts.split_at(parts.len() - 1);
    let mut names: Vec<String> = dirs.iter().skip(skip).filter(|d| **d != "data").map(|d| d.to_string()).collect();
    let stem = name[0].split(['-', '_', '.']).next().unwrap_or_default();
    if !stem.is_empty() {
        names.push(stem.to_string());
    }
    names
}

/// Files matching a glob with `*`, `?` and `[...]` in any path component, sorted.
fn glob(pattern: &str) -> Vec<PathBuf> {
    let absolute = pattern.starts_with('/');
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
    let mut current = vec![if absolute { PathBuf::from("/") } else { PathBuf::from(".") }];
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for base in &current {
            if !part.contains(['*', '?', '[']) {
                let p = base.join(part);
                if p.exists() {
                    next.push(p);
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(base) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if !name.starts_with('.') && wildcard(part.as_bytes(), name.as_bytes()) {
                    next.push(entry.path());
                }
            }
        }
        if !last {
            next.retain(|p| p.is_dir());
        }
        current = next;
    }
    let mut files: Vec<PathBuf> = current
        .into_iter()
        .filter(|p| p.is_file() && is_data_file(p))
        .map(|p| p.strip_prefix("./").map(Path::to_path_buf).unwrap_or(p))
        .collect();
    files.sort();
    files
}

/// Whether `name` matches the glob component `pat`.
fn wildcard(pat: &[u8], name: &[u8]) -> bool {
    match pat.first() {
        None => name.is_empty(),
        Some(b'*') => (0..=name.len()).any(|i| wildcard(&pat[1..], &name[i..])),
        Some(b'?') => !name.is_empty() && wildcard(&pat[1..], &name[1..]),
        Some(b'[') => {
            let Some(close) = pat.iter().position(|&c| c == b']') else {
                return name.first() == Some(&b'[') && wildcard(&pat[1..], &name[1..]);
            };
            let Some(&c) = name.first() else { return false };
            let set = &pat[1..close];
            let (negate, set) = match set.first() {
                Some(b'!' | b'^') => (true, &set[1..]),
                _ => (false, set),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && wildcard(&pat[close + 1..], &name[1..])
        }
        Some(&p) => name.first() == Some(&p) && wildcard(&pat[1..], &name[1..]),
    }
}

/// The snapshot folder of dataset `id` in the hub cache `hub`: the revision `refs/main` names, else the most
/// recently modified snapshot.
pub fn find_dataset_in_hub_cache(hub: &Path, id: &str) -> Option<PathBuf> {
    let repo = hub.join(format!("datasets--{}", id.replace('/', "--")));
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let snap = repo.join("snapshots").join(rev.trim());
        if snap.is_dir() {
            return Some(snap);
        }
    }
    let mut snaps: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(repo.join("snapshots"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .map(|p| (std::fs::metadata(&p).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), p))
        .collect();
    snaps.sort();
    snaps.pop().map(|(_, p)| p)
}

fn hub_files(spec: &DatasetSpec, flag: &str, split: &str, allow_download: bool) -> Result<Vec<PathBuf>> {
    let id = spec.source.as_str();
    let hub = hf_hub_cache();
    if let Some(snapshot) = find_dataset_in_hub_cache(&hub, id) {
        let relative = data_files_under(&snapshot);
        match select(&relative, spec.config.as_deref(), split) {
            Ok(chosen) => return Ok(chosen.iter().map(|r| snapshot.join(r)).collect()),
            // The cached snapshot may hold only some of the files; the hub may have the rest.
            Err(why) if !download_allowed(allow_download) => {
                return Err(user_error!("{flag} {id} (cached at {}): {why}", snapshot.display()));
            }
            Err(_) => {}
        }
    }
    if !download_allowed(allow_download) {
        return Err(user_error!(
            "{flag} {id}: not a file or directory, and not in the Hugging Face cache at {} (downloads are off: \
             --offline, HF_HUB_OFFLINE or HF_DATASETS_OFFLINE); download it once online, or pass a local file",
            hub.display()
        ));
    }
    download(&hub, spec, split, flag)
}

/// Downloads are off with `--offline`, `HF_HUB_OFFLINE` or the `datasets` library's own `HF_DATASETS_OFFLINE`.
fn download_allowed(allow_download: bool) -> bool {
    let set = |var: &str| std::env::var(var).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    allow_download && !set("HF_HUB_OFFLINE") && !set("HF_DATASETS_OFFLINE")
}

/// Fetch the split's files of a hub dataset into the hub cache with `hf-hub`.
fn download(hub: &Path, spec: &DatasetSpec, split: &str, flag: &str) -> Result<Vec<PathBuf>> {
    let id = spec.source.as_str();
    let fail = |e: &dyn std::fmt::Display| user_error!("{flag} {id}: download from the Hugging Face hub failed: {e}");
    let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(hub.to_path_buf()))
        .with_progress(true)
        .build()
        .map_err(|e| fail(&e))?;
    let repo = api.dataset(id.to_string());
    let info = repo.info().map_err(|e| fail(&e))?;
    let mut relative: Vec<String> = info
        .siblings
        .into_iter()
        .map(|s| s.rfilename)
        .filter(|f| !f.split('/').any(|p| p.starts_with('.')) && is_data_file(Path::new(f)))
        .collect();
    relative.sort();
    let chosen = select(&relative, spec.config.as_deref(), split).map_err(|why| user_error!("{flag} {id}: {why}"))?;
    chosen.iter().map(|f| repo.get(f).map_err(|e| fail(&e))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn configs_and_splits_are_read_from_hub_layouts() {
        let gsm8k = strings(&[
            "main/test-00000-of-00001.parquet",
            "main/train-00000-of-00001.parquet",
            "socratic/test-00000-of-00001.parquet",
            "socratic/train-00000-of-00001.parquet",
        ]);
        assert_eq!(select(&gsm8k, Some("main"), "train").unwrap(), strings(&["main/train-00000-of-00001.parquet"]));
        let err = select(&gsm8k, None, "train").unwrap_err();
        assert!(err.contains("several configs (main, socratic)"), "{err}");
        let err = select(&gsm8k, Some("other"), "train").unwrap_err();
        assert!(err.contains("no config `other`; configs: main, socratic"), "{err}");
        let err = select(&gsm8k, Some("main"), "validation").unwrap_err();
        assert!(err.contains("no `validation` split; splits: test, train"), "{err}");

        let one = strings(&["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "README.md"]);
        assert_eq!(select(&one, None, "train").unwrap().len(), 2);
        let single = strings(&["main/train.jsonl", "main/test.jsonl"]);
        assert_eq!(select(&single, None, "test").unwrap(), strings(&["main/test.jsonl"]));
        let nested = strings(&["train/part-0.parquet", "train/part-1.parquet", "test/part-0.parquet"]);
        assert_eq!(select(&nested, None, "train").unwrap().len(), 2);

        // The same rows uploaded twice: one format is read, the most common, Parquet on a tie.
        let twice = strings(&["data/train.csv", "data/train-00000-of-00001.parquet", "data/test.csv"]);
        assert_eq!(select(&twice, None, "train").unwrap(), strings(&["data/train-00000-of-00001.parquet"]));
        let shards = strings(&["train-0.jsonl.gz", "train-1.json", "train.parquet"]);
        assert_eq!(select(&shards, None, "train").unwrap(), strings(&["train-0.jsonl.gz", "train-1.json"]));
    }

    #[test]
    fn globs_match_components() {
        assert!(wildcard(b"train-*.parquet", b"train-00000-of-00001.parquet"));
        assert!(!wildcard(b"train-*.parquet", b"test-00000-of-00001.parquet"));
        assert!(wildcard(b"part-[0-9].jsonl", b"part-3.jsonl"));
        assert!(!wildcard(b"part-[!0-9].jsonl", b"part-3.jsonl"));
        assert!(wildcard(b"?.json", b"a.json"));
        let dir = tempfile::tempdir().unwrap();
        for f in ["a/x-1.jsonl", "a/x-2.jsonl", "b/x-3.jsonl", "b/y.txt"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let found = glob(&format!("{}/*/x-*.jsonl", dir.path().display()));
        assert_eq!(found.len(), 3);
        assert!(found[0].ends_with("a/x-1.jsonl") && found[2].ends_with("b/x-3.jsonl"));
    }

    #[test]
    fn ids_and_paths_are_told_apart() {
        assert!(looks_like_dataset_id("openai/gsm8k"));
        assert!(!looks_like_dataset_id("data/train.jsonl"));
        assert!(!looks_like_dataset_id("./gsm8k"));
        assert!(!looks_like_dataset_id("gsm8k"));
    }
}
