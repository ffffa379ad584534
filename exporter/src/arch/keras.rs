//! Keras 3 `.keras` archives of a next-word model — `[TextVectorization], Embedding, LSTM…,
//! Dense`, written with the `Sequential` or the `Functional` API — read into the same LSTM
//! language model as ferrite's own checkpoints ([`super::lstm::Lstm`]) and so exported as an
//! `lstm` bundle with the same stateful interface.
//!
//! A `.keras` file is a zip holding `config.json` (the model's layers, and for a Functional model
//! which layer feeds which), `metadata.json` (the Keras version), `model.weights.h5`, in which
//! Keras stores each layer's variables by index under a path made from its *class* name,
//! numbered per class in layer order (`layers/lstm/cell/vars/0`, `layers/lstm_1/cell/vars/0`…),
//! not from the layer's own name, and `assets/` (an adapted `TextVectorization`'s
//! `vocabulary.txt`). The archive is read with the `zip` crate and the weights with `hdf5-pure`
//! (no libhdf5, no Python).
//!
//! It deliberately accepts only what the ONNX `LSTM` graph computes exactly: a chain of layers
//! (a Functional graph that branches or joins is refused, naming the layer); forward, stateless
//! LSTMs with Keras's default activations (tanh, sigmoid), one shared `units`, no masking; a final
//! `Dense` whose activation is linear or softmax (or a following `Activation` that is); `Dropout`
//! and the other noise layers (identities at inference). A leading `TextVectorization` is not
//! part of the graph, which starts at the ids it produces: its vocabulary becomes the bundle's
//! tokenizer ([`vocabulary`]). Anything else is an error naming the layer. The bundle's `logits`
//! are always the Dense layer's output *before* a softmax, every position included, even when the
//! last LSTM has `return_sequences: false` (Keras then serves only the last position's
//! probabilities).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::lstm::{Layer, Lstm};
use crate::checkpoint::transpose;
use crate::error::{ExportError, Result};
use crate::vocab::WordVocabulary;

/// The weights file inside a `.keras` archive.
const WEIGHTS_ENTRY: &str = "model.weights.h5";
/// The model description inside a `.keras` archive.
const CONFIG_ENTRY: &str = "config.json";
/// The Keras version that wrote the archive.
const METADATA_ENTRY: &str = "metadata.json";
/// The optional vocabulary file read beside the archive (token → id, as for LSTM checkpoints).
pub const VOCAB_FILE: &str = "vocab.json";

/// Whether `path` is a Keras archive: a `.keras` file, or any zip holding `config.json` and
/// `model.weights.h5`. A file named `.keras` counts even when unreadable, so that a broken
/// archive is reported as one rather than as an unknown source.
pub fn is_archive(path: &Path) -> bool {
    if !path.is_file() {
        return false;
    }
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("keras")) {
        return true;
    }
    std::fs::File::open(path).ok().and_then(|f| zip::ZipArchive::new(f).ok()).is_some_and(|z| {
        z.index_for_name(CONFIG_ENTRY).is_some() && z.index_for_name(WEIGHTS_ENTRY).is_some()
    })
}

/// Reads the `.keras` archive at `path` as an LSTM language model, checking its `vocab.json`
/// neighbour (when there is one) against the vocabulary size.
pub fn load(path: &Path) -> Result<Lstm> {
    let archive = Archive::open(path)?;
    let model = archive.model()?;
    check_vocab(path, model.vocab)?;
    Ok(model)
}

/// The vocabulary of the `TextVectorization` layer the model at `path` starts with, if it has
/// one (with the layer's `standardize` and `split` settings).
pub fn vocabulary(path: &Path) -> Result<Option<WordVocabulary>> {
    Archive::open(path)?.vocabulary()
}

/// The opened archive: its parsed config, its weights file and its vocabulary assets.
struct Archive {
    path: PathBuf,
    config: Value,
    weights: hdf5_pure::File,
    /// `assets/…/vocabulary.txt` entries (adapted `TextVectorization` layers), by entry name.
    assets: HashMap<String, Vec<u8>>,
}

