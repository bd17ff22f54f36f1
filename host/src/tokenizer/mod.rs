//! The model's tokenizer (the `tokenizers` crate on tokenizer.json), its special tokens and end-of-sequence ids
//! (from tokenizer_config.json, generation_config.json and config.json), and its chat template.

pub mod template;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

pub use template::ChatTemplate;

use crate::model::config::ids_of;
use crate::user_error;

/// The special-token fields transformers exposes to chat templates.
const SPECIAL_TOKEN_FIELDS: &[&str] =
    &["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// A Hugging Face tokenizer with its chat template and stop ids.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    template: Option<ChatTemplate>,
    eos_ids: Vec<u32>,
    eos_token: Option<u32>,
    pad_id: Option<u32>,
    /// The model directory, for messages.
    dir: PathBuf,
    /// Variables every rendering of the chat template gets (`--chat-template-kwargs`, such as Qwen3's
    /// `enable_thinking`).
    template_vars: Map<String, Json>,
    /// tokenizer_config.json's special tokens, which every template sees.
    special: Map<String, Json>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("eos_ids", &self.eos_ids).field("pad_id", &self.pad_id).finish()
    }
}

fn read_json(path: &Path) -> anyhow::Result<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).map_err(|e| user_error!("{} is not valid JSON: {e}", path.display()))?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(user_error!("cannot read {}: {e}", path.display())),
    }
}

/// The chat template a model directory holds, as transformers reads it: chat_template.jinja where there is one,
/// else tokenizer_config.json's `chat_template` (`tc`), a string or a list of named templates (the one called
/// `default`); `None` for a model without one.
fn template_in(dir: &Path, tc: &Json) -> anyhow::Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return Ok(Some(
            std::fs::read_to_string(&jinja).map_err(|e| user_error!("cannot read {}: {e}", jinja.display()))?,
        ));
    }
    Ok(match tc.get("chat_template") {
        Some(Json::String(s)) => Some(s.clone()),
        Some(Json::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    })
}

