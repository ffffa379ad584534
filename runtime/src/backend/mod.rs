//! The one small trait both backends implement, and the options that choose between them.
//!
//! A backend turns a validated [`Model`] into a prepared plan once; each [`crate::Session`]
//! then gets its own state from that plan. Inputs arrive already checked against the model's
//! declared interface, in the model's input order.

use std::path::PathBuf;

use crate::error::Result;
use crate::model::Model;
use crate::tensor::{Tensor, TensorView};

#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;

/// Which engine runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// tract: pure Rust, the embedded default.
    #[default]
    Tract,
    /// ONNX Runtime, loaded from its shared library at run time.
    Ort,
}

impl BackendKind {
    /// `tract` or `ort`.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Ort => "ort",
        }
    }
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "tract" => Ok(BackendKind::Tract),
            "ort" | "onnxruntime" => Ok(BackendKind::Ort),
            other => Err(format!("unknown backend `{other}` (expected tract or ort)")),
        }
    }
}

/// A graph input that marks a *step graph*, one generation steps through a token at a time: a
/// KV-cache input (`past_key.*`) or an LSTM state (`h0`), the exporter's interface names
/// (docs/loading.md). tract's few-row int8 matmul is used, and budgeted, only there.
pub(crate) fn is_step_input(name: &str) -> bool {
    name.starts_with("past_key") || name == "h0"
}

/// How to prepare a model. Built with chained setters:
///
/// ```
/// use ferrite_runtime::{BackendKind, Options};
/// let opts = Options::default().backend(BackendKind::Tract).threads(2);
/// assert_eq!(opts.threads, 2);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The engine.
    pub backend: BackendKind,
    /// Compute threads (1 = single-threaded, the default; tract needs its `multithread-mm`).
    pub threads: usize,
    /// ONNX Runtime shared library; when unset: `ORT_DYLIB_PATH`, then next to the executable,
    /// then the project-local `.deps/onnxruntime/` that `scripts/setup-test-env.sh` fills.
    pub ort_library: Option<PathBuf>,
    /// Let ONNX Runtime prepack constant weights (faster matmuls, private copies of weights).
    /// Off keeps external-data weights file-backed; see docs/loading.md for the measured trade.
    pub ort_prepacking: bool,
    /// Most bytes preparing and running the model may take, by [`crate::budget::estimate`];
    /// over it, preparing fails with `ResourceLimit` before the backend allocates (no limit: `None`).
    pub memory_budget: Option<u64>,
    /// On tract, run the exporter's per-token int8 quantisation subgraphs as two fused ops of
    /// ferrite's own (bit-identical outputs, fewer nodes per matmul; see
    /// `backend/tract/fuse.rs`). On by default; off runs the file's standard nodes one by one.
    pub tract_fused_int8: bool,
    /// On tract, run each of the exporter's attention blocks (decoders' keys-major ones,
    /// encoders' query-major ones) as one op of ferrite's own that reads Q, K, V and the mask
    /// once instead of packing and copying them (`backend/tract/attention.rs`; equal to
    /// rounding, not bit for bit). On by default.
    pub tract_fused_attention: bool,
    /// On tract, with the fused attention, keep a decoder's KV cache inside its attention ops
    /// and append each step's keys and values in place, instead of the file's `Concat` that
    /// rebuilds the whole cache every step (`backend/tract/kv_cache.rs`; the same outputs).
    /// On by default.
    pub tract_in_place_kv: bool,
    /// On ONNX Runtime, keep a decoder's KV cache in place: its attention blocks run as one
    /// custom operator of ferrite's over one buffer per layer that past and present share (IO
    /// binding), instead of the file's `Concat` that rebuilds the cache every step
    /// (`backend/ort/cache.rs`; the same outputs to rounding). On by default.
    pub ort_in_place_kv: bool,
    /// On ONNX Runtime, run each per-token int8 quantisation and dequantisation of a ferrite
    /// int8 export as one custom operator of ferrite's (`backend/ort/ops.rs`) instead of the
    /// file's 14 or 24 standard nodes around each `MatMulInteger` (the same arithmetic). On by
    /// default.
    pub ort_fused_int8: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend: BackendKind::Tract,
            threads: 1,
            ort_library: None,
            ort_prepacking: true,
            memory_budget: None,
            tract_fused_int8: true,
            tract_fused_attention: true,
            tract_in_place_kv: true,
            ort_in_place_kv: true,
            ort_fused_int8: true,
        }
    }
}

