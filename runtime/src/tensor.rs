//! A small owned tensor and a borrowed view, enough to feed and read ONNX models.
//!
//! Deliberately not an array library: no arithmetic, no strides, row-major only. The element
//! types are the ones ferrite's models use (f32, f16, i64, i32, u8, i8).

use std::fmt;

use half::f16;

use crate::error::{Error, Result};

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// 64-bit signed integer (token ids, shapes).
    I64,
    /// 32-bit signed integer.
    I32,
    /// 8-bit unsigned integer (quantised activations).
    U8,
    /// 8-bit signed integer (quantised weights).
    I8,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 => 2,
            DType::I64 => 8,
            DType::U8 | DType::I8 => 1,
        }
    }

    /// The lower-case name used in the CLI, JSON output and error messages (`f32`, `i64`…).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::U8 => "u8",
            DType::I8 => "i8",
        }
    }

    /// Maps an ONNX `TensorProto.DataType` code to a dtype this runtime can carry.
    pub fn from_onnx(code: i32) -> Option<DType> {
        match code {
            1 => Some(DType::F32),
            2 => Some(DType::U8),
            3 => Some(DType::I8),
            6 => Some(DType::I32),
            7 => Some(DType::I64),
            10 => Some(DType::F16),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// The Rust types a [`Tensor`] can hold. Sealed: the set is the runtime's contract.
pub trait Element: Copy + Default + Send + Sync + fmt::Debug + sealed::Sealed + 'static {
    /// The matching dtype.
    const DTYPE: DType;
    #[doc(hidden)]
    fn wrap(data: Vec<Self>) -> TensorData;
    #[doc(hidden)]
    fn slice(data: &TensorData) -> Option<&[Self]>;
    #[doc(hidden)]
    fn wrap_view(data: &[Self]) -> TensorDataView<'_>;
}

/// Owned storage of a tensor, one variant per dtype.
#[derive(Clone, PartialEq)]
#[allow(missing_docs)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    I8(Vec<i8>),
}

/// Borrowed storage of a tensor view, one variant per dtype.
#[derive(Clone, Copy, PartialEq)]
#[allow(missing_docs)]
pub enum TensorDataView<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    I64(&'a [i64]),
    I32(&'a [i32]),
    U8(&'a [u8]),
    I8(&'a [i8]),
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn wrap(data: Vec<Self>) -> TensorData {
                TensorData::$variant(data)
            }
            fn slice(data: &TensorData) -> Option<&[Self]> {
                match data {
                    TensorData::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap_view(data: &[Self]) -> TensorDataView<'_> {
                TensorDataView::$variant(data)
            }
        }
    };
}
element!(f32, F32);
element!(f16, F16);
element!(i64, I64);
element!(i32, I32);
element!(u8, U8);
element!(i8, I8);

/// Number of elements of `shape`, or a `ResourceLimit` error when the product overflows.
pub fn element_count(shape: &[usize]) -> Result<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
        Error::ResourceLimit(format!("shape {} has more elements than fit in memory", ShapeDisplay(shape)))
    })
}

/// Formats a concrete shape as `[2, 64]`.
pub struct ShapeDisplay<'a>(pub &'a [usize]);

impl fmt::Display for ShapeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

fn check_len(shape: &[usize], len: usize) -> Result<()> {
    let n = element_count(shape)?;
    if n != len {
        return Err(Error::InvalidInput(format!(
            "shape {} needs {n} elements but {len} were given",
            ShapeDisplay(shape)
        )));
    }
    Ok(())
}

