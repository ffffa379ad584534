//! Running a raw ONNX model with caller-provided buffers: tensor descriptors, sessions, and the
//! model's interface (names, dtypes, declared shapes).

use std::ffi::{CString, c_char, c_void};
use std::mem::size_of;

use ferrite_runtime::model::Dim;
use ferrite_runtime::tensor::element_count;
use ferrite_runtime::{DType, Session, TensorData, TensorView, f16};

use crate::bundle::ferrite_model;
use crate::status::{Fail, FfiResult, HandleError, ferrite_status, guard, on_handle};
use crate::util::{
    Versioned, clear_out, destroy, give, handle_mut, handle_ref, slice_arg, str_arg, write_result,
};

/// Most dimensions a tensor passed through the C API has.
pub const FERRITE_MAX_RANK: usize = 8;

/// Element type of a tensor (a value for `ferrite_input.dtype`, `ferrite_output.dtype`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum ferrite_dtype {
    /// 32-bit float (`float`).
    FERRITE_DTYPE_F32 = 0,
    /// 16-bit IEEE float, passed as its bits (`uint16_t`).
    FERRITE_DTYPE_F16 = 1,
    /// `int64_t` (token ids).
    FERRITE_DTYPE_I64 = 2,
    /// `int32_t`.
    FERRITE_DTYPE_I32 = 3,
    /// `uint8_t`.
    FERRITE_DTYPE_U8 = 4,
    /// `int8_t`.
    FERRITE_DTYPE_I8 = 5,
}

const DTYPES: [(ferrite_dtype, DType); 6] = [
    (ferrite_dtype::FERRITE_DTYPE_F32, DType::F32),
    (ferrite_dtype::FERRITE_DTYPE_F16, DType::F16),
    (ferrite_dtype::FERRITE_DTYPE_I64, DType::I64),
    (ferrite_dtype::FERRITE_DTYPE_I32, DType::I32),
    (ferrite_dtype::FERRITE_DTYPE_U8, DType::U8),
    (ferrite_dtype::FERRITE_DTYPE_I8, DType::I8),
];

fn dtype_from_c(code: i32, what: &str) -> FfiResult<DType> {
    DTYPES
        .iter()
        .find(|(c, _)| *c as i32 == code)
        .map(|(_, d)| *d)
        .ok_or_else(|| Fail::invalid(format!("`{what}` is {code}: not a ferrite_dtype")))
}

fn dtype_to_c(d: DType) -> i32 {
    DTYPES.iter().find(|(_, x)| *x == d).map(|(c, _)| *c as i32).unwrap_or(-1)
}

/// One input of `ferrite_session_run`: the caller's buffer, read during the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ferrite_input {
    /// The model input's name (NUL-terminated UTF-8).
    pub name: *const c_char,
    /// A `ferrite_dtype` value; must be the model's dtype for this input.
    pub dtype: i32,
    /// `rank` dimensions (may be NULL when `rank` is 0).
    pub shape: *const usize,
    /// Number of dimensions.
    pub rank: usize,
    /// Row-major elements, aligned for the dtype (may be NULL when there are no elements).
    pub data: *const c_void,
    /// Bytes at `data`: exactly the product of `shape` times the dtype's size.
    pub byte_size: usize,
}

/// One output of `ferrite_session_run`: the caller names it and gives a buffer; the library
/// fills `rank`, `shape`, `byte_size` and (when it fits) the data.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ferrite_output {
    /// The model output's name (NUL-terminated UTF-8).
    pub name: *const c_char,
    /// A `ferrite_dtype` value; must be the model's dtype for this output.
    pub dtype: i32,
    /// The caller's buffer, aligned for the dtype (may be NULL when `byte_capacity` is 0).
    pub data: *mut c_void,
    /// Bytes available at `data`.
    pub byte_capacity: usize,
    /// Written: number of dimensions.
    pub rank: usize,
    /// Written: the output's shape (first `rank` entries).
    pub shape: [usize; FERRITE_MAX_RANK],
    /// Written: bytes the output needs (and, on success, wrote).
    pub byte_size: usize,
}

