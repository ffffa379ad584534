//! The memory budget: an estimate of what preparing and running a model will take, checked against
//! a limit before the backend allocates anything (a board's budget lives in `boards/*.toml`).
//!
//! The estimate is deliberately simple and errs high. It is not an allocator limit: nothing is
//! counted while the model runs, so a budget only refuses models that cannot fit from the start.
//!
//! What is counted (figures measured in BENCHMARKS.md, "Runtime: load and run, per backend"):
//! - the weights as stored, times a per-backend factor for the backend's own copies while
//!   loading: tract copies every weight into its buffers (peak RSS 2.4× the weights with external
//!   data, 3.8× with weights embedded in the protobuf); ONNX Runtime with prepacking keeps a private
//!   repacked copy (1.2× / 2.4×), without prepacking the weights stay file-backed (1.05× / 2.4×);
//! - low-bit weights at their own factors, measured on SmolLM2-135M bundles (peak RSS of
//!   `ferrite generate --chat` on x86; BENCHMARKS.md): on tract with ferrite's fused ops (the
//!   default) the int8 codes of a step graph (a decoder with a KV cache, an LSTM) 3× — the file's
//!   tensor, the transposed copy ferrite's int8 matmul keeps (`backend/tract/matmul_i8.rs`) and
//!   the load's transient — and `MatMulNBits`' 4-bit codes at the general factor (the fused op
//!   reads tract's loaded tensor in place: `backend/tract/matmul_q4.rs`; SmolLM2 q4 peaks at
//!   209 MiB for 91 MiB of weights); without fusion (`--tract-unfused`) tract's own kernels
//!   pack the int8 codes again (6×) and unpack the 4-bit blocks at load (9×: 469 MiB for the
//!   same bundle); on ONNX Runtime with prepacking, int8 and 4-bit codes 2× (its packed copy
//!   beside the mapped file);
//! - every graph input and output at batch 1 and the given number of positions (symbolic dims
//!   other than the first count as `positions`), twice: the backend's tensor and ferrite's copy.
//!   For a decoder this is its KV cache and logits (four cache copies: past and present, twice;
//!   the in-place caches, tract's and ONNX Runtime's (`backend/ort/cache.rs`), hold one, in a
//!   buffer at most twice its length, so they stay within that);
//! - a fixed allowance per backend for the runtime, the tokenizer, the backend's plan and
//!   intermediate activations (ONNX Runtime's library and arenas are the larger).

use crate::backend::{BackendKind, Options};
use crate::error::{Error, Result};
use crate::model::{Dim, ModelInfo};

/// Bytes counted on tract for the runtime itself, the tokenizer, the plan and activations.
pub const FIXED_ALLOWANCE_TRACT: u64 = 48 << 20;
/// Bytes counted on ONNX Runtime for the same, its shared library and arenas included.
pub const FIXED_ALLOWANCE_ORT: u64 = 96 << 20;

/// The fixed allowance of `backend` ([`FIXED_ALLOWANCE_TRACT`], [`FIXED_ALLOWANCE_ORT`]).
pub fn fixed_allowance(backend: BackendKind) -> u64 {
    match backend {
        BackendKind::Tract => FIXED_ALLOWANCE_TRACT,
        BackendKind::Ort => FIXED_ALLOWANCE_ORT,
    }
}

/// Peak RSS on tract per byte of a step graph's int8 (`MatMulInteger`) codes, with ferrite's
/// fused int8 matmul (module docs).
const TRACT_STEP_INT8_FACTOR: f64 = 3.0;
/// The same with tract's own `MatMulInteger` kernels (`--tract-unfused`).
const TRACT_STEP_INT8_UNFUSED_FACTOR: f64 = 6.0;
/// Peak RSS on tract per byte of `MatMulNBits` codes with tract's own kernel (`--tract-unfused`;
/// fused, they take the general factor).
const TRACT_NBITS_UNFUSED_FACTOR: f64 = 9.0;
/// Peak RSS on ONNX Runtime with prepacking per byte of int8 or 4-bit codes (module docs).
const ORT_PREPACKED_CODES_FACTOR: f64 = 2.0;