fn archive_error(path: &Path, message: impl Into<String>) -> ExportError {
    ExportError::Archive { path: path.into(), message: message.into() }
}

/// Reads one whole entry of the zip.
fn read_entry(zip: &mut zip::ZipArchive<std::fs::File>, path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let mut entry = match zip.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(archive_error(path, format!("{name}: {e}"))),
    };
    let mut bytes = Vec::with_capacity(entry.size().min(1 << 30) as usize);
    entry.read_to_end(&mut bytes).map_err(|e| archive_error(path, format!("{name}: {e}")))?;
    Ok(Some(bytes))
}

impl Archive {
    fn open(path: &Path) -> Result<Archive> {
        let file = std::fs::File::open(path).map_err(|e| ExportError::io(path, e))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| archive_error(path, e.to_string()))?;
        let config = read_entry(&mut zip, path, CONFIG_ENTRY)?
            .ok_or_else(|| archive_error(path, format!("no `{CONFIG_ENTRY}` entry")))?;
        let config: Value = serde_json::from_slice(&config)
            .map_err(|e| archive_error(path, format!("{CONFIG_ENTRY}: {e}")))?;
        if let Some(meta) = read_entry(&mut zip, path, METADATA_ENTRY)? {
            let meta: Value = serde_json::from_slice(&meta)
                .map_err(|e| archive_error(path, format!("{METADATA_ENTRY}: {e}")))?;
            let version = meta.get("keras_version").and_then(Value::as_str).unwrap_or("unknown");
            // Where the variables live is Keras 3's saving format; earlier writers are unverified.
            if !version.starts_with("3.") {
                return Err(archive_error(
                    path,
                    format!("written by Keras {version}; only Keras 3 archives are read"),
                ));
            }
            log::info!("{}: Keras {version} archive", path.display());
        }
        let weights = read_entry(&mut zip, path, WEIGHTS_ENTRY)?
            .ok_or_else(|| archive_error(path, format!("no `{WEIGHTS_ENTRY}` entry")))?;
        let weights = hdf5_pure::File::from_bytes(weights)
            .map_err(|e| archive_error(path, format!("{WEIGHTS_ENTRY}: {e}")))?;
        let asset_names: Vec<String> = zip
            .file_names()
            .filter_map(|n| n.ok().map(|n| n.into_owned()))
            .filter(|n| n.starts_with("assets/") && n.ends_with("/vocabulary.txt"))
            .collect();
        let mut assets = HashMap::new();
        for name in asset_names {
            if let Some(bytes) = read_entry(&mut zip, path, &name)? {
                assets.insert(name, bytes);
            }
        }
        Ok(Archive { path: path.into(), config, weights, assets })
    }

    /// An error about the layer `name` (class `class`) in `config.json`.
    fn layer_error(&self, name: &str, class: &str, message: impl std::fmt::Display) -> ExportError {
        ExportError::config(self.path.join(CONFIG_ENTRY), format!("layer `{name}` ({class}): {message}"))
    }

    /// The variable at `var` in the weights file (`what` says which it is, for messages), checked
    /// to be f32 of shape `expected` with only finite values.
    fn tensor(&self, var: &str, what: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let name = format!("{var} ({what})");
        let ds = self.weights.dataset(var).map_err(|e| match e {
            hdf5_pure::Error::Format(hdf5_pure::FormatError::PathNotFound(_)) => {
                ExportError::MissingTensor { name: name.clone() }
            }
            other => archive_error(&self.path, format!("{WEIGHTS_ENTRY}: {name}: {other}")),
        })?;
        let bad = |e: hdf5_pure::Error| archive_error(&self.path, format!("{WEIGHTS_ENTRY}: {name}: {e}"));
        let shape: Vec<usize> = ds.shape().map_err(bad)?.into_iter().map(|d| d as usize).collect();
        if shape != expected {
            return Err(ExportError::TensorShape { name, expected: expected.to_vec(), found: shape });
        }
        let dtype = ds.dtype().map_err(bad)?;
        if dtype != hdf5_pure::DType::F32 {
            return Err(ExportError::TensorDType { name, dtype: dtype.to_string() });
        }
        let values = ds.read_f32().map_err(bad)?;
        if values.len() != expected.iter().product::<usize>() {
            let message =
                format!("{WEIGHTS_ENTRY}: {name}: read {} values for shape {shape:?}", values.len());
            return Err(archive_error(&self.path, message));
        }
        let non_finite = values.iter().filter(|v| !v.is_finite()).count();
        if non_finite > 0 {
            return Err(ExportError::NonFinite { name, count: non_finite });
        }
        Ok(values)
    }

    /// The model's layers in the order data flows through them: a `Sequential`'s list, or the
    /// chain a `Functional` model's graph must be (one input, one output, every layer called
    /// once on the previous one's output). A branch or a join is an error naming the layer.
    fn layers(&self) -> Result<Vec<&Value>> {
        let config_path = self.path.join(CONFIG_ENTRY);
        let class = self.config.get("class_name").and_then(Value::as_str).unwrap_or("?");
        let layers = || {
            self.config
                .pointer("/config/layers")
                .and_then(Value::as_array)
                .ok_or_else(|| ExportError::config(&config_path, "no `config.layers` list"))
        };
        match class {
            "Sequential" => Ok(layers()?.iter().collect()),
            "Functional" => self.functional_chain(layers()?),
            _ => Err(ExportError::UnknownArchitecture(format!(
                "{}: a Keras `{class}` model; ferrite reads Sequential and Functional chains of [TextVectorization], Embedding, LSTM…, Dense",
                self.path.display()
            ))),
        }
    }

    /// Orders a Functional model's layers from its input to its output, refusing anything but a
    /// chain.
    fn functional_chain<'a>(&self, layers: &'a [Value]) -> Result<Vec<&'a Value>> {
        let config_path = self.path.join(CONFIG_ENTRY);
        let by_name: HashMap<&str, &Value> = layers.iter().map(|l| (layer_name(l), l)).collect();
        // Producer name -> the layers that take its output.
        let mut consumers: HashMap<&str, Vec<&str>> = HashMap::new();
        for layer in layers {
            let (name, class) = (layer_name(layer), layer_class(layer));
            let err = |message: String| self.layer_error(name, class, message);
            let nodes = layer.get("inbound_nodes").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            if nodes.len() > 1 {
                return Err(err(format!(
                    "called {} times (a shared layer); ferrite reads a chain of layers each called once",
                    nodes.len()
                )));
            }
            let mut inputs = Vec::new();
            if let Some(node) = nodes.first() {
                keras_tensor_sources(node, &mut inputs);
            }
            if inputs.len() > 1 {
                return Err(err(format!(
                    "takes {} inputs ({}): a branching graph; ferrite reads a chain of layers",
                    inputs.len(),
                    inputs.join(", ")
                )));
            }
            if let Some(&from) = inputs.first() {
                if !by_name.contains_key(from) {
                    return Err(err(format!(
                        "its input comes from `{from}`, which is not a layer of the model"
                    )));
                }
                consumers.entry(from).or_default().push(name);
            }
        }
        let ends = |key: &str| -> Result<Vec<&str>> {
            let v = self.config.pointer(&format!("/config/{key}")).unwrap_or(&Value::Null);
            // One endpoint is written `[name, 0, 0]`, several `[[name, 0, 0], …]`.
            let list: Vec<&Value> = match v.as_array() {
                Some(a) if a.first().is_some_and(Value::is_string) => vec![v],
                Some(a) => a.iter().collect(),
                None => Vec::new(),
            };
            Ok(list.iter().filter_map(|e| e.get(0).and_then(Value::as_str)).collect())
        };
        let (inputs, outputs) = (ends("input_layers")?, ends("output_layers")?);
        let (&[input], &[output]) = (inputs.as_slice(), outputs.as_slice()) else {
            return Err(ExportError::config(
                &config_path,
                format!(
                    "the Functional model has inputs {inputs:?} and outputs {outputs:?}; ferrite reads one input and one output"
                ),
            ));
        };
        let mut chain = Vec::with_capacity(layers.len());
        let mut at = input;
        loop {
            let layer = by_name.get(at).copied().ok_or_else(|| {
                ExportError::config(
                    &config_path,
                    format!("the input or output `{at}` is not a layer of the model"),
                )
            })?;
            chain.push(layer);
            if at == output {
                break;
            }
            match consumers.get(at).map(Vec::as_slice) {
                Some(&[next]) => at = next,
                Some(many) => {
                    return Err(self.layer_error(
                        at,
                        layer_class(layer),
                        format!(
                            "its output feeds {} layers ({}): a branching graph; ferrite reads a chain of layers",
                            many.len(),
                            many.join(", ")
                        ),
                    ));
                }
                None => {
                    return Err(self.layer_error(
                        at,
                        layer_class(layer),
                        format!("the chain from the input ends here, not at the output `{output}`"),
                    ));
                }
            }
        }
        if let Some(stray) = layers.iter().find(|l| !chain.iter().any(|c| std::ptr::eq(*c, *l))) {
            return Err(self.layer_error(
                layer_name(stray),
                layer_class(stray),
                "is not on the chain from the input to the output",
            ));
        }
        Ok(chain)
    }

    /// The weights-file group of every layer, by layer name: Keras names each after its class
    /// (snake case), numbered per class in the order of `config.layers`.
    fn weight_groups(&self) -> HashMap<String, String> {
        let layers =
            self.config.pointer("/config/layers").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut groups = HashMap::new();
        for layer in layers {
            let snake = snake_case(layer_class(layer));
            let n = seen.entry(snake.clone()).or_insert(0);
            let group = if *n == 0 { format!("layers/{snake}") } else { format!("layers/{snake}_{n}") };
            *n += 1;
            groups.insert(layer_name(layer).to_string(), group);
        }
        groups
    }

    /// The vocabulary of a `TextVectorization` layer at the head of the model, if there is one.
    fn vocabulary(&self) -> Result<Option<WordVocabulary>> {
        for layer in self.layers()? {
            match layer_class(layer) {
                "InputLayer" => continue,
                "TextVectorization" => return self.text_vectorization(layer).map(Some),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Reads a `TextVectorization` layer's settings and vocabulary (from its config when it was
    /// given one, else from the archive's `assets/…/vocabulary.txt`, written when it was adapted).
    fn text_vectorization(&self, layer: &Value) -> Result<WordVocabulary> {
        let (name, class) = (layer_name(layer), layer_class(layer));
        let cfg = layer.get("config").unwrap_or(&Value::Null);
        let err = |message: String| self.layer_error(name, class, message);
        let text = |key: &str| -> Result<Option<&str>> {
            match cfg.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(err(format!("{key} {other} is not supported (a custom function)"))),
            }
        };
        let mode = text("output_mode")?.unwrap_or("int");
        if mode != "int" {
            return Err(err(format!("output_mode {mode:?} is not supported (only \"int\": token ids)")));
        }
        if !cfg.get("ngrams").is_none_or(Value::is_null) {
            return Err(err("ngrams are not supported".into()));
        }
        let standardize = text("standardize")?;
        let split = text("split")?.unwrap_or("none");
        if cfg.get("output_sequence_length").and_then(Value::as_u64).is_some() {
            log::warn!(
                "layer `{name}` (TextVectorization): output_sequence_length pads or cuts Keras's input; the bundle runs on the prompt's ids as they are"
            );
        }
        let tokens: Vec<String> = match cfg.get("vocabulary") {
            Some(Value::Array(list)) => {
                let words: Vec<String> = list
                    .iter()
                    .map(|t| t.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| err("vocabulary holds a non-string entry".into()))?;
                // Keras prepends the padding "" and "[UNK]" unless the list starts with them.
                if words.len() >= 2 && words[0].is_empty() && words[1] == "[UNK]" {
                    words
                } else {
                    ["".to_string(), "[UNK]".to_string()].into_iter().chain(words).collect()
                }
            }
            Some(Value::String(file)) => {
                return Err(err(format!(
                    "its vocabulary is the file {file:?}, which the archive does not hold: pass it with --vocab"
                )));
            }
            _ => {
                let entry = format!(
                    "assets/{}/vocabulary.txt",
                    self.weight_groups().get(name).cloned().unwrap_or_default()
                );
                let bytes = self.assets.get(&entry).ok_or_else(|| {
                    err(format!("no vocabulary in its config nor an `{entry}` entry (was it adapted?)"))
                })?;
                let text = std::str::from_utf8(bytes).map_err(|e| err(format!("{entry}: not UTF-8: {e}")))?;
                // As Keras reads it back: `splitlines()`, trailing empty lines dropped.
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                while lines.last().is_some_and(String::is_empty) {
                    lines.pop();
                }
                lines
            }
        };
        WordVocabulary::text_vectorization(&self.path.join(name), tokens, standardize, split)
            .map_err(|e| err(e.to_string()))
    }

    /// Walks the model's layers and reads each one's variables into an [`Lstm`].
    fn model(&self) -> Result<Lstm> {
        let config_path = self.path.join(CONFIG_ENTRY);
        let groups = self.weight_groups();
        let mut embedding: Option<(usize, usize, Vec<f32>)> = None;
        let mut lstm_layers: Vec<Layer> = Vec::new();
        let mut hidden: Option<usize> = None;
        let mut head: Option<(Vec<f32>, Vec<f32>)> = None;
        let mut head_activation: Option<String> = None;
        let mut last_returns_sequences = true;
        let mut text_vectorization: Option<usize> = None;
        for layer in self.layers()? {
            let class = layer_class(layer);
            let cfg = layer.get("config").unwrap_or(&Value::Null);
            let name = layer_name(layer);
            let err = |message: String| self.layer_error(name, class, message);
            let group = || groups.get(name).cloned().ok_or_else(|| err("not found in config.layers".into()));
            if head.is_some() && !matches!(class, "Activation" | "Dropout") {
                return Err(err(
                    "layers after the final Dense are not supported (Activation and Dropout are)".into(),
                ));
            }
            match class {
                "InputLayer" => {}
                // Identities at inference.
                "Dropout" | "SpatialDropout1D" | "GaussianDropout" | "GaussianNoise" | "AlphaDropout" => {}
                "TextVectorization" => {
                    if embedding.is_some() || text_vectorization.is_some() {
                        return Err(err("a TextVectorization must come first, once".into()));
                    }
                    text_vectorization = Some(self.text_vectorization(layer)?.len());
                }
                "Embedding" => {
                    if embedding.is_some() || !lstm_layers.is_empty() {
                        return Err(err("the Embedding must come first, once".into()));
                    }
                    if cfg.get("mask_zero").and_then(Value::as_bool) == Some(true) {
                        return Err(
                            err("mask_zero: true is not supported (the graph has no masking)".into()),
                        );
                    }
                    check_not_quantised(cfg, &err)?;
                    let v = usize_of(cfg, "input_dim", &err)?;
                    let e = usize_of(cfg, "output_dim", &err)?;
                    if let Some(words) = text_vectorization.filter(|&w| w > v) {
                        return Err(err(format!(
                            "input_dim {v} is smaller than the TextVectorization's vocabulary of {words}"
                        )));
                    }
                    let var = format!("{}/vars/0", group()?);
                    let table = self.tensor(&var, &format!("{name}.embeddings"), &[v, e])?;
                    embedding = Some((v, e, table));
                }
                "LSTM" => {
                    let Some((_, e, _)) = &embedding else {
                        return Err(err("an LSTM before the Embedding is not supported".into()));
                    };
                    if !last_returns_sequences {
                        return Err(err(
                            "follows an LSTM with return_sequences: false (Keras would reject it too)".into(),
                        ));
                    }
                    check_lstm_config(cfg, &err)?;
                    let units = usize_of(cfg, "units", &err)?;
                    if let Some(h) = hidden.filter(|&h| h != units) {
                        return Err(err(format!(
                            "units {units} differs from the first LSTM's {h}: the bundle's state is one [L, B, H] tensor"
                        )));
                    }
                    let inp = if lstm_layers.is_empty() { *e } else { units };
                    let base = format!("{}/cell/vars", group()?);
                    let kernel =
                        self.tensor(&format!("{base}/0"), &format!("{name}.kernel"), &[inp, 4 * units])?;
                    let recurrent = self.tensor(
                        &format!("{base}/1"),
                        &format!("{name}.recurrent_kernel"),
                        &[units, 4 * units],
                    )?;
                    let bias = if use_bias(cfg) {
                        self.tensor(&format!("{base}/2"), &format!("{name}.bias"), &[4 * units])?
                    } else {
                        vec![0.0; 4 * units]
                    };
                    lstm_layers.push(keras_to_pytorch_lstm(&kernel, &recurrent, bias, inp, units));
                    hidden = Some(units);
                    last_returns_sequences =
                        cfg.get("return_sequences").and_then(Value::as_bool) == Some(true);
                }
                "Dense" => {
                    let (Some((v, _, _)), Some(h)) = (&embedding, hidden) else {
                        return Err(err(
                            "a Dense before the Embedding and LSTM layers is not supported".into()
                        ));
                    };
                    check_not_quantised(cfg, &err)?;
                    let activation = activation_of(cfg, "activation", "linear", &err)?;
                    check_head_activation(activation, &err)?;
                    let units = usize_of(cfg, "units", &err)?;
                    if units != *v {
                        return Err(err(format!(
                            "units {units} differs from the Embedding's input_dim {v}: a next-word model predicts its own vocabulary"
                        )));
                    }
                    let base = format!("{}/vars", group()?);
                    let kernel = self.tensor(&format!("{base}/0"), &format!("{name}.kernel"), &[h, units])?;
                    let bias = if use_bias(cfg) {
                        self.tensor(&format!("{base}/1"), &format!("{name}.bias"), &[units])?
                    } else {
                        vec![0.0; units]
                    };
                    head = Some((transpose(&kernel, h, units), bias));
                    head_activation = Some(activation.to_string());
                }
                "Activation" => {
                    let activation = activation_of(cfg, "activation", "linear", &err)?;
                    if head.is_none() {
                        return Err(err("an Activation is supported only after the final Dense".into()));
                    }
                    check_head_activation(activation, &err)?;
                    if activation == "softmax" && head_activation.as_deref() == Some("softmax") {
                        return Err(err("a second softmax after the Dense's own".into()));
                    }
                    if activation == "softmax" {
                        head_activation = Some("softmax".into());
                    }
                }
                other => {
                    return Err(err(format!(
                        "layer class `{other}` is not supported (ferrite reads [TextVectorization], Embedding, LSTM…, Dense; Dropout and a final Activation allowed)"
                    )));
                }
            }
        }
        let missing =
            |what: &str| ExportError::config(&config_path, format!("the model has no {what} layer"));
        let (vocab, embed, table) = embedding.ok_or_else(|| missing("Embedding"))?;
        let hidden = hidden.ok_or_else(|| missing("LSTM"))?;
        let (head_weight, head_bias) = head.ok_or_else(|| missing("final Dense"))?;
        Ok(Lstm { vocab, embed, hidden, embedding: table, layers: lstm_layers, head_weight, head_bias })
    }
}

/// A layer's name (Functional configs carry it beside `config`, Sequential ones inside).
fn layer_name(layer: &Value) -> &str {
    layer
        .get("name")
        .and_then(Value::as_str)
        .or_else(|| layer.pointer("/config/name").and_then(Value::as_str))
        .unwrap_or("?")
}

fn layer_class(layer: &Value) -> &str {
    layer.get("class_name").and_then(Value::as_str).unwrap_or("?")
}

/// The names of the layers whose outputs a Functional node consumes (each `__keras_tensor__`
/// in its arguments, however nested).
fn keras_tensor_sources<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if map.get("class_name").and_then(Value::as_str) == Some("__keras_tensor__") {
                if let Some(name) = value.pointer("/config/keras_history/0").and_then(Value::as_str) {
                    out.push(name);
                }
                return;
            }
            map.values().for_each(|v| keras_tensor_sources(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| keras_tensor_sources(v, out)),
        _ => {}
    }
}

