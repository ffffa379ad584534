//! Opening an exported bundle directory: `ferrite.json`, file hashes, the model and its tokenizer.
//!
//! A bundle is what `ferrite export` writes: `model.onnx` + `model.onnx.data`, the `ferrite.json`
//! manifest (architecture, roles of inputs/outputs, context length, special token ids, sha256 of
//! every file, and for instruct models a `chat` template: docs/chat.md), the tokenizer
//! (`tokenizer.json`, or ferrite's char `vocab.json`) and `golden.npz`.
//! This module checks and loads those files; it does not run generation (see [`crate::generate`])
//! and never writes to the bundle.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::backend::Options;
#[cfg(feature = "text")]
pub use crate::chat::ChatSpec;
use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::model::{Dim, Model};
use crate::session::Plan;
#[cfg(feature = "text")]
use crate::tokenizer::TextTokenizer;

/// The manifest's file name inside a bundle.
pub const MANIFEST_FILE: &str = "ferrite.json";
/// The model's file name inside a bundle.
pub const MODEL_FILE: &str = "model.onnx";

/// One graph input or output as the manifest describes it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct IoRole {
    /// The tensor's name in the graph.
    pub name: String,
    /// What a caller does with it.
    #[serde(default)]
    pub role: String,
    /// Declared shape, symbolic dims by name.
    #[serde(default)]
    pub shape: Vec<String>,
    /// Element type name (`f32`, `i64`).
    #[serde(default)]
    pub dtype: String,
}

/// One file of a bundle and its hash.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct FileEntry {
    /// Name inside the bundle directory.
    pub name: String,
    /// Size in bytes.
    #[serde(default)]
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the contents.
    pub sha256: String,
}

/// What `ferrite.json` holds (the fields the runtime reads; unknown fields are ignored).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Manifest {
    /// Manifest format version (1).
    pub format: u32,
    /// Source architecture: `lstm`, `gpt2`, `llama` or `bert`.
    pub architecture: String,
    /// Weight storage scheme, as written by the exporter.
    #[serde(default)]
    pub quantisation: serde_json::Value,
    /// Graph inputs and their roles.
    #[serde(default)]
    pub inputs: Vec<IoRole>,
    /// Graph outputs and their roles.
    #[serde(default)]
    pub outputs: Vec<IoRole>,
    /// Longest sequence the model handles, when it has a limit.
    #[serde(default)]
    pub context_length: Option<usize>,
    /// Special token ids (`bos`, `eos`, `pad`, `cls`…).
    #[serde(default)]
    pub special_tokens: BTreeMap<String, i64>,
    /// Every other file of the bundle with its hash.
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// The chat template and its special tokens, for instruct models (`None`: the bundle has no
    /// chat format; see `docs/chat.md`).
    #[serde(default)]
    pub chat: Option<ChatSpec>,
}

/// The architectures the runtime knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Embedding → LSTM → Linear; state `h0`/`c0` in, `hN`/`cN` out.
    Lstm,
    /// GPT-2 with a KV cache: `past_key.L`/`past_value.L` in, `present_*` out.
    Gpt2,
    /// BERT encoder with a `sentence_embedding` output.
    Bert,
    /// Llama-family decoder (Llama, Qwen2, Mistral: RMSNorm, rotary positions, grouped-query
    /// attention) with the same KV-cache interface as GPT-2; the cache holds KV heads only.
    Llama,
}

impl Architecture {
    /// A decoder that carries a KV cache (`past_key.L`/`past_value.L` in, `present_*` out) and
    /// whose context length bounds a generation.
    pub fn is_kv_decoder(self) -> bool {
        matches!(self, Architecture::Gpt2 | Architecture::Llama)
    }
}

/// How to open a bundle.
///
/// ```
/// use ferrite_runtime::{BackendKind, bundle::BundleOptions};
/// let opts = BundleOptions::default().backend(BackendKind::Tract).threads(2).verify_hashes(false);
/// assert!(!opts.verify_hashes);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BundleOptions {
    /// Backend, threads and ONNX Runtime settings for the model.
    pub run: Options,
    /// Check every file's sha256 against the manifest before loading (on by default).
    pub verify_hashes: bool,
    /// The longest sequence (prompt plus new tokens) the caller will run, for the memory estimate
    /// at open; `None` counts the bundle's full context length.
    pub positions: Option<usize>,
}

impl Default for BundleOptions {
    fn default() -> Self {
        BundleOptions { run: Options::default(), verify_hashes: true, positions: None }
    }
}