/// An owned, row-major tensor.
///
/// ```
/// use ferrite_runtime::{DType, Tensor};
/// let t = Tensor::new(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
/// assert_eq!(t.dtype(), DType::F32);
/// assert_eq!(t.as_slice::<f32>().unwrap()[4], 5.0);
/// assert!(Tensor::new(vec![2, 2], vec![1i64]).is_err());
/// ```
#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that `data` has exactly as many elements as `shape` says.
    pub fn new<T: Element>(shape: Vec<usize>, data: Vec<T>) -> Result<Tensor> {
        check_len(&shape, data.len())?;
        Ok(Tensor { shape, data: T::wrap(data) })
    }

    /// Builds a tensor from already-typed storage, checking the element count.
    pub fn from_data(shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
        let len = match &data {
            TensorData::F32(v) => v.len(),
            TensorData::F16(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::U8(v) => v.len(),
            TensorData::I8(v) => v.len(),
        };
        check_len(&shape, len)?;
        Ok(Tensor { shape, data })
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The tensor's element type.
    pub fn dtype(&self) -> DType {
        self.view().dtype()
    }

    /// The typed storage.
    pub fn data(&self) -> &TensorData {
        &self.data
    }

    /// The elements as a slice of `T`, or `DTypeMismatch` when `T` is not the tensor's dtype.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        T::slice(&self.data).ok_or_else(|| Error::DTypeMismatch {
            input: "<tensor>".into(),
            expected: T::DTYPE.to_string(),
            got: self.dtype().to_string(),
        })
    }

    /// A borrowed view of this tensor.
    pub fn view(&self) -> TensorView<'_> {
        let data = match &self.data {
            TensorData::F32(v) => TensorDataView::F32(v),
            TensorData::F16(v) => TensorDataView::F16(v),
            TensorData::I64(v) => TensorDataView::I64(v),
            TensorData::I32(v) => TensorDataView::I32(v),
            TensorData::U8(v) => TensorDataView::U8(v),
            TensorData::I8(v) => TensorDataView::I8(v),
        };
        TensorView { shape: &self.shape, data }
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({} {})", self.dtype(), ShapeDisplay(&self.shape))
    }
}

/// A borrowed tensor: the caller keeps ownership of the buffer, backends read it in place
/// where they can (ONNX Runtime does; tract copies).
#[derive(Clone, Copy, PartialEq)]
pub struct TensorView<'a> {
    shape: &'a [usize],
    data: TensorDataView<'a>,
}

impl<'a> TensorView<'a> {
    /// Wraps a caller's buffer, checking the element count.
    ///
    /// ```
    /// use ferrite_runtime::TensorView;
    /// let ids = [1i64, 2, 3];
    /// let v = TensorView::new(&[1, 3], &ids).unwrap();
    /// assert_eq!(v.shape(), &[1, 3]);
    /// ```
    pub fn new<T: Element>(shape: &'a [usize], data: &'a [T]) -> Result<TensorView<'a>> {
        check_len(shape, data.len())?;
        Ok(TensorView { shape, data: T::wrap_view(data) })
    }

    /// The view's shape.
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }

    /// The typed borrowed storage.
    pub fn data(&self) -> TensorDataView<'a> {
        self.data
    }

    /// The view's element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            TensorDataView::F32(_) => DType::F32,
            TensorDataView::F16(_) => DType::F16,
            TensorDataView::I64(_) => DType::I64,
            TensorDataView::I32(_) => DType::I32,
            TensorDataView::U8(_) => DType::U8,
            TensorDataView::I8(_) => DType::I8,
        }
    }

    /// Copies the view into an owned tensor.
    pub fn to_owned(&self) -> Tensor {
        let data = match self.data {
            TensorDataView::F32(v) => TensorData::F32(v.to_vec()),
            TensorDataView::F16(v) => TensorData::F16(v.to_vec()),
            TensorDataView::I64(v) => TensorData::I64(v.to_vec()),
            TensorDataView::I32(v) => TensorData::I32(v.to_vec()),
            TensorDataView::U8(v) => TensorData::U8(v.to_vec()),
            TensorDataView::I8(v) => TensorData::I8(v.to_vec()),
        };
        Tensor { shape: self.shape.to_vec(), data }
    }
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TensorView({} {})", self.dtype(), ShapeDisplay(self.shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_overflow_is_a_resource_limit() {
        let err = element_count(&[usize::MAX, 2]).unwrap_err();
        assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
    }

    #[test]
    fn wrong_length_is_refused() {
        assert!(Tensor::new(vec![3], vec![1u8, 2]).is_err());
        assert!(TensorView::new(&[0], &[] as &[i8]).is_ok());
    }

    #[test]
    fn as_slice_checks_the_dtype() {
        let t = Tensor::new(vec![1], vec![7i32]).unwrap();
        assert_eq!(t.as_slice::<i32>().unwrap(), &[7]);
        assert!(matches!(t.as_slice::<f32>(), Err(Error::DTypeMismatch { .. })));
    }
}
