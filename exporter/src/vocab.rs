//! Word vocabularies as Keras users make them in Python, written as a standard Hugging Face
//! `tokenizer.json` (a `WordLevel` model with the normaliser and pre-tokeniser that split text the
//! way the vocabulary was made), so that the runtime, the C API and Python's `tokenizers` all
//! read the bundle's tokenizer with ordinary tools.
//!
//! Three forms are read (see [`Vocabulary::read`]): a JSON object `{token: index}` built by hand
//! (`text.split()`: no normalisation, split on whitespace), the JSON of a Keras `Tokenizer`
//! (`tokenizer.to_json()`: its `lower`, `filters`, `split`, `oov_token`, `num_words`), and a text
//! file with one token per line (`TextVectorization.get_vocabulary()`: index = line number,
//! split as `TextVectorization`'s defaults do). The vocabulary of a `TextVectorization` layer
//! inside a `.keras` archive arrives through [`WordVocabulary::text_vectorization`].
//!
//! It does not tokenise anything itself, and it does not reproduce what the `tokenizer.json`
//! format cannot say: Keras silently drops a word it does not know when there is no OOV token,
//! where the written tokenizer fails on it (the runtime's error names the word).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{ExportError, Result};

/// The tokenizer file written into a bundle.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Most lines or entries a vocabulary file may hold: far above any word vocabulary, low enough
/// that a wrong file cannot make the exporter allocate without bound.
const MAX_TOKENS: usize = 4_000_000;

/// Names a hand-built JSON vocabulary commonly gives its out-of-vocabulary token.
const UNK_NAMES: &[&str] = &["<unk>", "<UNK>", "[UNK]", "<oov>", "<OOV>", "[OOV]"];

/// Keras `Tokenizer`'s default `filters` (tf-keras / Keras 2 `text.py`).
const KERAS_TOKENIZER_FILTERS: &str = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n";

/// `TextVectorization`'s punctuation pattern for `standardize="lower_and_strip_punctuation"`
/// (Keras 3 `text_vectorization.py`, `DEFAULT_STRIP_REGEX`).
const TEXT_VECTORIZATION_STRIP: &str = r##"[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']"##;

/// `TextVectorization`'s OOV token (`StringLookup`'s default).
const TEXT_VECTORIZATION_OOV: &str = "[UNK]";

/// A vocabulary file given with `--vocab` (or found beside the model), as read.
#[derive(Debug, Clone)]
pub enum Vocabulary {
    /// A `{token: index}` JSON object whose tokens are all single characters: ferrite's char
    /// vocabulary, copied into the bundle as `vocab.json` unchanged.
    Chars(PathBuf),
    /// A word vocabulary, written into the bundle as `tokenizer.json`.
    Words(WordVocabulary),
}

/// How text is split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// On runs of whitespace (`str.split()`, `TextVectorization`'s `"whitespace"`).
    Whitespace,
    /// On this exact string, empty pieces dropped (Keras `Tokenizer`'s `split`).
    On(String),
}

/// A word-level vocabulary with the text processing that goes with it.
#[derive(Debug, Clone)]
pub struct WordVocabulary {
    /// Where it came from, for messages.
    source: PathBuf,
    /// The token of every id, `0..len` (ids the source leaves out are filled with placeholders).
    tokens: Vec<String>,
    /// The token unknown words map to, when the vocabulary has one.
    unk: Option<String>,
    /// Lower-case text before splitting.
    lowercase: bool,
    /// A regex character class of characters replaced by `replacement` before splitting.
    filter: Option<(String, String)>,
    /// How words are separated.
    split: Split,
}

fn vocab_error(path: &Path, message: impl Into<String>) -> ExportError {
    ExportError::config(path, message.into())
}

