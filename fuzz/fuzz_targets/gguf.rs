//! `GgufFile` on arbitrary bytes: a typed error, or a checked file whose every tensor is found by
//! name, lies inside the input and dequantises to its element count; never a panic, and no
//! allocation the input's size does not justify (libFuzzer's -rss_limit_mb / -malloc_limit_mb).
#![no_main]

use ferrite_gguf::GgufFile;
use ferrite_gguf::dequant::{BlockQ4_0, BlockQ8_0};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else { return };
    let md = file.metadata();
    for (key, value) in md.iter() {
        let _ = value.to_string();
        let _ = (md.get_u64(key), md.get_f32(key), md.get_str(key), md.get_bool(key));
        let _ = (md.get_str_array(key), md.get_f32_array(key), md.get_i32_array(key));
        if let Some(a) = value.as_array() {
            let _ = (a.get(0), a.get(a.len().saturating_sub(1)));
        }
    }
    let _ = file.bytes_by_type();
    for listed in file.tensors() {
        let info = file.tensor(listed.name()).expect("every listed tensor is found by name");
        let bytes = file.tensor_bytes(info).expect("a checked tensor's bytes lie in the file");
        assert_eq!(bytes.len(), info.n_bytes());
        match file.dequantize(info) {
            Ok(values) => assert_eq!(values.len() as u64, info.n_elements()),
            Err(e) => assert!(!info.ggml_type().can_dequantize(), "{e}"),
        }
        let _ = file.blocks::<BlockQ4_0>(info).map(Iterator::count);
        let _ = file.blocks::<BlockQ8_0>(info).map(Iterator::count);
    }
});
