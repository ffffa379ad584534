//! `Bundle::open` on an arbitrary `ferrite.json` next to a small model file: manifest parsing,
//! file-name and confinement checks and hashing must end in a typed error, never a panic. The
//! bundle's model is not valid ONNX, so no backend runs (and none is compiled in).
#![no_main]

mod scratch;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = scratch::dir().join("bundle");
    if !dir.is_dir() {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("model.onnx"), b"not onnx").unwrap();
        std::fs::write(dir.join("vocab.json"), br#"{"a": 0, "b": 1}"#).unwrap();
        let _ = std::os::unix::fs::symlink("/etc/hostname", dir.join("outside"));
    }
    std::fs::write(dir.join("ferrite.json"), data).unwrap();
    for verify in [true, false] {
        let options = ferrite_runtime::BundleOptions::default().verify_hashes(verify);
        let _ = ferrite_runtime::Bundle::open_with(&dir, &options);
    }
});