/// A model's input or output as the file declares it. Set `struct_size` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ferrite_io_info {
    /// Set by the caller: `sizeof(ferrite_io_info)`.
    pub struct_size: usize,
    /// The tensor's name: owned by the model handle, valid until it is destroyed.
    pub name: *const c_char,
    /// A `ferrite_dtype` value, or -1 when the dtype is not one the API carries.
    pub dtype: i32,
    /// Number of dimensions, or -1 when the file declares no shape (then `shape` is unset).
    pub rank: i64,
    /// Declared sizes (first `rank` entries); -1 for a symbolic or unknown size.
    pub shape: [i64; FERRITE_MAX_RANK],
}

impl Versioned for ferrite_io_info {
    const V1_SIZE: usize = size_of::<ferrite_io_info>();
}

/// Counts a model's inputs and outputs (either pointer may be NULL).
///
/// # Safety
/// `model` is NULL or a live model; the counts are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_model_io_count(
    model: *const ferrite_model,
    n_inputs: *mut usize,
    n_outputs: *mut usize,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let m = unsafe { handle_ref(model, "model") }?;
        // SAFETY: this function's contract.
        unsafe {
            crate::util::set_opt(n_inputs, m.input_names.len());
            crate::util::set_opt(n_outputs, m.output_names.len());
        }
        Ok(())
    })
}

/// Describes input (`is_output` 0) or output (`is_output` non-zero) number `index` in model
/// order; `FERRITE_ERR_INVALID_ARGUMENT` when `index` is out of range.
///
/// # Safety
/// `model` is NULL or a live model; `info` is NULL or a writable `ferrite_io_info` with
/// `struct_size` set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_model_io(
    model: *const ferrite_model,
    is_output: i32,
    index: usize,
    info: *mut ferrite_io_info,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let m = unsafe { handle_ref(model, "model") }?;
        let (list, names) = if is_output != 0 {
            (&m.plan.info().outputs, &m.output_names)
        } else {
            (&m.plan.info().inputs, &m.input_names)
        };
        let io = list.get(index).ok_or_else(|| {
            Fail::invalid(format!("index {index} is out of range (the model has {})", list.len()))
        })?;
        let mut value = ferrite_io_info {
            struct_size: size_of::<ferrite_io_info>(),
            name: names[index].as_ptr(),
            dtype: io.dtype.map_or(-1, dtype_to_c),
            rank: -1,
            shape: [-1; FERRITE_MAX_RANK],
        };
        if let Some(dims) = &io.shape {
            if dims.len() > FERRITE_MAX_RANK {
                return Err(Fail::new(
                    ferrite_status::FERRITE_ERR_RESOURCE_LIMIT,
                    format!("`{}` has {} dimensions (at most {FERRITE_MAX_RANK})", io.name, dims.len()),
                ));
            }
            value.rank = dims.len() as i64;
            for (slot, d) in value.shape.iter_mut().zip(dims) {
                *slot = match d {
                    Dim::Fixed(n) => i64::try_from(*n).unwrap_or(-1),
                    _ => -1,
                };
            }
        }
        // SAFETY: this function's contract.
        unsafe { write_result(info, &value, "info") }
    })
}

/// One thread's session on a model: holds backend state between runs.
pub struct ferrite_session {
    session: Session,
    last_error: CString,
}

impl HandleError for ferrite_session {
    fn error_slot(&mut self) -> &mut CString {
        &mut self.last_error
    }
}

/// Makes a session on `model` (one per thread). `out` receives the handle (NULL on failure);
/// free it with `ferrite_session_destroy`. The session keeps the model alive.
///
/// # Safety
/// `model` is NULL or a live model; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_session_create(
    model: *const ferrite_model,
    out: *mut *mut ferrite_session,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        unsafe { clear_out(out, "out") }?;
        // SAFETY: this function's contract.
        let m = unsafe { handle_ref(model, "model") }?;
        // The session holds the backend plan through its own Arc, so it outlives the handle.
        let session = ferrite_session { session: m.plan.session()?, last_error: CString::default() };
        // SAFETY: `out` was checked by `clear_out`.
        unsafe { give(out, session) };
        Ok(())
    })
}

