//! The ONNX Runtime backend, through the `ort` crate with its library loaded at run time.
//!
//! The shared library comes from the `onnxruntime` PyPI wheel (no download at build time).
//! `ort` panics when it has to load the library lazily, so the library is always loaded here,
//! explicitly, with `ort::init_from`, and every failure becomes `BackendUnavailable`.
//! A process holds one ONNX Runtime library and one environment: the first successful load wins.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{IoBinding, Session as OrtSession, SessionInputValue};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, TensorRef, ValueType};
use prost::Message;

use tract_onnx::pb;

mod cache;
mod ops;

use self::cache::{CacheGraph, Geometry, Layout};
use super::{BackendState, Options, PreparedModel, held_slot, set_held};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::rewrite::graph::{Half, PAST_LENGTH, cache_slot};
use crate::rewrite::int8_pattern::{DOMAIN, Fused, fuse_row_quantisation};
use crate::tensor::{Tensor, TensorData, TensorDataView, TensorView};

const NAME: &str = "ort";

/// The environment variable that names the ONNX Runtime library (ort's own convention).
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();
static LOAD_LOCK: Mutex<()> = Mutex::new(());

fn unavailable(reason: impl Into<String>) -> Error {
    Error::BackendUnavailable { backend: NAME, reason: reason.into() }
}

fn backend_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend { backend: NAME, message: format!("{context}: {e}") }
}

/// Where the runtime looks for the library, in order, when no explicit path is given.
pub fn library_candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(ORT_DYLIB_ENV) {
        out.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        out.push(dir.join("libonnxruntime.so"));
        out.push(dir.join("../lib/libonnxruntime.so"));
    }
    // The project-local copy filled by scripts/setup-test-env.sh (development checkouts only).
    out.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/onnxruntime/libonnxruntime.so"));
    out
}

/// The process's ONNX Runtime environment, loading the library as ferrite does (benches that
/// drive `ort` directly beside ferrite need the same environment: a process holds one).
#[doc(hidden)]
pub fn shared_environment(explicit: Option<&Path>) -> Result<&'static ort::environment::Environment> {
    environment(explicit)
}

/// Loads the ONNX Runtime library once per process and returns the shared environment.
fn environment(explicit: Option<&Path>) -> Result<&'static ort::environment::Environment> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _guard = LOAD_LOCK.lock().map_err(|_| unavailable("a previous load attempt panicked"))?;
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = match explicit {
        Some(p) if p.is_file() => p.to_path_buf(),
        Some(p) => return Err(unavailable(format!("no ONNX Runtime library at {}", p.display()))),
        None => {
            let candidates = library_candidates();
            match candidates.iter().find(|p| p.is_file()) {
                Some(p) => p.clone(),
                None => {
                    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
                    return Err(unavailable(format!(
                        "no ONNX Runtime library found (set {ORT_DYLIB_ENV} or run scripts/setup-test-env.sh); tried {}",
                        tried.join(", ")
                    )));
                }
            }
        }
    };
    let path = path.canonicalize().map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
    log::info!("loading ONNX Runtime from {}", path.display());
    let env = ort::init_from(&path)
        .map_err(|e| unavailable(e.to_string()))?
        .with_name("ferrite")
        .build()
        .map_err(|e| unavailable(format!("creating the ONNX Runtime environment: {e}")))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// A model loaded into an ONNX Runtime session. `ort` runs take `&mut`, so concurrent sessions
/// of one plan take turns; ONNX Runtime parallelises inside a run with its intra-op threads.
pub(crate) struct OrtModel {
    session: Arc<Mutex<OrtSession>>,
    /// The file's inputs (a rewritten graph's own inputs follow them in the session).
    input_names: Vec<String>,
    output_names: Vec<String>,
    /// Set when the session keeps a decoder's KV caches in place (`backend/ort/cache.rs`).
    cache: Option<Arc<CacheMap>>,
    rewrites: Rewrites,
}