/// What preparing and running a model is expected to need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// Initializer bytes as stored in the file.
    pub weights: u64,
    /// Peak bytes of weights and the backend's copies of them while loading.
    pub loaded_weights: u64,
    /// Graph inputs and outputs at batch 1 and the planned positions, backend and ferrite copies.
    pub io: u64,
    /// [`fixed_allowance`] of the backend.
    pub fixed: u64,
}

impl MemoryEstimate {
    /// The whole estimate in bytes.
    pub fn total(&self) -> u64 {
        self.loaded_weights.saturating_add(self.io).saturating_add(self.fixed)
    }
}

/// Peak RSS while loading, per byte of stored weights (measured, rounded up; see the module docs).
pub fn weight_factor(backend: BackendKind, external_data: bool, ort_prepacking: bool) -> f64 {
    match (backend, external_data, ort_prepacking) {
        (BackendKind::Tract, true, _) => 2.4,
        (BackendKind::Tract, false, _) => 3.8,
        (BackendKind::Ort, true, true) => 1.2,
        (BackendKind::Ort, true, false) => 1.05,
        (BackendKind::Ort, false, _) => 2.4,
    }
}

/// Estimates the memory a model needs on the backend `options` choose, with symbolic sequence
/// dimensions at `positions` (at least 1).
pub fn estimate(info: &ModelInfo, options: &Options, positions: usize) -> MemoryEstimate {
    let weights = info.weight_bytes();
    let external = !info.external_data_files.is_empty();
    let factor = weight_factor(options.backend, external, options.ort_prepacking);
    let bytes = |dtype: &str| info.initializer_bytes.get(dtype).copied().unwrap_or(0);
    let step_graph = info.inputs.iter().any(|i| crate::backend::is_step_input(&i.name));
    // Low-bit codes with their own factor: (bytes, factor) instead of `factor`.
    let mut low_bit: Vec<(u64, f64)> = Vec::new();
    let int8 = info.ops.contains_key("MatMulInteger");
    let nbits = info.ops.contains_key("com.microsoft.MatMulNBits");
    match options.backend {
        BackendKind::Tract => {
            let fused = options.tract_fused_int8;
            if int8 && step_graph {
                let f = if fused { TRACT_STEP_INT8_FACTOR } else { TRACT_STEP_INT8_UNFUSED_FACTOR };
                low_bit.push((bytes("i8"), f));
            }
            if nbits && !fused {
                low_bit.push((bytes("u8"), TRACT_NBITS_UNFUSED_FACTOR));
            }
        }
        BackendKind::Ort if options.ort_prepacking && external => {
            if int8 {
                low_bit.push((bytes("i8"), ORT_PREPACKED_CODES_FACTOR));
            }
            if nbits {
                low_bit.push((bytes("u8"), ORT_PREPACKED_CODES_FACTOR));
            }
        }
        BackendKind::Ort => {}
    }
    let special: u64 = low_bit.iter().map(|&(b, _)| b).fold(0, u64::saturating_add);
    let rest = weights.saturating_sub(special) as f64 * factor;
    let loaded = low_bit.iter().fold(rest, |acc, &(b, f)| acc + b as f64 * f.max(factor));
    let loaded_weights = loaded.ceil() as u64;
    let positions = positions.max(1) as u64;
    // Saturating: a manifest may claim any context length (`sum` would overflow and panic).
    let io: u64 = info
        .inputs
        .iter()
        .chain(&info.outputs)
        .map(|io| io_bytes(io, positions))
        .fold(0, u64::saturating_add);
    MemoryEstimate {
        weights,
        loaded_weights,
        io: io.saturating_mul(2),
        fixed: fixed_allowance(options.backend),
    }
}

/// Bytes of one input or output at batch 1 (the first dim, when symbolic) and `positions`.
fn io_bytes(io: &crate::model::IoInfo, positions: u64) -> u64 {
    let element = io.dtype.map(|d| d.size() as u64).unwrap_or(8);
    let Some(dims) = &io.shape else { return element.saturating_mul(positions) };
    dims.iter().enumerate().fold(element, |acc, (i, d)| {
        let n = match d {
            Dim::Fixed(n) => *n as u64,
            Dim::Symbolic(_) | Dim::Unknown if i == 0 => 1,
            Dim::Symbolic(_) | Dim::Unknown => positions,
        };
        acc.saturating_mul(n)
    })
}