impl BundleOptions {
    /// Chooses the engine.
    pub fn backend(mut self, backend: crate::BackendKind) -> Self {
        self.run = self.run.backend(backend);
        self
    }
    /// Sets the compute threads.
    pub fn threads(mut self, threads: usize) -> Self {
        self.run = self.run.threads(threads);
        self
    }
    /// Replaces all backend options.
    pub fn run_options(mut self, run: Options) -> Self {
        self.run = run;
        self
    }
    /// Refuses bundles whose estimated memory (weights, the backend's copy of them, inputs and
    /// outputs at the full context length, or at [`BundleOptions::positions`]) exceeds `bytes`:
    /// `ResourceLimit` before loading. A [`crate::Generator`] checks the budget again before each
    /// generation, at its prompt plus `max_tokens` positions.
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.run = self.run.memory_budget(bytes);
        self
    }
    /// The longest sequence (prompt plus new tokens) the caller will run: the memory estimate at
    /// open counts inputs and outputs (a decoder's KV cache and logits) at this many positions,
    /// at most the context length, instead of the full context. A small LLM's context is long
    /// (SmolLM2: 8192 positions, 1.6 GB of logits alone at full length), so a budget that counts
    /// all of it refuses models that fit the generations actually run.
    pub fn positions(mut self, positions: usize) -> Self {
        self.positions = Some(positions);
        self
    }
    /// Turns the sha256 check on (default) or off.
    pub fn verify_hashes(mut self, on: bool) -> Self {
        self.verify_hashes = on;
        self
    }
}

/// An opened bundle: manifest, prepared model and (feature `text`) tokenizer.
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
    architecture: Architecture,
    plan: Plan,
    /// The options the plan was prepared with (the memory budget, for [`Bundle::check_memory`]).
    run: Options,
    vocab_size: Option<usize>,
    #[cfg(feature = "text")]
    tokenizer: Option<TextTokenizer>,
    #[cfg(feature = "text")]
    chat: Option<ChatTemplate>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("dir", &self.dir)
            .field("architecture", &self.architecture)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Opens the bundle in `dir` with default options (tract, 1 thread, hashes verified).
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle> {
        Bundle::open_with(dir, &BundleOptions::default())
    }

    /// Opens the bundle in `dir`: reads `ferrite.json`, verifies hashes (unless turned off),
    /// prepares the model and loads the tokenizer.
    pub fn open_with(dir: impl AsRef<Path>, options: &BundleOptions) -> Result<Bundle> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = read_manifest(&dir)?;
        let architecture = match manifest.architecture.as_str() {
            "lstm" => Architecture::Lstm,
            "gpt2" => Architecture::Gpt2,
            "bert" => Architecture::Bert,
            "llama" => Architecture::Llama,
            other => {
                return Err(Error::InvalidBundle {
                    path: dir.join(MANIFEST_FILE),
                    reason: format!("unknown architecture `{other}` (expected lstm, gpt2, llama or bert)"),
                });
            }
        };
        if options.verify_hashes {
            for entry in &manifest.files {
                verify_file(&dir, entry)?;
            }
        }
        let model = Model::open(confined(&dir, MODEL_FILE)?)?;
        let vocab_size = fixed_last_dim(&model, "logits");
        // The budget counts inputs/outputs (a decoder's KV cache) at the full context length,
        // unless the caller says how long its sequences are.
        let context = manifest.context_length.unwrap_or(1);
        let positions = options.positions.map_or(context, |p| p.min(context));
        let plan = model.prepare_for_positions(&options.run, positions)?;
        #[cfg(feature = "text")]
        let tokenizer = {
            confined(&dir, "tokenizer.json")?;
            confined(&dir, "vocab.json")?;
            TextTokenizer::load_from_bundle(&dir)?
        };
        #[cfg(feature = "text")]
        let chat = match &manifest.chat {
            None => None,
            Some(spec) => {
                let eos = manifest.special_tokens.get("eos").and_then(|&id| u32::try_from(id).ok());
                let chat = tokenizer
                    .as_ref()
                    .ok_or_else(|| "a chat template needs a tokenizer (tokenizer.json)".to_string())
                    .and_then(|tok| ChatTemplate::for_bundle(spec, tok, eos));
                Some(chat.map_err(|reason| Error::InvalidBundle {
                    path: dir.join(MANIFEST_FILE),
                    reason: format!("`chat`: {reason}"),
                })?)
            }
        };
        Ok(Bundle {
            dir,
            manifest,
            architecture,
            plan,
            run: options.run.clone(),
            vocab_size,
            #[cfg(feature = "text")]
            tokenizer,
            #[cfg(feature = "text")]
            chat,
        })
    }

    /// The bundle directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed `ferrite.json`.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The model's architecture.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// The prepared model; make sessions from it.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Checks the memory budget the bundle was opened with (if any) for sequences of `positions`
    /// tokens (at most the context length): `ResourceLimit` when the estimate exceeds it. Returns
    /// the estimate either way.
    pub fn check_memory(&self, positions: usize) -> Result<crate::budget::MemoryEstimate> {
        let positions = self.context_length().map_or(positions, |c| positions.min(c));
        crate::budget::check(self.plan.info(), &self.run, positions)
    }

    /// Longest sequence the model handles (`None`: no limit, e.g. an LSTM).
    pub fn context_length(&self) -> Option<usize> {
        self.manifest.context_length
    }

    /// A special token id by the manifest's name (`eos`, `bos`, `pad`, `cls`, `sep`…).
    pub fn special_token(&self, name: &str) -> Option<i64> {
        self.manifest.special_tokens.get(name).copied()
    }

    /// Number of token ids the model accepts: the logits' fixed last dimension, else the
    /// tokenizer's vocabulary size.
    pub fn vocab_size(&self) -> Option<usize> {
        #[cfg(feature = "text")]
        if self.vocab_size.is_none() {
            return self.tokenizer.as_ref().map(TextTokenizer::vocab_size);
        }
        self.vocab_size
    }

    /// The bundle's tokenizer, when it ships one.
    #[cfg(feature = "text")]
    pub fn tokenizer(&self) -> Option<&TextTokenizer> {
        self.tokenizer.as_ref()
    }

    /// The bundle's tokenizer, or a [`Error::Tokenizer`] saying it has none.
    #[cfg(feature = "text")]
    pub fn require_tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::Tokenizer(format!(
                "{} has neither tokenizer.json nor vocab.json: pass token ids instead",
                self.dir.display()
            ))
        })
    }
}

