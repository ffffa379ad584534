//! Writing a bundle: graph, external weights, tokenizer, goldens and manifest, all or nothing.
//!
//! Everything is written into a temporary directory next to OUTDIR (same filesystem, so the final
//! `rename` is atomic) which is deleted on any error, including a panic unwinding through here. A
//! replaced OUTDIR is first moved aside and only deleted once the new bundle is in place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferrite_runtime::{BackendKind, Model, Options, Tensor};
use sha2::{Digest, Sha256};

use crate::accuracy::{self, AccuracyReport};
use crate::arch::{self, ArchKind, IoRole};
use crate::calibrate::CalibrationReport;
use crate::error::{ExportError, Result};
use crate::model_file::write_graph;
use crate::onnx::{DATA_FILE, GraphBuilder, MODEL_FILE};
use crate::quant::QuantScheme;
use crate::vocab::{TOKENIZER_FILE, Vocabulary, WordVocabulary};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "ferrite.json";
/// The goldens' file name.
pub const GOLDEN_FILE: &str = "golden.npz";
/// Tokenizer files copied from the source directory when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
];

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// How weights are stored.
    pub quant: QuantScheme,
    /// Forces the architecture instead of detecting it.
    pub arch: Option<ArchKind>,
    /// Replace an existing output directory.
    pub force: bool,
    /// Fails on purpose at the named stage (`model`, `golden`, `manifest`, `rename`): lets tests
    /// prove that a failed export leaves nothing behind.
    #[doc(hidden)]
    pub fail_at: Option<&'static str>,
    /// Round int8 weights with GPTQ, calibrated on text the fp32 model samples itself
    /// (decoders only; [`crate::calibrate`]). On by default; off rounds to nearest.
    pub gptq: bool,
    /// int8 activation precision: 8 (one uint8 code per value) or 16 (two uint8 digits, twice
    /// the integer work: see [`GraphBuilder::set_int8_activation_digits`]); `None` lets the
    /// architecture choose ([`arch::Architecture::int8_activation_bits`]: 16 for decoders).
    pub activation_bits: Option<u8>,
    /// A vocabulary file for the bundle's tokenizer (`--vocab`): a `{token: index}` JSON object,
    /// a Keras `Tokenizer`'s JSON or a one-token-per-line text file ([`crate::vocab`]). It
    /// replaces the tokenizer files the source would otherwise give.
    pub vocab: Option<PathBuf>,
    /// Whether an LM head (or tied token table) on llama.cpp's Q8_0 grid is stored as an int8
    /// pair, near-exact, rather than one int8 layer rounded per row ([`crate::quant::int8::StoredPair`]);
    /// `None`: the scheme decides — `int8` (accuracy first) pairs, `q4` (size first) does not.
    pub int8_head_pairs: Option<bool>,
    /// int8: requantise weights already on a 4-bit grid (GGUF Q4_0/Q4_1) per row like any
    /// other, instead of keeping their codes as q4 blocks ([`GraphBuilder::set_keep_4bit_codes`]).
    pub requantize_4bit: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            quant: QuantScheme::Fp32,
            arch: None,
            force: false,
            fail_at: None,
            gptq: true,
            activation_bits: None,
            vocab: None,
            int8_head_pairs: None,
            requantize_4bit: false,
        }
    }
}

/// One file of a bundle.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileEntry {
    /// Name inside the bundle.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the contents.
    pub sha256: String,
}