impl Vocabulary {
    /// Reads `path`: a JSON object is a Keras `Tokenizer` (when it says `"class_name":
    /// "Tokenizer"`) or a `{token: index}` map; anything else is a text file of one token per line.
    pub fn read(path: &Path) -> Result<Vocabulary> {
        let bytes = std::fs::read(path).map_err(|e| ExportError::io(path, e))?;
        let looks_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"))
            || bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if looks_json {
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| vocab_error(path, format!("not valid JSON: {e}")))?;
            if value.get("class_name").and_then(Value::as_str) == Some("Tokenizer") {
                return WordVocabulary::keras_tokenizer(path, &value).map(Vocabulary::Words);
            }
            let map = index_map(path, &value)?;
            if map.keys().all(|t| t.chars().count() == 1) {
                return Ok(Vocabulary::Chars(path.into()));
            }
            return WordVocabulary::plain(path, map).map(Vocabulary::Words);
        }
        let text = String::from_utf8(bytes).map_err(|e| vocab_error(path, format!("not UTF-8 text: {e}")))?;
        let lines = lines_of(&text);
        if lines.len() > MAX_TOKENS {
            return Err(vocab_error(path, format!("{} lines: more than {MAX_TOKENS} tokens", lines.len())));
        }
        WordVocabulary::text_vectorization(path, lines, Some("lower_and_strip_punctuation"), "whitespace")
            .map(Vocabulary::Words)
    }
}

/// The lines of a one-token-per-line file (`\n` or `\r\n`); the newline that ends the last line,
/// when there is one, does not start another (empty) token.
fn lines_of(text: &str) -> Vec<String> {
    let mut lines: Vec<String> =
        text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect();
    if text.ends_with('\n') {
        lines.pop();
    }
    lines
}

/// A JSON object of token → non-negative integer index.
fn index_map(path: &Path, value: &Value) -> Result<BTreeMap<String, usize>> {
    let obj = value.as_object().ok_or_else(|| vocab_error(path, "expected a JSON object {token: index}"))?;
    if obj.len() > MAX_TOKENS {
        return Err(vocab_error(path, format!("{} entries: more than {MAX_TOKENS} tokens", obj.len())));
    }
    obj.iter()
        .map(|(token, id)| {
            let id = id.as_u64().filter(|&id| id < MAX_TOKENS as u64).ok_or_else(|| {
                vocab_error(path, format!("token {token:?}: index {id} is not an integer in 0..{MAX_TOKENS}"))
            })?;
            Ok((token.clone(), id as usize))
        })
        .collect()
}

impl WordVocabulary {
    /// A hand-built `{word: index}` map: text is split on whitespace, nothing else.
    fn plain(path: &Path, map: BTreeMap<String, usize>) -> Result<WordVocabulary> {
        let unk = UNK_NAMES.iter().find(|n| map.contains_key(**n)).map(|n| n.to_string());
        let tokens = dense(path, map)?;
        Ok(WordVocabulary {
            source: path.into(),
            tokens,
            unk,
            lowercase: false,
            filter: None,
            split: Split::Whitespace,
        })
    }

    /// The JSON of a Keras `Tokenizer` (`{"class_name": "Tokenizer", "config": {...}}`, where
    /// `word_index` is itself a JSON string, as `to_json()` writes it, or an object).
    fn keras_tokenizer(path: &Path, value: &Value) -> Result<WordVocabulary> {
        let cfg =
            value.get("config").ok_or_else(|| vocab_error(path, "a Keras Tokenizer without `config`"))?;
        let field = |key: &str| cfg.get(key).filter(|v| !v.is_null());
        if field("char_level").and_then(Value::as_bool) == Some(true) {
            return Err(vocab_error(
                path,
                "a Keras Tokenizer with char_level: true (ferrite reads word-level ones)",
            ));
        }
        let word_index = match field("word_index") {
            Some(Value::String(s)) => serde_json::from_str(s)
                .map_err(|e| vocab_error(path, format!("config.word_index: not valid JSON: {e}")))?,
            Some(v) => v.clone(),
            None => {
                return Err(vocab_error(
                    path,
                    "a Keras Tokenizer without config.word_index (was it fitted?)",
                ));
            }
        };
        let mut map = index_map(path, &word_index)?;
        let oov = match field("oov_token") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        if let Some(oov) = &oov
            && !map.contains_key(oov)
        {
            return Err(vocab_error(path, format!("oov_token {oov:?} is not in config.word_index")));
        }
        // Keras maps words at or beyond `num_words` to the OOV token (or drops them).
        if let Some(n) = field("num_words").and_then(Value::as_u64) {
            map.retain(|_, id| (*id as u64) < n);
        }
        let lowercase = field("lower").and_then(Value::as_bool).unwrap_or(true);
        let split = field("split").and_then(Value::as_str).unwrap_or(" ").to_string();
        if split.is_empty() {
            return Err(vocab_error(path, "config.split is empty"));
        }
        let filters = field("filters").and_then(Value::as_str).unwrap_or(KERAS_TOKENIZER_FILTERS);
        let filter = (!filters.is_empty()).then(|| (char_class(filters), split.clone()));
        let tokens = dense(path, map)?;
        Ok(WordVocabulary {
            source: path.into(),
            tokens,
            unk: oov,
            lowercase,
            filter,
            split: Split::On(split),
        })
    }