/// The text of `--chat-template PATH`: a Jinja file, or a model (or tokenizer) directory whose template to take.
pub fn read_chat_template(path: &Path) -> anyhow::Result<String> {
    const FLAG: &str = "--chat-template";
    if path.is_dir() {
        let tc = read_json(&path.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
        return template_in(path, &tc)?.ok_or_else(|| {
            user_error!(
                "{FLAG} {}: the directory has no chat template (no chat_template.jinja, no `chat_template` in \
                 tokenizer_config.json); give a .jinja file or a chat model's directory",
                path.display()
            )
        });
    }
    std::fs::read_to_string(path).map_err(|e| {
        user_error!("{FLAG} {}: {e}; give a Jinja template file or a model directory that has one", path.display())
    })
}

/// A special token in tokenizer_config.json is a string or an AddedToken object with `content`.
fn token_string(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Load tokenizer.json, tokenizer_config.json (special tokens, chat template), chat_template.jinja when
    /// present (it takes precedence, as in transformers), generation_config.json and config.json (eos ids).
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let tj = dir.join("tokenizer.json");
        if !tj.exists() {
            return Err(user_error!("{} is missing; the model directory needs a fast tokenizer", tj.display()));
        }
        let inner = tokenizers::Tokenizer::from_file(&tj)
            .map_err(|e| user_error!("cannot load tokenizer {}: {e}", tj.display()))?;
        let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
        let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
        let cfg = read_json(&dir.join("config.json"))?.unwrap_or(Json::Null);

        let mut special = Map::new();
        for field in SPECIAL_TOKEN_FIELDS {
            if let Some(s) = token_string(tc.get(*field)) {
                special.insert(field.to_string(), Json::String(s));
            }
        }
        let id_of = |field: &str| special.get(field).and_then(Json::as_str).and_then(|s| inner.token_to_id(s));

        let eos_token = id_of("eos_token");
        let mut eos_ids = ids_of(gen.get("eos_token_id"));
        for id in ids_of(cfg.get("eos_token_id")).into_iter().chain(eos_token) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let pad_id = id_of("pad_token")
            .or_else(|| ids_of(gen.get("pad_token_id")).first().copied())
            .or_else(|| ids_of(cfg.get("pad_token_id")).first().copied());

        let template = template_in(dir, &tc)?.map(|s| ChatTemplate::new(&s, special.clone())).transpose()?;
        let dir = dir.to_path_buf();
        Ok(Tokenizer { inner, template, eos_ids, eos_token, pad_id, dir, template_vars: Map::new(), special })
    }

    /// Render conversations with the Jinja template `source` instead of the model's own (`--chat-template`, TRL's
    /// `chat_template_path`): a base model gets one, a chat model another.
    pub fn set_chat_template(&mut self, source: &str) -> anyhow::Result<()> {
        self.template = Some(ChatTemplate::new(source, self.special.clone())?);
        Ok(())
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's post-processor (e.g. a BOS token).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> anyhow::Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| anyhow::anyhow!("tokenizing failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special` drops special tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> anyhow::Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| anyhow::anyhow!("decoding failed: {e}"))
    }

    /// End-of-sequence ids (generation_config.json first, then config.json, then the tokenizer's eos token).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The id of tokenizer_config.json's `eos_token` (transformers' `tokenizer.eos_token`, what a trainer appends
    /// to plain text), else the first end-of-sequence id.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.or_else(|| self.eos_ids.first().copied())
    }

    /// The padding id, if the model defines one.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The id of a token string (including added/special tokens).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// An error unless the model has a chat template; `what` says what needs it ("conversations are rendered with
    /// it").
    pub fn require_chat_template(&self, what: &str) -> anyhow::Result<()> {
        if self.template.is_some() {
            return Ok(());
        }
        Err(user_error!(
            "the model at {} has no chat template (no `chat_template` in tokenizer_config.json, no \
             chat_template.jinja), and {what}; use a chat (instruct) model, or give one with --chat-template FILE",
            self.dir.display()
        ))
    }

    /// Render a conversation with the model's chat template, byte-identical to transformers'
    /// `apply_chat_template(messages, tools=tools, add_generation_prompt=..., tokenize=False)`.
    pub fn render_chat(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
    ) -> anyhow::Result<String> {
        self.render_chat_with(messages, tools, add_generation_prompt, &Map::new())
    }

    /// Give every later rendering the template variables `vars` (`--chat-template-kwargs`; transformers'
    /// `apply_chat_template(**kwargs)`, TRL's `chat_template_kwargs`).
    pub fn set_template_vars(&mut self, vars: Map<String, Json>) {
        self.template_vars = vars;
    }

    /// [`Tokenizer::render_chat`] with extra template variables (e.g. Qwen3's `enable_thinking`), over those of
    /// [`Tokenizer::set_template_vars`].
    pub fn render_chat_with(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> anyhow::Result<String> {
        self.require_chat_template("conversations are rendered with it")?;
        let t = self.template.as_ref().expect("checked");
        if self.template_vars.is_empty() {
            return t.render(messages, tools, add_generation_prompt, extra);
        }
        let mut vars = self.template_vars.clone();
        vars.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        t.render(messages, tools, add_generation_prompt, &vars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--chat-template` takes a file's text, or a directory's template as transformers finds it (the .jinja file
    /// before tokenizer_config.json's); a directory without one, or a missing file, is one line naming the flag.
    #[test]
    fn a_chat_template_is_read_from_a_file_or_a_model_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let file = dir.join("t.jinja");
        std::fs::write(&file, "{{ messages }}").unwrap();
        assert_eq!(read_chat_template(&file).unwrap(), "{{ messages }}");
        let err = read_chat_template(dir).unwrap_err().to_string();
        assert!(err.contains("--chat-template") && err.contains("no chat template"), "{err}");
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"chat_template": "from the config"}"#).unwrap();
        assert_eq!(read_chat_template(dir).unwrap(), "from the config");
        std::fs::write(dir.join("chat_template.jinja"), "from the file").unwrap();
        assert_eq!(read_chat_template(dir).unwrap(), "from the file");
        let err = read_chat_template(&dir.join("missing.jinja")).unwrap_err().to_string();
        assert!(err.contains("--chat-template") && err.contains("missing.jinja"), "{err}");
    }
}