/// What `ferrite.json` holds (and `--json` prints).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The exporter that wrote it.
    pub exporter: String,
    /// Source architecture.
    pub architecture: ArchKind,
    /// Weight storage scheme.
    pub quantisation: QuantScheme,
    /// Graph inputs and what they are for.
    pub inputs: Vec<IoRole>,
    /// Graph outputs and what they are for.
    pub outputs: Vec<IoRole>,
    /// Longest sequence the model handles, when it has a limit.
    pub context_length: Option<usize>,
    /// Special token ids.
    pub special_tokens: BTreeMap<String, i64>,
    /// Every other file of the bundle with its hash.
    pub files: Vec<FileEntry>,
    /// Quantised vs fp32 on the sample inputs (absent for fp32 bundles).
    pub accuracy: Option<AccuracyReport>,
    /// How int8 weights were calibrated (GPTQ), when they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationReport>,
    /// int8 and q4 bundles: bits per activation value of their int8 layers (8, or 16 as two
    /// uint8 digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_bits: Option<u8>,
    /// The chat template and its special tokens (docs/chat.md), when the source has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ferrite_runtime::bundle::ChatSpec>,
}

fn check_stage(opts: &ExportOptions, stage: &'static str) -> Result<()> {
    if opts.fail_at == Some(stage) { Err(ExportError::Injected(stage)) } else { Ok(()) }
}

/// Runs the model in `dir` on `inputs` with tract; outputs in graph order.
pub fn run_model(
    dir: &Path,
    inputs: &[(String, Tensor)],
    backend: BackendKind,
) -> Result<Vec<(String, Tensor)>> {
    let model = Model::open(dir.join(MODEL_FILE))?;
    let mut session = model.prepare(&Options::default().backend(backend))?.session()?;
    let views: Vec<(&str, _)> = inputs.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
    Ok(session.run(&views)?.into_vec())
}

fn file_entry(dir: &Path, name: &str) -> Result<FileEntry> {
    let path = dir.join(name);
    let mut file = std::fs::File::open(&path).map_err(|e| ExportError::io(&path, e))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher).map_err(|e| ExportError::io(&path, e))?;
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(FileEntry { name: name.into(), bytes, sha256 })
}