impl Options {
    /// Chooses the engine.
    pub fn backend(mut self, backend: BackendKind) -> Self {
        self.backend = backend;
        self
    }
    /// Sets the number of compute threads (0 is treated as 1).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }
    /// Points at a specific ONNX Runtime shared library.
    pub fn ort_library(mut self, path: impl Into<PathBuf>) -> Self {
        self.ort_library = Some(path.into());
        self
    }
    /// Turns ONNX Runtime's weight prepacking on or off.
    pub fn ort_prepacking(mut self, on: bool) -> Self {
        self.ort_prepacking = on;
        self
    }
    /// Turns tract's fused int8 quantisation ops on or off (see [`Options::tract_fused_int8`]).
    pub fn tract_fused_int8(mut self, on: bool) -> Self {
        self.tract_fused_int8 = on;
        self
    }
    /// Turns tract's fused decoder attention on or off (see [`Options::tract_fused_attention`]).
    pub fn tract_fused_attention(mut self, on: bool) -> Self {
        self.tract_fused_attention = on;
        self
    }
    /// Turns tract's in-place KV cache on or off (see [`Options::tract_in_place_kv`]).
    pub fn tract_in_place_kv(mut self, on: bool) -> Self {
        self.tract_in_place_kv = on;
        self
    }
    /// Turns ONNX Runtime's in-place KV cache on or off (see [`Options::ort_in_place_kv`]).
    pub fn ort_in_place_kv(mut self, on: bool) -> Self {
        self.ort_in_place_kv = on;
        self
    }
    /// Turns ONNX Runtime's fused int8 custom operators on or off (see
    /// [`Options::ort_fused_int8`]).
    pub fn ort_fused_int8(mut self, on: bool) -> Self {
        self.ort_fused_int8 = on;
        self
    }
    /// Refuses models whose estimated memory ([`crate::budget::estimate`]) exceeds `bytes`.
    pub fn memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }
}

/// A model prepared by one backend: shareable between threads.
pub(crate) trait PreparedModel: Send + Sync {
    fn new_state(&self) -> Result<Box<dyn BackendState>>;
}

/// One session's mutable state on a backend.
///
/// Besides plain runs, a state can *hold* values in the backend's own tensor type between runs
/// (a KV cache, LSTM h/c): an output fed back as the next run's input then never passes through
/// ferrite's [`Tensor`] (no copy out, no copy back in).
pub(crate) trait BackendState: Send {
    /// Runs with inputs in the model's input order, `None` meaning "the value held for this
    /// input". Output `j` with `carry[j] == Some(i)` becomes the held value of input `i` and comes
    /// back as `None`; every other output is returned, in the model's output order.
    fn run(
        &mut self,
        inputs: &[Option<TensorView<'_>>],
        carry: &[Option<usize>],
    ) -> Result<Vec<Option<Tensor>>>;
    /// Makes `value` (copied) the held value of input `input`.
    fn hold(&mut self, input: usize, value: &TensorView<'_>) -> Result<()>;
    /// Shape of the value held for input `input`, if any.
    fn held_shape(&self, input: usize) -> Option<Vec<usize>>;
    /// A copy of the value held for input `input`.
    fn held(&self, input: usize) -> Result<Tensor>;
}

/// Stores `value` as the held value of input `input`, with the error every backend gives for an
/// input index the model does not have.
pub(crate) fn set_held<T>(held: &mut [Option<T>], input: usize, value: T) -> Result<()> {
    let slot = held.get_mut(input).ok_or_else(|| {
        crate::Error::InvalidInput(format!("input #{input} does not exist: nothing to hold"))
    })?;
    *slot = Some(value);
    Ok(())
}

/// Looks up a held value, with the error every backend gives when there is none.
pub(crate) fn held_slot<T>(held: &[Option<T>], input: usize) -> Result<&T> {
    held.get(input)
        .and_then(Option::as_ref)
        .ok_or_else(|| crate::Error::InvalidInput(format!("input #{input} has no value held in the backend")))
}

/// On an in-place KV cache (`slots`: the layer and half each file input/output stands for) a
/// cache output can only be carried into its own cache input.
pub(crate) fn check_cache_carry<T: PartialEq + Copy>(
    input_slots: &[Option<T>],
    output_slots: &[Option<T>],
    carry: &[Option<usize>],
    backend: &str,
) -> Result<()> {
    for (j, slot) in output_slots.iter().enumerate() {
        let into = carry.get(j).copied().flatten();
        if let (Some(at), Some(i)) = (slot, into)
            && input_slots.get(i).copied().flatten() != Some(*at)
        {
            return Err(crate::Error::InvalidInput(format!(
                "output #{j} can only be carried into its own cache input on {backend}'s in-place KV cache"
            )));
        }
    }
    Ok(())
}

pub(crate) fn prepare(model: &Model, options: &Options) -> Result<Box<dyn PreparedModel>> {
    let prepared = prepare_on(model, options);
    crate::heap::release_freed();
    prepared
}

fn prepare_on(model: &Model, options: &Options) -> Result<Box<dyn PreparedModel>> {
    match options.backend {
        #[cfg(feature = "tract")]
        BackendKind::Tract => Ok(Box::new(tract::TractModel::prepare(model, options)?)),
        #[cfg(feature = "ort")]
        BackendKind::Ort => Ok(Box::new(ort::OrtModel::prepare(model, options)?)),
        #[allow(unreachable_patterns)]
        other => Err(crate::Error::BackendUnavailable {
            backend: other.name(),
            reason: format!("ferrite was built without the `{}` feature", other.name()),
        }),
    }
}
