//! The two tokenizers a model can train with, and their files in a checkpoint: a character
//! vocabulary built from the corpus (saved as `vocab.json`, token → id) and a byte-level BPE
//! trained with the `tokenizers` crate (saved as a standard `tokenizer.json`, GPT-2 style with an
//! `<|endoftext|>` special token). It does not add BOS/EOS to encoded text, normalise Unicode or
//! handle characters unseen in training: a char model's vocabulary is exactly its corpus.

use std::collections::BTreeMap;
use std::path::Path;

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::corpus::CorpusFile;
use crate::error::{Result, TrainError};

/// GPT-2's end-of-text token: separates documents and is the HF config's BOS/EOS.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// File name of the char vocabulary inside a checkpoint.
pub const VOCAB_FILE: &str = "vocab.json";
/// File name of the BPE tokenizer inside a checkpoint.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Which tokenizer to train, as given on the command line (`char` or `bpe:N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// One token per Unicode scalar value seen in the corpus.
    Char,
    /// Byte-level BPE with this target vocabulary size (including the 256 byte tokens).
    Bpe(usize),
}

impl std::str::FromStr for TokenizerKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s == "char" {
            return Ok(Self::Char);
        }
        let n = s
            .strip_prefix("bpe:")
            .ok_or_else(|| format!("`{s}`: expected `char` or `bpe:N` (e.g. bpe:2048)"))?;
        let n: usize = n.parse().map_err(|_| format!("`{s}`: N in bpe:N must be a whole number"))?;
        // 256 byte tokens + the end-of-text token is the smallest meaningful BPE vocabulary.
        if !(258..=1 << 20).contains(&n) {
            return Err(format!("`{s}`: N must be between 258 and 1048576"));
        }
        Ok(Self::Bpe(n))
    }
}

/// A trained tokenizer.
#[derive(Clone)]
pub enum TextTokenizer {
    /// Character vocabulary, token → id, ids dense from 0 in code-point order.
    Char(BTreeMap<String, u32>),
    /// Byte-level BPE.
    Bpe(Box<Tokenizer>),
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Char(v) => write!(f, "Char({} symbols)", v.len()),
            Self::Bpe(t) => write!(f, "Bpe({} tokens)", t.get_vocab_size(true)),
        }
    }
}

impl TextTokenizer {
    /// Trains a tokenizer of `kind` on `files`. The char tokenizer rejects non-UTF-8 files; the
    /// byte-level BPE accepts them, decoding invalid sequences as U+FFFD (logged), because the
    /// `tokenizers` crate works on `&str`.
    pub fn train(kind: TokenizerKind, files: &[CorpusFile]) -> Result<Self> {
        match kind {
            TokenizerKind::Char => {
                let mut vocab = BTreeMap::new();
                for file in files {
                    for ch in utf8(file)?.chars() {
                        vocab.entry(ch.to_string()).or_insert(0);
                    }
                }
                // Ids in code-point order make the vocabulary independent of file order.
                for (id, v) in vocab.values_mut().enumerate() {
                    *v = id as u32;
                }
                Ok(Self::Char(vocab))
            }
            TokenizerKind::Bpe(vocab_size) => {
                let texts: Vec<String> = files.iter().map(lossy_text).collect();
                train_bpe(vocab_size, &texts).map(|t| Self::Bpe(Box::new(t)))
            }
        }
    }

