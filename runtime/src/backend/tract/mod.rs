//! The tract backend: pure Rust, no shared library, the default on embedded targets.
//!
//! Known limits of tract 0.23 this module works with (see docs/tract.md):
//! - `value_info` entries with symbolic sizes confuse its analyser, so they are ignored
//!   (`with_ignore_value_info(true)`); graph inputs/outputs still carry their shapes.
//! - Unknown operators only fail late (while typing the graph); they are caught up front by
//!   checking every node against tract's ONNX operator registry.
//! - Weights are copied into tract's own buffers: no zero-copy from the file.

use std::sync::Arc;

use tract_onnx::prelude::{
    InferenceModelExt, TValue, TVec, Tensor as TractTensor, TypedRunnableModel, TypedSimpleState, tvec,
};
use tract_onnx::tract_core::internal::DatumType;

mod attention;
mod fuse;
mod kv_cache;
mod matmul_i8;
mod matmul_q4;
mod shared_consts;
mod split;

use self::kv_cache::{CacheNames, CachedAttention, Half, KvCache, PAST_LENGTH};
use super::{BackendState, Options, PreparedModel, held_slot, set_held};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::rewrite::graph::cache_slot;
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
    /// Set when the plan keeps a decoder's KV caches inside its attention ops
    /// (`backend/tract/kv_cache.rs`): how the file's cache inputs/outputs map onto them.
    cache: Option<Arc<CacheMap>>,
}

/// Where a decoder's KV caches went in a plan that keeps them in place.
struct CacheMap {
    /// Per file input: the layer and half a cache input stands for.
    inputs: Vec<Option<(usize, Half)>>,
    /// Per file output: the layer and half a `present_*` output stands for.
    outputs: Vec<Option<(usize, Half)>>,
    /// Plan node of each layer's `FerriteCachedAttention`, by layer.
    nodes: Vec<usize>,
    /// File outputs in the plan's output order (the `present_*` ones are not plan outputs).
    plan_outputs: Vec<usize>,
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
        no_panic("preparing the model", || {
            let prepared = TractModel::prepare_checked(
                model,
                options,
                options.tract_fused_attention && options.tract_in_place_kv,
            )?;
            if prepared.cache.is_none() || prepared.only_cache_ops_keep_state()? {
                return Ok(prepared);
            }
            // Another op keeps state between runs (an LSTM's Scan): sessions must then start
            // every run from a fresh state, which an in-place cache cannot.
            log::debug!("tract: the plan has other stateful ops; KV caches stay graph values");
            TractModel::prepare_checked(model, options, false)
        })
    }

    fn only_cache_ops_keep_state(&self) -> Result<bool> {
        let state = self.plan.spawn().map_err(|e| backend_err("creating run state", e))?;
        let nodes = self.cache.as_ref().map(|c| c.nodes.as_slice()).unwrap_or_default();
        Ok(state.op_states.iter().enumerate().all(|(i, s)| s.is_none() || nodes.contains(&i)))
    }

    fn prepare_checked(model: &Model, options: &Options, kv_in_place: bool) -> Result<TractModel> {
        let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
        if let Some(op) = model.info().ops.keys().find(|op| !onnx.op_register.0.contains_key(bare_op(op))) {
            return Err(Error::UnsupportedOp { op: op.clone(), backend: NAME });
        }
        let mut proto = model.proto()?;
        if options.tract_fused_int8 || options.tract_fused_attention {
            fuse::register(&mut onnx);
        }
        if options.tract_fused_attention {
            let fused = fuse::fuse_attention(&mut proto);
            if fused > 0 {
                log::debug!("tract: fused {fused} attention blocks");
            }
        }
        if options.tract_fused_int8 {
            let fused = fuse::fuse_row_quantisation(&mut proto);
            if fused != Default::default() {
                log::debug!(
                    "tract: fused {} row quantisations and {} dequantisations",
                    fused.quantize,
                    fused.dequantize
                );
            }
            let matmuls = fuse::fuse_int8_matmuls(&mut proto);
            if matmuls > 0 {
                log::debug!("tract: {matmuls} int8 matmuls get the few-row kernel");
            }
            let (q4, offsets) = if std::env::var("TMPNOQ4").is_ok() {
                (0, 0)
            } else {
                matmul_q4::fuse_q4_matmuls(&mut proto)
            };
            if q4 > 0 {
                log::debug!(
                    "tract: {q4} 4-bit matmuls read their blocks in place ({offsets} with Q4_1 offsets)"
                );
            }
        }
        // Last: the int8 rewrite tells step graphs by their `past_key*` inputs, which go here.
        let caches = if kv_in_place { kv_cache::fuse_kv_cache(&mut proto) } else { Vec::new() };
        if !caches.is_empty() {
            log::debug!("tract: {} layers keep their KV cache in place", caches.len());
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
        let mut typed = parsed.model.into_typed().map_err(|e| invalid("typing the graph", e))?;
        let unshared = shared_consts::unshare_large_constants(&mut typed)
            .map_err(|e| invalid("giving shared weights one node per reader", e))?;
        if unshared > 0 {
            log::debug!("tract: {unshared} readers of shared weights get their own constant node");
        }
        let optimized = typed.into_optimized().map_err(|e| invalid("optimising the graph", e))?;
        let run_options = tract_onnx::tract_core::runtime::RunOptions {
            executor: executor(options.threads)?,
            ..Default::default()
        };
        let plan = optimized
            .into_runnable_with_options(&run_options)
            .map_err(|e| invalid("planning the graph", e))?;
        let cache = if caches.is_empty() {
            check_interface(model, &plan, &[], &[])?;
            None
        } else {
            Some(Arc::new(cache_map(model, &plan, &caches)?))
        };
        Ok(TractModel { plan, cache })
    }
}

