//! A GGUF file's tokenizer, rebuilt from its metadata as a standard Hugging Face `tokenizer.json`
//! (which the runtime, the C API and Python's `tokenizers` all read), and its chat template.
//!
//! A GGUF carries no `tokenizer.json`: llama.cpp's converters store the vocabulary, the merges or
//! scores, each token's type and the special token ids under `tokenizer.ggml.*`. Two kinds are
//! read. `gpt2` is byte-level BPE with explicit merges; its `tokenizer.ggml.pre` names the rule
//! that splits text before the merges apply, and each name maps to the rule llama.cpp applies for
//! it (`llama-vocab.cpp`), which is the model's original pre-tokenizer. `llama` is SentencePiece
//! BPE: the merges follow from the token scores (ranked as transformers ranks them), unknown
//! characters fall back to `<0xXX>` byte tokens, and a space becomes `▁`. Control tokens, the
//! named special tokens (bos, eos, unk, pad) and user-defined tokens become added tokens, so the
//! tokenizer never splits them; BOS/EOS are added as `tokenizer.ggml.add_bos_token` /
//! `add_eos_token` say.
//!
//! The reference is llama.cpp, the tokenizer these files are made for. transformers' GGUF loader
//! (`gguf_file=`) gives the same ids except in two places, where it departs from the model's own
//! tokenizer and ferrite does not follow it: for `pre = smollm` (and the other StarCoder-style
//! names) it splits with the plain GPT-2 rule, without the digit split, so a run of whitespace
//! before a digit (`"\n\n1"`) differs; and for SentencePiece it puts the `▁` prefix only at the very
//! start of the text when that does not already start with a space, where SentencePiece and
//! llama.cpp always prefix, and llama.cpp again after each special token.
//!
//! Other tokenizer kinds (`bert`, `t5`, `rwkv`, Gemma's SentencePiece variants) and
//! pre-tokenizer names not listed in [`PRE_RULES`] are refused with an error that names them;
//! nothing falls back silently to a different split.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use ferrite_gguf::{GgufFile, Metadata};
use ferrite_runtime::bundle::ChatSpec;
use serde_json::{Map, Value, json};

use crate::error::{ExportError, Result};

/// GGUF token types (llama.cpp's `llama_token_type`).
mod token_type {
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
}

/// How text is split before the merges apply, for one family of `tokenizer.ggml.pre` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreSplit {
    /// GPT-2's rule (the `ByteLevel` pre-tokenizer's own regex).
    Gpt2,
    /// Every digit on its own, then GPT-2's rule (StarCoder, SmolLM).
    DigitsThenGpt2,
    /// One regex, its matches and the text between them kept as pieces.
    Regex(&'static str),
}

/// One family of `tokenizer.ggml.pre` names and what llama.cpp does for it.
#[derive(Debug)]
pub struct PreRule {
    /// The names llama.cpp maps to this rule.
    pub names: &'static [&'static str],
    /// The split.
    pub split: PreSplit,
    /// A word that is itself a token is taken whole, merges or not (Llama 3's `ignore_merges`).
    pub ignore_merges: bool,
    /// Whether BOS is added when the file has no `tokenizer.ggml.add_bos_token`.
    pub default_add_bos: bool,
}

/// Llama 3's split, as its `tokenizer.json` spells it (llama.cpp spells the contractions with
/// character classes instead of `(?i:)`, which its own regex engine lacks).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` names ferrite knows, grouped as llama.cpp's `llama-vocab.cpp` groups
/// them. An absent name, `default` and `gpt2` mean GPT-2's rule (what transformers uses; llama.cpp
/// warns that such a file is degraded).
pub const PRE_RULES: &[PreRule] = &[
    PreRule {
        names: &["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"],
        split: PreSplit::Regex(LLAMA3_SPLIT),
        ignore_merges: true,
        default_add_bos: true,
    },
    PreRule {
        names: &["dbrx", "smaug-bpe"],
        split: PreSplit::Regex(LLAMA3_SPLIT),
        ignore_merges: false,
        default_add_bos: false,
    },
    PreRule {
        names: &["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2"],
        split: PreSplit::Regex(QWEN2_SPLIT),
        ignore_merges: false,
        default_add_bos: false,
    },
    PreRule {
        names: &["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"],
        split: PreSplit::DigitsThenGpt2,
        ignore_merges: false,
        default_add_bos: false,
    },
    PreRule {
        names: &["gpt-2", "gpt2", "default", "phi-2", "mpt", "olmo", "jais", "trillion", "exaone4"],
        split: PreSplit::Gpt2,
        ignore_merges: false,
        default_add_bos: false,
    },
];

