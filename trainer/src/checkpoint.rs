//! Checkpoint directories: what the exporter reads (`config.json`, `model.safetensors`, the
//! tokenizer file) plus the trainer's own resume state in one extra file, `trainer_state.bin`,
//! which nothing else needs to understand. Every file is written under a temporary name, synced
//! and renamed into place, with the resume state renamed last; the model file records its step
//! in its safetensors metadata so a resume can tell a checkpoint torn by a crash between renames
//! from a whole one. It does not keep a history of checkpoints: the directory holds the latest.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::model::{ModelConfig, Weights};
use crate::tokenizer::TextTokenizer;

/// Model config file name (read by the exporter and transformers).
pub const CONFIG_FILE: &str = "config.json";
/// Weights file name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The trainer's resume state.
pub const STATE_FILE: &str = "trainer_state.bin";

const STATE_MAGIC: &[u8; 16] = b"ferrite-trainer\x01";
const STEP_KEY: &str = "ferrite_step";

/// Everything besides weights and optimizer moments that `--resume` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Steps the run was asked for.
    pub total_steps: u64,
    /// Seed: with `step` it determines every future batch (see `corpus::train_batch`).
    pub seed: u64,
    /// `lstm` or `gpt2`.
    pub arch: String,
    /// Batch size.
    pub batch: usize,
    /// Context length.
    pub context: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Wall-clock training seconds so far.
    pub elapsed_s: f64,
    /// Training tokens consumed so far.
    pub tokens_seen: u64,
}

/// Writes a checkpoint: model, config, tokenizer, then the resume state with `optimizer` bytes.
pub fn save(
    dir: &Path,
    config: &ModelConfig,
    tensors: &[(String, TensorData)],
    tokenizer: &TextTokenizer,
    state: &TrainerState,
    optimizer: &[u8],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();

    let tmp = dir.join(format!(".{CONFIG_FILE}.tmp"));
    write_synced(&tmp, &config.to_json())?;
    staged.push((tmp, dir.join(CONFIG_FILE)));

    let (tmp, name) = tokenizer.write_temp(dir)?;
    sync_file(&tmp)?;
    staged.push((tmp, dir.join(name)));

    let tmp = dir.join(format!(".{WEIGHTS_FILE}.tmp"));
    write_safetensors(&tmp, tensors, state.step)?;
    staged.push((tmp, dir.join(WEIGHTS_FILE)));

    let json = serde_json::to_vec(state).map_err(|e| TrainError::io(dir, e.into()))?;
    let mut bytes = Vec::with_capacity(24 + json.len() + optimizer.len());
    bytes.extend_from_slice(STATE_MAGIC);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(optimizer);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    write_synced(&tmp, &bytes)?;
    staged.push((tmp, dir.join(STATE_FILE)));

    for (tmp, path) in staged {
        std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))?;
    }
    // Make the renames themselves durable; not all platforms can open a directory, so a failure
    // here only weakens crash safety and is not reported.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| TrainError::io(path, e))?;
    f.write_all(bytes).map_err(|e| TrainError::io(path, e))?;
    f.sync_all().map_err(|e| TrainError::io(path, e))
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(|e| TrainError::io(path, e))
}