/// What ferrite's load-time rewrites changed for ONNX Runtime: all zero when the file runs as
/// written (also when ONNX Runtime refused the rewritten graph, which is only logged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rewrites {
    /// Decoder layers whose KV cache ferrite's attention operator keeps in place.
    pub in_place_layers: usize,
    /// Per-token int8 quantisations run as ferrite's operator.
    pub fused_quantize: usize,
    /// Int8 dequantisations run as ferrite's operator.
    pub fused_dequantize: usize,
}

/// The rewrites ferrite's ONNX Runtime backend applies to the file at `path` (tests and
/// developer tools: a refused rewrite falls back silently, and this is how to see it).
#[doc(hidden)]
pub fn rewrites_for_inspection(path: &Path, options: &Options) -> Result<Rewrites> {
    let model = Model::open(path)?;
    Ok(OrtModel::prepare(&model, options)?.rewrites)
}

/// Where a decoder's KV caches went in a session that keeps them in place.
struct CacheMap {
    graph: CacheGraph,
    /// Per file input: the layer and half a cache input stands for.
    inputs: Vec<Option<(usize, Half)>>,
    /// Per file output: the layer and half a `present_*` output stands for.
    outputs: Vec<Option<(usize, Half)>>,
    /// The `input_ids` input (`[B, S]`), which sizes a step.
    ids: usize,
}

impl OrtModel {
    pub(crate) fn prepare(model: &Model, options: &Options) -> Result<OrtModel> {
        let env = environment(options.ort_library.as_deref())?;
        if options.ort_in_place_kv || options.ort_fused_int8 {
            match OrtModel::prepare_rewritten(model, options, env) {
                Ok(Some(prepared)) => return Ok(prepared),
                Ok(None) => {}
                // The rewrites are optimisations: the file as written is still the model.
                Err(e) => {
                    log::warn!("ort: the rewritten graph was refused ({e}); running the file as written")
                }
            }
        }
        // ONNX Runtime resolves external data relative to the model's path itself, and memory-maps
        // it: loading from the path (not from our map) keeps that behaviour.
        let session =
            builder(env, options)?.commit_from_file(model.path()).map_err(|e| classify(model, e))?;
        OrtModel::checked(model, session, None, Rewrites::default())
    }

    /// The file rewritten in memory for ONNX Runtime, or `None` when no rewrite applies: a
    /// decoder step graph's attention as ferrite's operator on an in-place cache (`backend/ort/cache.rs`),
    /// and an int8 file's per-token quantisation as ferrite's operators (`backend/ort/ops.rs`).
    fn prepare_rewritten(
        model: &Model,
        options: &Options,
        env: &ort::environment::Environment,
    ) -> Result<Option<OrtModel>> {
        let mut proto = model.proto()?;
        let info = model.info();
        let ids = info
            .inputs
            .iter()
            .position(|i| i.name == "input_ids" && i.shape.as_ref().is_some_and(|s| s.len() == 2));
        let cache = match ids {
            Some(ids) if options.ort_in_place_kv => cache::rewrite(&mut proto).map(|graph| {
                let inputs = info.inputs.iter().map(|i| cache_slot(&graph.layers, &i.name)).collect();
                let outputs = info.outputs.iter().map(|o| cache_slot(&graph.layers, &o.name)).collect();
                CacheMap { graph, inputs, outputs, ids }
            }),
            _ => None,
        };
        let fused = if options.ort_fused_int8 { fuse_row_quantisation(&mut proto) } else { Fused::default() };
        let fused_int8 = fused.quantize + fused.dequantize > 0;
        if cache.is_none() && !fused_int8 {
            return Ok(None);
        }
        proto.opset_import.push(pb::OperatorSetIdProto { domain: DOMAIN.into(), version: 1 });
        let bytes = proto.encode_to_vec();
        drop(proto);
        // A model given as bytes has no directory: ONNX Runtime is told where the external data
        // lies, and still memory-maps it from there.
        let dir = model.dir();
        let dir =
            dir.to_str().ok_or_else(|| Error::InvalidModel(format!("{} is not UTF-8", dir.display())))?;
        let mut builder = builder(env, options)?
            .with_config_entry("session.model_external_initializers_file_folder_path", dir)
            .map_err(|e| backend_err("configuring the session", e))?;
        let domain = ops::domain().map_err(|e| backend_err("registering ferrite's operators", e))?;
        builder =
            builder.with_operators(domain).map_err(|e| backend_err("registering ferrite's operators", e))?;
        let session = builder.commit_from_memory(&bytes).map_err(|e| classify(model, e))?;
        if let Some(map) = &cache {
            log::debug!(
                "ort: {} layers keep their KV cache in place (ferrite's attention operator)",
                map.graph.layers.len()
            );
        }
        if fused_int8 {
            log::debug!(
                "ort: fused {} row quantisations and {} dequantisations (ferrite's operators)",
                fused.quantize,
                fused.dequantize
            );
        }
        let rewrites = Rewrites {
            in_place_layers: cache.as_ref().map_or(0, |map| map.graph.layers.len()),
            fused_quantize: fused.quantize,
            fused_dequantize: fused.dequantize,
        };
        OrtModel::checked(model, session, cache.map(Arc::new), rewrites).map(Some)
    }

