//! Keras 3 `.keras` archives of `Sequential[Embedding, LSTM…, Dense]` (a next-word model), read
//! into the same LSTM language model as ferrite's own checkpoints ([`super::lstm::Lstm`]) and so
//! exported as an `lstm` bundle with the same stateful interface.
//!
//! A `.keras` file is a zip holding `config.json` (the model's layers, in order),
//! `metadata.json` (the Keras version) and `model.weights.h5`, in which Keras stores each layer's
//! variables by index under a path made from its *class* name, numbered per class in layer order
//! (`layers/lstm/cell/vars/0`, `layers/lstm_1/cell/vars/0`…), not from the layer's own name. The
//! archive is read with the `zip` crate and the weights with `hdf5-pure` (no libhdf5, no Python).
//!
//! It deliberately accepts only what the ONNX `LSTM` graph computes exactly: forward, stateless
//! LSTMs with Keras's default activations (tanh, sigmoid), one shared `units`, no masking; a final
//! `Dense` whose activation is linear or softmax; `Dropout` (an identity at inference). Anything
//! else is an error naming the layer. The bundle's `logits` are always the Dense layer's output
//! *before* a softmax, every position included, even when the last LSTM has
//! `return_sequences: false` (Keras then serves only the last position's probabilities).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::lstm::{Layer, Lstm};
use crate::checkpoint::transpose;
use crate::error::{ExportError, Result};

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

/// The opened archive: its parsed config and its weights file.
struct Archive {
    path: PathBuf,
    config: Value,
    weights: hdf5_pure::File,
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
        Ok(Archive { path: path.into(), config, weights })
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

    /// Walks `config.json`'s layers and reads each one's variables into an [`Lstm`].
    fn model(&self) -> Result<Lstm> {
        let config_path = self.path.join(CONFIG_ENTRY);
        let class = self.config.get("class_name").and_then(Value::as_str).unwrap_or("?");
        if class != "Sequential" {
            return Err(ExportError::UnknownArchitecture(format!(
                "{}: a Keras `{class}` model; ferrite reads Sequential[Embedding, LSTM…, Dense]",
                self.path.display()
            )));
        }
        let layers = self
            .config
            .pointer("/config/layers")
            .and_then(Value::as_array)
            .ok_or_else(|| ExportError::config(&config_path, "no `config.layers` list"))?;

        // Keras names each layer's weight group after its class, numbered per class in order.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut group = |snake: &'static str| {
            let n = seen.entry(snake).or_insert(0);
            let path = if *n == 0 { format!("layers/{snake}") } else { format!("layers/{snake}_{n}") };
            *n += 1;
            path
        };

        let mut embedding: Option<(usize, usize, Vec<f32>)> = None;
        let mut lstm_layers: Vec<Layer> = Vec::new();
        let mut hidden: Option<usize> = None;
        let mut head: Option<(Vec<f32>, Vec<f32>)> = None;
        let mut last_returns_sequences = true;
        for layer in layers {
            let class = layer.get("class_name").and_then(Value::as_str).unwrap_or("?");
            let cfg = layer.get("config").unwrap_or(&Value::Null);
            let name = cfg.get("name").and_then(Value::as_str).unwrap_or("?");
            let err = |message: String| self.layer_error(name, class, message);
            if head.is_some() {
                return Err(err("layers after the final Dense are not supported".into()));
            }
            match class {
                "InputLayer" => {}
                // An identity at inference.
                "Dropout" => {}
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
                    let var = format!("{}/vars/0", group("embedding"));
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
                    let base = format!("{}/cell/vars", group("lstm"));
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
                    if !matches!(activation, "linear" | "softmax") {
                        return Err(err(format!(
                            "activation `{activation}` is not supported (linear or softmax; the bundle emits pre-softmax logits)"
                        )));
                    }
                    let units = usize_of(cfg, "units", &err)?;
                    if units != *v {
                        return Err(err(format!(
                            "units {units} differs from the Embedding's input_dim {v}: a next-word model predicts its own vocabulary"
                        )));
                    }
                    let base = format!("{}/vars", group("dense"));
                    let kernel = self.tensor(&format!("{base}/0"), &format!("{name}.kernel"), &[h, units])?;
                    let bias = if use_bias(cfg) {
                        self.tensor(&format!("{base}/1"), &format!("{name}.bias"), &[units])?
                    } else {
                        vec![0.0; units]
                    };
                    head = Some((transpose(&kernel, h, units), bias));
                }
                other => {
                    return Err(err(format!(
                        "layer class `{other}` is not supported (ferrite reads Sequential[Embedding, LSTM…, Dense], Dropout allowed)"
                    )));
                }
            }
        }
        let missing =
            |what: &str| ExportError::config(&config_path, format!("the Sequential has no {what} layer"));
        let (vocab, embed, table) = embedding.ok_or_else(|| missing("Embedding"))?;
        let hidden = hidden.ok_or_else(|| missing("LSTM"))?;
        let (head_weight, head_bias) = head.ok_or_else(|| missing("final Dense"))?;
        Ok(Lstm { vocab, embed, hidden, embedding: table, layers: lstm_layers, head_weight, head_bias })
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
