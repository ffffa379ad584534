//! `golden.npz`: the sample inputs and the fp32 outputs they produce, so any runtime can check
//! itself against the exporter's reference without the source framework.
//!
//! Written with `npyz` (the crate ferrite's CLI reads .npy/.npz with); arrays are named after the
//! graph's inputs and outputs. It does not read goldens back: tests and the CLI do that.

use std::path::Path;

use ferrite_runtime::{Tensor, TensorData};
use npyz::WriterBuilder;

use crate::error::{ExportError, Result};

fn err(path: &Path, e: impl std::fmt::Display) -> ExportError {
    ExportError::Golden { path: path.into(), message: e.to_string() }
}

fn put<T: npyz::Serialize + npyz::AutoSerialize + Copy, W: std::io::Write + std::io::Seek>(
    npz: &mut npyz::npz::NpzWriter<W>,
    name: &str,
    shape: &[usize],
    data: &[T],
) -> std::io::Result<()> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npz.array::<T>(name, Default::default())?.default_dtype().shape(&shape).begin_nd()?;
    w.extend(data.iter().copied())?;
    w.finish()
}

/// Writes `arrays` (name, tensor) into the .npz file `path`.
pub fn write_npz(path: &Path, arrays: &[(String, Tensor)]) -> Result<()> {
    let mut npz = npyz::npz::NpzWriter::create(path).map_err(|e| err(path, e))?;
    for (name, t) in arrays {
        let shape = t.shape();
        let written = match t.data() {
            TensorData::F32(v) => put(&mut npz, name, shape, v),
            TensorData::I64(v) => put(&mut npz, name, shape, v),
            TensorData::I32(v) => put(&mut npz, name, shape, v),
            TensorData::U8(v) => put(&mut npz, name, shape, v),
            TensorData::I8(v) => put(&mut npz, name, shape, v),
            TensorData::F16(v) => {
                let wide: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
                put(&mut npz, name, shape, &wide)
            }
        };
        written.map_err(|e| err(path, e))?;
    }
    let file = npz.zip_writer().finish().map_err(|e| err(path, e))?;
    file.into_inner().map_err(|e| err(path, e.into_error()))?.sync_all().map_err(|e| err(path, e))
}
