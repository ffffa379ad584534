//! `Model::open` on arbitrary bytes: a typed error or a described model, never a panic, and no
//! allocation the file's size does not justify (libFuzzer's -rss_limit_mb / -malloc_limit_mb).
#![no_main]

mod scratch;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch::dir().join("model.onnx");
    std::fs::write(&path, data).unwrap();
    if let Ok(model) = ferrite_runtime::Model::open(&path) {
        // Describing must be total too.
        let info = model.info();
        for io in info.inputs.iter().chain(&info.outputs) {
            let _ = io.shape_string();
        }
        let _ = info.weight_bytes();
    }
});
