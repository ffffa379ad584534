//! Checked conversions at the C boundary: NULL checks, C strings to `&str`, versioned parameter
//! structs in, versioned result structs out, handles in and out. Every raw pointer the API
//! receives goes through one of these.

use std::ffi::{CStr, c_char};
use std::mem::size_of;

use crate::status::{Fail, FfiResult, ferrite_status};

/// Borrows a C string argument as UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and unchanged for `'a`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| {
        Fail::new(ferrite_status::FERRITE_ERR_INVALID_UTF8, format!("`{what}` is not valid UTF-8: {e}"))
    })
}

/// Borrows a `(pointer, count)` array argument; NULL is allowed only when `n` is 0.
///
/// # Safety
/// When `n > 0`, `p` points to `n` initialised, properly aligned `T`s valid for `'a`.
pub(crate) unsafe fn slice_arg<'a, T>(p: *const T, n: usize, what: &str) -> FfiResult<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Fail::null(what));
    }
    if !(p as usize).is_multiple_of(align_of::<T>()) {
        return Err(Fail::invalid(format!("`{what}` is not aligned for its element type")));
    }
    if n.checked_mul(size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return Err(Fail::invalid(format!("`{what}`: {n} elements is more than memory holds")));
    }
    // SAFETY: non-NULL, aligned, `n` elements readable per this function's contract; the byte
    // size fits an isize (checked above).
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A parameter struct whose first field is `size_t struct_size`.
pub(crate) trait Versioned: Copy {
    /// Size of the first published version: a smaller `struct_size` is refused.
    const V1_SIZE: usize;
}

/// Reads a caller's parameter struct: NULL gives `default`; otherwise the fields the caller's
/// `struct_size` covers are taken, the rest keep their defaults (ABI evolution).
///
/// # Safety
/// `p` is NULL or points to at least `struct_size` readable bytes beginning with a `size_t`.
pub(crate) unsafe fn read_params<T: Versioned>(p: *const T, default: T, what: &str) -> FfiResult<T> {
    if p.is_null() {
        return Ok(default);
    }
    // SAFETY: non-NULL and begins with a size_t per this function's contract; unaligned reads
    // make no alignment demand on the caller.
    let size = unsafe { std::ptr::read_unaligned(p.cast::<usize>()) };
    if size < T::V1_SIZE {
        return Err(Fail::invalid(format!(
            "`{what}->struct_size` is {size}, expected at least {}: fill the struct with its \
             ferrite_*_default_params() function first",
            T::V1_SIZE
        )));
    }
    let mut out = default;
    let n = size.min(size_of::<T>());
    // SAFETY: the caller's struct has `size >= n` readable bytes; `out` is a local `T` of
    // `size_of::<T>() >= n` bytes; every field of these structs is a plain number or pointer,
    // so any byte pattern is a valid value; the regions do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(p.cast::<u8>(), (&raw mut out).cast::<u8>(), n) };
    Ok(out)
}

/// Writes a result struct into the caller's, up to the caller's `struct_size` (which is kept).
///
/// # Safety
/// `p` is NULL or points to at least `struct_size` writable bytes beginning with a `size_t`.
pub(crate) unsafe fn write_result<T: Versioned>(p: *mut T, value: &T, what: &str) -> FfiResult {
    if p.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: as in `read_params`.
    let size = unsafe { std::ptr::read_unaligned(p.cast::<usize>()) };
    if size < T::V1_SIZE {
        return Err(Fail::invalid(format!(
            "`{what}->struct_size` is {size}, expected at least {}: set it to sizeof the struct",
            T::V1_SIZE
        )));
    }
    let n = size.min(size_of::<T>());
    let skip = size_of::<usize>();
    // SAFETY: the caller's struct has `size >= n` writable bytes; `value` has `size_of::<T>() >= n`
    // readable bytes; the first `skip` bytes (struct_size) are left as the caller set them.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (value as *const T).cast::<u8>().add(skip),
            p.cast::<u8>().add(skip),
            n - skip,
        )
    };
    Ok(())
}

