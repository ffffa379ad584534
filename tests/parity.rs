//! Parity: every test model, on every backend in this build, gives ONNX Runtime Python's outputs
//! (golden files written by scripts/make_test_models.py) to within 1e-5.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use ferrite_runtime::{Model, Tensor, npy};

const TOLERANCE: f64 = 1e-5;

struct Case {
    inputs: Vec<(String, Tensor)>,
    expected: Vec<(String, Tensor)>,
}

fn load_case(dir: &Path) -> Option<Case> {
    let text = std::fs::read_to_string(dir.join("case.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let inputs = json.get("inputs")?.as_object()?;
    let inputs: BTreeMap<&String, &serde_json::Value> = inputs.iter().collect();
    let inputs = inputs
        .into_iter()
        .map(|(name, file)| (name.clone(), npy::read_npy(dir.join(file.as_str().unwrap())).unwrap()))
        .collect();
    let expected = npy::read_npz(dir.join("expected.npz")).unwrap();
    Some(Case { inputs, expected })
}

fn check_dir(dir: &Path) -> usize {
    let Some(case) = load_case(dir) else { return 0 };
    let model = Model::open(dir.join("model.onnx")).unwrap();
    let mut checked = 0;
    for options in common::backends() {
        let backend = options.backend.name();
        let plan = model.prepare(&options).unwrap_or_else(|e| panic!("{}: {backend}: {e}", dir.display()));
        let mut session = plan.session().unwrap();
        let views: Vec<(&str, _)> = case.inputs.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
        let outputs = session.run(&views).unwrap_or_else(|e| panic!("{}: {backend}: {e}", dir.display()));
        for (name, want) in &case.expected {
            let got = outputs.get(name).unwrap_or_else(|| panic!("{backend}: no output {name}"));
            let what = format!("{} {backend} {name}", dir.display());
            let diff = common::max_abs_diff(&what, got, want);
            assert!(diff <= TOLERANCE, "{what}: max abs diff {diff:e} > {TOLERANCE:e}");
            checked += 1;
        }
    }
    checked
}

#[test]
fn every_test_model_matches_onnx_runtime_python_on_every_backend() {
    let mut dirs: Vec<_> = std::fs::read_dir(common::test_models())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").exists())
        .collect();
    dirs.push(common::root().join("models/tiny-lstm-lm"));
    dirs.sort();
    let mut total = 0;
    for dir in &dirs {
        total += check_dir(dir);
    }
    // The required cases: quantised MatMulInteger, LSTM with state in/out, external data.
    for required in ["matmul_integer", "lstm", "external_data"] {
        assert!(dirs.iter().any(|d| d.ends_with(required)), "missing test case {required}");
    }
    let backends = common::backends().len();
    assert!(total >= 9 * backends, "only {total} outputs compared");
}

#[test]
fn a_plan_serves_many_sessions_and_runs_repeatably() {
    let dir = common::test_models().join("lstm");
    let case = load_case(&dir).unwrap();
    let model = Model::open(dir.join("model.onnx")).unwrap();
    for options in common::backends() {
        let plan = model.prepare(&options).unwrap();
        let views: Vec<(&str, _)> = case.inputs.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
        let first = plan.session().unwrap().run(&views).unwrap();
        let mut session = plan.session().unwrap();
        for _ in 0..3 {
            let again = session.run(&views).unwrap();
            for (name, t) in first.iter() {
                let diff = common::max_abs_diff(name, again.get(name).unwrap(), t);
                assert_eq!(diff, 0.0, "{} {name}: runs differ by {diff:e}", options.backend.name());
            }
        }
    }
}

#[test]
fn symbolic_batch_is_resolved_at_run_time() {
    let dir = common::test_models().join("dynamic_batch");
    let model = Model::open(dir.join("model.onnx")).unwrap();
    for options in common::backends() {
        let plan = model.prepare(&options).unwrap();
        let mut session = plan.session().unwrap();
        for batch in [1usize, 3, 7] {
            let x = Tensor::new(vec![batch, 32], vec![0.1f32; batch * 32]).unwrap();
            let y = session.run(&[("x", x.view())]).unwrap();
            assert_eq!(y.get("y").unwrap().shape(), &[batch, 16], "{}", options.backend.name());
        }
    }
}