/// Maps the file's cache inputs/outputs onto the plan's cached attention nodes, and checks the
/// plan's interface: the file's other inputs then [`PAST_LENGTH`], the file's other outputs.
fn cache_map(model: &Model, plan: &Arc<TypedRunnableModel>, caches: &[CacheNames]) -> Result<CacheMap> {
    let info = model.info();
    let inputs: Vec<_> = info.inputs.iter().map(|i| cache_slot(caches, &i.name)).collect();
    let outputs: Vec<_> = info.outputs.iter().map(|o| cache_slot(caches, &o.name)).collect();
    let plan_outputs: Vec<usize> = (0..outputs.len()).filter(|&j| outputs[j].is_none()).collect();
    check_interface(model, plan, &inputs, &outputs)?;
    let mut nodes = vec![usize::MAX; caches.len()];
    for node in plan.model().nodes() {
        if let Some(op) = node.op_as::<CachedAttention>() {
            let slot = nodes.get_mut(op.layer).filter(|s| **s == usize::MAX);
            *slot.ok_or_else(|| invalid("planning the KV cache", format!("layer {} twice", op.layer)))? =
                node.id;
        }
    }
    if nodes.contains(&usize::MAX) {
        return Err(invalid("planning the KV cache", "a layer's cached attention was optimised away"));
    }
    Ok(CacheMap { inputs, outputs, nodes, plan_outputs })
}

/// The tract plan ferrite's backend would run for the file at `path` (developer tools:
/// `runtime/examples/tract_profile.rs` times its nodes one by one).
#[doc(hidden)]
pub fn plan_for_profiling(path: &std::path::Path, options: &Options) -> Result<Arc<TypedRunnableModel>> {
    let model = Model::open(path)?;
    Ok(TractModel::prepare(&model, options)?.plan)
}