/// Borrows a handle argument.
///
/// # Safety
/// `p` is NULL or a live handle of type `T` made by this library, not used by another thread
/// during the call when `T` is a one-thread-at-a-time handle.
pub(crate) unsafe fn handle_mut<'a, T>(p: *mut T, what: &str) -> FfiResult<&'a mut T> {
    // SAFETY: NULL or live and unaliased per this function's contract.
    unsafe { p.as_mut() }.ok_or_else(|| Fail::null(what))
}

/// Borrows a shareable handle argument.
///
/// # Safety
/// `p` is NULL or a live handle of type `T` made by this library.
pub(crate) unsafe fn handle_ref<'a, T>(p: *const T, what: &str) -> FfiResult<&'a T> {
    // SAFETY: NULL or live per this function's contract.
    unsafe { p.as_ref() }.ok_or_else(|| Fail::null(what))
}

/// Checks an out-pointer for a new handle and sets it to NULL, so that a failure leaves NULL.
///
/// # Safety
/// `out` is NULL or points to a writable `*mut T`.
pub(crate) unsafe fn clear_out<T>(out: *mut *mut T, what: &str) -> FfiResult {
    if out.is_null() {
        return Err(Fail::null(what));
    }
    // SAFETY: non-NULL and writable per this function's contract.
    unsafe { *out = std::ptr::null_mut() };
    Ok(())
}

/// Hands a new handle to the caller through `out` (already checked by [`clear_out`]).
///
/// # Safety
/// `out` points to a writable `*mut T`.
pub(crate) unsafe fn give<T>(out: *mut *mut T, value: T) {
    // SAFETY: writable per this function's contract; the Box is released to the caller, who
    // gives it back to the matching destroy function.
    unsafe { *out = Box::into_raw(Box::new(value)) };
}

/// Frees a handle made by [`give`] and NULLs the caller's pointer; NULL or an already NULLed
/// pointer does nothing.
///
/// # Safety
/// `p` is NULL or points to a pointer that is NULL or a live handle of type `T` made by this
/// library and not in use by any other thread.
pub(crate) unsafe fn destroy<T>(p: *mut *mut T) {
    crate::status::no_panic((), || {
        if p.is_null() {
            return;
        }
        // SAFETY: non-NULL and readable/writable per this function's contract.
        let handle = unsafe { std::ptr::replace(p, std::ptr::null_mut()) };
        if !handle.is_null() {
            // SAFETY: a live handle made by `give` (Box::into_raw), released once: the caller's
            // pointer is NULL from now on.
            drop(unsafe { Box::from_raw(handle) });
        }
    })
}

/// Writes an optional out-value.
///
/// # Safety
/// `p` is NULL or points to a writable `T`.
pub(crate) unsafe fn set_opt<T>(p: *mut T, value: T) {
    if !p.is_null() {
        // SAFETY: non-NULL and writable per this function's contract.
        unsafe { p.write(value) };
    }
}

/// Copies `src` into a caller buffer, or reports the needed length.
///
/// # Safety
/// `dst` is NULL or `capacity` writable `T`s; `len` is NULL or writable.
pub(crate) unsafe fn copy_out<T: Copy>(
    src: &[T],
    dst: *mut T,
    capacity: usize,
    len: *mut usize,
    what: &str,
) -> FfiResult {
    if len.is_null() {
        return Err(Fail::null("len"));
    }
    // SAFETY: non-NULL, writable per this function's contract.
    unsafe { *len = src.len() };
    if capacity < src.len() {
        return Err(Fail::new(
            ferrite_status::FERRITE_ERR_BUFFER_TOO_SMALL,
            format!("`{what}` needs {} elements, capacity is {capacity}", src.len()),
        ));
    }
    if src.is_empty() {
        return Ok(());
    }
    if dst.is_null() {
        return Err(Fail::null(what));
    }
    if !(dst as usize).is_multiple_of(align_of::<T>()) {
        return Err(Fail::invalid(format!("`{what}` is not aligned for its element type")));
    }
    // SAFETY: `dst` has `capacity >= src.len()` writable elements per this function's contract,
    // aligned (checked above), and belongs to the caller, so it does not overlap `src`.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    Ok(())
}