/// The rule for a `tokenizer.ggml.pre` value (`None`: the key is absent).
pub fn pre_rule(pre: Option<&str>) -> Result<&'static PreRule> {
    let name = pre.unwrap_or("default");
    PRE_RULES.iter().find(|r| r.names.contains(&name)).ok_or_else(|| {
        let known: Vec<&str> = PRE_RULES.iter().flat_map(|r| r.names.iter().copied()).collect();
        bad(
            "tokenizer.ggml.pre",
            format!("pre-tokenizer {name:?} is not supported (supported: {})", known.join(", ")),
        )
    })
}

/// The `tokenizer.json` (serialised) of the tokenizer `file` describes.
pub fn tokenizer_json(file: &GgufFile) -> Result<String> {
    let value = tokenizer_value(file.metadata())?;
    serde_json::to_string(&value).map_err(|e| bad("tokenizer", e.to_string()))
}

/// The `tokenizer.json` of the tokenizer `md` describes, as a JSON value.
pub fn tokenizer_value(md: &Metadata) -> Result<Value> {
    let vocab = Vocab::read(md)?;
    match vocab.model {
        "gpt2" => byte_level(md, &vocab),
        "llama" => sentencepiece(md, &vocab),
        other => Err(bad(
            "tokenizer.ggml.model",
            format!("tokenizer {other:?} is not supported (supported: gpt2, llama)"),
        )),
    }
}

/// The chat template of `file` and the special tokens that go with it, for the bundle's `chat`
/// object; `None` when the file has no `tokenizer.chat_template`.
///
/// `end_of_turn` lists the end-of-sequence token, `tokenizer.ggml.eot_token_id` and
/// `eom_token_id`, and those of `<|im_end|>`, `<|eot_id|>`, `<|eom_id|>`, `<|end|>` and
/// `<end_of_turn>` that the vocabulary holds as control tokens. Ids outside the vocabulary are
/// left out (`tokenizer_json` refuses such a file).
pub fn chat_spec(file: &GgufFile) -> Option<ChatSpec> {
    chat_spec_of(file.metadata())
}

/// [`chat_spec`] from the metadata alone.
pub fn chat_spec_of(md: &Metadata) -> Option<ChatSpec> {
    let template = md.get_str("tokenizer.chat_template").ok()?.to_string();
    let tokens = md.get_str_array("tokenizer.ggml.tokens").ok().unwrap_or(&[]);
    let token = |key: &str| -> Option<String> {
        let id = md.get_u32(key).ok()?;
        tokens.get(id as usize).cloned()
    };
    let mut end_of_turn: Vec<String> = Vec::new();
    let mut push = |t: String| {
        if !end_of_turn.contains(&t) {
            end_of_turn.push(t);
        }
    };
    let eos = token("tokenizer.ggml.eos_token_id");
    for t in [eos.clone(), token("tokenizer.ggml.eot_token_id"), token("tokenizer.ggml.eom_token_id")]
        .into_iter()
        .flatten()
    {
        push(t);
    }
    let types = md.get_i32_array("tokenizer.ggml.token_type").ok();
    for (i, t) in tokens.iter().enumerate() {
        let control = types.and_then(|ty| ty.get(i)).is_some_and(|&ty| ty == token_type::CONTROL);
        if control && END_OF_TURN_NAMES.contains(&t.as_str()) {
            push(t.clone());
        }
    }
    Some(ChatSpec {
        template,
        bos_token: token("tokenizer.ggml.bos_token_id").unwrap_or_default(),
        eos_token: eos.unwrap_or_default(),
        end_of_turn,
    })
}

/// Tokens that end a turn in the chat formats of the Llama family (ChatML, Llama 3, Phi-3,
/// Gemma), when a vocabulary holds them as control tokens.
const END_OF_TURN_NAMES: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>"];

/// An error about the GGUF's tokenizer metadata.
fn bad(key: &str, message: impl std::fmt::Display) -> ExportError {
    ExportError::Config { path: PathBuf::from("GGUF metadata"), message: format!("`{key}`: {message}") }
}

