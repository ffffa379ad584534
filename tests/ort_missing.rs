//! A missing or unloadable ONNX Runtime library is `BackendUnavailable`, never a panic.
//! Its own test binary: ONNX Runtime is loaded once per process, so no other test may load it first.
#![cfg(feature = "ort")]

use ferrite_runtime::{BackendKind, Error, Model, Options};

#[test]
fn a_missing_or_broken_onnx_runtime_library_is_backend_unavailable() {
    let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/models/lstm/model.onnx")).unwrap();
    let missing = Options::default().backend(BackendKind::Ort).ort_library("/nonexistent/libonnxruntime.so");
    let err = model.prepare(&missing).unwrap_err();
    assert!(matches!(err, Error::BackendUnavailable { backend: "ort", .. }), "{err}");

    // A file that exists but is not a shared library: dlopen fails, still a typed error.
    let not_a_lib = std::env::temp_dir().join(format!("ferrite-not-a-lib-{}.so", std::process::id()));
    std::fs::write(&not_a_lib, b"not an ELF file").unwrap();
    let broken = Options::default().backend(BackendKind::Ort).ort_library(&not_a_lib);
    let err = model.prepare(&broken).unwrap_err();
    assert!(matches!(err, Error::BackendUnavailable { backend: "ort", .. }), "{err}");

    // The tract backend is unaffected.
    assert!(model.prepare(&Options::default()).is_ok());
}