fn write_safetensors(path: &Path, tensors: &[(String, TensorData)], step: u64) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, data)| {
            let data = data.clone().convert::<f32>();
            let values = data.as_slice::<f32>().map(<[f32]>::to_vec).unwrap_or_default();
            let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), data.shape().as_slice().to_vec(), raw)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, raw)| {
            TensorView::new(Dtype::F32, shape.clone(), raw)
                .map(|v| (name.as_str(), v))
                .map_err(|e| TrainError::checkpoint(path, format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // transformers refuses safetensors files without `format` metadata.
    let metadata =
        HashMap::from([("format".to_string(), "pt".to_string()), (STEP_KEY.to_string(), step.to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path)
        .map_err(|e| TrainError::checkpoint(path, e.to_string()))?;
    sync_file(path)
}

/// A model read back from a checkpoint directory.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// Its `config.json`.
    pub config: ModelConfig,
    /// Its weights by name.
    pub weights: Weights,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// The step recorded in the weights file (absent for files ferrite did not write).
    pub step: Option<u64>,
}

/// Reads `config.json`, `model.safetensors` and the tokenizer of a checkpoint directory.
pub fn load_model(dir: &Path) -> Result<LoadedModel> {
    let config_path = dir.join(CONFIG_FILE);
    let bytes = std::fs::read(&config_path).map_err(|e| TrainError::io(&config_path, e))?;
    let config = ModelConfig::from_json(&bytes).map_err(|e| TrainError::checkpoint(&config_path, e))?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
    let step = meta.metadata().as_ref().and_then(|m| m.get(STEP_KEY)).and_then(|s| s.parse().ok());
    let st = SafeTensors::deserialize(&bytes).map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(TrainError::checkpoint(
                &path,
                format!("{name}: dtype {:?}, expected F32", view.dtype()),
            ));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        tensors.insert(name, TensorData::new(values, view.shape().to_vec()));
    }
    let tokenizer = TextTokenizer::load(dir)?;
    Ok(LoadedModel { config, weights: Weights::new(tensors), tokenizer, step })
}

/// Reads `trainer_state.bin`: the state and the optimizer's burnpack bytes.
pub fn load_state(dir: &Path) -> Result<(TrainerState, Vec<u8>)> {
    read_state(&dir.join(STATE_FILE))
}

/// Finishes a save that was killed between renaming the new weights and renaming the new resume
/// state (the state is renamed last, as the commit). Every file of a save is complete and synced
/// before the first rename, so the new state is whole under its temporary name; it is renamed
/// into place only when its step is the weights' step and the current state's is not. Returns
/// whether it did. Without it such a checkpoint refused `--resume` ("weights are from step N but
/// the resume state from step M"); tests/kill_harness.rs kills saves at random points.
pub fn finish_interrupted_save(dir: &Path) -> Result<bool> {
    let staged = dir.join(format!(".{STATE_FILE}.tmp"));
    let weights = dir.join(WEIGHTS_FILE);
    if !staged.is_file() || !weights.is_file() {
        return Ok(false);
    }
    // A temporary file from a save killed while writing it does not parse, or has another step.
    let Ok((pending, _)) = read_state(&staged) else { return Ok(false) };
    let bytes = std::fs::read(&weights).map_err(|e| TrainError::io(&weights, e))?;
    let Ok((_, meta)) = SafeTensors::read_metadata(&bytes) else { return Ok(false) };
    let step: Option<u64> =
        meta.metadata().as_ref().and_then(|m| m.get(STEP_KEY)).and_then(|s| s.parse().ok());
    let current = load_state(dir).ok().map(|(s, _)| s.step);
    if step != Some(pending.step) || current == Some(pending.step) {
        return Ok(false);
    }
    let path = dir.join(STATE_FILE);
    std::fs::rename(&staged, &path).map_err(|e| TrainError::io(&path, e))?;
    log::warn!("{}: finished a save interrupted at step {}", dir.display(), pending.step);
    Ok(true)
}

fn read_state(path: &Path) -> Result<(TrainerState, Vec<u8>)> {
    let path = path.to_path_buf();
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let bad = || TrainError::checkpoint(&path, "not a ferrite trainer state file");
    if bytes.len() < 24 || &bytes[..16] != STATE_MAGIC {
        return Err(bad());
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| bad())?;
    let end = len.checked_add(24).ok_or_else(bad)?;
    let json = bytes.get(24..end).ok_or_else(bad)?;
    let state: TrainerState =
        serde_json::from_slice(json).map_err(|e| TrainError::checkpoint(&path, e.to_string()))?;
    Ok((state, bytes[24 + len..].to_vec()))
}

/// Whether `dir` already holds a trainer checkpoint (so a fresh run would overwrite it).
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file() || dir.join(WEIGHTS_FILE).is_file()
}