/// Frees a session and sets `*session` to NULL; NULL or `*session == NULL` does nothing.
///
/// # Safety
/// `session` is NULL or points to NULL or a live session no other thread is using.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_session_destroy(session: *mut *mut ferrite_session) {
    // SAFETY: this function's contract.
    unsafe { destroy(session) }
}

/// The message of this session's last failed call ("" when none). Owned by the session: valid
/// until its next call or its destruction. A NULL session gives a static message.
///
/// # Safety
/// `session` is NULL or a live session.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_session_last_error(session: *const ferrite_session) -> *const c_char {
    // SAFETY: this function's contract.
    match unsafe { session.as_ref() } {
        Some(s) => s.last_error.as_ptr(),
        None => c"session is NULL".as_ptr(),
    }
}

/// Wraps one caller input as a view after checking pointers, dtype, size and alignment.
///
/// # Safety
/// `input`'s pointers are valid for the described sizes during the call (`'a`).
unsafe fn input_view<'a>(input: &'a ferrite_input, i: usize) -> FfiResult<(&'a str, TensorView<'a>)> {
    // SAFETY: this function's contract.
    let name = unsafe { str_arg(input.name, &format!("inputs[{i}].name")) }?;
    let dtype = dtype_from_c(input.dtype, &format!("inputs[{i}].dtype"))?;
    // SAFETY: this function's contract.
    let shape = unsafe { slice_arg(input.shape, input.rank, &format!("inputs[{i}].shape")) }?;
    let count = element_count(shape)?;
    if count.checked_mul(dtype.size()) != Some(input.byte_size) {
        return Err(Fail::invalid(format!(
            "input `{name}`: byte_size is {} but {count} {dtype} elements need {}",
            input.byte_size,
            count.saturating_mul(dtype.size())
        )));
    }
    let what = format!("inputs[{i}].data");
    // SAFETY (every arm): `data` holds `count` elements of the dtype per this function's
    // contract; `slice_arg` checks NULL and alignment.
    let view = match dtype {
        DType::F32 => TensorView::new(shape, unsafe { slice_arg(input.data.cast::<f32>(), count, &what) }?),
        DType::F16 => TensorView::new(shape, unsafe { slice_arg(input.data.cast::<f16>(), count, &what) }?),
        DType::I64 => TensorView::new(shape, unsafe { slice_arg(input.data.cast::<i64>(), count, &what) }?),
        DType::I32 => TensorView::new(shape, unsafe { slice_arg(input.data.cast::<i32>(), count, &what) }?),
        DType::U8 => TensorView::new(shape, unsafe { slice_arg(input.data.cast::<u8>(), count, &what) }?),
        DType::I8 => TensorView::new(shape, unsafe { slice_arg(input.data.cast::<i8>(), count, &what) }?),
    }?;
    Ok((name, view))
}

fn bytes_of(data: &TensorData) -> &[u8] {
    fn raw<T>(v: &[T]) -> &[u8] {
        // SAFETY: plain numeric elements without padding; the byte slice covers exactly the
        // elements' memory and borrows it for the same lifetime.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
    }
    match data {
        TensorData::F32(v) => raw(v),
        TensorData::F16(v) => raw(v),
        TensorData::I64(v) => raw(v),
        TensorData::I32(v) => raw(v),
        TensorData::U8(v) => raw(v),
        TensorData::I8(v) => raw(v),
    }
}

/// Runs the model once. Every model input must be in `inputs` exactly once (checked: names,
/// dtypes, shapes); `outputs` names the outputs wanted (any subset, any order).
///
/// Each output's `rank`, `shape` and `byte_size` are written. When any output's
/// `byte_capacity` is smaller than its `byte_size`, no data is copied and the call returns
/// `FERRITE_ERR_BUFFER_TOO_SMALL`: grow the buffers and run again.
///
/// # Safety
/// `session` is NULL or a live session not used by another thread during the call; `inputs`
/// and `outputs` are NULL (only with a count of 0) or arrays of the given counts whose pointers
/// are valid as their fields describe.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferrite_session_run(
    session: *mut ferrite_session,
    inputs: *const ferrite_input,
    n_inputs: usize,
    outputs: *mut ferrite_output,
    n_outputs: usize,
) -> ferrite_status {
    guard(|| {
        // SAFETY: this function's contract.
        let s = unsafe { handle_mut(session, "session") }?;
        // SAFETY: this function's contract.
        let result = unsafe { run(&mut s.session, inputs, n_inputs, outputs, n_outputs) };
        on_handle(s, result)
    })
}