/// Exports the checkpoint in `src` (a directory, or a `.keras` file) as a bundle in `out`.
/// Returns the manifest written.
pub fn export(src: &Path, out: &Path, opts: &ExportOptions) -> Result<Manifest> {
    if out.exists() && !opts.force {
        return Err(ExportError::OutputExists { path: out.into() });
    }
    let arch = arch::load(src, opts.arch)?;

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| ExportError::io(&parent, e))?;
    let base = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bundle".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{base}.tmp-"))
        .tempdir_in(&parent)
        .map_err(|e| ExportError::io(&parent, e))?;

    // int8 weights of decoders are rounded with GPTQ, on statistics the fp32 model gathers by
    // sampling its own text (crate::calibrate).
    let mut calibration = None;
    let mut builder = GraphBuilder::new();
    if opts.quant == QuantScheme::Int8 && opts.gptq {
        let work = tempfile::Builder::new()
            .prefix(&format!(".{base}.calibration-"))
            .tempdir_in(&parent)
            .map_err(|e| ExportError::io(&parent, e))?;
        if let Some((hessians, report)) = crate::calibrate::hessians(arch.as_ref(), work.path())? {
            builder = GraphBuilder::with_hessians(Arc::new(hessians));
            calibration = Some(report);
        }
    }
    let activation_bits = match opts.activation_bits {
        Some(bits) => bits,
        // q4 bundles hold int8 layers too (8-bit sources such as a GGUF's Q8_0 token table, and
        // layers 4-bit blocks do not fit): the same precision as an int8 bundle of the model.
        None if matches!(opts.quant, QuantScheme::Int8 | QuantScheme::Q4) => arch.int8_activation_bits(),
        None => 8,
    };
    let digits = match (activation_bits, opts.quant) {
        (8, _) => false,
        (16, QuantScheme::Int8 | QuantScheme::Q4) => true,
        (bits, scheme) => {
            let message = format!("activation bits {bits}: 8, or 16 with int8 or q4");
            return Err(ExportError::Quantisation { scheme: scheme.name(), message });
        }
    };
    builder.set_int8_activation_digits(digits);
    builder.set_int8_head_pairs(opts.int8_head_pairs.unwrap_or(opts.quant == QuantScheme::Int8));
    builder.set_keep_4bit_codes(!opts.requantize_4bit);
    builder.set_q4_int8_activations(opts.activation_bits == Some(8));
    // The bundle's own graph, then (for quantised bundles) the fp32 reference beside it.
    let graph = arch.build(opts.quant, builder)?;
    graph.finish_progress();
    write_graph(arch.as_ref(), opts.quant, graph, tmp.path())?;
    check_stage(opts, "model")?;
    let inputs = arch.sample_inputs()?;
    let verifying = if opts.quant == QuantScheme::Fp32 { 1 } else { 3 };
    let progress = crate::progress::Stage::new("verifying", verifying, "steps");
    let own = run_model(tmp.path(), &inputs, BackendKind::Tract)?;
    progress.inc(1);
    let (fp32_outputs, accuracy) = if opts.quant == QuantScheme::Fp32 {
        (own, None)
    } else {
        let reference = tempfile::Builder::new()
            .prefix(&format!(".{base}.fp32-"))
            .tempdir_in(&parent)
            .map_err(|e| ExportError::io(&parent, e))?;
        let graph = arch.build(QuantScheme::Fp32, GraphBuilder::new())?;
        write_graph(arch.as_ref(), QuantScheme::Fp32, graph, reference.path())?;
        progress.inc(1);
        let fp32 = run_model(reference.path(), &inputs, BackendKind::Tract)?;
        let report = accuracy::report(&arch.outputs(), &fp32, &own, "tract")?;
        (fp32, Some(report))
    };
    progress.finish();

    let mut golden: Vec<(String, Tensor)> = inputs;
    golden.extend(fp32_outputs);
    crate::golden::write_npz(&tmp.path().join(GOLDEN_FILE), &golden)?;
    check_stage(opts, "golden")?;

    let mut names = vec![MODEL_FILE.to_string(), DATA_FILE.to_string(), GOLDEN_FILE.to_string()];
    for file in tokenizer_files(src, opts.vocab.as_deref(), arch.vocab_size())? {
        match file {
            TokenizerFile::Copy(from, name) => {
                let to = tmp.path().join(name);
                std::fs::copy(&from, &to).map_err(|e| ExportError::io(&from, e))?;
                names.push(name.to_string());
            }
            TokenizerFile::Write(name, bytes) => {
                let to = tmp.path().join(name);
                std::fs::write(&to, bytes).map_err(|e| ExportError::io(&to, e))?;
                names.push(name.to_string());
            }
        }
    }
    let files = names.iter().map(|n| file_entry(tmp.path(), n)).collect::<Result<Vec<_>>>()?;
    let manifest = Manifest {
        format: 1,
        exporter: format!("ferrite-exporter {}", env!("CARGO_PKG_VERSION")),
        architecture: arch.kind(),
        quantisation: opts.quant,
        inputs: arch.inputs(),
        outputs: arch.outputs(),
        context_length: arch.context_length(),
        special_tokens: arch.special_tokens(),
        files,
        accuracy,
        calibration,
        activation_bits: matches!(opts.quant, QuantScheme::Int8 | QuantScheme::Q4).then_some(activation_bits),
        chat: crate::chat_spec::chat_spec(src)?,
    };
    let manifest_path = tmp.path().join(MANIFEST_FILE);
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| ExportError::config(&manifest_path, e.to_string()))?;
    std::fs::write(&manifest_path, json).map_err(|e| ExportError::io(&manifest_path, e))?;
    check_stage(opts, "manifest")?;

    publish(tmp, out, opts)?;
    Ok(manifest)
}

