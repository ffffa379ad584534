//! The tract backend: pure Rust, no shared library, the default on embedded targets.
//!
//! Known limits of tract 0.23 this module works with (see docs/runtime.md):
//! - `value_info` entries with symbolic sizes confuse its analyser, so they are ignored
//!   (`with_ignore_value_info(true)`); graph inputs/outputs still carry their shapes.
//! - Unknown operators only fail late (while typing the graph); they are caught up front by
//!   checking every node against tract's ONNX operator registry.
//! - Weights are copied into tract's own buffers: no zero-copy from the file.

use std::sync::Arc;

use tract_onnx::prelude::{InferenceModelExt, TValue, TVec, Tensor as TractTensor, TypedRunnableModel, tvec};
use tract_onnx::tract_core::internal::DatumType;

use super::{BackendState, Options, PreparedModel, held_slot, set_held};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tensor::{Tensor, TensorData, TensorDataView, TensorView};

const NAME: &str = "tract";

fn backend_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend { backend: NAME, message: format!("{context}: {e:#}") }
}

fn invalid(context: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidModel(format!("{context} (tract): {e:#}"))
}

/// A model optimised and planned by tract, shared by all its sessions.
pub(crate) struct TractModel {
    plan: Arc<TypedRunnableModel>,
}

/// Runs `f`, turning a panic inside tract into `Error::Backend`: a last line of defence for
/// models that pass validation but hit an unchecked case in tract (found by the bad-input corpus:
/// position ids past an embedding table, overflowing symbolic dims). The panic message is still
/// printed by the process's panic hook.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Err(Error::Backend { backend: NAME, message: format!("{what}: tract panicked: {msg}") })
    })
}

impl TractModel {
    pub(crate) fn prepare(model: &Model, options: &Options) -> Result<TractModel> {
        no_panic("preparing the model", || TractModel::prepare_checked(model, options))
    }

    fn prepare_checked(model: &Model, options: &Options) -> Result<TractModel> {
        let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
        if let Some(op) = model.info().ops.keys().find(|op| !onnx.op_register.0.contains_key(bare_op(op))) {
            return Err(Error::UnsupportedOp { op: op.clone(), backend: NAME });
        }
        let mut proto = model.proto()?;
        if options.tract_fused_int8 || options.tract_fused_attention {
            super::tract_fuse::register(&mut onnx);
        }
        if options.tract_fused_attention {
            let fused = super::tract_fuse::fuse_attention(&mut proto);
            if fused > 0 {
                log::debug!("tract: fused {fused} attention blocks");
            }
        }
        if options.tract_fused_int8 {
            let fused = super::tract_fuse::fuse_row_quantisation(&mut proto);
            if fused != Default::default() {
                log::debug!(
                    "tract: fused {} row quantisations and {} dequantisations",
                    fused.quantize,
                    fused.dequantize
                );
            }
            let matmuls = super::tract_fuse::fuse_int8_matmuls(&mut proto);
            if matmuls > 0 {
                log::debug!("tract: {matmuls} int8 matmuls get the few-row kernel");
            }
        }
        let dir = model.dir().to_str();
        let parsed = onnx.parse(&proto, dir).map_err(|e| invalid("parsing the graph", e))?;
        drop(proto);
        if !parsed.unresolved_inputs.is_empty() {
            return Err(Error::InvalidModel(format!(
                "tensors used but never defined: {}",
                parsed.unresolved_inputs.join(", ")
            )));
        }
        let typed = parsed.model.into_typed().map_err(|e| invalid("typing the graph", e))?;
        let optimized = typed.into_optimized().map_err(|e| invalid("optimising the graph", e))?;
        let run_options = tract_onnx::tract_core::runtime::RunOptions {
            executor: executor(options.threads)?,
            ..Default::default()
        };
        let plan = optimized
            .into_runnable_with_options(&run_options)
            .map_err(|e| invalid("planning the graph", e))?;
        check_interface(model, &plan)?;
        Ok(TractModel { plan })
    }
}

/// The tract plan ferrite's backend would run for the file at `path` (developer tools:
/// `runtime/examples/tract_profile.rs` times its nodes one by one).
#[doc(hidden)]
pub fn plan_for_profiling(path: &std::path::Path, options: &Options) -> Result<Arc<TypedRunnableModel>> {
    let model = Model::open(path)?;
    Ok(TractModel::prepare(&model, options)?.plan)
}

/// The registry is keyed by op type alone; ferrite names non-default-domain ops `domain.Op`.
fn bare_op(op: &str) -> &str {
    op.rsplit('.').next().unwrap_or(op)
}

#[cfg(feature = "tract-threads")]
fn executor(threads: usize) -> Result<Option<tract_onnx::tract_core::tract_linalg::multithread::Executor>> {
    use tract_onnx::tract_core::tract_linalg::multithread::Executor;
    if threads <= 1 {
        return Ok(Some(Executor::SingleThread));
    }
    // A pool of this size starts now, each thread with its own stack: refuse absurd counts
    // (the C API's FERRITE_MAX_THREADS is the same bound).
    const MAX_THREADS: usize = 256;
    if threads > MAX_THREADS {
        return Err(Error::ResourceLimit(format!("{threads} compute threads (at most {MAX_THREADS})")));
    }
    // Built here rather than by Executor::multithread, which panics when a pool cannot be made.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("ferrite-tract-{i}"))
        .build()
        .map_err(|e| Error::ResourceLimit(format!("cannot start {threads} compute threads: {e}")))?;
    Ok(Some(Executor::MultiThread(Arc::new(pool))))
}

