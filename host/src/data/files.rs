//! Reading one data file into rows (JSON objects): JSON Lines, JSON, CSV/TSV, plain text, Parquet or Arrow, the
//! text formats optionally compressed (`.gz`, `.zst`). The format is chosen by the file's extension, as
//! `datasets.load_dataset` chooses its builder; every failure names the file (and the line, row or column) so the
//! user can find it.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::user_error;

/// The data file formats, chosen by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (`.jsonl`, `.ndjson`): TRL's and re-grpo's files.
    JsonLines,
    /// `.json`: one JSON array of objects, or JSON Lines under that name (as the hub often ships them), what
    /// `datasets.load_dataset("json", ...)` reads.
    Json,
    /// Comma-separated values with a header row (`.csv`); column types inferred as pandas infers them.
    Csv,
    /// Tab-separated values with a header row (`.tsv`), which `datasets` reads with its CSV builder.
    Tsv,
    /// Plain text (`.txt`): one row `{"text": line}` per line, empty lines included, as `datasets`' text builder
    /// reads it; a corpus for `sft`.
    Text,
    /// Apache Parquet (`.parquet`): the Hugging Face hub's and verl's format.
    Parquet,
    /// Arrow IPC (`.arrow`): the shards `datasets`' `save_to_disk` writes (streams), or Arrow files (Feather v2).
    Arrow,
}

/// A whole-file compression around a text format, by the file's last extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Read as it is.
    None,
    /// `.gz`.
    Gzip,
    /// `.zst`.
    Zstd,
}

impl Format {
    /// Every format but [`Format::Json`] (one family with JSON Lines), in the order that breaks a tie between
    /// families of equal count in one split: the hub's own Parquet conversion first.
    pub const BY_PREFERENCE: [Format; 6] =
        [Format::Parquet, Format::Arrow, Format::JsonLines, Format::Csv, Format::Tsv, Format::Text];

    /// The family a split's files may mix: `.json` and `.jsonl` are both `datasets`' JSON builder's.
    pub fn family(self) -> Format {
        match self {
            Format::Json => Format::JsonLines,
            other => other,
        }
    }

    /// The format of `path` by its extension; `None` for anything else.
    pub fn of(path: &Path) -> Option<Format> {
        Self::with_compression(path).map(|(format, _)| format)
    }

    /// The format and the compression around it: `train.jsonl.gz` is gzipped JSON Lines. Parquet and Arrow
    /// compress their own buffers, so a compressed `.parquet` or `.arrow` is no known format.
    pub fn with_compression(path: &Path) -> Option<(Format, Compression)> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let (name, compression) = match () {
            _ if name.ends_with(".gz") => (&name[..name.len() - 3], Compression::Gzip),
            _ if name.ends_with(".zst") => (&name[..name.len() - 4], Compression::Zstd),
            _ => (name.as_str(), Compression::None),
        };
        let format = match Path::new(name).extension()?.to_str()? {
            "jsonl" | "ndjson" => Format::JsonLines,
            "json" => Format::Json,
            "csv" => Format::Csv,
            "tsv" => Format::Tsv,
            "txt" => Format::Text,
            "parquet" if compression == Compression::None => Format::Parquet,
            "arrow" if compression == Compression::None => Format::Arrow,
            _ => return None,
        };
        Some((format, compression))
    }
}

/// `datasets`' own metadata beside the data (`save_to_disk`'s `state.json`, `dataset_info.json` and
/// `dataset_dict.json`, the hub's older `dataset_infos.json`): JSON, but no rows.
const METADATA: [&str; 4] = ["state.json", "dataset_info.json", "dataset_infos.json", "dataset_dict.json"];

/// Whether `path` is a data file: a known format, and not `datasets`' metadata.
pub fn is_data_file(path: &Path) -> bool {
    let metadata = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| METADATA.contains(&n));
    Format::of(path).is_some() && !metadata
}