/// Fails with [`Error::ResourceLimit`] when the estimate exceeds `options.memory_budget`.
pub fn check(info: &ModelInfo, options: &Options, positions: usize) -> Result<MemoryEstimate> {
    let estimate = estimate(info, options, positions);
    if let Some(budget) = options.memory_budget
        && estimate.total() > budget
    {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        return Err(Error::ResourceLimit(format!(
            "the model needs an estimated {:.1} MiB on {} ({:.1} MiB of weights loaded as {:.1} MiB, \
             {:.1} MiB of inputs/outputs at {positions} positions, {:.1} MiB fixed), over the memory \
             budget of {:.1} MiB",
            mib(estimate.total()),
            options.backend.name(),
            mib(estimate.weights),
            mib(estimate.loaded_weights),
            mib(estimate.io),
            mib(estimate.fixed),
            mib(budget),
        )));
    }
    Ok(estimate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IoInfo;
    use crate::tensor::DType;

    fn info(weights: u64, external: bool) -> ModelInfo {
        let io = |name: &str, dims: Vec<Dim>| IoInfo {
            name: name.into(),
            dtype_name: "f32".into(),
            dtype: Some(DType::F32),
            shape: Some(dims),
        };
        let mut info = ModelInfo::default();
        info.initializer_bytes.insert("f32".into(), weights);
        if external {
            info.external_data_files.push("model.onnx.data".into());
        }
        info.inputs
            .push(io("x", vec![Dim::Symbolic("batch".into()), Dim::Symbolic("seq".into()), Dim::Fixed(4)]));
        info.outputs.push(io("y", vec![Dim::Symbolic("batch".into()), Dim::Fixed(10)]));
        info
    }

    #[test]
    fn tract_counts_its_copy_of_the_weights() {
        let e = estimate(&info(1000, true), &Options::default(), 3);
        assert_eq!(e.weights, 1000);
        assert_eq!(e.loaded_weights, 2400);
        // x: 1 × 3 × 4 f32 = 48 bytes, y: 1 × 10 f32 = 40 bytes; both counted twice.
        assert_eq!(e.io, 176);
        assert_eq!(e.total(), 2400 + 176 + FIXED_ALLOWANCE_TRACT);
        let embedded = estimate(&info(1000, false), &Options::default(), 3);
        assert_eq!(embedded.loaded_weights, 3800);
    }

    #[test]
    fn low_bit_codes_of_step_graphs_count_at_their_own_factors() {
        let mut int8 = info(1000, true);
        int8.initializer_bytes.insert("i8".into(), 600);
        int8.ops.insert("MatMulInteger".into(), 3);
        let encoder = estimate(&int8, &Options::default(), 3).loaded_weights;
        assert_eq!(encoder, 3840); // 1600 bytes × 2.4
        int8.inputs[0].name = "past_key.0".into();
        assert_eq!(estimate(&int8, &Options::default(), 3).loaded_weights, 2400 + 1800); // 600 × 3
        let unfused = Options::default().tract_fused_int8(false);
        assert_eq!(estimate(&int8, &unfused, 3).loaded_weights, 2400 + 3600); // 600 × 6
        let ort = Options::default().backend(BackendKind::Ort);
        assert_eq!(estimate(&int8, &ort, 3).loaded_weights, 1200 + 1200); // 1000 × 1.2, 600 × 2
        assert_eq!(estimate(&int8, &ort, 3).fixed, FIXED_ALLOWANCE_ORT);
        let mut q4 = info(1000, true);
        q4.initializer_bytes.insert("u8".into(), 500);
        q4.ops.insert("com.microsoft.MatMulNBits".into(), 3);
        assert_eq!(estimate(&q4, &Options::default(), 3).loaded_weights, 3600); // 1500 × 2.4
        assert_eq!(estimate(&q4, &unfused, 3).loaded_weights, 2400 + 4500); // 1000 × 2.4, 500 × 9
    }

    #[test]
    fn over_budget_is_a_resource_limit_and_no_budget_is_no_limit() {
        let info = info(1 << 30, true);
        assert!(check(&info, &Options::default(), 1).is_ok());
        let tight = Options::default().memory_budget(1 << 30);
        let err = check(&info, &tight, 1).unwrap_err();
        assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
        assert!(err.to_string().contains("memory budget of 1024.0 MiB"), "{err}");
        let roomy = Options::default().memory_budget(3 << 30);
        assert!(check(&info, &roomy, 1).is_ok());
    }
}