/// # Safety
/// As `ferrite_session_run`.
unsafe fn run(
    session: &mut Session,
    inputs: *const ferrite_input,
    n_inputs: usize,
    outputs: *mut ferrite_output,
    n_outputs: usize,
) -> FfiResult {
    // SAFETY: this function's contract.
    let given = unsafe { slice_arg(inputs, n_inputs, "inputs") }?;
    if n_outputs > 0 && outputs.is_null() {
        return Err(Fail::null("outputs"));
    }
    // SAFETY: checked non-NULL above when n_outputs > 0; `slice_arg` checks alignment.
    let wanted = unsafe { slice_arg(outputs.cast_const(), n_outputs, "outputs") }?;
    let mut names = Vec::with_capacity(wanted.len());
    for (i, o) in wanted.iter().enumerate() {
        // SAFETY: this function's contract.
        let name = unsafe { str_arg(o.name, &format!("outputs[{i}].name")) }?;
        names.push((name, dtype_from_c(o.dtype, &format!("outputs[{i}].dtype"))?));
    }
    let views = given
        .iter()
        .enumerate()
        // SAFETY: this function's contract.
        .map(|(i, input)| unsafe { input_view(input, i) })
        .collect::<FfiResult<Vec<_>>>()?;
    let results = session.run(&views)?;
    let mut found = Vec::with_capacity(names.len());
    for (name, dtype) in &names {
        let t = results.get(name).ok_or_else(|| {
            let all: Vec<&str> = results.iter().map(|(n, _)| n).collect();
            Fail::new(
                ferrite_status::FERRITE_ERR_INVALID_INPUT,
                format!("the model has no output `{name}` (outputs: {})", all.join(", ")),
            )
        })?;
        if t.dtype() != *dtype {
            return Err(Fail::new(
                ferrite_status::FERRITE_ERR_DTYPE_MISMATCH,
                format!("output `{name}` is {}, the caller asked for {dtype}", t.dtype()),
            ));
        }
        if t.shape().len() > FERRITE_MAX_RANK {
            return Err(Fail::new(
                ferrite_status::FERRITE_ERR_RESOURCE_LIMIT,
                format!("output `{name}` has {} dimensions (at most {FERRITE_MAX_RANK})", t.shape().len()),
            ));
        }
        found.push(t);
    }
    let mut too_small = None;
    for (i, t) in found.iter().enumerate() {
        let bytes = bytes_of(t.data()).len();
        // SAFETY: `outputs` has `n_outputs > i` writable elements per this function's contract.
        let o = unsafe { &mut *outputs.add(i) };
        o.rank = t.shape().len();
        o.shape = [0; FERRITE_MAX_RANK];
        o.shape[..t.shape().len()].copy_from_slice(t.shape());
        o.byte_size = bytes;
        if o.byte_capacity < bytes && too_small.is_none() {
            too_small = Some(format!(
                "output `{}` needs {bytes} bytes, byte_capacity is {}",
                names[i].0, o.byte_capacity
            ));
        }
    }
    if let Some(message) = too_small {
        return Err(Fail::new(ferrite_status::FERRITE_ERR_BUFFER_TOO_SMALL, message));
    }
    for (i, t) in found.iter().enumerate() {
        let src = bytes_of(t.data());
        if src.is_empty() {
            continue;
        }
        // SAFETY: as above.
        let o = unsafe { &mut *outputs.add(i) };
        if o.data.is_null() {
            return Err(Fail::null(&format!("outputs[{i}].data")));
        }
        if !(o.data as usize).is_multiple_of(t.dtype().size()) {
            return Err(Fail::invalid(format!("outputs[{i}].data is not aligned for {}", t.dtype())));
        }
        // SAFETY: `o.data` has `byte_capacity >= src.len()` writable bytes (checked above) and
        // belongs to the caller, so it cannot overlap the library's output tensor.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), o.data.cast::<u8>(), src.len()) };
    }
    Ok(())
}
