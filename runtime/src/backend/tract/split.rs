//! Splits a matrix product of ferrite's own ops by output columns over tract's thread pool.
//!
//! tract gives a plan a rayon pool when it runs on more than one thread
//! (`backend::tract::executor`); ferrite's matmul ops ([`super::matmul_i8`],
//! [`super::matmul_q4`]) take the pool the plan is running under and hand each worker a range of
//! output columns. Small products stay on the calling thread: waking a worker costs more than a
//! decode step's small matmuls take.

use std::ops::Range;

/// Multiply-adds per task: a product with fewer than two tasks' worth stays on one thread.
#[cfg(feature = "tract-threads")]
const MACS_PER_TASK: usize = 1 << 21;

/// Fills `out` (`rows × n`, row-major) by calling `part(columns, buffer)` for column ranges,
/// where `buffer` is `rows × columns.len()`, row-major; `k` is the length of the dot products
/// (to size the tasks).
pub(super) fn by_columns<T: Copy + Default + Send>(
    rows: usize,
    k: usize,
    n: usize,
    out: &mut [T],
    part: impl Fn(Range<usize>, &mut [T]) + Sync,
) {
    #[cfg(feature = "tract-threads")]
    {
        let per_task = (MACS_PER_TASK / (rows * k).max(1)).max(16);
        if let tract_onnx::tract_core::tract_linalg::multithread::Executor::MultiThread(pool) =
            tract_onnx::tract_core::tract_linalg::multithread::current_tract_executor()
            && n >= 2 * per_task
        {
            use rayon::prelude::*;
            let tasks: Vec<_> = (0..n).step_by(per_task).map(|s| s..(s + per_task).min(n)).collect();
            let parts: Vec<Vec<T>> = pool.install(|| {
                tasks
                    .par_iter()
                    .map(|cols| {
                        let mut buffer = vec![T::default(); rows * cols.len()];
                        part(cols.clone(), &mut buffer);
                        buffer
                    })
                    .collect()
            });
            for (cols, buffer) in tasks.iter().zip(parts) {
                for (r, src) in buffer.chunks_exact(cols.len()).enumerate() {
                    out[r * n + cols.start..r * n + cols.end].copy_from_slice(src);
                }
            }
            return;
        }
    }
    let _ = (rows, k); // only sizes the tasks
    part(0..n, out);
}
