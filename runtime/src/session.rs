//! Plans and sessions: a model prepared once per backend, then run by per-thread sessions.
//!
//! A [`Session`] checks every input against the model's declared interface (names, dtypes,
//! ranks, fixed and symbolic dims) before the backend sees it, so misuse is a typed error.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::{self, BackendKind, BackendState, Options, PreparedModel};
use crate::error::{Error, Result};
use crate::model::{Dim, IoInfo, Model, ModelInfo};
use crate::tensor::{DType, ShapeDisplay, Tensor, TensorView};

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
        let outputs = self.info.outputs.len();
        Ok(Session {
            info: self.info.clone(),
            state: self.prepared.new_state()?,
            carry: vec![None; outputs],
            carried: vec![false; self.info.inputs.len()],
        })
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
///
/// Recurrent models (an LSTM's `h`/`c`, a decoder's KV cache) feed some outputs back as the next
/// run's inputs. [`Session::carry`] ties such a pair; [`Session::step`] then runs with the carried
/// values kept inside the backend, in its own tensor type: they are never copied into a ferrite
/// [`Tensor`] and back, which is what keeps a decode step's cost flat as the cache grows.
///
/// ```no_run
/// use ferrite_runtime::{Model, Options, Tensor};
/// let model = Model::open("models/shakespeare-lstm/int8/model.onnx")?;
/// let plan = model.prepare(&Options::default())?;
/// let mut session = plan.session()?;
/// let zeros = Tensor::new(vec![2, 1, 384], vec![0f32; 768])?; // [layers, batch, hidden]
/// session.carry("h0", "hN", zeros.view())?;
/// session.carry("c0", "cN", zeros.view())?;
/// for id in [5i64, 9, 12] {
///     let ids = Tensor::new(vec![1, 1], vec![id])?;
///     let out = session.step(&[("input_ids", ids.view())])?;
///     println!("{:?}", out.get("logits").map(|t| t.shape().to_vec()));
/// }
/// # Ok::<(), ferrite_runtime::Error>(())
/// ```
pub struct Session {
    info: Arc<ModelInfo>,
    state: Box<dyn BackendState>,
    /// For each output, the input it is carried into by [`Session::step`].
    carry: Vec<Option<usize>>,
    /// For each input, whether [`Session::step`] takes it from a carried value.
    carried: Vec<bool>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Runs the model. Every model input must be given exactly once, by name.
    /// Carried values ([`Session::carry`]) are neither used nor changed.
    pub fn run(&mut self, inputs: &[(&str, TensorView<'_>)]) -> Result<Outputs> {
        let ordered = order_inputs(&self.info.inputs, inputs, &[], &|_| None)?;
        let no_carry = vec![None; self.info.outputs.len()];
        let tensors = self.state.run(&ordered, &no_carry)?;
        self.collect(tensors, &no_carry)
    }

    /// Ties output `output` to input `input`: each [`Session::step`] feeds `input` with the
    /// value `output` had at the previous step, starting from `initial` (checked like an input).
    pub fn carry(&mut self, input: &str, output: &str, initial: TensorView<'_>) -> Result<()> {
        let i = self.input_index(input)?;
        let j = self.info.outputs.iter().position(|o| o.name == output).ok_or_else(|| {
            Error::InvalidInput(format!("the model has no output `{output}` to carry into `{input}`"))
        })?;
        if let Some(other) = self.carry[j].filter(|&k| k != i) {
            return Err(Error::InvalidInput(format!(
                "output `{output}` is already carried into `{}`",
                self.info.inputs[other].name
            )));
        }
        if let Some(other) = self.carry.iter().position(|&c| c == Some(i)).filter(|&k| k != j) {
            return Err(Error::InvalidInput(format!(
                "input `{input}` is already fed by output `{}`",
                self.info.outputs[other].name
            )));
        }
        self.set_carried_at(i, initial)?;
        self.carry[j] = Some(i);
        self.carried[i] = true;
        Ok(())
    }

    /// Replaces the value carried into `input` (a zero state to start a new sequence, say).
    pub fn set_carried(&mut self, input: &str, value: TensorView<'_>) -> Result<()> {
        let i = self.carried_index(input)?;
        self.set_carried_at(i, value)
    }

    fn set_carried_at(&mut self, i: usize, value: TensorView<'_>) -> Result<()> {
        check_one(&self.info.inputs[i], value.dtype(), value.shape(), &mut HashMap::new())?;
        self.state.hold(i, &value)
    }

    /// A copy of the value `input` receives at the next step.
    pub fn carried(&self, input: &str) -> Result<Tensor> {
        self.state.held(self.carried_index(input)?)
    }

    /// Runs one step of a recurrent model: `inputs` names every input that is not carried; the
    /// carried ones come from the backend's held values, and the carried outputs replace them.
    /// Returns the outputs that are not carried. Shapes of the carried values take part in the
    /// checks (a symbolic dim shared with a given input must agree).
    pub fn step(&mut self, inputs: &[(&str, TensorView<'_>)]) -> Result<Outputs> {
        let state = &self.state;
        let ordered = order_inputs(&self.info.inputs, inputs, &self.carried, &|i| state.held_shape(i))?;
        let tensors = self.state.run(&ordered, &self.carry)?;
        self.collect(tensors, &self.carry)
    }

    fn input_index(&self, name: &str) -> Result<usize> {
        self.info
            .inputs
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| Error::InvalidInput(format!("the model has no input `{name}`")))
    }

    fn carried_index(&self, name: &str) -> Result<usize> {
        let i = self.input_index(name)?;
        if !self.carried[i] {
            return Err(Error::InvalidInput(format!("input `{name}` is not carried (see Session::carry)")));
        }
        Ok(i)
    }

    fn collect(&self, tensors: Vec<Option<Tensor>>, carry: &[Option<usize>]) -> Result<Outputs> {
        if tensors.len() != self.info.outputs.len() {
            return Err(Error::Backend {
                backend: "session",
                message: format!("{} outputs returned, {} declared", tensors.len(), self.info.outputs.len()),
            });
        }
        let mut entries = Vec::with_capacity(tensors.len());
        for ((info, tensor), carried) in self.info.outputs.iter().zip(tensors).zip(carry) {
            match (tensor, carried) {
                (Some(t), None) => entries.push((info.name.clone(), t)),
                (None, Some(_)) => {}
                _ => {
                    return Err(Error::Backend {
                        backend: "session",
                        message: format!("output `{}` came back against its carry setting", info.name),
                    });
                }
            }
        }
        Ok(Outputs { entries })
    }
}

/// Puts inputs in model order after checking names, dtypes and shapes. Inputs marked in
/// `carried` must not be given: they come back as `None`, and `held_shape` gives their current
/// shape for the symbolic-dim checks.
fn order_inputs<'a>(
    declared: &[IoInfo],
    given: &[(&str, TensorView<'a>)],
    carried: &[bool],
    held_shape: &dyn Fn(usize) -> Option<Vec<usize>>,
) -> Result<Vec<Option<TensorView<'a>>>> {
    let is_carried = |i: usize| carried.get(i).copied().unwrap_or(false);
    for (i, (name, _)) in given.iter().enumerate() {
        let Some(k) = declared.iter().position(|d| d.name == *name) else {
            let known: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
            return Err(Error::InvalidInput(format!(
                "the model has no input `{name}` (inputs: {})",
                known.join(", ")
            )));
        };
        if is_carried(k) {
            return Err(Error::InvalidInput(format!("input `{name}` is carried from the previous step")));
        }
        if given[..i].iter().any(|(n, _)| n == name) {
            return Err(Error::InvalidInput(format!("input `{name}` given twice")));
        }
    }
    let mut symbols: HashMap<&str, (usize, &str)> = HashMap::new();
    let mut ordered = Vec::with_capacity(declared.len());
    for (k, d) in declared.iter().enumerate() {
        if is_carried(k) {
            let shape = held_shape(k)
                .ok_or_else(|| Error::InvalidInput(format!("carried input `{}` has no value", d.name)))?;
            // Only the shape is checked: the dtype was checked when the value was set, and the
            // backend produced every later value from the model's own output.
            check_dims(d, &shape, &mut symbols)?;
            ordered.push(None);
            continue;
        }
        let view = given
            .iter()
            .find(|(n, _)| *n == d.name)
            .map(|(_, v)| *v)
            .ok_or_else(|| Error::InvalidInput(format!("input `{}` is missing", d.name)))?;
        check_one(d, view.dtype(), view.shape(), &mut symbols)?;
        ordered.push(Some(view));
    }
    Ok(ordered)
}

fn check_one<'d>(
    d: &'d IoInfo,
    dtype: DType,
    got: &[usize],
    symbols: &mut HashMap<&'d str, (usize, &'d str)>,
) -> Result<()> {
    if d.dtype != Some(dtype) {
        return Err(Error::DTypeMismatch {
            input: d.name.clone(),
            expected: d.dtype_name.clone(),
            got: dtype.to_string(),
        });
    }
    check_dims(d, got, symbols)
}

fn check_dims<'d>(
    d: &'d IoInfo,
    got: &[usize],
    symbols: &mut HashMap<&'d str, (usize, &'d str)>,
) -> Result<()> {
    let Some(dims) = &d.shape else { return Ok(()) };
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
        let none = |_| None;
        let ok =
            order_inputs(&declared, &[("b", TensorView::new(&[3], &b3).unwrap()), ("a", va)], &[], &none)
                .unwrap();
        assert_eq!(ok[0].unwrap().shape(), &[3, 2], "inputs come back in model order");
        let err =
            order_inputs(&declared, &[("a", va), ("b", TensorView::new(&[4], &b4).unwrap())], &[], &none)
                .unwrap_err();
        assert!(
            matches!(&err, Error::ShapeMismatch { input, expected, .. } if input == "b" && expected.contains("batch = 3")),
            "{err}"
        );
    }
}
