//! Shared by the benches: where the generated ≥ 20 MB benchmark model lives.

use std::path::PathBuf;

/// `target/bench-model`, written by `scripts/bench-foundation.sh` (scripts/make_bench_model.py).
pub fn bench_model_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-model");
    assert!(
        dir.join("external/model.onnx").exists(),
        "{} is missing: run scripts/bench-foundation.sh (it generates the model with scripts/make_bench_model.py)",
        dir.display()
    );
    dir
}

/// The benchmark configurations: (label, backend options, model layout).
pub fn configs() -> Vec<(&'static str, ferrite_runtime::Options, &'static str)> {
    use ferrite_runtime::{BackendKind, Options};
    let tract = Options::default().backend(BackendKind::Tract);
    let ort = Options::default().backend(BackendKind::Ort);
    vec![
        ("tract/embedded", tract.clone(), "embedded"),
        ("tract/external", tract, "external"),
        ("ort/embedded", ort.clone(), "embedded"),
        ("ort/external", ort.clone(), "external"),
        ("ort-noprepack/external", ort.ort_prepacking(false), "external"),
    ]
}