/// Keras's `to_snake_case` for class names: `LSTM` → `lstm`, `TextVectorization` →
/// `text_vectorization`, `SpatialDropout1D` → `spatial_dropout1d`.
fn snake_case(class: &str) -> String {
    let chars: Vec<char> = class.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        // `(.)([A-Z][a-z]+)` then `([a-z])([A-Z])`, as Keras's two regex passes do.
        let starts_word = c.is_ascii_uppercase()
            && i > 0
            && (chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase())
                || chars[i - 1].is_ascii_lowercase());
        if starts_word {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The final activation: linear or softmax (the bundle emits the logits before it).
fn check_head_activation(activation: &str, err: &impl Fn(String) -> ExportError) -> Result<()> {
    if matches!(activation, "linear" | "softmax") {
        Ok(())
    } else {
        Err(err(format!(
            "activation `{activation}` is not supported (linear or softmax; the bundle emits pre-softmax logits)"
        )))
    }
}

/// A required unsigned integer in a layer's config.
fn usize_of(cfg: &Value, key: &str, err: &impl Fn(String) -> ExportError) -> Result<usize> {
    cfg.get(key)
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .ok_or_else(|| err(format!("missing or non-integer `{key}`")))
}

/// An activation named in a layer's config (`default` when absent; Keras writes `null` for none,
/// which is linear). A serialised custom function (an object) is an error, not a guess.
fn activation_of<'a>(
    cfg: &'a Value,
    key: &str,
    default: &'a str,
    err: &impl Fn(String) -> ExportError,
) -> Result<&'a str> {
    match cfg.get(key) {
        None => Ok(default),
        Some(Value::Null) => Ok("linear"),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(err(format!("{key} {other} is not supported"))),
    }
}