    /// Checks that ONNX Runtime sees the file's inputs (then the rewrite's own, if any).
    fn checked(
        model: &Model,
        session: OrtSession,
        cache: Option<Arc<CacheMap>>,
        rewrites: Rewrites,
    ) -> Result<OrtModel> {
        let input_names = session.inputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
        let output_names = session.outputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
        let mut expected: Vec<&str> = model.info().inputs.iter().map(|i| i.name.as_str()).collect();
        if cache.is_some() {
            expected.push(PAST_LENGTH);
        }
        if input_names.iter().map(String::as_str).ne(expected.iter().copied()) {
            return Err(Error::InvalidModel(format!(
                "ONNX Runtime sees inputs {input_names:?}, the file declares {expected:?}"
            )));
        }
        let file_inputs = model.info().inputs.len();
        Ok(OrtModel {
            session: Arc::new(Mutex::new(session)),
            input_names: input_names[..file_inputs].to_vec(),
            output_names,
            cache,
            rewrites,
        })
    }
}

/// A session builder with ferrite's settings.
fn builder(env: &ort::environment::Environment, options: &Options) -> Result<SessionBuilder> {
    let config = |e: ort::Error<_>| backend_err("configuring the session", e);
    let mut builder = OrtSession::builder(env)
        .map_err(|e| backend_err("creating a session builder", e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(config)?
        .with_intra_threads(options.threads.max(1))
        .map_err(config)?
        .with_inter_threads(1)
        .map_err(config)?;
    if !options.ort_prepacking {
        builder = builder
            .with_config_entry("session.disable_prepacking", "1")
            .map_err(|e| backend_err("disabling prepacking", e))?;
    }
    Ok(builder)
}

/// ONNX Runtime reports unknown operators as text; map them to `UnsupportedOp` by finding the
/// model's operator named in the message.
fn classify(model: &Model, e: ort::Error) -> Error {
    let message = e.to_string();
    let unknown = message.contains("No Op registered for")
        || message.contains("not a registered function/op")
        || message.contains("Could not find an implementation")
        || message.contains("No opset import for domain");
    if unknown {
        let named = model.info().ops.keys().find(|op| {
            let bare = op.rsplit('.').next().unwrap_or(op);
            message.contains(bare)
        });
        if let Some(op) = named {
            return Error::UnsupportedOp { op: op.clone(), backend: NAME };
        }
    }
    Error::InvalidModel(format!("ONNX Runtime refused the model: {message}"))
}

impl PreparedModel for OrtModel {
    fn new_state(&self) -> Result<Box<dyn BackendState>> {
        let cache = match &self.cache {
            Some(map) => {
                let session =
                    self.session.lock().map_err(|_| backend_err("binding", "a previous run panicked"))?;
                Some(CacheState::new(&session, map.clone(), &self.output_names)?)
            }
            None => None,
        };
        Ok(Box::new(OrtState {
            session: self.session.clone(),
            input_names: self.input_names.clone(),
            output_names: self.output_names.clone(),
            held: (0..self.input_names.len()).map(|_| None).collect(),
            cache,
        }))
    }
}

/// Values held between runs (KV cache, LSTM h/c) stay ONNX Runtime values: an output is moved
/// into `held` and passed back by reference as the next run's input, never copied.
struct OrtState {
    session: Arc<Mutex<OrtSession>>,
    input_names: Vec<String>,
    output_names: Vec<String>,
    held: Vec<Option<DynValue>>,
    /// The session's in-place KV caches, when the model keeps them (see [`CacheState`]).
    cache: Option<CacheState>,
}

/// A session's in-place KV caches on ONNX Runtime: one `[B, H, capacity, D]` buffer per layer
/// and half, bound by this state's `IoBinding` as both the `past_*` input and the `present_*`
/// output, so ferrite's attention operator appends a step's rows where the cache lies
/// (`backend/ort/cache.rs`).
/// The buffers double when a step would outgrow them. A failed run leaves the lengths as they
/// were: the operator writes only at positions from the past length on, so nothing is lost.
struct CacheState {
    map: Arc<CacheMap>,
    binding: IoBinding,
    /// Where ONNX Runtime allocates the outputs that are not caches, and their names: bound
    /// again before every run (a bound output keeps the previous run's value, and its shape).
    cpu: MemoryInfo<'static>,
    outputs: Vec<String>,
    /// Known once a cache was loaded or a step ran.
    geometry: Option<Geometry>,
    /// Per layer: the keys' and the values' buffer.
    buffers: Vec<[OrtTensor<f32>; 2]>,
    /// Per layer: positions held in the keys' and the values' buffer.
    lens: Vec<[usize; 2]>,
}

fn half_index(half: Half) -> usize {
    match half {
        Half::Keys => 0,
        Half::Values => 1,
    }
}

impl CacheState {
    fn new(session: &OrtSession, map: Arc<CacheMap>, output_names: &[String]) -> Result<CacheState> {
        let err = |e: ort::Error| backend_err("binding the session's inputs and outputs", e);
        let binding = session.create_binding().map_err(err)?;
        let cpu = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::CPUOutput)
            .map_err(err)?;
        let outputs = output_names.iter().zip(&map.outputs).filter(|(_, slot)| slot.is_none());
        let outputs = outputs.map(|(name, _)| name.clone()).collect();
        let layers = map.graph.layers.len();
        Ok(CacheState {
            map,
            binding,
            cpu,
            outputs,
            geometry: None,
            buffers: Vec::new(),
            lens: vec![[0; 2]; layers],
        })
    }

    /// Allocates buffers of `geometry`, keeping the first `keep` positions of the current ones
    /// when the batch is the same (else every cache starts empty), and binds them.
    fn allocate(&mut self, geometry: Geometry, keep: usize) -> Result<()> {
        let err = |e: ort::Error| backend_err("allocating the KV cache", e);
        let allocator = Allocator::default();
        let same_batch = self.geometry.as_ref().is_some_and(|g| g.batch == geometry.batch);
        let mut buffers = Vec::with_capacity(self.map.graph.layers.len());
        for layer in 0..self.map.graph.layers.len() {
            let mut pair = [
                OrtTensor::<f32>::new(&allocator, geometry.shape()).map_err(err)?,
                OrtTensor::<f32>::new(&allocator, geometry.shape()).map_err(err)?,
            ];
            if let (true, Some(old_geometry), Some(old)) =
                (same_batch, &self.geometry, self.buffers.get(layer))
            {
                for h in 0..2 {
                    let len = self.lens[layer][h].min(keep);
                    let (_, from) = old[h].extract_tensor();
                    let (_, to) = pair[h].extract_tensor_mut();
                    let dims = (geometry.batch, geometry.heads, len, geometry.head_dim);
                    let from = (from, Layout::of_buffer(h, old_geometry.capacity));
                    cache::copy_positions(from, (to, Layout::of_buffer(h, geometry.capacity)), dims);
                }
            }
            buffers.push(pair);
        }
        if !same_batch {
            self.lens.iter_mut().for_each(|l| *l = [0; 2]);
        }
        for (layer, pair) in buffers.iter_mut().enumerate() {
            let names = &self.map.graph.layers[layer];
            let [keys, values] = pair;
            self.binding.bind_input(names.past_key.as_str(), &*keys).map_err(err)?;
            self.binding.bind_output(names.present_key.as_str(), keys.view_mut()).map_err(err)?;
            self.binding.bind_input(names.past_value.as_str(), &*values).map_err(err)?;
            self.binding.bind_output(names.present_value.as_str(), values.view_mut()).map_err(err)?;
        }
        self.buffers = buffers;
        self.geometry = Some(geometry);
        Ok(())
    }

    /// Makes sure the buffers hold `batch` sequences of at least `needed` positions, keeping
    /// the first `keep` positions when the batch stays.
    fn reserve(&mut self, batch: usize, needed: usize, keep: usize) -> Result<()> {
        let current = self.geometry.as_ref().map(|g| (g.batch, g.capacity));
        if let Some((b, capacity)) = current
            && b == batch
            && capacity >= needed
        {
            return Ok(());
        }
        let capacity = match current {
            Some((b, capacity)) if b == batch => cache::grown_capacity(capacity, needed),
            _ => cache::grown_capacity(0, needed),
        };
        let graph = &self.map.graph;
        let geometry = Geometry { batch, heads: graph.heads, capacity, head_dim: graph.head_dim };
        self.allocate(geometry, keep)
    }

    /// Copies a given `[B, H, T, D]` f32 cache into a layer's buffer.
    fn load(&mut self, (layer, half): (usize, Half), view: &TensorView<'_>) -> Result<()> {
        let TensorDataView::F32(data) = view.data() else {
            return Err(Error::InvalidInput(format!("a KV cache is f32, got {:?}", view.dtype())));
        };
        let graph = &self.map.graph;
        let &[b, h, t, d] = view.shape() else {
            return Err(Error::InvalidInput(format!("a KV cache is [B, H, T, D], got {:?}", view.shape())));
        };
        if (h, d) != (graph.heads, graph.head_dim) || data.len() != b * h * t * d {
            return Err(Error::InvalidInput(format!(
                "a KV cache of this model is [B, {}, T, {}], got {:?}",
                graph.heads,
                graph.head_dim,
                view.shape()
            )));
        }
        let keep = self.lens.iter().flatten().copied().max().unwrap_or(0);
        self.reserve(b, t, keep)?;
        let capacity = self.geometry.as_ref().map_or(0, |g| g.capacity);
        let i = half_index(half);
        let (_, to) = self.buffers[layer][i].extract_tensor_mut();
        let into = (to, Layout::of_buffer(i, capacity));
        cache::copy_positions((data, Layout::Rows { capacity: t }), into, (b, h, t, d));
        self.lens[layer][i] = t;
        Ok(())
    }

    fn shape(&self, (layer, half): (usize, Half)) -> Option<Vec<usize>> {
        let g = self.geometry.as_ref()?;
        Some(vec![g.batch, g.heads, self.lens[layer][half_index(half)], g.head_dim])
    }

    /// A dense `[B, H, T, D]` copy of a layer's cache.
    fn read(&self, at: (usize, Half)) -> Result<Tensor> {
        let shape = self.shape(at).ok_or_else(|| Error::InvalidInput("no KV cache is held yet".into()))?;
        let capacity = self.geometry.as_ref().map_or(0, |g| g.capacity);
        let mut out = vec![0.0; shape.iter().product()];
        let half = half_index(at.1);
        let (_, from) = self.buffers[at.0][half].extract_tensor();
        let from = (from, Layout::of_buffer(half, capacity));
        let into = (&mut out[..], Layout::Rows { capacity: shape[2] });
        cache::copy_positions(from, into, (shape[0], shape[1], shape[2], shape[3]));
        Tensor::from_data(shape, TensorData::F32(out))
    }

    /// One step: given caches are loaded first, then every cache must hold the same number of
    /// positions `P`; the step's `S` positions are written at `P..P + S`.
    fn run(
        &mut self,
        session: &mut OrtSession,
        names: (&[String], &[String]),
        inputs: &[Option<TensorView<'_>>],
        held: &[Option<DynValue>],
        carry: &[Option<usize>],
    ) -> Result<StepOutputs> {
        let map = self.map.clone();
        for (i, slot) in map.inputs.iter().enumerate() {
            if let (Some(at), Some(view)) = (slot, inputs.get(i).and_then(Option::as_ref)) {
                self.load(*at, view)?;
            }
        }
        let past = self.lens.first().map_or(0, |l| l[0]);
        if self.lens.iter().flatten().any(|&l| l != past) {
            return Err(Error::InvalidInput(format!(
                "the KV caches hold different lengths: {:?}",
                self.lens
            )));
        }
        super::check_cache_carry(&map.inputs, &map.outputs, carry, "ONNX Runtime")?;
        let Some(Some(ids)) = inputs.get(map.ids) else {
            return Err(Error::InvalidInput("input_ids must be given at every step".into()));
        };
        let &[batch, steps] = ids.shape() else {
            return Err(Error::InvalidInput(format!("input_ids is [B, S], got {:?}", ids.shape())));
        };
        if self.geometry.as_ref().is_some_and(|g| g.batch != batch) && past > 0 {
            return Err(Error::InvalidInput(format!(
                "input_ids has batch {batch}, the KV cache {}",
                self.geometry.as_ref().map_or(0, |g| g.batch)
            )));
        }
        self.run_once(session, names, inputs, held, carry, (past, batch, steps))
    }

    /// One run of `steps` positions at `past`.
    fn run_once(
        &mut self,
        session: &mut OrtSession,
        names: (&[String], &[String]),
        inputs: &[Option<TensorView<'_>>],
        held: &[Option<DynValue>],
        carry: &[Option<usize>],
        (past, batch, steps): (usize, usize, usize),
    ) -> Result<StepOutputs> {
        let map = self.map.clone();
        let (input_names, output_names) = names;
        let total = past + steps;
        self.reserve(batch, total.max(1), past)?;
        let err = |e: ort::Error| backend_err("binding a step's inputs", e);
        for (i, (name, input)) in input_names.iter().zip(inputs).enumerate() {
            if map.inputs[i].is_some() {
                continue;
            }
            match input {
                Some(view) => self.binding.bind_input(name.as_str(), &to_ort_owned(view)?).map_err(err)?,
                None => self.binding.bind_input(name.as_str(), held_slot(held, i)?).map_err(err)?,
            }
        }
        let past_value = OrtTensor::from_array((Vec::<i64>::new(), vec![past as i64])).map_err(err)?;
        self.binding.bind_input(PAST_LENGTH, &past_value).map_err(err)?;
        for name in &self.outputs {
            self.binding.bind_output_to_device(name.as_str(), &self.cpu).map_err(err)?;
        }

        let mut returned = vec![None; output_names.len()];
        let mut kept = Vec::new();
        {
            let mut outputs =
                session.run_binding(&self.binding).map_err(|e| backend_err("running the session", e))?;
            for (j, name) in output_names.iter().enumerate() {
                if map.outputs[j].is_some() {
                    continue;
                }
                match carry.get(j).copied().flatten() {
                    Some(i) if i < input_names.len() => {
                        let value = outputs
                            .remove(name.as_str())
                            .ok_or_else(|| backend_err("reading an output", format!("no output `{name}`")))?;
                        kept.push((i, value));
                    }
                    Some(i) => return Err(backend_err("holding an output", format!("no input #{i}"))),
                    None => {
                        let value = outputs
                            .get(name.as_str())
                            .ok_or_else(|| backend_err("reading an output", format!("no output `{name}`")))?;
                        returned[j] = Some(from_ort(value)?);
                    }
                }
            }
        }
        self.lens.iter_mut().for_each(|l| *l = [total; 2]);
        for (j, slot) in map.outputs.iter().enumerate() {
            if let (Some(at), None) = (slot, carry.get(j).copied().flatten()) {
                returned[j] = Some(self.read(*at)?);
            }
        }
        Ok((returned, kept))
    }
}

/// A run's outputs in the model's order (`None` for carried ones), and the non-cache outputs to
/// hold for the next run (input index, value).
type StepOutputs = (Vec<Option<Tensor>>, Vec<(usize, DynValue)>);

/// An owned ONNX Runtime tensor with a copy of `view`'s data.
fn to_ort_owned(view: &TensorView<'_>) -> Result<DynValue> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let err = |e: ort::Error| backend_err("building a held tensor", e);
    Ok(match view.data() {
        TensorDataView::F32(d) => OrtTensor::from_array((shape, d.to_vec())).map_err(err)?.into_dyn(),
        TensorDataView::F16(d) => OrtTensor::from_array((shape, d.to_vec())).map_err(err)?.into_dyn(),
        TensorDataView::I64(d) => OrtTensor::from_array((shape, d.to_vec())).map_err(err)?.into_dyn(),
        TensorDataView::I32(d) => OrtTensor::from_array((shape, d.to_vec())).map_err(err)?.into_dyn(),
        TensorDataView::U8(d) => OrtTensor::from_array((shape, d.to_vec())).map_err(err)?.into_dyn(),
        TensorDataView::I8(d) => OrtTensor::from_array((shape, d.to_vec())).map_err(err)?.into_dyn(),
    })
}

/// Wraps the caller's buffer without copying: ONNX Runtime reads it in place.
fn to_ort<'a>(view: &TensorView<'a>) -> Result<SessionInputValue<'a>> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    let err = |e: ort::Error| backend_err("building an input tensor", e);
    Ok(match view.data() {
        TensorDataView::F32(d) => TensorRef::from_array_view((shape, d)).map_err(err)?.into(),
        TensorDataView::F16(d) => TensorRef::from_array_view((shape, d)).map_err(err)?.into(),
        TensorDataView::I64(d) => TensorRef::from_array_view((shape, d)).map_err(err)?.into(),
        TensorDataView::I32(d) => TensorRef::from_array_view((shape, d)).map_err(err)?.into(),
        TensorDataView::U8(d) => TensorRef::from_array_view((shape, d)).map_err(err)?.into(),
        TensorDataView::I8(d) => TensorRef::from_array_view((shape, d)).map_err(err)?.into(),
    })
}

fn from_ort(value: &DynValue) -> Result<Tensor> {
    let err = |e: ort::Error| backend_err("reading an output", e);
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => return Err(backend_err("reading an output", format!("{other:?} is not a tensor"))),
    };
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(err)?;
            (shape.iter().map(|&d| d as usize).collect::<Vec<_>>(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Float32 => extract!(f32, F32),
        TensorElementType::Float16 => extract!(half::f16, F16),
        TensorElementType::Int64 => extract!(i64, I64),
        TensorElementType::Int32 => extract!(i32, I32),
        TensorElementType::Uint8 => extract!(u8, U8),
        TensorElementType::Int8 => extract!(i8, I8),
        other => {
            return Err(backend_err(
                "reading an output",
                format!("dtype {other:?} is not one ferrite carries"),
            ));
        }
    };
    Tensor::from_data(shape, data)
}

impl BackendState for OrtState {
    fn run(
        &mut self,
        inputs: &[Option<TensorView<'_>>],
        carry: &[Option<usize>],
    ) -> Result<Vec<Option<Tensor>>> {
        if let Some(cache) = &mut self.cache {
            let carries_cache =
                cache.map.inputs.iter().zip(inputs).any(|(slot, input)| slot.is_some() && input.is_none());
            let mut session =
                self.session.lock().map_err(|_| backend_err("running", "a previous run panicked"))?;
            let names = (self.input_names.as_slice(), self.output_names.as_slice());
            let (returned, kept) = if carries_cache {
                cache.run(&mut session, names, inputs, &self.held, carry)?
            } else {
                // A run that carries no cache must leave the session's caches alone.
                let mut fresh = CacheState::new(&session, cache.map.clone(), &self.output_names)?;
                fresh.run(&mut session, names, inputs, &self.held, carry)?
            };
            drop(session);
            for (i, value) in kept {
                self.held[i] = Some(value);
            }
            return Ok(returned);
        }
        let mut values = Vec::with_capacity(inputs.len());
        for (i, (name, input)) in self.input_names.iter().zip(inputs).enumerate() {
            let value: SessionInputValue<'_> = match input {
                Some(view) => to_ort(view)?,
                None => held_slot(&self.held, i)?.into(),
            };
            values.push((name.as_str(), value));
        }
        let mut session =
            self.session.lock().map_err(|_| backend_err("running", "a previous run panicked"))?;
        let mut outputs = session.run(values).map_err(|e| backend_err("running the session", e))?;
        let mut returned = Vec::with_capacity(self.output_names.len());
        let mut kept = Vec::new();
        for (j, name) in self.output_names.iter().enumerate() {
            match carry.get(j).copied().flatten() {
                Some(i) if i < self.held.len() => {
                    let value = outputs
                        .remove(name.as_str())
                        .ok_or_else(|| backend_err("reading an output", format!("no output `{name}`")))?;
                    kept.push((i, value));
                    returned.push(None);
                }
                Some(i) => return Err(backend_err("holding an output", format!("no input #{i}"))),
                None => returned.push(Some(from_ort(&outputs[name.as_str()])?)),
            }
        }
        drop(outputs);
        drop(session);
        for (i, value) in kept {
            self.held[i] = Some(value);
        }
        Ok(returned)
    }

    fn hold(&mut self, input: usize, value: &TensorView<'_>) -> Result<()> {
        if let Some(cache) = &mut self.cache
            && let Some(at) = cache.map.inputs.get(input).copied().flatten()
        {
            return cache.load(at, value);
        }
        set_held(&mut self.held, input, to_ort_owned(value)?)
    }

    fn held_shape(&self, input: usize) -> Option<Vec<usize>> {
        if let Some(cache) = &self.cache
            && let Some(at) = cache.map.inputs.get(input).copied().flatten()
        {
            return cache.shape(at);
        }
        let value = self.held.get(input)?.as_ref()?;
        match value.dtype() {
            ValueType::Tensor { shape, .. } => Some(shape.iter().map(|&d| d.max(0) as usize).collect()),
            _ => None,
        }
    }

    fn held(&self, input: usize) -> Result<Tensor> {
        if let Some(cache) = &self.cache
            && let Some(at) = cache.map.inputs.get(input).copied().flatten()
        {
            return cache.read(at);
        }
        from_ort(held_slot(&self.held, input)?)
    }
}