#[cfg(not(feature = "tract-threads"))]
fn executor(threads: usize) -> Result<Option<tract_onnx::tract_core::tract_linalg::multithread::Executor>> {
    if threads > 1 {
        log::warn!("built without `tract-threads`: tract runs single-threaded ({threads} requested)");
    }
    Ok(None)
}

/// tract keeps graph inputs/outputs in file order; make sure that is what the session assumes.
fn check_interface(model: &Model, plan: &Arc<TypedRunnableModel>) -> Result<()> {
    let graph = plan.model();
    let names = |outlets: &[tract_onnx::prelude::OutletId]| -> Vec<String> {
        outlets.iter().map(|o| graph.node(o.node).name.clone()).collect()
    };
    let inputs = names(graph.input_outlets().map_err(|e| backend_err("reading inputs", e))?);
    let expected: Vec<String> = model.info().inputs.iter().map(|i| i.name.clone()).collect();
    if inputs != expected {
        return Err(Error::InvalidModel(format!(
            "tract sees inputs {inputs:?}, the file declares {expected:?}"
        )));
    }
    let outputs = graph.output_outlets().map_err(|e| backend_err("reading outputs", e))?.len();
    if outputs != model.info().outputs.len() {
        return Err(Error::InvalidModel(format!(
            "tract sees {outputs} outputs, the file declares {}",
            model.info().outputs.len()
        )));
    }
    Ok(())
}

impl PreparedModel for TractModel {
    fn new_state(&self) -> Result<Box<dyn BackendState>> {
        let inputs = self.plan.model().inputs.len();
        Ok(Box::new(TractState { plan: self.plan.clone(), held: vec![None; inputs] }))
    }
}

/// tract's `SimpleState` keeps operator state between runs: its LSTM (a Scan) continues from the
/// previous run's final h/c instead of the `initial_h`/`initial_c` inputs (measured: 0.23 max abs
/// difference on the second run of tests/models/lstm). Recurrent state is an explicit input in
/// ferrite's graphs, so every run starts from a fresh state spawned off the shared plan.
///
/// Values held between runs (KV cache, LSTM h/c) stay tract values: an output is moved into
/// `held` and handed back as the next run's input by reference count, never copied.
struct TractState {
    plan: Arc<TypedRunnableModel>,
    held: Vec<Option<TValue>>,
}

fn to_tract(view: &TensorView<'_>) -> Result<TractTensor> {
    let shape = view.shape();
    let t = match view.data() {
        TensorDataView::F32(d) => TractTensor::from_shape(shape, d),
        TensorDataView::F16(d) => TractTensor::from_shape(shape, d),
        TensorDataView::I64(d) => TractTensor::from_shape(shape, d),
        TensorDataView::I32(d) => TractTensor::from_shape(shape, d),
        TensorDataView::U8(d) => TractTensor::from_shape(shape, d),
        TensorDataView::I8(d) => TractTensor::from_shape(shape, d),
    };
    t.map_err(|e| backend_err("building an input tensor", e))
}

fn from_tract(t: &TractTensor) -> Result<Tensor> {
    let shape = t.shape().to_vec();
    let slice_err = |e| backend_err("reading an output", e);
    let plain = t.try_as_plain_ram().map_err(slice_err)?;
    let data = match t.datum_type() {
        DatumType::F32 => TensorData::F32(plain.as_slice::<f32>().map_err(slice_err)?.to_vec()),
        DatumType::F16 => TensorData::F16(plain.as_slice::<half::f16>().map_err(slice_err)?.to_vec()),
        DatumType::I64 => TensorData::I64(plain.as_slice::<i64>().map_err(slice_err)?.to_vec()),
        DatumType::I32 => TensorData::I32(plain.as_slice::<i32>().map_err(slice_err)?.to_vec()),
        DatumType::U8 => TensorData::U8(plain.as_slice::<u8>().map_err(slice_err)?.to_vec()),
        DatumType::I8 => TensorData::I8(plain.as_slice::<i8>().map_err(slice_err)?.to_vec()),
        other => {
            return Err(Error::Backend {
                backend: NAME,
                message: format!("output dtype {other:?} is not one ferrite carries"),
            });
        }
    };
    Tensor::from_data(shape, data)
}

impl BackendState for TractState {
    fn run(
        &mut self,
        inputs: &[Option<TensorView<'_>>],
        carry: &[Option<usize>],
    ) -> Result<Vec<Option<Tensor>>> {
        no_panic("running the plan", || {
            let mut values: TVec<TValue> = tvec![];
            for (i, input) in inputs.iter().enumerate() {
                values.push(match input {
                    Some(view) => to_tract(view)?.into(),
                    None => held_slot(&self.held, i)?.clone(),
                });
            }
            let mut state = self.plan.spawn().map_err(|e| backend_err("creating run state", e))?;
            let outputs = state.run(values).map_err(|e| backend_err("running the plan", e))?;
            let mut returned = Vec::with_capacity(outputs.len());
            for (j, value) in outputs.into_iter().enumerate() {
                match carry.get(j).copied().flatten() {
                    Some(i) if i < self.held.len() => {
                        self.held[i] = Some(value);
                        returned.push(None);
                    }
                    Some(i) => return Err(backend_err("holding an output", format!("no input #{i}"))),
                    None => returned.push(Some(from_tract(&value)?)),
                }
            }
            Ok(returned)
        })
    }

    fn hold(&mut self, input: usize, value: &TensorView<'_>) -> Result<()> {
        set_held(&mut self.held, input, to_tract(value)?.into())
    }

    fn held_shape(&self, input: usize) -> Option<Vec<usize>> {
        self.held.get(input)?.as_ref().map(|v| v.shape().to_vec())
    }

    fn held(&self, input: usize) -> Result<Tensor> {
        from_tract(held_slot(&self.held, input)?)
    }
}
