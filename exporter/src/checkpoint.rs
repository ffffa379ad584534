//! Reading weights from a safetensors checkpoint, checked against the shape the config implies.
//!
//! Every tensor comes out as row-major f32 (f16/bf16 are widened), after its shape and its
//! finiteness were checked, so architectures never see a malformed weight. It does not know any
//! architecture's names: callers ask for the names they expect.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::error::{ExportError, Result};

/// A safetensors file read into memory.
pub struct Checkpoint {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Prepended to every requested name when the file uses it (e.g. GPT-2's `transformer.`).
    prefix: String,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Reads `path` and checks that it parses as safetensors.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| ExportError::io(path, e))?;
        SafeTensors::deserialize(&bytes)
            .map_err(|e| ExportError::Checkpoint { path: path.into(), message: e.to_string() })?;
        Ok(Checkpoint { path: path.into(), bytes, prefix: String::new() })
    }

    fn view(&self) -> Result<SafeTensors<'_>> {
        // Parsing only reads the header: cheaper than holding a self-referential view.
        SafeTensors::deserialize(&self.bytes)
            .map_err(|e| ExportError::Checkpoint { path: self.path.clone(), message: e.to_string() })
    }

    /// All tensor names in the file.
    pub fn names(&self) -> Result<Vec<String>> {
        Ok(self.view()?.names().into_iter().map(String::from).collect())
    }

    /// Whether the file holds `name` (prefix applied).
    pub fn contains(&self, name: &str) -> bool {
        self.view().is_ok_and(|v| v.tensor(&format!("{}{name}", self.prefix)).is_ok())
    }

    /// Makes every later lookup prepend `prefix` (GPT-2 files come with and without `transformer.`).
    pub fn set_prefix(&mut self, prefix: &str) {
        self.prefix = prefix.to_string();
    }

    /// The tensor `name` as f32, checked to have shape `expected` and only finite values.
    pub fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let st = self.view()?;
        let t = st.tensor(&full).map_err(|_| ExportError::MissingTensor { name: full.clone() })?;
        if t.shape() != expected {
            return Err(ExportError::TensorShape {
                name: full,
                expected: expected.to_vec(),
                found: t.shape().to_vec(),
            });
        }
        let data = t.data();
        let values: Vec<f32> = match t.dtype() {
            Dtype::F32 => {
                data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            Dtype::F16 => {
                data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            Dtype::BF16 => {
                data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            other => {
                return Err(ExportError::TensorDType { name: full, dtype: format!("{other:?}") });
            }
        };
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(ExportError::NonFinite { name: full, count: bad });
        }
        Ok(values)
    }
}

/// Transposes a row-major `[rows, cols]` matrix.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}