    /// A `TextVectorization` vocabulary (`get_vocabulary()`: index = position, `""` padding and
    /// `[UNK]` first) with the layer's `standardize` and `split` settings (`None` for `null`).
    pub fn text_vectorization(
        source: &Path,
        tokens: Vec<String>,
        standardize: Option<&str>,
        split: &str,
    ) -> Result<WordVocabulary> {
        let (lowercase, strip) = match standardize {
            None => (false, false),
            Some("lower_and_strip_punctuation") => (true, true),
            Some("lower") => (true, false),
            Some("strip_punctuation") => (false, true),
            Some(other) => {
                return Err(vocab_error(
                    source,
                    format!(
                        "standardize {other:?} is not supported (lower_and_strip_punctuation, lower, strip_punctuation or null)"
                    ),
                ));
            }
        };
        if split != "whitespace" {
            return Err(vocab_error(
                source,
                format!("split {split:?} is not supported (only \"whitespace\")"),
            ));
        }
        let mut map = BTreeMap::new();
        for (id, token) in tokens.into_iter().enumerate() {
            if let Some(first) = map.insert(token.clone(), id) {
                // The padding "" and a blank line are the same token; keep the first.
                map.insert(token.clone(), first);
                if !token.is_empty() {
                    return Err(vocab_error(
                        source,
                        format!("token {token:?} appears twice (indices {first} and {id})"),
                    ));
                }
            }
        }
        let unk = map.contains_key(TEXT_VECTORIZATION_OOV).then(|| TEXT_VECTORIZATION_OOV.to_string());
        let tokens = dense(source, map)?;
        let filter = strip.then(|| (TEXT_VECTORIZATION_STRIP.to_string(), String::new()));
        Ok(WordVocabulary { source: source.into(), tokens, unk, lowercase, filter, split: Split::Whitespace })
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no ids at all.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token unknown words map to, if any.
    pub fn unk(&self) -> Option<&str> {
        self.unk.as_deref()
    }

    /// Checks the vocabulary against a model predicting `model_vocab` ids: no token may have an
    /// id the model does not know; ids the vocabulary leaves out are filled (Keras models often
    /// have one more id than words, for padding).
    pub fn fit_to(&mut self, model_vocab: usize) -> Result<()> {
        if let Some((id, token)) =
            self.tokens.iter().enumerate().skip(model_vocab).find(|(_, t)| !is_filler(t))
        {
            return Err(vocab_error(
                &self.source,
                format!(
                    "token {token:?} has index {id}, outside the model's vocabulary of {model_vocab} (Embedding input_dim)"
                ),
            ));
        }
        self.tokens.truncate(model_vocab);
        while self.tokens.len() < model_vocab {
            let id = self.tokens.len();
            self.tokens.push(filler(id));
        }
        Ok(())
    }

    /// The Hugging Face `tokenizer.json` for this vocabulary.
    pub fn tokenizer_json(&self) -> Value {
        let vocab: serde_json::Map<String, Value> =
            self.tokens.iter().enumerate().map(|(id, t)| (t.clone(), json!(id))).collect();
        let mut normalizers = Vec::new();
        if self.lowercase {
            normalizers.push(json!({"type": "Lowercase"}));
        }
        if let Some((class, replacement)) = &self.filter {
            normalizers.push(json!({"type": "Replace", "pattern": {"Regex": class}, "content": replacement}));
        }
        let normalizer = match normalizers.len() {
            0 => Value::Null,
            1 => normalizers.pop().unwrap_or(Value::Null),
            _ => json!({"type": "Sequence", "normalizers": normalizers}),
        };
        let pre_tokenizer = match &self.split {
            Split::Whitespace => json!({"type": "WhitespaceSplit"}),
            Split::On(s) => {
                json!({"type": "Split", "pattern": {"String": s}, "behavior": "Removed", "invert": false})
            }
        };
        // WordLevel needs an `unk_token`; without one in the vocabulary, unknown words fail to
        // encode (the runtime names the word) instead of mapping to an id.
        let unk = self.unk.clone().unwrap_or_else(|| {
            ["<unk>", "[UNK]", "<oov>"]
                .iter()
                .find(|n| !self.tokens.iter().any(|t| t == *n))
                .unwrap_or(&"<unk>")
                .to_string()
        });
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": unk},
        })
    }
}