fn use_bias(cfg: &Value) -> bool {
    cfg.get("use_bias").and_then(Value::as_bool).unwrap_or(true)
}

/// Keras's int8/int4/float8 layers store other variables than the float ones read here.
fn check_not_quantised(cfg: &Value, err: &impl Fn(String) -> ExportError) -> Result<()> {
    match cfg.get("quantization_config") {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(err("Keras-quantised layers are not supported (export the float model)".into())),
    }
}

/// Rejects LSTM options the ONNX graph would silently compute differently. Dropout, recurrent
/// dropout and `unroll` do not change inference; `return_sequences` is handled by the caller.
fn check_lstm_config(cfg: &Value, err: &impl Fn(String) -> ExportError) -> Result<()> {
    for flag in ["go_backwards", "stateful", "return_state"] {
        if cfg.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(err(format!("{flag}: true is not supported")));
        }
    }
    // tract honours only the default activations of the ONNX LSTM op.
    for (key, default) in [("activation", "tanh"), ("recurrent_activation", "sigmoid")] {
        let value = activation_of(cfg, key, default, err)?;
        if value != default {
            return Err(err(format!("{key} `{value}` is not supported (only {default})")));
        }
    }
    check_not_quantised(cfg, err)
}

/// Converts one Keras LSTM layer into PyTorch's layout. Keras computes
/// `z = x·kernel + h·recurrent_kernel + bias` with `kernel [in, 4H]`, `recurrent_kernel [H, 4H]`
/// and the gates as column blocks in the order (i, f, c, o). PyTorch's (i, f, g, o) is the same
/// order (its `g` is Keras's `c`), with weights stored `[4H, in]`: so only transposes, and the one
/// Keras bias becomes `bias_ih` with a zero `bias_hh`.
fn keras_to_pytorch_lstm(
    kernel: &[f32],
    recurrent: &[f32],
    bias: Vec<f32>,
    inp: usize,
    hidden: usize,
) -> Layer {
    Layer {
        weight_ih: transpose(kernel, inp, 4 * hidden),
        weight_hh: transpose(recurrent, hidden, 4 * hidden),
        bias_ih: bias,
        bias_hh: vec![0.0; 4 * hidden],
    }
}