    /// Number of token ids the model's embedding must cover.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Char(v) => v.len(),
            Self::Bpe(t) => t.get_vocab_size(true),
        }
    }

    /// The end-of-text id, for BPE; `None` for characters.
    pub fn end_of_text(&self) -> Option<u32> {
        match self {
            Self::Char(_) => None,
            Self::Bpe(t) => t.token_to_id(END_OF_TEXT),
        }
    }

    /// Encodes one file. Characters missing from a char vocabulary are an error (they can only
    /// come from a corpus other than the one the vocabulary was built on, e.g. with `--init`).
    pub fn encode_file(&self, file: &CorpusFile) -> Result<Vec<u32>> {
        match self {
            Self::Char(vocab) => {
                let text = utf8(file)?;
                let mut buf = [0u8; 4];
                text.chars()
                    .map(|ch| {
                        vocab.get(ch.encode_utf8(&mut buf) as &str).copied().ok_or_else(|| {
                            TrainError::Tokenizer(format!(
                                "{}: character {ch:?} is not in the vocabulary",
                                file.path.display()
                            ))
                        })
                    })
                    .collect()
            }
            Self::Bpe(t) => {
                let text = lossy_text(file);
                let enc = t
                    .encode(text.as_str(), false)
                    .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", file.path.display())))?;
                Ok(enc.get_ids().to_vec())
            }
        }
    }

    /// Decodes ids back to text (for samples and tests).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Self::Char(vocab) => {
                let by_id: BTreeMap<u32, &str> = vocab.iter().map(|(k, &v)| (v, k.as_str())).collect();
                Ok(ids.iter().filter_map(|i| by_id.get(i).copied()).collect())
            }
            Self::Bpe(t) => t.decode(ids, false).map_err(|e| TrainError::Tokenizer(e.to_string())),
        }
    }

    /// Writes `vocab.json` or `tokenizer.json` into `dir` under a temporary name and returns
    /// `(temp path, final name)` so the caller can rename it into place with the rest of a
    /// checkpoint.
    pub fn write_temp(&self, dir: &Path) -> Result<(std::path::PathBuf, &'static str)> {
        match self {
            Self::Char(vocab) => {
                let tmp = dir.join(format!(".{VOCAB_FILE}.tmp"));
                let json =
                    serde_json::to_vec_pretty(vocab).map_err(|e| TrainError::Tokenizer(e.to_string()))?;
                std::fs::write(&tmp, json).map_err(|e| TrainError::io(&tmp, e))?;
                Ok((tmp, VOCAB_FILE))
            }
            Self::Bpe(t) => {
                let tmp = dir.join(format!(".{TOKENIZER_FILE}.tmp"));
                t.save(&tmp, true).map_err(|e| TrainError::Tokenizer(format!("{}: {e}", tmp.display())))?;
                Ok((tmp, TOKENIZER_FILE))
            }
        }
    }

    /// Loads the tokenizer a checkpoint directory holds (`tokenizer.json` wins over `vocab.json`).
    pub fn load(dir: &Path) -> Result<Self> {
        let tok = dir.join(TOKENIZER_FILE);
        if tok.is_file() {
            let t = Tokenizer::from_file(&tok)
                .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", tok.display())))?;
            return Ok(Self::Bpe(Box::new(t)));
        }
        let vocab = dir.join(VOCAB_FILE);
        let bytes = std::fs::read(&vocab).map_err(|e| TrainError::io(&vocab, e))?;
        let map: BTreeMap<String, u32> = serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", vocab.display())))?;
        Ok(Self::Char(map))
    }
}

fn utf8(file: &CorpusFile) -> Result<&str> {
    std::str::from_utf8(&file.bytes)
        .map_err(|e| TrainError::NotUtf8 { path: file.path.clone(), offset: e.valid_up_to() })
}

fn lossy_text(file: &CorpusFile) -> String {
    let text = String::from_utf8_lossy(&file.bytes);
    if let std::borrow::Cow::Owned(_) = text {
        log::warn!(
            "{}: invalid UTF-8 sequences replaced by U+FFFD before byte-level BPE",
            file.path.display()
        );
    }
    text.into_owned()
}

fn train_bpe(vocab_size: usize, texts: &[String]) -> Result<Tokenizer> {
    let err = |e: tokenizers::Error| TrainError::Tokenizer(e.to_string());
    // GPT-2's byte-level setup: no prefix space, offsets trimmed, GPT-2's split regex.
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer
        .with_pre_tokenizer(Some(byte_level))
        .with_decoder(Some(byte_level))
        .with_post_processor(Some(byte_level));
    let mut trainer: tokenizers::models::TrainerWrapper = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .build()
        .into();
    tokenizer.train(&mut trainer, texts.iter()).map_err(err)?;
    Ok(tokenizer)
}
