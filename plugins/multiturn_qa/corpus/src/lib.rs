//! A corpus of markdown or text files, split into chunks of about `chunk_size` characters.

use std::path::{Path, PathBuf};

use grpo_sdk::{Error, Result};

/// One retrievable piece of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's number in the corpus, in file order (files sorted by path) and position within the file.
    pub id: usize,
    /// The file it came from, relative to the corpus directory.
    pub source: String,
    /// The text.
    pub text: String,
}

/// Split `text` into chunks of at most `size` characters, preferring to cut between paragraphs, then between
/// lines, then between words, and only inside a word that is longer than `size` on its own. Pieces are packed
/// greedily, so chunks are close to `size`; each chunk is trimmed and empty ones are dropped. This follows the idea
/// of LangChain's `RecursiveCharacterTextSplitter` (chunk overlap 0, as re-grpo used it), not its exact output.
pub fn split_text(text: &str, size: usize) -> Vec<String> {
    let size = size.max(1);
    let mut out = Vec::new();
    split_into(text, size, &["\n\n", "\n", " "], &mut out);
    out.into_iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Recursion depth is bounded by the separator list (three levels), so it cannot overflow the stack.
fn split_into(text: &str, size: usize, separators: &[&str], out: &mut Vec<String>) {
    if char_len(text) <= size {
        out.push(text.to_string());
        return;
    }
    let Some((sep, rest)) = separators.split_first() else {
        // No separator left: cut by characters.
        let chars: Vec<char> = text.chars().collect();
        out.extend(chars.chunks(size).map(|c| c.iter().collect::<String>()));
        return;
    };
    if !text.contains(sep) {
        split_into(text, size, rest, out);
        return;
    }
    let mut current = String::new();
    let mut current_len = 0;
    let sep_len = char_len(sep);
    for piece in text.split(sep) {
        let piece_len = char_len(piece);
        if piece_len > size {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
                current_len = 0;
            }
            split_into(piece, size, rest, out);
            continue;
        }
        let joined_len = if current.is_empty() { piece_len } else { current_len + sep_len + piece_len };
        if joined_len > size {
            out.push(std::mem::take(&mut current));
            current.push_str(piece);
            current_len = piece_len;
        } else {
            if !current.is_empty() {
                current.push_str(sep);
            }
            current.push_str(piece);
            current_len = joined_len;
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
}

/// Light cleanup of markdown before chunking, standing in for the markdown-to-text step re-grpo ran: image links
/// are dropped, HTML tags (the inline tables of OCR'd reports) become spaces, heading markers are removed, and runs
/// of spaces are collapsed. Line structure is kept, so the splitter still sees paragraphs.
pub fn clean_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim_start();
        let mut cleaned = String::with_capacity(line.len());
        let mut rest = line;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("![") {
                // ![alt](target): drop the whole link when it is complete.
                if let Some(close) = after.find("](") {
                    if let Some(end) = after[close + 2..].find(')') {
                        rest = &after[close + 2 + end + 1..];
                        continue;
                    }
                }
            }
            if rest.starts_with('<') {
                let is_tag = rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!');
                if let (true, Some(end)) = (is_tag, rest.find('>')) {
                    cleaned.push(' ');
                    rest = &rest[end + 1..];
                    continue;
                }
            }
            let c = rest.chars().next().expect("rest is not empty");
            cleaned.push(c);
            rest = &rest[c.len_utf8()..];
        }
        let mut last_space = false;
        for c in cleaned.trim().chars() {
            let space = c == ' ' || c == '\t';
            if !(space && last_space) {
                out.push(if space { ' ' } else { c });
            }
            last_space = space;
        }
        out.push('\n');
    }
    out
}

/// Every `.md`, `.markdown` and `.txt` file under `dir` (recursively), sorted by path.
pub fn corpus_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| Error::msg(format!("cannot read corpus directory {}: {e}", d.display())))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::msg(format!("{}: {e}", d.display())))?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref(),
                Some("md" | "markdown" | "txt")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Chunk named documents (source name, text) in the given order.
pub fn chunk_documents<'a>(docs: impl IntoIterator<Item = (String, &'a str)>, size: usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (source, text) in docs {
        let cleaned = clean_markdown(text);
        for piece in split_text(&cleaned, size) {
            chunks.push(Chunk { id: chunks.len(), source: source.clone(), text: piece });
        }
    }
    chunks
}

/// Load and chunk every document under `dir`.
pub fn load_dir(dir: &Path, size: usize) -> Result<Vec<Chunk>> {
    let files = corpus_files(dir)?;
    if files.is_empty() {
        return Err(Error::msg(format!("no .md, .markdown or .txt files in corpus directory {}", dir.display())));
    }
    let mut texts = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| Error::msg(format!("cannot read {}: {e}", f.display())))?;
        let name = f.strip_prefix(dir).unwrap_or(f).display().to_string();
        texts.push((name, text));
    }
    Ok(chunk_documents(texts.iter().map(|(n, t)| (n.clone(), t.as_str())), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_the_size_and_prefer_paragraphs() {
        let para = |w: &str, n: usize| vec![w; n].join(" ");
        let text = format!("{}\n\n{}\n\n{}", para("alpha", 100), para("beta", 100), para("gamma", 300));
        let chunks = split_text(&text, 1000);
        assert!(
            chunks.iter().all(|c| c.chars().count() <= 1000),
            "{:?}",
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
        // The first two paragraphs (599 and 499 characters) do not fit together; each is its own chunk.
        assert!(chunks[0].starts_with("alpha") && chunks[0].ends_with("alpha"));
        assert!(chunks[1].starts_with("beta") && chunks[1].ends_with("beta"));
        // The long paragraph is cut between words.
        assert!(chunks[2..].iter().all(|c| c.split(' ').all(|w| w == "gamma")));
        let long_word = "x".repeat(2500);
        let chunks = split_text(&long_word, 1000);
        assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![1000, 1000, 500]);
        assert!(split_text("  \n\n ", 1000).is_empty());
        // Multi-byte text is measured in characters, never cut inside one.
        let chunks = split_text(&"ж".repeat(1500), 1000);
        assert_eq!(chunks.iter().map(|c| c.chars().count()).collect::<Vec<_>>(), vec![1000, 500]);
    }

    #[test]
    fn markdown_cleanup() {
        let md =
            "# 5.1 Oxygen  system\n![](images/ab.jpg)\n<table><tr><td>Tank 2</td><td>failed</td></tr></table>\nx < 5";
        let clean = clean_markdown(md);
        assert_eq!(clean, "5.1 Oxygen system\n\nTank 2 failed\nx < 5\n");
    }
}
