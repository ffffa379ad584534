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

use super::int8_pattern::{DOMAIN, Fused, fuse_row_quantisation};
use super::onnx_graph::{Half, PAST_LENGTH, cache_slot};
use super::ort_gqa::{self, Geometry, GqaGraph, SEQLENS_K, TOTAL_LENGTH};
use super::ort_int8;
use super::{BackendState, Options, PreparedModel, held_slot, set_held};
use crate::error::{Error, Result};
use crate::model::Model;
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
    /// Set when the session runs GroupQueryAttention on in-place caches (`ort_gqa.rs`).
    gqa: Option<Arc<GqaMap>>,
}

/// Where a decoder's KV caches went in a session that keeps them in place.
struct GqaMap {
    graph: GqaGraph,
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
        OrtModel::checked(model, session, None)
    }

    /// The file rewritten in memory for ONNX Runtime, or `None` when no rewrite applies: a
    /// decoder step graph's attention as GroupQueryAttention on an in-place cache (`ort_gqa.rs`),
    /// and an int8 file's per-token quantisation as ferrite's custom operators (`ort_int8.rs`).
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
        let gqa = match ids {
            Some(ids) if options.ort_in_place_kv => ort_gqa::rewrite(&mut proto).map(|graph| {
                let inputs = info.inputs.iter().map(|i| cache_slot(&graph.layers, &i.name)).collect();
                let outputs = info.outputs.iter().map(|o| cache_slot(&graph.layers, &o.name)).collect();
                GqaMap { graph, inputs, outputs, ids }
            }),
            _ => None,
        };
        let fused = if options.ort_fused_int8 { fuse_row_quantisation(&mut proto) } else { Fused::default() };
        let fused_int8 = fused.quantize + fused.dequantize > 0;
        if gqa.is_none() && !fused_int8 {
            return Ok(None);
        }
        if fused_int8 {
            proto.opset_import.push(pb::OperatorSetIdProto { domain: DOMAIN.into(), version: 1 });
        }
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
        if fused_int8 {
            let domain = ort_int8::domain().map_err(|e| backend_err("registering ferrite's operators", e))?;
            builder = builder
                .with_operators(domain)
                .map_err(|e| backend_err("registering ferrite's operators", e))?;
        }
        let session = builder.commit_from_memory(&bytes).map_err(|e| classify(model, e))?;
        if let Some(map) = &gqa {
            log::debug!(
                "ort: {} layers keep their KV cache in place (GroupQueryAttention)",
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
        OrtModel::checked(model, session, gqa.map(Arc::new)).map(Some)
    }

    /// Checks that ONNX Runtime sees the file's inputs (then the rewrite's own, if any).
    fn checked(model: &Model, session: OrtSession, gqa: Option<Arc<GqaMap>>) -> Result<OrtModel> {
        let input_names = session.inputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
        let output_names = session.outputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
        let mut expected: Vec<&str> = model.info().inputs.iter().map(|i| i.name.as_str()).collect();
        if gqa.is_some() {
            expected.extend([SEQLENS_K, TOTAL_LENGTH, PAST_LENGTH]);
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
            gqa,
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
        let gqa = match &self.gqa {
            Some(map) => {
                let session =
                    self.session.lock().map_err(|_| backend_err("binding", "a previous run panicked"))?;
                Some(GqaState::new(&session, map.clone(), &self.output_names)?)
            }
            None => None,
        };
        Ok(Box::new(OrtState {
            session: self.session.clone(),
            input_names: self.input_names.clone(),
            output_names: self.output_names.clone(),
            held: (0..self.input_names.len()).map(|_| None).collect(),
            gqa,
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
    /// The session's in-place KV caches, when the model keeps them (see [`GqaState`]).
    gqa: Option<GqaState>,
}

/// A session's in-place KV caches on ONNX Runtime: one `[B, H, capacity, D]` buffer per layer
/// and half, bound by this state's `IoBinding` as both the `past_*` input and the `present_*`
/// output, so GroupQueryAttention appends a step's rows where the cache lies (`ort_gqa.rs`).
/// The buffers double when a step would outgrow them. A failed run leaves the lengths as they
/// were: GQA writes only at positions from the past length on, so nothing is lost.
struct GqaState {
    map: Arc<GqaMap>,
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

impl GqaState {
    fn new(session: &OrtSession, map: Arc<GqaMap>, output_names: &[String]) -> Result<GqaState> {
        let err = |e: ort::Error| backend_err("binding the session's inputs and outputs", e);
        let binding = session.create_binding().map_err(err)?;
        let cpu = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::CPUOutput)
            .map_err(err)?;
        let outputs = output_names.iter().zip(&map.outputs).filter(|(_, slot)| slot.is_none());
        let outputs = outputs.map(|(name, _)| name.clone()).collect();
        let layers = map.graph.layers.len();
        Ok(GqaState {
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
                    ort_gqa::copy_positions(from, old_geometry.capacity, to, geometry.capacity, dims);
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
            Some((b, capacity)) if b == batch => ort_gqa::grown_capacity(capacity, needed),
            _ => ort_gqa::grown_capacity(0, needed),
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
        ort_gqa::copy_positions(data, t, to, capacity, (b, h, t, d));
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
        let g = self.geometry.as_ref().map_or(0, |g| g.capacity);
        let mut out = vec![0.0; shape.iter().product()];
        let (_, from) = self.buffers[at.0][half_index(at.1)].extract_tensor();
        ort_gqa::copy_positions(from, g, &mut out, shape[2], (shape[0], shape[1], shape[2], shape[3]));
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
        if batch > 1 && steps > 1 && past > 0 {
            // GQA takes several new positions on a non-empty cache only for batch 1.
            return self.run_split(session, names, inputs, carry, (past, batch, steps));
        }
        self.run_once(session, names, inputs, held, carry, (past, batch, steps))
    }

    /// [`GqaState::run`] of `S` positions as `S` single-position runs (the same causal
    /// attention), their non-cache outputs joined along axis 1 (`[B, S, ...]`, as logits are).
    /// A failure cuts every cache back to `past`.
    fn run_split(
        &mut self,
        session: &mut OrtSession,
        names: (&[String], &[String]),
        inputs: &[Option<TensorView<'_>>],
        carry: &[Option<usize>],
        (past, batch, steps): (usize, usize, usize),
    ) -> Result<StepOutputs> {
        let map = self.map.clone();
        let refuse = |why: &str| Error::InvalidInput(format!("a {steps}-token step on batch {batch}: {why}"));
        if map.inputs.iter().enumerate().any(|(i, slot)| slot.is_none() && i != map.ids) {
            return Err(refuse("only input_ids may be given besides the caches"));
        }
        if map.outputs.iter().zip(carry).any(|(slot, c)| slot.is_none() && c.is_some()) {
            return Err(refuse("only cache outputs may be carried"));
        }
        let Some(Some(ids)) = inputs.get(map.ids) else { return Err(refuse("no input_ids")) };
        let TensorDataView::I64(ids) = ids.data() else { return Err(refuse("input_ids is not i64")) };
        // Every cache output stays in its buffer until the end.
        let keep: Vec<Option<usize>> = map
            .outputs
            .iter()
            .map(|slot| slot.and_then(|at| map.inputs.iter().position(|i| *i == Some(at))))
            .collect();
        let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); names.1.len()];
        for i in 0..steps {
            let column: Vec<i64> = (0..batch).map(|b| ids[b * steps + i]).collect();
            let column = Tensor::new(vec![batch, 1], column)?;
            let mut step: Vec<Option<TensorView<'_>>> = vec![None; inputs.len()];
            step[map.ids] = Some(column.view());
            match self.run_once(session, names, &step, &[], &keep, (past + i, batch, 1)) {
                Ok((outputs, _)) => {
                    for (j, t) in outputs.into_iter().enumerate() {
                        if let Some(t) = t {
                            parts[j].push(t);
                        }
                    }
                }
                Err(e) => {
                    self.lens.iter_mut().for_each(|l| *l = [past; 2]);
                    return Err(e);
                }
            }
        }
        let mut returned = vec![None; names.1.len()];
        for (j, slot) in map.outputs.iter().enumerate() {
            returned[j] = match (slot, carry.get(j).copied().flatten()) {
                (None, _) => Some(join_positions(&parts[j], batch)?),
                (Some(at), None) => Some(self.read(*at)?),
                (Some(_), Some(_)) => None,
            };
        }
        Ok((returned, Vec::new()))
    }

    /// One GQA run of `steps` positions at `past`.
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
        let total_i32 = i32::try_from(total)
            .map_err(|_| Error::InvalidInput(format!("{total} positions do not fit GroupQueryAttention")))?;
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
        let seqlens = OrtTensor::from_array((vec![batch as i64], vec![total_i32 - 1; batch])).map_err(err)?;
        let total_value = OrtTensor::from_array((Vec::<i64>::new(), vec![total_i32])).map_err(err)?;
        let past_value = OrtTensor::from_array((Vec::<i64>::new(), vec![past as i64])).map_err(err)?;
        self.binding.bind_input(SEQLENS_K, &seqlens).map_err(err)?;
        self.binding.bind_input(TOTAL_LENGTH, &total_value).map_err(err)?;
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

/// Joins `[B, 1, ...]` f32 tensors along axis 1.
fn join_positions(parts: &[Tensor], batch: usize) -> Result<Tensor> {
    let Some(first) = parts.first() else { return Err(backend_err("joining positions", "no output")) };
    let row: usize = first.shape().iter().skip(2).product();
    let mut data = Vec::with_capacity(batch * parts.len() * row);
    for b in 0..batch {
        for part in parts {
            let TensorData::F32(values) = part.data() else {
                return Err(backend_err("joining positions", "an output is not f32"));
            };
            data.extend_from_slice(&values[b * row..][..row]);
        }
    }
    let mut shape = first.shape().to_vec();
    shape[1] = parts.len();
    Tensor::from_data(shape, TensorData::F32(data))
}

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
        if let Some(gqa) = &mut self.gqa {
            let carries_cache =
                gqa.map.inputs.iter().zip(inputs).any(|(slot, input)| slot.is_some() && input.is_none());
            let mut session =
                self.session.lock().map_err(|_| backend_err("running", "a previous run panicked"))?;
            let names = (self.input_names.as_slice(), self.output_names.as_slice());
            let (returned, kept) = if carries_cache {
                gqa.run(&mut session, names, inputs, &self.held, carry)?
            } else {
                // A run that carries no cache must leave the session's caches alone.
                let mut fresh = GqaState::new(&session, gqa.map.clone(), &self.output_names)?;
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
        if let Some(gqa) = &mut self.gqa
            && let Some(at) = gqa.map.inputs.get(input).copied().flatten()
        {
            return gqa.load(at, value);
        }
        set_held(&mut self.held, input, to_ort_owned(value)?)
    }

    fn held_shape(&self, input: usize) -> Option<Vec<usize>> {
        if let Some(gqa) = &self.gqa
            && let Some(at) = gqa.map.inputs.get(input).copied().flatten()
        {
            return gqa.shape(at);
        }
        let value = self.held.get(input)?.as_ref()?;
        match value.dtype() {
            ValueType::Tensor { shape, .. } => Some(shape.iter().map(|&d| d.max(0) as usize).collect()),
            _ => None,
        }
    }

    fn held(&self, input: usize) -> Result<Tensor> {
        if let Some(gqa) = &self.gqa
            && let Some(at) = gqa.map.inputs.get(input).copied().flatten()
        {
            return gqa.read(at);
        }
        from_ort(held_slot(&self.held, input)?)
    }
}