fn gguf_err(e: ferrite_gguf::Error) -> ExportError {
    ExportError::Config { path: PathBuf::from("GGUF metadata"), message: e.to_string() }
}

/// The `tokenizer.ggml.*` entries both kinds share, checked against each other.
struct Vocab<'a> {
    model: &'a str,
    tokens: &'a [String],
    /// One per token (`NORMAL` when the file has none).
    types: Option<&'a [i32]>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
}

impl<'a> Vocab<'a> {
    fn read(md: &'a Metadata) -> Result<Vocab<'a>> {
        let model = md.get_str("tokenizer.ggml.model").map_err(gguf_err)?;
        let tokens = md.get_str_array("tokenizer.ggml.tokens").map_err(gguf_err)?;
        if tokens.is_empty() {
            return Err(bad("tokenizer.ggml.tokens", "the vocabulary is empty"));
        }
        let n = tokens.len();
        let types = if md.contains("tokenizer.ggml.token_type") {
            let types = md.get_i32_array("tokenizer.ggml.token_type").map_err(gguf_err)?;
            if types.len() != n {
                return Err(bad(
                    "tokenizer.ggml.token_type",
                    format!("{} types for {n} tokens", types.len()),
                ));
            }
            Some(types)
        } else {
            None
        };
        let id = |key: &str| -> Result<Option<u32>> {
            if !md.contains(key) {
                return Ok(None);
            }
            let id = md.get_u32(key).map_err(gguf_err)?;
            if id as usize >= n {
                return Err(bad(key, format!("token id {id} is outside the vocabulary of {n} tokens")));
            }
            Ok(Some(id))
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            if md.contains(key) { md.get_bool(key).map(Some).map_err(gguf_err) } else { Ok(None) }
        };
        Ok(Vocab {
            model,
            tokens,
            types,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
        })
    }

    fn token_type(&self, id: usize) -> Option<i32> {
        self.types.and_then(|t| t.get(id).copied())
    }

    /// Ids the model treats as special: control tokens and the named special tokens.
    fn special_ids(&self) -> impl Iterator<Item = usize> + '_ {
        let named = [self.bos, self.eos, self.unk, self.pad];
        (0..self.tokens.len()).filter(move |&i| {
            matches!(self.token_type(i), Some(token_type::CONTROL | token_type::UNKNOWN))
                || named.contains(&Some(i as u32))
        })
    }

    /// The post-processor: BOS and/or EOS around each sequence, as the flags say.
    fn post_processor(&self, add_bos: bool, add_eos: bool) -> Result<Value> {
        let mut special = Map::new();
        let mut named = |flag: bool, id: Option<u32>, what: &str| -> Result<Option<String>> {
            if !flag {
                return Ok(None);
            }
            let id = id.ok_or_else(|| {
                bad(
                    &format!("tokenizer.ggml.{what}_token_id"),
                    format!("the file asks to add {what} but does not say which token it is"),
                )
            })?;
            let token = self.tokens[id as usize].clone();
            special.insert(token.clone(), json!({"id": token, "ids": [id], "tokens": [token]}));
            Ok(Some(token))
        };
        let bos = named(add_bos, self.bos, "bos")?;
        let eos = named(add_eos, self.eos, "eos")?;
        let piece = |seq: &str, type_id: u32| {
            let mut v = Vec::new();
            if let Some(b) = &bos {
                v.push(json!({"SpecialToken": {"id": b, "type_id": type_id}}));
            }
            v.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
            if let Some(e) = &eos {
                v.push(json!({"SpecialToken": {"id": e, "type_id": type_id}}));
            }
            v
        };
        let single = piece("A", 0);
        let pair: Vec<Value> = single.iter().cloned().chain(piece("B", 1)).collect();
        Ok(json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special}))
    }
}

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": false,
        "special": special,
    })
}