/// Every row of `path` as a JSON object, in file order.
pub fn read_rows(path: &Path) -> Result<Vec<Value>> {
    let Some((format, compression)) = Format::with_compression(path) else {
        return Err(user_error!(
            "{}: unknown data format; expected .jsonl, .json, .csv, .tsv, .txt (each may be .gz or .zst), .parquet or \
             .arrow",
            path.display()
        ));
    };
    match format {
        Format::JsonLines => read_json_lines(path, &read_text(path, compression)?),
        Format::Json => read_json(path, &read_text(path, compression)?),
        Format::Csv => read_delimited(path, open(path, compression)?, b','),
        Format::Tsv => read_delimited(path, open(path, compression)?, b'\t'),
        Format::Text => {
            let text = read_text(path, compression)?;
            Ok(text.lines().map(|line| serde_json::json!({ "text": line })).collect())
        }
        Format::Parquet => read_parquet(path),
        Format::Arrow => read_arrow(path),
    }
}

fn open_file(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| user_error!("{}: cannot open it ({e})", path.display()))
}

/// The file's bytes, decompressed as its name says.
fn open(path: &Path, compression: Compression) -> Result<Box<dyn Read>> {
    let file = open_file(path)?;
    Ok(match compression {
        Compression::None => Box::new(BufReader::new(file)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        Compression::Zstd => Box::new(
            zstd::Decoder::new(file).map_err(|e| user_error!("{}: not a readable zstd file ({e})", path.display()))?,
        ),
    })
}

/// The whole (decompressed) file as UTF-8 text, less a byte-order mark (Windows tools write one): the JSON
/// formats become rows in memory anyway.
fn read_text(path: &Path, compression: Compression) -> Result<String> {
    let mut text = String::new();
    open(path, compression)?
        .read_to_string(&mut text)
        .map_err(|e| user_error!("{}: cannot read it as UTF-8 text ({e})", path.display()))?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// JSON Lines; or, when a line does not parse alone, JSON objects spread over several lines one after another
/// (a pretty-printed object is one row), which the `datasets` JSON reader also takes. A file that is neither is
/// reported at the line that broke it.
fn read_json_lines(path: &Path, text: &str) -> Result<Vec<Value>> {
    by_line(path, text).or_else(|line_error| {
        let values: serde_json::Result<Vec<Value>> = serde_json::Deserializer::from_str(text).into_iter().collect();
        match values {
            Ok(rows) if rows.iter().all(Value::is_object) => Ok(rows),
            _ => Err(line_error),
        }
    })
}

fn by_line(path: &Path, text: &str) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Value = serde_json::from_str(line)
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

/// A `.json` file: an array of objects when its first non-blank character opens one, else JSON Lines (or
/// objects spread over lines). One object is one row, however many lines it takes: `{"prompt": [...], "answer":
/// [...]}` is a row of two lists, as `datasets.load_dataset("json", ...)` reads it, not a table of columns.
fn read_json(path: &Path, text: &str) -> Result<Vec<Value>> {
    if text.trim_start().as_bytes().first() != Some(&b'[') {
        return read_json_lines(path, text);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        user_error!("{}: not valid JSON ({e}); a .json data file holds one array of objects", path.display())
    })?;
    let Value::Array(rows) = value else { unreachable!("a JSON text starting with [ is an array") };
    if let Some((i, bad)) = rows.iter().enumerate().find(|(_, r)| !r.is_object()) {
        return Err(user_error!("{} element {i}: a JSON object was expected, got {}", path.display(), kind(bad)));
    }
    Ok(rows)
}

/// A CSV or TSV file with a header row. Each column's type is inferred from all its cells, as pandas (and so
/// `datasets`) does: integers, else numbers, else booleans (`true`/`false` in any case), else strings. An empty
/// cell is null.
fn read_delimited(path: &Path, reader: Box<dyn Read>, delimiter: u8) -> Result<Vec<Value>> {
    let mut csv = csv::ReaderBuilder::new().delimiter(delimiter).from_reader(reader);
    let bad = |e: csv::Error| {
        let at = e.position().map_or(String::new(), |p| format!(" line {}", p.line()));
        user_error!("{}{at}: not readable as {} ({e})", path.display(), if delimiter == b',' { "CSV" } else { "TSV" })
    };
    let header: Vec<String> = csv.headers().map_err(bad)?.iter().map(str::to_string).collect();
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); header.len()];
    for record in csv.records() {
        for (column, cell) in cells.iter_mut().zip(record.map_err(bad)?.iter()) {
            column.push(cell.to_string());
        }
    }
    let typed: Vec<Vec<Value>> = cells.into_iter().map(infer_column).collect();
    let len = typed.first().map_or(0, Vec::len);
    Ok((0..len)
        .map(|i| {
            Value::Object(header.iter().zip(&typed).map(|(name, column)| (name.clone(), column[i].clone())).collect())
        })
        .collect())
}