/// Developer tools: cuts every in-place KV cache of a state of such a plan back to `len`
/// positions (`runtime/examples/tract_profile.rs` times the same position over and over).
#[doc(hidden)]
pub fn truncate_kv_caches(state: &mut TypedSimpleState, len: usize) {
    for op_state in state.op_states.iter_mut().flatten() {
        if let Some(cache) = op_state.downcast_mut::<KvCache>() {
            cache.truncate(len);
        }
    }
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
/// With an in-place KV cache (`cached_in[i]` / `cached_out[j]` set for the file's cache inputs
/// and outputs; empty slices otherwise) the plan has the other inputs, then [`PAST_LENGTH`], and
/// the other outputs.
fn check_interface(
    model: &Model,
    plan: &Arc<TypedRunnableModel>,
    cached_in: &[Option<(usize, Half)>],
    cached_out: &[Option<(usize, Half)>],
) -> Result<()> {
    let graph = plan.model();
    let names = |outlets: &[tract_onnx::prelude::OutletId]| -> Vec<String> {
        outlets.iter().map(|o| graph.node(o.node).name.clone()).collect()
    };
    let inputs = names(graph.input_outlets().map_err(|e| backend_err("reading inputs", e))?);
    let is_cached = |flags: &[Option<(usize, Half)>], i: usize| flags.get(i).is_some_and(Option::is_some);
    let info = model.info();
    let mut expected: Vec<String> = info
        .inputs
        .iter()
        .enumerate()
        .filter(|(i, _)| !is_cached(cached_in, *i))
        .map(|(_, d)| d.name.clone())
        .collect();
    if !cached_in.is_empty() {
        expected.push(PAST_LENGTH.to_string());
    }
    if inputs != expected {
        return Err(Error::InvalidModel(format!(
            "tract sees inputs {inputs:?}, the file declares {expected:?}"
        )));
    }
    let outputs = graph.output_outlets().map_err(|e| backend_err("reading outputs", e))?.len();
    let declared = (0..info.outputs.len()).filter(|&j| !is_cached(cached_out, j)).count();
    if outputs != declared {
        return Err(Error::InvalidModel(format!(
            "tract sees {outputs} outputs, the file declares {declared}"
        )));
    }
    Ok(())
}

impl PreparedModel for TractModel {
    fn new_state(&self) -> Result<Box<dyn BackendState>> {
        let cache = match &self.cache {
            Some(map) => Some(CacheState {
                map: map.clone(),
                state: self.plan.spawn().map_err(|e| backend_err("creating run state", e))?,
            }),
            None => None,
        };
        let inputs = self.cache.as_ref().map_or(self.plan.model().inputs.len(), |c| c.inputs.len());
        Ok(Box::new(TractState { plan: self.plan.clone(), held: vec![None; inputs], cache }))
    }
}

/// A session's in-place KV caches: one tract state kept from step to step, whose cached
/// attention ops hold the caches (`backend/tract/kv_cache.rs`).
struct CacheState {
    map: Arc<CacheMap>,
    state: TypedSimpleState,
}

fn kv<'s>(state: &'s mut TypedSimpleState, map: &CacheMap, layer: usize) -> Result<&'s mut KvCache> {
    state.op_states[map.nodes[layer]]
        .as_mut()
        .and_then(|s| s.downcast_mut::<KvCache>())
        .ok_or_else(|| backend_err("reading the KV cache", format!("layer {layer} has no cache state")))
}

fn kv_ref<'s>(state: &'s TypedSimpleState, map: &CacheMap, layer: usize) -> Option<&'s KvCache> {
    state.op_states[map.nodes[layer]].as_ref().and_then(|s| s.downcast_ref::<KvCache>())
}

/// Copies a given `[B, H, T, D]` f32 tensor into a layer's cache.
fn load_cache(
    state: &mut TypedSimpleState,
    map: &CacheMap,
    (layer, half): (usize, Half),
    view: &TensorView<'_>,
) -> Result<()> {
    let TensorDataView::F32(data) = view.data() else {
        return Err(Error::InvalidInput(format!("a KV cache is f32, got {:?}", view.dtype())));
    };
    kv(state, map, layer)?.load(half, view.shape(), data).map_err(|e| Error::InvalidInput(format!("{e:#}")))
}

