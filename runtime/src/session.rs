//! Plans and sessions: a model prepared once per backend, then run by per-thread sessions.
//!
//! A [`Session`] checks every input against the model's declared interface (names, dtypes,
//! ranks, fixed and symbolic dims) before the backend sees it, so misuse is a typed error.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::{self, BackendKind, BackendState, Options, PreparedModel};
use crate::error::{Error, Result};
use crate::model::{Dim, IoInfo, Model, ModelInfo};
use crate::tensor::{ShapeDisplay, Tensor, TensorView};

/// A model prepared by a backend. Cheap to share (`Send + Sync`); make one [`Session`] per thread.
///
/// ```no_run
/// use ferrite_runtime::{Model, Options, Tensor};
/// let model = Model::open("tests/models/external_data/model.onnx")?;
/// let plan = model.prepare(&Options::default())?;
/// let mut session = plan.session()?;
/// let x = Tensor::new(vec![3, 32], vec![0.5f32; 96])?;
/// let outputs = session.run(&[("x", x.view())])?;
/// println!("{:?}", outputs.get("y"));
/// # Ok::<(), ferrite_runtime::Error>(())
/// ```
pub struct Plan {
    backend: BackendKind,
    info: Arc<ModelInfo>,
    prepared: Arc<dyn PreparedModel>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan").field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl Model {
    /// Prepares the model on the backend `options` choose. Done once; sessions reuse it.
    /// With a memory budget, a model estimated over it fails with `ResourceLimit` first.
    pub fn prepare(&self, options: &Options) -> Result<Plan> {
        self.prepare_for_positions(options, 1)
    }

    /// Like [`Model::prepare`], with the memory estimate's sequence dims at `positions`.
    pub(crate) fn prepare_for_positions(&self, options: &Options, positions: usize) -> Result<Plan> {
        crate::budget::check(self.info(), options, positions)?;
        let prepared = backend::prepare(self, options)?;
        Ok(Plan {
            backend: options.backend,
            info: Arc::new(self.info().clone()),
            prepared: Arc::from(prepared),
        })
    }
}

impl Plan {
    /// A new session with its own state.
    pub fn session(&self) -> Result<Session> {
        Ok(Session { info: self.info.clone(), state: self.prepared.new_state()? })
    }

    /// The backend this plan runs on.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The model's interface.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }
}

/// Outputs of one run, in the model's output order.
#[derive(Debug, Clone)]
pub struct Outputs {
    entries: Vec<(String, Tensor)>,
}

impl Outputs {
    /// The output called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// `(name, tensor)` pairs in the model's output order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Number of outputs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the model has no outputs (never, for a valid model).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes the tensors out, in the model's output order.
    pub fn into_vec(self) -> Vec<(String, Tensor)> {
        self.entries
    }
}

/// One thread's handle on a plan: holds the backend state between runs.
pub struct Session {
    info: Arc<ModelInfo>,
    state: Box<dyn BackendState>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Runs the model. Every model input must be given exactly once, by name.
    pub fn run(&mut self, inputs: &[(&str, TensorView<'_>)]) -> Result<Outputs> {
        let ordered = order_inputs(&self.info.inputs, inputs)?;
        let tensors = self.state.run(&ordered)?;
        if tensors.len() != self.info.outputs.len() {
            return Err(Error::Backend {
                backend: "session",
                message: format!("{} outputs returned, {} declared", tensors.len(), self.info.outputs.len()),
            });
        }
        let entries = self.info.outputs.iter().map(|o| o.name.clone()).zip(tensors).collect();
        Ok(Outputs { entries })
    }
}

/// Puts inputs in model order after checking names, dtypes and shapes.
fn order_inputs<'a>(declared: &[IoInfo], given: &[(&str, TensorView<'a>)]) -> Result<Vec<TensorView<'a>>> {
    for (i, (name, _)) in given.iter().enumerate() {
        if !declared.iter().any(|d| d.name == *name) {
            let known: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
            return Err(Error::InvalidInput(format!(
                "the model has no input `{name}` (inputs: {})",
                known.join(", ")
            )));
        }
        if given[..i].iter().any(|(n, _)| n == name) {
            return Err(Error::InvalidInput(format!("input `{name}` given twice")));
        }
    }
    let mut symbols: HashMap<&str, (usize, &str)> = HashMap::new();
    let mut ordered = Vec::with_capacity(declared.len());
    for d in declared {
        let view = given
            .iter()
            .find(|(n, _)| *n == d.name)
            .map(|(_, v)| *v)
            .ok_or_else(|| Error::InvalidInput(format!("input `{}` is missing", d.name)))?;
        check_one(d, &view, &mut symbols)?;
        ordered.push(view);
    }
    Ok(ordered)
}

fn check_one<'d>(
    d: &'d IoInfo,
    view: &TensorView<'_>,
    symbols: &mut HashMap<&'d str, (usize, &'d str)>,
) -> Result<()> {
    match d.dtype {
        Some(expected) if expected == view.dtype() => {}
        _ => {
            return Err(Error::DTypeMismatch {
                input: d.name.clone(),
                expected: d.dtype_name.clone(),
                got: view.dtype().to_string(),
            });
        }
    }
    let Some(dims) = &d.shape else { return Ok(()) };
    let got = view.shape();
    let mismatch = || Error::ShapeMismatch {
        input: d.name.clone(),
        expected: d.shape_string(),
        got: ShapeDisplay(got).to_string(),
    };
    if dims.len() != got.len() {
        return Err(mismatch());
    }
    for (dim, &size) in dims.iter().zip(got) {
        match dim {
            Dim::Fixed(n) if *n != size => return Err(mismatch()),
            Dim::Symbolic(s) => match symbols.get(s.as_str()) {
                Some((bound, by)) if *bound != size => {
                    return Err(Error::ShapeMismatch {
                        input: d.name.clone(),
                        expected: format!("{} with {s} = {bound} (set by `{by}`)", d.shape_string()),
                        got: ShapeDisplay(got).to_string(),
                    });
                }
                Some(_) => {}
                None => {
                    symbols.insert(s.as_str(), (size, d.name.as_str()));
                }
            },
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn io(name: &str, dims: Vec<Dim>) -> IoInfo {
        IoInfo { name: name.into(), dtype_name: "f32".into(), dtype: Some(DType::F32), shape: Some(dims) }
    }

    #[test]
    fn a_symbol_shared_by_two_inputs_must_agree() {
        let declared = vec![
            io("a", vec![Dim::Symbolic("batch".into()), Dim::Fixed(2)]),
            io("b", vec![Dim::Symbolic("batch".into())]),
        ];
        let a = [0f32; 6];
        let b3 = [0f32; 3];
        let b4 = [0f32; 4];
        let va = TensorView::new(&[3, 2], &a).unwrap();
        let ok = order_inputs(&declared, &[("b", TensorView::new(&[3], &b3).unwrap()), ("a", va)]).unwrap();
        assert_eq!(ok[0].shape(), &[3, 2], "inputs come back in model order");
        let err =
            order_inputs(&declared, &[("a", va), ("b", TensorView::new(&[4], &b4).unwrap())]).unwrap_err();
        assert!(
            matches!(&err, Error::ShapeMismatch { input, expected, .. } if input == "b" && expected.contains("batch = 3")),
            "{err}"
        );
    }
}