/// GPT-2's byte → printable character table: printable Latin-1 bytes stand for themselves, the
/// others for the characters from U+0100 on, in byte order.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// Byte-level BPE (`tokenizer.ggml.model = gpt2`).
fn byte_level(md: &Metadata, vocab: &Vocab<'_>) -> Result<Value> {
    let pre = if md.contains("tokenizer.ggml.pre") {
        Some(md.get_str("tokenizer.ggml.pre").map_err(gguf_err)?)
    } else {
        log::warn!(
            "the GGUF names no pre-tokenizer (`tokenizer.ggml.pre`); splitting text with GPT-2's rule"
        );
        None
    };
    let rule = pre_rule(pre)?;
    let table = byte_chars();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));

    // A token spelled outside the byte alphabet is respelled as its UTF-8 bytes, so byte-level
    // BPE can reach it (what transformers does); a later duplicate wins, as in a Python dict.
    let mut ids: HashMap<String, usize> = HashMap::with_capacity(vocab.tokens.len());
    for (i, t) in vocab.tokens.iter().enumerate() {
        let key = if in_alphabet(t) { t.clone() } else { t.bytes().map(|b| table[b as usize]).collect() };
        ids.insert(key, i);
    }

    let pairs = file_merges(md, |t| ids.contains_key(t))?;

    // Control and named special tokens never split, and are special; user-defined tokens never
    // split but are ordinary text. A control token spelled outside the byte alphabet is a
    // converter's mislabel (transformers skips it too).
    let mut added: Vec<(usize, Value)> = Vec::new();
    let mut seen = HashSet::new();
    for i in vocab.special_ids() {
        let t = &vocab.tokens[i];
        if in_alphabet(t) && seen.insert(i) {
            added.push((i, added_token(ids.get(t).copied().unwrap_or(i), t, true)));
        }
    }
    for (i, t) in vocab.tokens.iter().enumerate() {
        if vocab.token_type(i) == Some(token_type::USER_DEFINED)
            && !seen.contains(&i)
            && let Some(&id) = ids.get(t)
        {
            seen.insert(i);
            added.push((i, added_token(id, t, false)));
        }
    }
    added.sort_by_key(|(i, _)| *i);

    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let pre_tokenizer = match rule.split {
        PreSplit::Gpt2 => byte_level(true),
        PreSplit::DigitsThenGpt2 => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
        }),
        PreSplit::Regex(re) => json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ],
        }),
    };
    let add_bos = vocab.add_bos.unwrap_or(rule.default_add_bos);
    let add_eos = vocab.add_eos.unwrap_or(false);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": vocab.post_processor(add_bos, add_eos)?,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": rule.ignore_merges,
            "vocab": ids.into_iter().map(|(t, i)| (t, json!(i))).collect::<Map<String, Value>>(),
            "merges": pairs,
        },
    }))
}

/// SentencePiece BPE (`tokenizer.ggml.model = llama`).
fn sentencepiece(md: &Metadata, vocab: &Vocab<'_>) -> Result<Value> {
    let tokens = vocab.tokens;
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        ids.insert(t, i);
    }
    let merges: Vec<Value> = if md.contains("tokenizer.ggml.merges") {
        file_merges(md, |t| ids.contains_key(t))?
    } else {
        let scores = md.get_f32_array("tokenizer.ggml.scores").map_err(gguf_err)?;
        if scores.len() != tokens.len() {
            return Err(bad(
                "tokenizer.ggml.scores",
                format!("{} scores for {} tokens", scores.len(), tokens.len()),
            ));
        }
        merges_from_scores(tokens, scores, &ids).into_iter().map(|(a, b)| json!([a, b])).collect()
    };

    let byte_fallback = (0..=255u8).all(|b| ids.contains_key(format!("<0x{b:02X}>").as_str()));
    let prefix_space = if md.contains("tokenizer.ggml.add_space_prefix") {
        md.get_bool("tokenizer.ggml.add_space_prefix").map_err(gguf_err)?
    } else {
        true
    };

    let mut added: Vec<(usize, Value)> = Vec::new();
    let mut seen = HashSet::new();
    for i in vocab.special_ids() {
        let t = &tokens[i];
        if seen.insert(i) {
            added.push((i, added_token(ids[t.as_str()], t, true)));
        }
    }
    for (i, t) in tokens.iter().enumerate() {
        if vocab.token_type(i) == Some(token_type::USER_DEFINED) && seen.insert(i) {
            added.push((i, added_token(ids[t.as_str()], t, false)));
        }
    }
    added.sort_by_key(|(i, _)| *i);

    // A space is `▁`, and `▁` starts every stretch of text between added tokens: llama.cpp adds
    // it at the start and after each special token (SentencePiece's "dummy prefix"), and so does
    // a normalizer, which `tokenizers` applies to each stretch on its own.
    let mut normalizers = Vec::new();
    if prefix_space {
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix_space {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    // SentencePiece and llama.cpp add BOS unless the file says otherwise.
    let add_bos = vocab.add_bos.unwrap_or(true);
    let add_eos = vocab.add_eos.unwrap_or(false);
    let unk = vocab.unk.map(|id| tokens[id as usize].clone());
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": vocab.post_processor(add_bos, add_eos)?,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": byte_fallback,
            "ignore_merges": false,
            "vocab": ids.into_iter().map(|(t, i)| (t.to_string(), json!(i))).collect::<Map<String, Value>>(),
            "merges": merges,
        },
    }))
}