/// One column's cells as the type every non-empty cell has.
fn infer_column(cells: Vec<String>) -> Vec<Value> {
    let filled = || cells.iter().filter(|c| !c.is_empty());
    let typed = |parse: &dyn Fn(&str) -> Value| {
        cells.iter().map(|c| if c.is_empty() { Value::Null } else { parse(c) }).collect::<Vec<Value>>()
    };
    if filled().all(|c| c.parse::<i64>().is_ok()) {
        typed(&|c| Value::from(c.parse::<i64>().expect("checked")))
    } else if filled().all(|c| c.parse::<f64>().is_ok()) {
        typed(&|c| Value::from(c.parse::<f64>().expect("checked")))
    } else if filled().all(|c| c.eq_ignore_ascii_case("true") || c.eq_ignore_ascii_case("false")) {
        typed(&|c| Value::Bool(c.eq_ignore_ascii_case("true")))
    } else {
        typed(&|c| Value::String(c.to_string()))
    }
}

fn read_parquet(path: &Path) -> Result<Vec<Value>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e: &dyn std::fmt::Display| user_error!("{}: not a readable Parquet file ({e})", path.display());
    let reader = SerializedFileReader::new(open_file(path)?).map_err(|e| bad(&e))?;
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

/// An Arrow IPC stream, as `datasets` writes each shard of a `save_to_disk` folder, or an Arrow file (its
/// `ARROW1` magic first). Each record batch becomes rows through arrow-json: a null is an absent key, lists and
/// structs are arrays and objects, as Parquet's rows are. One batch at a time, so that a large shard is held once,
/// as rows, rather than also as Arrow buffers and JSON text.
fn read_arrow(path: &Path) -> Result<Vec<Value>> {
    use std::io::{Seek, SeekFrom};

    use arrow_ipc::reader::{FileReader, StreamReader};
    let bad = |e: &dyn std::fmt::Display| user_error!("{}: not a readable Arrow file ({e})", path.display());
    let mut file = open_file(path)?;
    let mut magic = [0u8; 6];
    let is_file = file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
    file.seek(SeekFrom::Start(0)).map_err(|e| bad(&e))?;
    let mut rows = Vec::new();
    let mut add = |batch| -> Result<()> {
        let mut writer = arrow_json::ArrayWriter::new(Vec::new());
        writer.write(&batch).map_err(|e| bad(&e))?;
        writer.finish().map_err(|e| bad(&e))?;
        let bytes = writer.into_inner();
        // A batch without rows writes nothing at all, not `[]`.
        if !bytes.is_empty() {
            rows.extend(serde_json::from_slice::<Vec<Value>>(&bytes).map_err(|e| bad(&e))?);
        }
        Ok(())
    };
    if is_file {
        for batch in FileReader::try_new(file, None).map_err(|e| bad(&e))? {
            add(batch.map_err(|e| bad(&e))?)?;
        }
    } else {
        for batch in StreamReader::try_new(BufReader::new(file), None).map_err(|e| bad(&e))? {
            add(batch.map_err(|e| bad(&e))?)?;
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
    use serde_json::json;

    #[test]
    fn json_lines_and_arrays_read_as_objects_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("a.jsonl");
        std::fs::write(&jsonl, "{\"q\": 1}\n\n{\"q\": 2}\n").unwrap();
        assert_eq!(read_rows(&jsonl).unwrap(), vec![json!({"q": 1}), json!({"q": 2})]);
        std::fs::write(&jsonl, "{\"q\": 1}\n{\"q\": \n").unwrap();
        let err = read_rows(&jsonl).unwrap_err().to_string();
        assert!(err.contains("a.jsonl line 2: not valid JSON"), "{err}");

        let json = dir.path().join("b.json");
        std::fs::write(&json, "\n  [{\"q\": 1}, {\"q\": 2}]").unwrap();
        assert_eq!(read_rows(&json).unwrap().len(), 2);
        // JSON Lines named .json, as the hub often ships them.
        std::fs::write(&json, "{\"q\": 1}\n{\"q\": 2}\n").unwrap();
        assert_eq!(read_rows(&json).unwrap(), vec![json!({"q": 1}), json!({"q": 2})]);
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

        let err = read_rows(&dir.path().join("d.xlsx")).unwrap_err().to_string();
        assert!(err.contains("unknown data format"), "{err}");
    }

    /// Objects spread over several lines, one after another, are rows as in JSON Lines (a pretty-printed object
    /// is one row, whatever it holds, as `datasets` reads it); what is still not JSON names the line that broke it.
    #[test]
    fn pretty_printed_objects_are_rows() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("t.json");
        std::fs::write(&json, "{\n  \"prompt\": \"1+1\",\n  \"answer\": 2\n}\n{\n  \"prompt\": \"2+3\"\n}\n").unwrap();
        let rows = read_rows(&json).unwrap();
        assert_eq!(rows, vec![json!({"prompt": "1+1", "answer": 2}), json!({"prompt": "2+3"})]);
        // The key order of the file is kept in each row.
        assert_eq!(rows[0].as_object().unwrap().keys().collect::<Vec<_>>(), ["prompt", "answer"]);
        let jsonl = dir.path().join("t.jsonl");
        std::fs::write(&jsonl, "{\n \"prompt\": [\"a\", \"b\"],\n \"answer\": [1, 2]\n}").unwrap();
        assert_eq!(read_rows(&jsonl).unwrap(), vec![json!({"prompt": ["a", "b"], "answer": [1, 2]})]);

        std::fs::write(&json, "{\n \"prompt\": [\"a\",\n").unwrap();
        let err = read_rows(&json).unwrap_err().to_string();
        assert!(err.contains("t.json line 1: not valid JSON"), "{err}");
        std::fs::write(&json, "{\n \"a\": 1\n}\n[2]\n").unwrap();
        let err = read_rows(&json).unwrap_err().to_string();
        assert!(err.contains("t.json line 1: not valid JSON"), "{err}");
    }

    /// CSV and TSV: a header row, each column typed by all its cells as pandas types it, empty cells null, quoted
    /// fields with commas and newlines kept; a ragged row names its line.
    #[test]
    fn csv_and_tsv_columns_take_the_type_of_all_their_cells() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("train.csv");
        std::fs::write(
            &csv,
            "prompt,answer,score,ok,id\n\"What is 1,5 + 2?\nThink.\",3.5,1,True,007\nTwo,4,,false,x\n",
        )
        .unwrap();
        assert_eq!(
            read_rows(&csv).unwrap(),
            vec![
                json!({"prompt": "What is 1,5 + 2?\nThink.", "answer": 3.5, "score": 1, "ok": true, "id": "007"}),
                json!({"prompt": "Two", "answer": 4.0, "score": null, "ok": false, "id": "x"})
            ]
        );
        std::fs::write(&csv, "a,b\n1,2\n3\n").unwrap();
        let err = read_rows(&csv).unwrap_err();
        assert!(err.to_string().contains("train.csv line 3: not readable as CSV"), "{err}");
        assert_eq!(crate::error::exit_code(&err), 2);

        // Excel's CSV starts with a byte-order mark, which is not part of the first column's name.
        std::fs::write(&csv, "\u{feff}q,a\nx,1\n").unwrap();
        assert_eq!(read_rows(&csv).unwrap(), vec![json!({"q": "x", "a": 1})]);
        let jsonl = dir.path().join("bom.jsonl");
        std::fs::write(&jsonl, "\u{feff}{\"q\": 1}\n").unwrap();
        assert_eq!(read_rows(&jsonl).unwrap(), vec![json!({"q": 1})]);

        let tsv = dir.path().join("train.tsv");
        std::fs::write(&tsv, "question\tanswer\nsix times seven, please\t42\n").unwrap();
        assert_eq!(read_rows(&tsv).unwrap(), vec![json!({"question": "six times seven, please", "answer": 42})]);
    }

    /// `.gz` and `.zst` around a text format are read through; the format is the extension before them, and a
    /// corrupt stream is one line naming the file.
    #[test]
    fn compressed_text_formats_read_through() {
        use std::io::Write;
        assert_eq!(
            Format::with_compression(Path::new("a/train.JSONL.gz")),
            Some((Format::JsonLines, Compression::Gzip))
        );
        assert_eq!(Format::with_compression(Path::new("t.csv.zst")), Some((Format::Csv, Compression::Zstd)));
        assert_eq!(Format::of(Path::new("t.parquet.gz")), None);
        assert_eq!(Format::of(Path::new("saved/train/data-00000-of-00001.arrow")), Some(Format::Arrow));
        assert_eq!(Format::of(Path::new("data.arrow.zst")), None);
        assert!(!is_data_file(Path::new("saved/train/state.json")) && is_data_file(Path::new("states.json")));
        assert_eq!(Format::of(Path::new("t.gz")), None);
        assert_eq!(Format::of(Path::new("README.md")), None);

        let dir = tempfile::tempdir().unwrap();
        let lines = "{\"q\": 1}\n{\"q\": 2}\n";
        let gz = dir.path().join("train.jsonl.gz");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(lines.as_bytes()).unwrap();
        std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
        assert_eq!(read_rows(&gz).unwrap(), vec![json!({"q": 1}), json!({"q": 2})]);

        let zst = dir.path().join("train.csv.zst");
        std::fs::write(&zst, zstd::encode_all("q,a\nx,1\n".as_bytes(), 3).unwrap()).unwrap();
        assert_eq!(read_rows(&zst).unwrap(), vec![json!({"q": "x", "a": 1})]);

        std::fs::write(&gz, b"not gzip").unwrap();
        let err = read_rows(&gz).unwrap_err().to_string();
        assert!(err.contains("train.jsonl.gz: cannot read it"), "{err}");
    }

    /// A `save_to_disk` shard holds its rows in many record batches (1,000 rows each by default; an empty one too
    /// may come): every row of every batch is read, in order, in both of Arrow's layouts.
    #[test]
    fn arrow_shards_of_many_batches_read_every_row() {
        use arrow_ipc::writer::{FileWriter, StreamWriter};
        use arrow_json::reader::{infer_json_schema, ReaderBuilder};
        let lines: String = (0..5).map(|i| format!("{{\"prompt\": \"q{i}\", \"answer\": {i}}}\n")).collect();
        let schema = std::sync::Arc::new(infer_json_schema(lines.as_bytes(), None).unwrap().0);
        let batches = || {
            let reader = ReaderBuilder::new(schema.clone()).with_batch_size(2).build(lines.as_bytes()).unwrap();
            let mut batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
            batches.insert(1, batches[0].slice(0, 0));
            batches
        };
        let dir = tempfile::tempdir().unwrap();
        let stream = dir.path().join("data-00000-of-00001.arrow");
        let mut writer = StreamWriter::try_new(std::fs::File::create(&stream).unwrap(), &schema).unwrap();
        for batch in batches() {
            writer.write(&batch).unwrap();
        }
        writer.finish().unwrap();
        let file = dir.path().join("frame.arrow");
        let mut writer = FileWriter::try_new(std::fs::File::create(&file).unwrap(), &schema).unwrap();
        for batch in batches() {
            writer.write(&batch).unwrap();
        }
        writer.finish().unwrap();
        let wanted: Vec<Value> = (0..5).map(|i| json!({"prompt": format!("q{i}"), "answer": i})).collect();
        assert_eq!(batches().len(), 4);
        assert_eq!(read_rows(&stream).unwrap(), wanted);
        assert_eq!(read_rows(&file).unwrap(), wanted);
    }
}
