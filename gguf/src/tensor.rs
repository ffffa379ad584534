//! Tensor infos: name, dimensions, ggml type and where the data lies, each checked against the
//! file when it is read.

use std::ops::Range;

use crate::cursor::Cursor;
use crate::error::{Error, Result};
pub use crate::types::GgmlType;

/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// One tensor's description. Dimensions are in GGUF's order: `dims()[0]` (ne0) varies fastest,
/// so a matrix of `rows` rows of `cols` values has `dims() == [cols, rows]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
    n_elements: u64,
    range: Range<usize>,
}

impl TensorInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions, ne0 (fastest-varying) first; empty for a scalar.
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Dimensions in row-major order (slowest first), as NumPy and PyTorch write shapes.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    /// Offset of the data from the start of the data section, as the file stores it.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// The data's bytes within the whole file.
    pub fn byte_range(&self) -> Range<usize> {
        self.range.clone()
    }

    pub fn n_bytes(&self) -> usize {
        self.range.len()
    }
}

/// A tensor info as the file declares it, before its place in the file is known.
pub(crate) struct RawTensorInfo {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
}

impl RawTensorInfo {
    /// Fewest bytes one tensor info takes: name length, n_dims, type, offset.
    pub(crate) const MIN_BYTES: usize = 8 + 4 + 4 + 8;

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn read(c: &mut Cursor<'_>, i: u64) -> Result<RawTensorInfo> {
        let name = c.string(&|| format!("the name of tensor {i}"))?;
        let n_dims = c.u32(&|| format!("the number of dimensions of tensor {name:?}"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(Error::TooManyDims { name, n_dims, max: MAX_DIMS });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(&|| format!("dimension {d} of tensor {name:?}"))?);
        }
        let code = c.u32(&|| format!("the type of tensor {name:?}"))?;
        let ty = GgmlType::from_code(code).ok_or_else(|| Error::UnknownType { name: name.clone(), code })?;
        let offset = c.u64(&|| format!("the data offset of tensor {name:?}"))?;
        Ok(RawTensorInfo { name, dims, ty, offset })
    }

    /// Places the tensor in the file: its size from its shape and type (checked arithmetic), its
    /// offset aligned, its bytes inside the file.
    pub(crate) fn place(self, data_start: u64, alignment: u64, file_len: u64) -> Result<TensorInfo> {
        let RawTensorInfo { name, dims, ty, offset } = self;
        let overflow = |detail: String| Error::Overflow { what: format!("tensor {name:?}"), detail };
        // Zero-sized dimensions are allowed, but the other dimensions must still have a product
        // that fits: a zero must not hide a dimension of 2^63 from code that divides by ne0.
        let mut nonzero: u64 = 1;
        for &d in &dims {
            nonzero = nonzero
                .checked_mul(d.max(1))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| overflow(format!("the dimensions {dims:?} multiply past 2^63 elements")))?;
        }
        let n_elements = if dims.contains(&0) { 0 } else { nonzero };
        let (block, block_bytes) = ty.block();
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % block != 0 {
            return Err(Error::BadShape { name, ty, ne0, block });
        }
        let n_bytes = (n_elements / block)
            .checked_mul(block_bytes)
            .ok_or_else(|| overflow(format!("{n_elements} {ty} values take more than 2^64 bytes")))?;
        if offset % alignment != 0 {
            return Err(Error::Misaligned { name, offset, alignment });
        }
        let out_of_bounds =
            |start: u64, end: u64| Error::OutOfBounds { name: name.clone(), start, end, len: file_len };
        let start = data_start.checked_add(offset).ok_or_else(|| out_of_bounds(u64::MAX, u64::MAX))?;
        let end = start.checked_add(n_bytes).ok_or_else(|| out_of_bounds(start, u64::MAX))?;
        if end > file_len {
            return Err(out_of_bounds(start, end));
        }
        // Inside the file, hence inside the address space: these conversions cannot fail.
        let range = usize::try_from(start).unwrap_or(usize::MAX)..usize::try_from(end).unwrap_or(usize::MAX);
        Ok(TensorInfo { name, dims, ty, offset, n_elements, range })
    }
}
