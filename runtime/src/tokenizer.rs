//! Text ↔ token ids for bundles: Hugging Face `tokenizer.json` (WordPiece, byte-level BPE) through
//! the `tokenizers` crate, and ferrite's char vocabulary (`vocab.json`, token → id).
//!
//! Besides encode/decode it precomputes every token's raw bytes, so that streaming generated text
//! needs no allocation per token (see [`crate::stream`]). It does not normalise or add BOS/EOS
//! beyond what `tokenizer.json` itself asks for.

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
        let n = tok.get_vocab_size(true);
        let unicode_to_byte = byte_level.then(unicode_to_byte);
        let token_bytes = (0..n as u32)
            .map(|id| {
                let Some(token) = tok.id_to_token(id) else { return Box::default() };
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
        Ok(TextTokenizer { inner: Inner::Hf(Box::new(tok)), token_bytes })
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
        Ok(TextTokenizer { inner: Inner::Char(map), token_bytes })
    }

    /// Number of ids (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Encodes `text`; `special` adds the tokenizer's own special tokens (BERT's `[CLS]`/`[SEP]`).
    /// A character missing from a char vocabulary is an error.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(t) => {
                // `tokenizers` panics on some inconsistent files only when encoding (found by the
                // `tokenizer` fuzz target: a template naming a special token the file lacks).
                let enc = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.encode(text, special)))
                    .map_err(|_| {
                        Error::Tokenizer("the tokenizer.json is inconsistent (encoding failed)".into())
                    })?
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
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

    /// The raw bytes token `id` stands for (may be part of a UTF-8 character for byte-level BPE).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(|b| &b[..])
    }
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