/// Checks `vocab.json` beside the archive, when present: token → id with every id `< vocab`.
fn check_vocab(archive: &Path, vocab: usize) -> Result<()> {
    let Some(path) = vocab_path(archive) else { return Ok(()) };
    let text = std::fs::read_to_string(&path).map_err(|e| ExportError::io(&path, e))?;
    let map: BTreeMap<String, u64> = serde_json::from_str(&text)
        .map_err(|e| ExportError::config(&path, format!("expected {{token: id}}: {e}")))?;
    if let Some((token, id)) = map.iter().find(|&(_, &id)| id as usize >= vocab) {
        return Err(ExportError::config(
            &path,
            format!("token {token:?} has id {id}, outside the model's vocabulary of {vocab}"),
        ));
    }
    Ok(())
}

/// `vocab.json` beside the archive, if it exists.
pub fn vocab_path(archive: &Path) -> Option<PathBuf> {
    let dir = archive.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Some(dir.join(VOCAB_FILE)).filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Keras LSTM step computed the Keras way (gate column blocks i, f, c, o) equals the same
    /// step computed the PyTorch way on the converted weights (gate row blocks i, f, g, o).
    #[test]
    fn converted_weights_compute_the_same_step() {
        let (inp, h) = (3usize, 2usize);
        let val = |i: usize| ((i * 37 % 17) as f32 - 8.0) / 10.0;
        let kernel: Vec<f32> = (0..inp * 4 * h).map(val).collect();
        let recurrent: Vec<f32> = (0..h * 4 * h).map(|i| val(i + 5)).collect();
        let bias: Vec<f32> = (0..4 * h).map(|i| val(i + 11)).collect();
        let x = [0.3f32, -0.7, 0.5];
        let (h0, c0) = ([0.2f32, -0.4], [0.1f32, 0.6]);
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());

        // Keras: z[j] = Σ x[k]·kernel[k, j] + Σ h[k]·recurrent[k, j] + bias[j].
        let z_keras: Vec<f32> = (0..4 * h)
            .map(|j| {
                (0..inp).map(|k| x[k] * kernel[k * 4 * h + j]).sum::<f32>()
                    + (0..h).map(|k| h0[k] * recurrent[k * 4 * h + j]).sum::<f32>()
                    + bias[j]
            })
            .collect();
        let step = |z: &[f32]| -> Vec<f32> {
            (0..h)
                .map(|u| {
                    let (i, f, c, o) = (sig(z[u]), sig(z[h + u]), z[2 * h + u].tanh(), sig(z[3 * h + u]));
                    o * (f * c0[u] + i * c).tanh()
                })
                .collect()
        };
        // PyTorch: z[r] = Σ W_ih[r, k]·x[k] + b_ih[r] + Σ W_hh[r, k]·h[k] + b_hh[r].
        let layer = keras_to_pytorch_lstm(&kernel, &recurrent, bias.clone(), inp, h);
        let z_torch: Vec<f32> = (0..4 * h)
            .map(|r| {
                (0..inp).map(|k| layer.weight_ih[r * inp + k] * x[k]).sum::<f32>()
                    + layer.bias_ih[r]
                    + (0..h).map(|k| layer.weight_hh[r * h + k] * h0[k]).sum::<f32>()
                    + layer.bias_hh[r]
            })
            .collect();
        for (a, b) in step(&z_keras).iter().zip(step(&z_torch)) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