impl Bundle {
    /// The bundle's chat template, when `ferrite.json` carries one.
    #[cfg(feature = "text")]
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// The bundle's chat template, or [`Error::ChatTemplate`] saying the bundle has none (chat
    /// never falls back to a made-up format).
    #[cfg(feature = "text")]
    pub fn require_chat_template(&self) -> Result<&ChatTemplate> {
        self.chat.as_ref().ok_or_else(|| {
            Error::ChatTemplate(format!(
                "{} has no chat template (its ferrite.json has no `chat` object)",
                self.dir.display()
            ))
        })
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::InvalidBundle { path: path.clone(), reason: e.to_string() })?;
    if manifest.format != 1 {
        return Err(Error::InvalidBundle {
            path,
            reason: format!("manifest format {} (this runtime reads format 1)", manifest.format),
        });
    }
    Ok(manifest)
}

/// Hashes `dir/entry.name` and compares it with the manifest.
fn verify_file(dir: &Path, entry: &FileEntry) -> Result<()> {
    let name = Path::new(&entry.name);
    // The manifest must not point outside the bundle.
    if name.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(Error::InvalidBundle {
            path: dir.join(MANIFEST_FILE),
            reason: format!("file `{}` is not a plain name inside the bundle", entry.name),
        });
    }
    let path = confined(dir, &entry.name)?;
    let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(&path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if !actual.eq_ignore_ascii_case(&entry.sha256) {
        return Err(Error::HashMismatch { path, expected: entry.sha256.clone(), actual });
    }
    Ok(())
}

/// `dir/name`, refused when it is a symlink that leads outside the bundle: a bundle only ever
/// reads its own files. A missing file passes (the read that follows reports it).
fn confined(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let (Ok(real), Ok(real_dir)) = (path.canonicalize(), dir.canonicalize()) else {
        return Ok(path);
    };
    if !real.starts_with(&real_dir) {
        return Err(Error::InvalidBundle {
            path,
            reason: format!("`{name}` leads outside the bundle (to {})", real.display()),
        });
    }
    Ok(path)
}

/// The fixed last dimension of output `name`, when the file declares one.
fn fixed_last_dim(model: &Model, name: &str) -> Option<usize> {
    let out = model.info().outputs.iter().find(|o| o.name == name)?;
    match out.shape.as_ref()?.last()? {
        Dim::Fixed(n) => Some(*n),
        _ => None,
    }
}