impl CacheState {
    /// Runs the plan on `state` (this session's own, or a fresh one for a run that carries
    /// nothing): given cache inputs are loaded first, every cache must then hold the same
    /// number of positions, and a failed run truncates them back to it.
    fn run(
        map: &CacheMap,
        state: &mut TypedSimpleState,
        inputs: &[Option<TensorView<'_>>],
        held: &[Option<TValue>],
        carry: &[Option<usize>],
    ) -> Result<Vec<Option<Tensor>>> {
        for (i, slot) in map.inputs.iter().enumerate() {
            if let (Some(at), Some(view)) = (slot, inputs.get(i).and_then(Option::as_ref)) {
                load_cache(state, map, *at, view)?;
            }
        }
        let mut lengths = Vec::with_capacity(2 * map.nodes.len());
        for layer in 0..map.nodes.len() {
            let cache = kv(state, map, layer)?;
            lengths.push(cache.len(Half::Keys));
            lengths.push(cache.len(Half::Values));
        }
        let past = lengths.first().copied().unwrap_or(0);
        if lengths.iter().any(|&l| l != past) {
            return Err(Error::InvalidInput(format!("the KV caches hold different lengths: {lengths:?}")));
        }
        super::check_cache_carry(&map.inputs, &map.outputs, carry, "tract")?;
        let mut values: TVec<TValue> = tvec![];
        for (i, input) in inputs.iter().enumerate() {
            if map.inputs[i].is_some() {
                continue;
            }
            values.push(match input {
                Some(view) => to_tract(view)?.into(),
                None => held_slot(held, i)?.clone(),
            });
        }
        let past_i64 = i64::try_from(past).map_err(|e| backend_err("the past length", e))?;
        values.push(TractTensor::from(past_i64).into());
        let outputs = match no_panic("running the plan", || {
            state.run(values).map_err(|e| backend_err("running the plan", e))
        }) {
            Ok(outputs) => outputs,
            Err(e) => {
                // Appending never touches earlier rows: cutting back restores every cache.
                for layer in 0..map.nodes.len() {
                    if let Ok(cache) = kv(state, map, layer) {
                        cache.truncate(past);
                    }
                }
                return Err(e);
            }
        };
        let mut returned = vec![None; map.outputs.len()];
        for (value, &j) in outputs.iter().zip(&map.plan_outputs) {
            returned[j] = Some(from_tract(value)?);
        }
        for (j, slot) in map.outputs.iter().enumerate() {
            if let (Some((layer, half)), None) = (slot, carry.get(j).copied().flatten()) {
                let cache = kv(state, map, *layer)?;
                let shape = cache.shape(*half).unwrap_or_default();
                returned[j] = Some(Tensor::from_data(shape, TensorData::F32(cache.read(*half)))?);
            }
        }
        Ok(returned)
    }
}

/// tract's `SimpleState` keeps operator state between runs: its LSTM (a Scan) continues from the
/// previous run's final h/c instead of the `initial_h`/`initial_c` inputs (measured: 0.23 max abs
/// difference on the second run of tests/models/lstm). Recurrent state is an explicit input in
/// ferrite's graphs, so every run starts from a fresh state spawned off the shared plan — except
/// a decoder whose KV cache stays in place ([`CacheState`]): its plan has no other stateful op
/// (checked when preparing), and the session's one state holds the caches between steps.
///
/// Values held between runs (KV cache, LSTM h/c) stay tract values: an output is moved into
/// `held` and handed back as the next run's input by reference count, never copied.
struct TractState {
    plan: Arc<TypedRunnableModel>,
    held: Vec<Option<TValue>>,
    /// The session's in-place KV caches, when the plan keeps them (see [`CacheState`]).
    cache: Option<CacheState>,
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
        if let Some(cache) = &mut self.cache {
            let map = cache.map.clone();
            let carries_cache =
                map.inputs.iter().zip(inputs).any(|(slot, input)| slot.is_some() && input.is_none());
            if carries_cache {
                return CacheState::run(&map, &mut cache.state, inputs, &self.held, carry);
            }
            // A run that carries no cache must leave the session's caches alone.
            let mut fresh = self.plan.spawn().map_err(|e| backend_err("creating run state", e))?;
            return CacheState::run(&map, &mut fresh, inputs, &self.held, carry);
        }
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
        if let Some(cache) = &mut self.cache
            && let Some(at) = cache.map.inputs.get(input).copied().flatten()
        {
            return load_cache(&mut cache.state, &cache.map, at, value);
        }
        set_held(&mut self.held, input, to_tract(value)?.into())
    }

    fn held_shape(&self, input: usize) -> Option<Vec<usize>> {
        if let Some(cache) = &self.cache
            && let Some((layer, half)) = cache.map.inputs.get(input).copied().flatten()
        {
            return kv_ref(&cache.state, &cache.map, layer)?.shape(half);
        }
        self.held.get(input)?.as_ref().map(|v| v.shape().to_vec())
    }

    fn held(&self, input: usize) -> Result<Tensor> {
        if let Some(cache) = &self.cache
            && let Some((layer, half)) = cache.map.inputs.get(input).copied().flatten()
        {
            let kv = kv_ref(&cache.state, &cache.map, layer);
            let shape = kv.and_then(|c| c.shape(half)).ok_or_else(|| {
                Error::InvalidInput(format!("input #{input} has no value held in the backend"))
            })?;
            return Tensor::from_data(shape, TensorData::F32(kv.map(|c| c.read(half)).unwrap_or_default()));
        }
        from_tract(held_slot(&self.held, input)?)
    }
}