/// `tokenizer.ggml.merges` as `[left, right]` pairs, each piece and their union checked against
/// the vocabulary (the `tokenizers` crate refuses a merge it cannot resolve; better here, with
/// the merge named, than when the bundle is loaded).
fn file_merges(md: &Metadata, in_vocab: impl Fn(&str) -> bool) -> Result<Vec<Value>> {
    let merges = md.get_str_array("tokenizer.ggml.merges").map_err(gguf_err)?;
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        // The separator is the first space after the first character (llama.cpp's reading).
        let split = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(at, _)| at);
        let Some(at) = split else {
            return Err(bad("tokenizer.ggml.merges", format!("merge {i} ({m:?}) is not two tokens")));
        };
        let (a, b) = (&m[..at], &m[at + 1..]);
        for part in [a, b, &format!("{a}{b}")] {
            if !in_vocab(part) {
                return Err(bad(
                    "tokenizer.ggml.merges",
                    format!("merge {i} ({m:?}) uses {part:?}, which is not in the vocabulary"),
                ));
            }
        }
        pairs.push(json!([a, b]));
    }
    Ok(pairs)
}

/// The merges a SentencePiece BPE vocabulary implies: every way to cut a token into two tokens of
/// the vocabulary, best score first. SentencePiece merges the adjacent pair whose union scores
/// highest; ranking the merges by that score makes BPE do the same. Ties keep the order
/// transformers gives them (longer left piece, then longer right piece, then token order, then
/// the pieces' ids), so both build the same ranks.
fn merges_from_scores<'a>(
    tokens: &'a [String],
    scores: &[f32],
    ids: &HashMap<&str, usize>,
) -> Vec<(&'a str, &'a str)> {
    // A duplicated token keeps its first place and its last score (a Python dict built in order).
    let mut order: Vec<usize> = Vec::with_capacity(tokens.len());
    let mut score_of: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if score_of.insert(t, scores[i]).is_none() {
            order.push(i);
        }
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for i in order {
        let t = tokens[i].as_str();
        let score = score_of[t];
        let start = merges.len();
        for (at, _) in t.char_indices().skip(1) {
            let (l, r) = (&t[..at], &t[at..]);
            if ids.contains_key(l) && ids.contains_key(r) {
                merges.push((l, r, score));
            }
        }
        merges[start..].sort_by_key(|&(l, r, _)| (ids[l], ids[r]));
    }
    // Stable and descending, as Python's `sorted(..., reverse=True)`.
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f32)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_chars();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], '\u{120}'); // Ġ
        assert_eq!(t[b'\n' as usize], '\u{10a}'); // Ċ
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn pre_names_map_to_llama_cpp_rules() {
        assert_eq!(pre_rule(Some("smollm")).unwrap().split, PreSplit::DigitsThenGpt2);
        assert_eq!(pre_rule(Some("llama-bpe")).unwrap().split, PreSplit::Regex(LLAMA3_SPLIT));
        assert!(pre_rule(Some("llama-bpe")).unwrap().ignore_merges);
        assert_eq!(pre_rule(Some("qwen2")).unwrap().split, PreSplit::Regex(QWEN2_SPLIT));
        assert_eq!(pre_rule(None).unwrap().split, PreSplit::Gpt2);
        assert_eq!(pre_rule(Some("gpt-2")).unwrap().split, PreSplit::Gpt2);
        let err = pre_rule(Some("no-such-pre")).unwrap_err().to_string();
        assert!(err.contains("no-such-pre") && err.contains("smollm"), "{err}");
    }

    #[test]
    fn merges_rank_by_score_then_length() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].iter().map(|s| s.to_string()).collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
        let m = merges_from_scores(&tokens, &scores, &ids);
        // "abc" (score -0.5) splits two ways: the longer left piece first.
        assert_eq!(m, vec![("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
    }
}
