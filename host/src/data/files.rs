//! Reading one data file into rows (JSON objects): JSON Lines, a JSON array, or Parquet. The format is chosen by
//! the file's extension; every failure names the file (and the line or row group) so the user can find it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::user_error;

/// The data file formats, chosen by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (`.jsonl`, `.ndjson`): TRL's and re-grpo's files.
    JsonLines,
    /// `.json`: one JSON array of objects, or JSON Lines under that name (as the hub often ships them, and as
    /// `datasets.load_dataset("json", ...)` reads them).
    Json,
    /// Apache Parquet (`.parquet`): the Hugging Face hub's and verl's format.
    Parquet,
}

impl Format {
    /// The format of `path` by its extension; `None` for anything else.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" => Some(Format::JsonLines),
            "json" => Some(Format::Json),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// Every row of `path` as a JSON object, in file order.
pub fn read_rows(path: &Path) -> Result<Vec<Value>> {
    let Some(format) = Format::of(path) else {
        return Err(user_error!("{}: unknown data format; expected .jsonl, .json or .parquet", path.display()));
    };
    match format {
        Format::JsonLines => read_json_lines(path),
        Format::Json => read_json(path),
        Format::Parquet => read_parquet(path),
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| user_error!("{}: cannot open it ({e})", path.display()))
}

fn read_json_lines(path: &Path) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(open(path)?).lines().enumerate() {
        let line = line.map_err(|e| user_error!("{} line {}: cannot read it ({e})", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(&line)
            .map_err(|e| user_error!("{} line {}: not valid JSON ({e})", path.display(), i + 1))?;
        if !row.is_object() {
            return Err(user_error!(
                "{} line {}: a JSON object was expected, got {}",
                path.display(),
                i + 1,
                kind(&row)
            ));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// A `.json` file: an array of objects when its first non-blank character opens one, else JSON Lines.
fn read_json(path: &Path) -> Result<Vec<Value>> {
    let mut reader = BufReader::new(open(path)?);
    let first = loop {
        let buf = reader.fill_buf().map_err(|e| user_error!("{}: cannot read it ({e})", path.display()))?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break Some(buf[i]),
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    if first != Some(b'[') {
        return read_json_lines(path);
    }
    let value: Value = serde_json::from_reader(reader).map_err(|e| {
        user_error!("{}: not valid JSON ({e}); a .json data file holds one array of objects", path.display())
    })?;
    let Value::Array(rows) = value else {
        return Err(user_error!("{}: a .json data file must hold an array of objects", path.display()));
    };
    if let Some((i, bad)) = rows.iter().enumerate().find(|(_, r)| !r.is_object()) {
        return Err(user_error!("{} element {i}: a JSON object was expected, got {}", path.display(), kind(bad)));
    }
    Ok(rows)
}

fn read_parquet(path: &Path) -> Result<Vec<Value>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e: &dyn std::fmt::Display| user_error!("{}: not a readable Parquet file ({e})", path.display());
    let reader = SerializedFileReader::new(open(path)?).map_err(|e| bad(&e))?;
    let groups = reader.metadata().num_row_groups();
    let mut rows = Vec::new();
    for g in 0..groups {
        let group = reader.get_row_group(g).map_err(|e| bad(&e))?;
        let iter = group.get_row_iter(None).map_err(|e| bad(&e))?;
        for row in iter {
            let row = row.map_err(|e| user_error!("{} row group {g}: cannot decode a row ({e})", path.display()))?;
            rows.push(row.to_json_value());
        }
    }
    Ok(rows)
}

/// A JSON value's kind, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_and_arrays_read_as_objects_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("a.jsonl");
        std::fs::write(&jsonl, "{\"q\": 1}\n\n{\"q\": 2}\n").unwrap();
        assert_eq!(read_rows(&jsonl).unwrap(), vec![serde_json::json!({"q": 1}), serde_json::json!({"q": 2})]);
        std::fs::write(&jsonl, "{\"q\": 1}\n{\"q\": \n").unwrap();
        let err = read_rows(&jsonl).unwrap_err().to_string();
        assert!(err.contains("a.jsonl line 2: not valid JSON"), "{err}");

        let json = dir.path().join("b.json");
        std::fs::write(&json, "\n  [{\"q\": 1}, {\"q\": 2}]").unwrap();
        assert_eq!(read_rows(&json).unwrap().len(), 2);
        // JSON Lines named .json, as the hub often ships them.
        std::fs::write(&json, "{\"q\": 1}\n{\"q\": 2}\n").unwrap();
        assert_eq!(read_rows(&json).unwrap(), vec![serde_json::json!({"q": 1}), serde_json::json!({"q": 2})]);
        std::fs::write(&json, "[{\"q\": 1}, 2]").unwrap();
        let err = read_rows(&json).unwrap_err().to_string();
        assert!(err.contains("b.json element 1: a JSON object was expected, got a number"), "{err}");
        std::fs::write(&json, "[{\"q\": 1},").unwrap();
        let err = read_rows(&json).unwrap_err().to_string();
        assert!(err.contains("b.json: not valid JSON"), "{err}");

        let parquet = dir.path().join("c.parquet");
        std::fs::write(&parquet, b"not parquet at all").unwrap();
        let err = read_rows(&parquet).unwrap_err();
        assert!(err.to_string().contains("c.parquet: not a readable Parquet file"), "{err}");
        assert_eq!(crate::error::exit_code(&err), 2);

        let err = read_rows(&dir.path().join("d.csv")).unwrap_err().to_string();
        assert!(err.contains("unknown data format"), "{err}");
    }
}
