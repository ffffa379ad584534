//! Shared test helpers: the golden cases, the project venv's Python checker, running bundles on
//! every compiled-in backend, and comparing tensors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrite_exporter::{ExportOptions, Manifest, QuantScheme, bundle::run_model, export};
use ferrite_runtime::{BackendKind, Tensor};

/// The workspace root (the exporter crate's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("exporter/ has a parent").to_path_buf()
}

/// The SmolLM2 GGUF, fetched (or found in the cache) by the project's script.
pub fn smollm2() -> PathBuf {
    let out = Command::new("bash").arg(root().join("models/fetch-smollm2.sh")).output().unwrap();
    assert!(
        out.status.success(),
        "models/fetch-smollm2.sh failed (the real model is required, not optional):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(stdout.lines().last().expect("fetch-smollm2.sh prints the path").trim())
}

/// A committed golden case: `exporter/tests/golden/<case>`.
pub fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case)
}

/// The project venv's Python. A missing venv fails the test: CI must have run the setup script.
pub fn python() -> PathBuf {
    let py = root().join(".venv/bin/python");
    assert!(
        py.is_file(),
        "{} not found: run `bash scripts/setup-test-env.sh` to create the project venv (onnx, onnxruntime)",
        py.display()
    );
    py
}

/// Runs `check_bundle.py` (onnx.checker full check, 4096 alignment, ONNX Runtime on the goldens);
/// with `tol`, ORT must equal the bundle's fp32 goldens to that tolerance. Returns its JSON.
pub fn check_with_python(bundle: &Path, tol: Option<f64>) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_bundle.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script).arg(bundle);
    if let Some(t) = tol {
        cmd.arg("--tol").arg(t.to_string());
    }
    let out = cmd.output().expect("running the venv's python");
    assert!(
        out.status.success(),
        "check_bundle.py failed on {}:\n{}{}",
        bundle.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("check_bundle.py prints JSON")
}

/// Exports `src` into a fresh directory under `tmp` with `quant`.
pub fn export_to(src: &Path, tmp: &Path, quant: QuantScheme) -> (PathBuf, Manifest) {
    let out = tmp.join(format!("bundle-{}", quant.name()));
    let manifest = export(src, &out, &ExportOptions { quant, ..Default::default() })
        .unwrap_or_else(|e| panic!("export of {} as {} failed: {e}", src.display(), quant.name()));
    (out, manifest)
}

/// Every backend compiled into this test build.
pub fn backends() -> Vec<BackendKind> {
    let mut b = vec![BackendKind::Tract];
    if cfg!(feature = "ort") {
        b.push(BackendKind::Ort);
    }
    b
}

/// Runs the bundle's model on `backend`.
pub fn run(bundle: &Path, inputs: &[(String, Tensor)], backend: BackendKind) -> Vec<(String, Tensor)> {
    run_model(bundle, inputs, backend)
        .unwrap_or_else(|e| panic!("running {} on {backend:?}: {e}", bundle.display()))
}

/// The output `name` of a run.
pub fn output<'a>(outputs: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &outputs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no output {name}")).1
}

/// An array of an .npz file as a tensor (f32 or i64, as stored).
pub fn npz(path: &Path, name: &str) -> Tensor {
    let mut archive = npyz::npz::NpzArchive::open(path).expect("open npz");
    let file = archive
        .by_name(name)
        .expect("read npz")
        .unwrap_or_else(|| panic!("{name} not in {}", path.display()));
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    match file.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float => {
            Tensor::new(shape, file.into_vec::<f32>().expect("f32 data")).expect("tensor")
        }
        _ => Tensor::new(shape, file.into_vec::<i64>().expect("i64 data")).expect("tensor"),
    }
}

/// Max abs difference between two f32 tensors of the same shape.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (a, b) = (a.as_slice::<f32>().expect("f32"), b.as_slice::<f32>().expect("f32"));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}
