//! Text ↔ token ids for bundles: Hugging Face `tokenizer.json` (WordPiece, byte-level BPE, and
//! `WordLevel` word vocabularies) through the `tokenizers` crate, and ferrite's char vocabulary
//! (`vocab.json`, token → id).
//!
//! Besides encode/decode it precomputes every token's raw bytes, so that streaming generated text
//! needs no allocation per token (see [`crate::stream`]). A word's bytes start with the separator
//! its vocabulary was split on (the `Split` pre-tokeniser's string, else a space), so that
//! streamed words arrive joined the way the text was split, and decoding joins words with it too.
//! It does not normalise or add BOS/EOS beyond what `tokenizer.json` itself asks for.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    Char(HashMap<String, u32>),
}

/// A bundle's tokenizer.
pub struct TextTokenizer {
    inner: Inner,
    /// Raw bytes of every id (empty for ids without a token).
    token_bytes: Vec<Box<[u8]>>,
    /// For a `WordLevel` tokenizer: the string between two words.
    word_separator: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("vocab_size", &self.vocab_size()).finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` (preferred) or `vocab.json` from `dir`; `None` when neither exists.
    pub fn load_from_bundle(dir: &Path) -> Result<Option<TextTokenizer>> {
        let tok = dir.join("tokenizer.json");
        if tok.is_file() {
            return TextTokenizer::from_tokenizer_json(&tok).map(Some);
        }
        let vocab = dir.join("vocab.json");
        if vocab.is_file() {
            return TextTokenizer::from_char_vocab(&vocab).map(Some);
        }
        Ok(None)
    }

    /// Loads a Hugging Face `tokenizer.json`. Its own padding and truncation settings are
    /// dropped: callers ([`crate::embed::Embedder`]) pad and truncate explicitly.
    pub fn from_tokenizer_json(path: &Path) -> Result<TextTokenizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // `tokenizers` panics on some malformed files (found by the bad-input corpus: a truncated
        // file ending inside a helper value); a panic here is a bad file, not a bug of the caller.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|_| Error::Tokenizer(format!("{}: malformed tokenizer.json", path.display())))?;
        let mut tok = parsed.map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let byte_level = json.pointer("/decoder/type").and_then(|v| v.as_str()) == Some("ByteLevel");
        let word_separator = (json.pointer("/model/type").and_then(|v| v.as_str()) == Some("WordLevel"))
            .then(|| word_separator(&json));
        let n = tok.get_vocab_size(true);
        let unicode_to_byte = byte_level.then(unicode_to_byte);
        let metaspace = !byte_level && decodes_metaspace(&json);
        let token_bytes = (0..n as u32)
            .map(|id| {
                let Some(token) = tok.id_to_token(id) else { return Box::default() };
                if let Some(sep) = &word_separator {
                    // The separator goes before every word: a streamed word continues the text.
                    return if token.is_empty() {
                        Box::default()
                    } else {
                        format!("{sep}{token}").into_bytes().into()
                    };
                }
                if metaspace && !is_added(&tok, id) {
                    return sentencepiece_bytes(&token);
                }
                match &unicode_to_byte {
                    Some(map) if !is_added(&tok, id) => token
                        .chars()
                        .flat_map(|c| match map.get(&c) {
                            Some(b) => vec![*b],
                            None => c.to_string().into_bytes(),
                        })
                        .collect(),
                    _ => tok.decode(&[id], false).unwrap_or_default().into_bytes().into_boxed_slice(),
                }
            })
            .collect();
        Ok(TextTokenizer { inner: Inner::Hf(Box::new(tok)), token_bytes, word_separator })
    }

    /// Loads ferrite's char vocabulary: a JSON object token → id.
    pub fn from_char_vocab(path: &Path) -> Result<TextTokenizer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let map: HashMap<String, u32> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let n = map.values().map(|&v| v as usize + 1).max().unwrap_or(0);
        // One table entry per id: an id far beyond the number of tokens would allocate for nothing.
        if n > map.len() {
            return Err(Error::Tokenizer(format!(
                "{}: ids must be 0..{} (one per token); the largest is {}",
                path.display(),
                map.len(),
                n - 1
            )));
        }
        let mut token_bytes: Vec<Box<[u8]>> = vec![Box::default(); n];
        for (token, &id) in &map {
            token_bytes[id as usize] = token.as_bytes().into();
        }
        Ok(TextTokenizer { inner: Inner::Char(map), token_bytes, word_separator: None })
    }

    /// Number of ids (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Encodes `text`; `special` adds the tokenizer's own special tokens (BERT's `[CLS]`/`[SEP]`).
    /// A character missing from a char vocabulary is an error, and so is a word missing from a
    /// word vocabulary that has no OOV token (the error names the word).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(t) => {
                // `tokenizers` panics on some inconsistent files only when encoding (found by the
                // `tokenizer` fuzz target: a template naming a special token the file lacks).
                let enc = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.encode(text, special)))
                    .map_err(|_| {
                        Error::Tokenizer("the tokenizer.json is inconsistent (encoding failed)".into())
                    })?
                    .map_err(|e| match self.word_separator.as_ref().and_then(|_| unknown_word(t, text)) {
                        Some(word) => Error::Tokenizer(format!(
                            "word {word:?} is not in the vocabulary, which has no OOV token"
                        )),
                        None => Error::Tokenizer(e.to_string()),
                    })?;
                Ok(enc.get_ids().to_vec())
            }
            Inner::Char(map) => {
                let mut buf = [0u8; 4];
                text.chars()
                    .map(|c| {
                        map.get(c.encode_utf8(&mut buf) as &str).copied().ok_or_else(|| {
                            Error::Tokenizer(format!("character {c:?} is not in the vocabulary"))
                        })
                    })
                    .collect()
            }
        }
    }

    /// Decodes ids to text (special tokens kept). Unknown ids are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        for &id in ids {
            if id as usize >= self.vocab_size() {
                return Err(Error::UnknownToken { id: i64::from(id), vocab: self.vocab_size() });
            }
        }
        match &self.inner {
            Inner::Hf(t) if let Some(sep) = &self.word_separator => {
                let words: Vec<String> =
                    ids.iter().filter_map(|&id| t.id_to_token(id)).filter(|w| !w.is_empty()).collect();
                Ok(words.join(sep))
            }
            Inner::Hf(t) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.decode(ids, false)))
                .map_err(|_| Error::Tokenizer("the tokenizer.json is inconsistent (decoding failed)".into()))?
                .map_err(|e| Error::Tokenizer(e.to_string())),
            Inner::Char(_) => {
                let bytes: Vec<u8> =
                    ids.iter().flat_map(|&i| self.token_bytes[i as usize].iter().copied()).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
        }
    }

    /// The id of the single token spelled `token` (`<|im_end|>`), if the vocabulary has one.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.token_to_id(token),
            Inner::Char(map) => map.get(token).copied(),
        }
    }

    /// The raw bytes token `id` stands for (may be part of a UTF-8 character for byte-level BPE).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(|b| &b[..])
    }
}

/// The string a `WordLevel` tokenizer's words were split on: a `Split` pre-tokeniser's literal
/// pattern when it removes it, else a space (whitespace splitting).
/// A SentencePiece-style tokenizer.json (Llama 2, Mistral, GGUF `llama` vocabularies): its decoder
/// turns `▁` back into spaces (a `Replace` step or a `Metaspace` decoder). Decoding one token
/// through it would also strip the leading space of the first token of a text, which a streamed
/// token must keep, so such tokens' bytes are computed by [`sentencepiece_bytes`].
fn decodes_metaspace(json: &serde_json::Value) -> bool {
    let is_metaspace = |d: &serde_json::Value| match d.get("type").and_then(|t| t.as_str()) {
        Some("Metaspace") => true,
        Some("Replace") => d.pointer("/pattern/String").and_then(|p| p.as_str()) == Some("\u{2581}"),
        _ => false,
    };
    match json.get("decoder") {
        Some(d) if d.get("type").and_then(|t| t.as_str()) == Some("Sequence") => {
            d.get("decoders").and_then(|ds| ds.as_array()).is_some_and(|ds| ds.iter().any(is_metaspace))
        }
        Some(d) => is_metaspace(d),
        None => false,
    }
}

/// A SentencePiece piece as raw text bytes: `▁` is a space, and a byte-fallback piece `<0xXX>`
/// is that one byte.
fn sentencepiece_bytes(token: &str) -> Box<[u8]> {
    if let Some(hex) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'))
        && hex.len() == 2
        && let Ok(byte) = u8::from_str_radix(hex, 16)
    {
        return Box::new([byte]);
    }
    token.replace('\u{2581}', " ").into_bytes().into_boxed_slice()
}

fn word_separator(json: &serde_json::Value) -> String {
    let pre = json.get("pre_tokenizer").unwrap_or(&serde_json::Value::Null);
    let literal = pre.pointer("/pattern/String").and_then(|v| v.as_str());
    match (pre.get("type").and_then(|v| v.as_str()), literal, pre.get("behavior").and_then(|v| v.as_str())) {
        (Some("Split"), Some(s), Some("Removed")) if !s.is_empty() => s.to_string(),
        _ => " ".to_string(),
    }
}

/// The first word of `text` (as the tokenizer normalises and splits it) that its vocabulary lacks.
fn unknown_word(t: &tokenizers::Tokenizer, text: &str) -> Option<String> {
    use tokenizers::{Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let mut pre = PreTokenizedString::from(text);
    if let Some(n) = t.get_normalizer() {
        pre.normalize(|s| n.normalize(s)).ok()?;
    }
    if let Some(p) = t.get_pre_tokenizer() {
        p.pre_tokenize(&mut pre).ok()?;
    }
    pre.get_splits(OffsetReferential::Original, OffsetType::Char)
        .into_iter()
        .map(|(word, _, _)| word)
        .find(|w| t.token_to_id(w).is_none())
        .map(str::to_string)
}

fn is_added(tok: &tokenizers::Tokenizer, id: u32) -> bool {
    tok.get_added_tokens_decoder().contains_key(&id)
}

/// GPT-2's byte ↔ printable-character table, inverted (character → byte).
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut bs: Vec<u32> =
        (u32::from(b'!')..=u32::from(b'~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter().zip(cs).filter_map(|(b, c)| Some((char::from_u32(c)?, b as u8))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `WordLevel` tokenizer.json split on `sep` (as the exporter writes for a Keras
    /// `Tokenizer` with `split=sep`), with or without an OOV token.
    fn word_level(sep: &str, unk: bool) -> TextTokenizer {
        let mut vocab = serde_json::json!({"<pad>": 0, "the": 1, "cat": 2, "sat": 3});
        if unk {
            vocab["<unk>"] = 4.into();
        }
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "Split", "pattern": {"String": sep}, "behavior": "Removed", "invert": false},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        });
        let path = std::env::temp_dir().join(format!(
            "ferrite-word-level-{}-{}-{unk}.json",
            std::process::id(),
            sep.len()
        ));
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let tok = TextTokenizer::from_tokenizer_json(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        tok
    }

    #[test]
    #[cfg_attr(miri, ignore = "writes a tokenizer.json: Miri isolates the file system")]
    fn words_stream_and_decode_with_their_separator() {
        let tok = word_level("|", true);
        assert_eq!(tok.encode("The|cat||sat", false).unwrap(), [1, 2, 3]);
        assert_eq!(tok.encode("the|dog", false).unwrap(), [1, 4]);
        assert_eq!(tok.decode(&[1, 2, 3]).unwrap(), "the|cat|sat");
        assert_eq!(tok.token_bytes(2), Some(&b"|cat"[..]));
        let tok = word_level(" ", true);
        assert_eq!(tok.token_bytes(3), Some(&b" sat"[..]));
        assert_eq!(tok.decode(&[1, 2]).unwrap(), "the cat");
    }

    #[test]
    #[cfg_attr(miri, ignore = "writes a tokenizer.json: Miri isolates the file system")]
    fn an_unknown_word_without_oov_token_is_named() {
        let tok = word_level(" ", false);
        let err = tok.encode("the zebra sat", false).unwrap_err().to_string();
        assert!(err.contains("\"zebra\"") && err.contains("no OOV token"), "{err}");
    }
}
