//! Helpers shared by the integration tests: where test models live, which backends this build
//! runs, and how to compare tensors.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ferrite_runtime::{BackendKind, Options, Tensor, TensorData};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn test_models() -> PathBuf {
    root().join("tests/models")
}

/// Every backend compiled into this test binary. With the `ort` feature the ONNX Runtime
/// library must be present: a missing library fails the test (scripts/setup-test-env.sh).
pub fn backends() -> Vec<Options> {
    let mut out = vec![Options::default().backend(BackendKind::Tract)];
    if cfg!(feature = "ort") {
        out.push(Options::default().backend(BackendKind::Ort));
    }
    out
}

pub fn as_f64(t: &Tensor) -> Vec<f64> {
    match t.data() {
        TensorData::F32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
        TensorData::I64(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::I32(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::U8(v) => v.iter().map(|&x| x as f64).collect(),
        TensorData::I8(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

/// Largest absolute difference; panics with a clear message on shape or dtype mismatch.
pub fn max_abs_diff(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    as_f64(got).iter().zip(as_f64(want)).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// Copies a test model directory into a fresh temp dir so a test can damage it.
pub fn scratch_copy(case: &Path, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrite-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(case).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

/// `[layers, 1, hidden]`: the h/c state shape of models/shakespeare-lstm at batch 1, from its
/// config.json (the model is retrained now and then; the tests follow it).
pub fn shipped_lstm_state_shape() -> Vec<usize> {
    let text = std::fs::read_to_string(root().join("models/shakespeare-lstm/config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let get = |k: &str| config[k].as_u64().unwrap_or_else(|| panic!("config.json: no {k}")) as usize;
    vec![get("num_layers"), 1, get("hidden_size")]
}
