//! The ONNX Runtime backend, through the `ort` crate with its library loaded at run time.
//!
//! The shared library comes from the `onnxruntime` PyPI wheel (no download at build time).
//! `ort` panics when it has to load the library lazily, so the library is always loaded here,
//! explicitly, with `ort::init_from`, and every failure becomes `BackendUnavailable`.
//! A process holds one ONNX Runtime library and one environment: the first successful load wins.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session as OrtSession, SessionInputValue};
use ort::value::{DynValue, Tensor as OrtTensor, TensorElementType, TensorRef, ValueType};

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
    session: std::sync::Arc<Mutex<OrtSession>>,
    input_names: Vec<String>,
    output_names: Vec<String>,
}

impl OrtModel {
    pub(crate) fn prepare(model: &Model, options: &Options) -> Result<OrtModel> {
        let env = environment(options.ort_library.as_deref())?;
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
        // ONNX Runtime resolves external data relative to the model's path itself, and memory-maps
        // it: loading from the path (not from our map) keeps that behaviour.
        let session = builder.commit_from_file(model.path()).map_err(|e| classify(model, e))?;
        let input_names = session.inputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
        let output_names = session.outputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
        let expected: Vec<&str> = model.info().inputs.iter().map(|i| i.name.as_str()).collect();
        if input_names.iter().map(String::as_str).ne(expected.iter().copied()) {
            return Err(Error::InvalidModel(format!(
                "ONNX Runtime sees inputs {input_names:?}, the file declares {expected:?}"
            )));
        }
        Ok(OrtModel { session: std::sync::Arc::new(Mutex::new(session)), input_names, output_names })
    }
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
        Ok(Box::new(OrtState {
            session: self.session.clone(),
            input_names: self.input_names.clone(),
            output_names: self.output_names.clone(),
            held: (0..self.input_names.len()).map(|_| None).collect(),
        }))
    }
}

/// Values held between runs (KV cache, LSTM h/c) stay ONNX Runtime values: an output is moved
/// into `held` and passed back by reference as the next run's input, never copied.
struct OrtState {
    session: std::sync::Arc<Mutex<OrtSession>>,
    input_names: Vec<String>,
    output_names: Vec<String>,
    held: Vec<Option<DynValue>>,
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
        set_held(&mut self.held, input, to_ort_owned(value)?)
    }

    fn held_shape(&self, input: usize) -> Option<Vec<usize>> {
        let value = self.held.get(input)?.as_ref()?;
        match value.dtype() {
            ValueType::Tensor { shape, .. } => Some(shape.iter().map(|&d| d.max(0) as usize).collect()),
            _ => None,
        }
    }

    fn held(&self, input: usize) -> Result<Tensor> {
        from_ort(held_slot(&self.held, input)?)
    }
}