/// One tokenizer file of the bundle: copied from the source, or made by the exporter.
enum TokenizerFile {
    /// Copy this file in under this name.
    Copy(PathBuf, &'static str),
    /// Write these bytes under this name.
    Write(&'static str, Vec<u8>),
}

/// The bundle's tokenizer files. `--vocab FILE` decides when given; else a checkpoint
/// directory's own tokenizer files are copied; a `.keras` archive (which holds no tokenizer file)
/// gives its `TextVectorization` layer's vocabulary, or the `vocab.json` beside it (copied, and
/// written as `tokenizer.json` too when it is a word vocabulary). Word vocabularies are checked
/// against the model's `model_vocab` ids.
fn tokenizer_files(
    src: &Path,
    vocab: Option<&Path>,
    model_vocab: Option<usize>,
) -> Result<Vec<TokenizerFile>> {
    if let Some(path) = vocab {
        return Ok(match Vocabulary::read(path)? {
            Vocabulary::Chars(path) => vec![TokenizerFile::Copy(path, arch::keras::VOCAB_FILE)],
            Vocabulary::Words(words) => vec![word_tokenizer(words, model_vocab)?],
        });
    }
    if arch::gguf::is_gguf(src) {
        let files = arch::gguf::tokenizer_from_gguf(src)?;
        return Ok(files.into_iter().map(|(name, bytes)| TokenizerFile::Write(name, bytes)).collect());
    }
    if src.is_file() {
        if let Some(words) = arch::keras::vocabulary(src)? {
            return Ok(vec![word_tokenizer(words, model_vocab)?]);
        }
        let Some(path) = arch::keras::vocab_path(src) else { return Ok(Vec::new()) };
        let mut files = vec![TokenizerFile::Copy(path.clone(), arch::keras::VOCAB_FILE)];
        if let Vocabulary::Words(words) = Vocabulary::read(&path)? {
            files.push(word_tokenizer(words, model_vocab)?);
        }
        return Ok(files);
    }
    Ok(TOKENIZER_FILES
        .iter()
        .map(|name| (src.join(name), *name))
        .filter(|(p, _)| p.is_file())
        .map(|(p, name)| TokenizerFile::Copy(p, name))
        .collect())
}

/// `tokenizer.json` for a word vocabulary, fitted to the model's ids when they are known.
fn word_tokenizer(mut words: WordVocabulary, model_vocab: Option<usize>) -> Result<TokenizerFile> {
    if let Some(n) = model_vocab {
        words.fit_to(n)?;
    }
    let json = words.tokenizer_json();
    let bytes =
        serde_json::to_vec_pretty(&json).map_err(|e| ExportError::config(TOKENIZER_FILE, e.to_string()))?;
    Ok(TokenizerFile::Write(TOKENIZER_FILE, bytes))
}

/// Renames the finished temporary directory to `out`, moving an existing `out` aside first.
fn publish(tmp: tempfile::TempDir, out: &Path, opts: &ExportOptions) -> Result<()> {
    let parent = tmp.path().parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    // Holds the previous bundle until the new one is in place; deleted with its guard.
    let old = if out.exists() {
        let aside = tempfile::Builder::new()
            .prefix(".old-")
            .tempdir_in(&parent)
            .map_err(|e| ExportError::io(&parent, e))?;
        let target = aside.path().join("bundle");
        std::fs::rename(out, &target).map_err(|e| ExportError::io(out, e))?;
        Some((aside, target))
    } else {
        None
    };
    let result = check_stage(opts, "rename")
        .and_then(|()| std::fs::rename(tmp.path(), out).map_err(|e| ExportError::io(out, e)));
    if let Err(e) = result {
        if let Some((_, target)) = &old {
            // Put the previous bundle back: a failed export must not cost the user their old one.
            if let Err(restore) = std::fs::rename(target, out) {
                log::error!("could not restore {} from {}: {restore}", out.display(), target.display());
            }
        }
        return Err(e);
    }
    // The directory now lives at `out`: keep the guard from deleting anything.
    let _ = tmp.keep();
    Ok(())
}
