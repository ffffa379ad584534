//! The chat template a bundle carries (`chat` in ferrite.json, read by the runtime's
//! `ferrite_runtime::chat`): from a GGUF's `tokenizer.chat_template` metadata, or from a Hugging
//! Face directory's `chat_template.jinja` / `tokenizer_config.json` (`chat_template`,
//! `bos_token`, `eos_token`). The template is copied as it is; it is only compiled and bounded
//! at run time. A source without a template gives a bundle without one (no invented format).

use std::path::Path;

use ferrite_runtime::bundle::ChatSpec;
use serde_json::Value;

use crate::error::{ExportError, Result};

/// End-of-turn tokens of the common chat formats, used when the tokenizer defines them.
const END_OF_TURN_TOKENS: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

/// The chat spec of `src` (a `.gguf` file or a Hugging Face directory), if it has a template.
pub(crate) fn chat_spec(src: &Path) -> Result<Option<ChatSpec>> {
    if crate::arch::gguf::is_gguf(src) {
        let file = ferrite_gguf::GgufFile::open(src)
            .map_err(|source| ExportError::Gguf { path: src.to_path_buf(), source })?;
        return Ok(crate::gguf_tokenizer::chat_spec(&file));
    }
    if !src.is_dir() {
        return Ok(None);
    }
    let config_path = src.join("tokenizer_config.json");
    let config: Value = match std::fs::read(&config_path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| ExportError::config(&config_path, e.to_string()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => return Err(ExportError::io(&config_path, e)),
    };
    let jinja = src.join("chat_template.jinja");
    let template = match std::fs::read_to_string(&jinja) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match config.get("chat_template") {
            Some(Value::String(t)) => t.clone(),
            // A list of named templates: the one called "default".
            Some(Value::Array(named)) => match named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
            {
                Some(t) => t.to_string(),
                None => return Ok(None),
            },
            _ => return Ok(None),
        },
        Err(e) => return Err(ExportError::io(&jinja, e)),
    };
    let token_text = |key: &str| match config.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
        None => String::new(),
    };
    let (bos_token, eos_token) = (token_text("bos_token"), token_text("eos_token"));
    let known = added_tokens(src)?;
    let mut end_of_turn: Vec<String> = Vec::new();
    for t in std::iter::once(eos_token.as_str()).chain(END_OF_TURN_TOKENS) {
        if !t.is_empty() && known.iter().any(|k| k == t) && !end_of_turn.iter().any(|e| e == t) {
            end_of_turn.push(t.to_string());
        }
    }
    Ok(Some(ChatSpec { template, bos_token, eos_token, end_of_turn }))
}

/// The added (special) tokens of a Hugging Face tokenizer.json, if there is one.
fn added_tokens(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join("tokenizer.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ExportError::io(&path, e)),
    };
    let json: Value =
        serde_json::from_slice(&bytes).map_err(|e| ExportError::config(&path, e.to_string()))?;
    Ok(json
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(|tokens| {
            tokens.iter().filter_map(|t| t.get("content").and_then(Value::as_str).map(String::from)).collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Hugging Face directory: the template and token texts from tokenizer_config.json (token
    /// objects or strings), end-of-turn tokens only where the tokenizer defines them.
    #[test]
    fn reads_a_hugging_face_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": "{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}",
                "bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            r#"{"added_tokens": [{"content": "<|im_start|>"}, {"content": "<|im_end|>"}]}"#,
        )
        .unwrap();
        let spec = chat_spec(dir.path()).unwrap().unwrap();
        assert!(spec.template.contains("messages"));
        assert_eq!((spec.bos_token.as_str(), spec.eos_token.as_str()), ("<|im_start|>", "<|im_end|>"));
        assert_eq!(spec.end_of_turn, ["<|im_end|>"]);

        // chat_template.jinja, the newer layout, wins over the config's key.
        std::fs::write(dir.path().join("chat_template.jinja"), "{{ messages[0].content }}").unwrap();
        assert_eq!(chat_spec(dir.path()).unwrap().unwrap().template, "{{ messages[0].content }}");
    }

    #[test]
    fn no_template_no_chat() {
        let dir = tempfile::tempdir().unwrap();
        assert!(chat_spec(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "</s>"}"#).unwrap();
        assert!(chat_spec(dir.path()).unwrap().is_none());
        std::fs::write(dir.path().join("tokenizer_config.json"), "{not json").unwrap();
        assert!(chat_spec(dir.path()).is_err());
    }
}