/// The token written for an id the vocabulary leaves out: `<pad>` for 0 (Keras reserves it for
/// padding), `<unused:N>` otherwise.
fn filler(id: usize) -> String {
    if id == 0 { "<pad>".into() } else { format!("<unused:{id}>") }
}

fn is_filler(token: &str) -> bool {
    token == "<pad>" || token.starts_with("<unused:")
}

/// Tokens by id `0..=max`, filling ids no token has (so every id the model predicts decodes).
fn dense(path: &Path, map: BTreeMap<String, usize>) -> Result<Vec<String>> {
    let Some(n) = map.values().max().map(|m| m + 1) else {
        return Err(vocab_error(path, "the vocabulary is empty"));
    };
    let mut tokens: Vec<Option<String>> = vec![None; n];
    for (token, id) in map {
        if let Some(other) = &tokens[id] {
            return Err(vocab_error(path, format!("tokens {other:?} and {token:?} share index {id}")));
        }
        tokens[id] = Some(token);
    }
    Ok(tokens.into_iter().enumerate().map(|(id, t)| t.unwrap_or_else(|| filler(id))).collect())
}

/// A regex character class matching exactly the characters of `chars` (each written as
/// `\x{..}` unless alphanumeric, so no character can change the class's meaning, in both the
/// Rust and the Oniguruma regex syntax `tokenizers` builds use).
fn char_class(chars: &str) -> String {
    let mut class = String::from("[");
    for c in chars.chars() {
        if c.is_ascii_alphanumeric() {
            class.push(c);
        } else {
            class.push_str(&format!("\\x{{{:X}}}", c as u32));
        }
    }
    class.push(']');
    class
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_class_escapes_everything_but_alphanumerics() {
        assert_eq!(char_class("a-]\\\t"), "[a\\x{2D}\\x{5D}\\x{5C}\\x{9}]");
    }

    #[test]
    fn lines_keep_a_leading_empty_padding_token() {
        assert_eq!(lines_of("\n[UNK]\nthe\n"), ["", "[UNK]", "the"]);
        assert_eq!(lines_of("\r\n[UNK]\r\nthe"), ["", "[UNK]", "the"]);
    }

    #[test]
    fn gaps_are_filled_and_oversized_vocabularies_refused() {
        let map: BTreeMap<String, usize> = [("the".to_string(), 1), ("cat".to_string(), 3)].into();
        let mut v = WordVocabulary::plain(Path::new("v.json"), map).unwrap();
        assert_eq!(v.tokens, ["<pad>", "the", "<unused:2>", "cat"]);
        v.fit_to(6).unwrap();
        assert_eq!(v.len(), 6);
        let err = v.clone().fit_to(3).unwrap_err().to_string();
        assert!(err.contains("\"cat\"") && err.contains("index 3"), "{err}");
    }

    #[test]
    fn keras_tokenizer_json_keeps_num_words_and_its_settings() {
        // As `to_json()` writes it: word_index is a JSON string.
        let json = serde_json::json!({"class_name": "Tokenizer", "config": {
            "num_words": 4, "filters": "!,", "lower": false, "split": "-", "char_level": false,
            "oov_token": "<OOV>",
            "word_index": r#"{"<OOV>": 1, "the": 2, "cat": 3, "sat": 4, "mat": 5}"#}});
        let v = WordVocabulary::keras_tokenizer(Path::new("t.json"), &json).unwrap();
        // Words at or beyond num_words map to the OOV token in Keras: they are left out.
        assert_eq!(v.tokens, ["<pad>", "<OOV>", "the", "cat"]);
        assert_eq!(v.unk(), Some("<OOV>"));
        let t = v.tokenizer_json();
        assert_eq!(t["normalizer"]["pattern"]["Regex"], "[\\x{21}\\x{2C}]");
        assert_eq!(t["normalizer"]["content"], "-");
        assert_eq!(t["pre_tokenizer"]["pattern"]["String"], "-");
        assert_eq!(t["model"]["unk_token"], "<OOV>");

        let char_level = serde_json::json!({"class_name": "Tokenizer", "config": {"char_level": true, "word_index": "{}"}});
        let err = WordVocabulary::keras_tokenizer(Path::new("t.json"), &char_level).unwrap_err().to_string();
        assert!(err.contains("char_level"), "{err}");
    }
}
