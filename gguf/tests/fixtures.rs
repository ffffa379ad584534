//! The reader against files written by llama.cpp's `gguf` Python package
//! (scripts/make_gguf_fixtures.py): metadata of every value type as written, and every tensor's
//! values equal, bit for bit, to what `gguf.quants.dequantize` gives. Bit equality holds because
//! the dequantisers do ggml's operations in ggml's order without fusing them (see `dequant`).

mod common;

use common::fixture;
use ferrite_gguf::dequant::{Block, BlockQ4_0, BlockQ8_0};
use ferrite_gguf::{Array, Error, GgmlType, GgufFile, Value};
use serde_json::Value as Json;

/// `name`'s values and NumPy shape from an .npz written by the fixture script.
fn expected(npz: &str, name: &str) -> (Vec<u64>, Vec<f32>) {
    let mut archive = npyz::npz::NpzArchive::open(fixture(npz)).unwrap();
    let npy = archive.by_name(name).unwrap().unwrap_or_else(|| panic!("{name} not in {npz}"));
    let shape = npy.shape().to_vec();
    (shape, npy.into_vec::<f32>().unwrap())
}

/// The kind of error `r` holds.
fn kind<T: std::fmt::Debug>(r: Result<T, Error>) -> &'static str {
    r.unwrap_err().kind()
}

fn assert_bits_equal(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: value count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: ferrite {g}, gguf-py {w}");
    }
}

fn check_tensors(file: &GgufFile, npz: &str) {
    for info in file.tensors() {
        let (shape, want) = expected(npz, info.name());
        assert_eq!(info.shape(), shape, "{}: shape", info.name());
        assert_eq!(info.dims().iter().rev().copied().collect::<Vec<_>>(), shape);
        assert_eq!(info.n_elements() as usize, want.len());
        let got = file.dequantize(info).unwrap();
        assert_bits_equal(info.name(), &got, &want);
    }
}

#[test]
fn every_tensor_type_dequantises_exactly_as_gguf_py() {
    let file = GgufFile::open(fixture("tensors.gguf")).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.data_offset() % 32, 0);
    let types: Vec<GgmlType> = file.tensors().iter().map(|t| t.ggml_type()).collect();
    use GgmlType::*;
    assert_eq!(types, [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K]);
    assert_eq!(file.tensor("f32.3d").unwrap().dims(), [4, 3, 2]);
    check_tensors(&file, "tensors.npz");
}

#[test]
fn a_custom_alignment_places_the_data_and_the_tensors() {
    let file = GgufFile::open(fixture("aligned64.gguf")).unwrap();
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.metadata().get_u32("general.alignment").unwrap(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    for t in file.tensors() {
        assert_eq!(t.offset() % 64, 0, "{}", t.name());
        assert_eq!(t.byte_range().start as u64, file.data_offset() + t.offset());
    }
    check_tensors(&file, "aligned64.npz");
}

#[test]
fn version_2_reads_like_version_3() {
    // Version 3 only added big-endian files; a little-endian v2 file has the same layout.
    let mut bytes = std::fs::read(fixture("tensors.gguf")).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = GgufFile::from_bytes(bytes).unwrap();
    let v3 = GgufFile::open(fixture("tensors.gguf")).unwrap();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.tensors(), v3.tensors());
    assert_eq!(v2.metadata().iter().collect::<Vec<_>>(), v3.metadata().iter().collect::<Vec<_>>());
}

/// The JSON value the fixture script wrote, as the [`Value`] the reader must produce.
fn json_value(ty: &str, element: Option<&str>, v: &Json) -> Value {
    let int = || v.as_i64().map(i128::from).or_else(|| v.as_u64().map(i128::from)).unwrap();
    match ty {
        "u8" => Value::U8(int() as u8),
        "i8" => Value::I8(int() as i8),
        "u16" => Value::U16(int() as u16),
        "i16" => Value::I16(int() as i16),
        "u32" => Value::U32(int() as u32),
        "i32" => Value::I32(int() as i32),
        "u64" => Value::U64(int() as u64),
        "i64" => Value::I64(int() as i64),
        "f32" => Value::F32(v.as_f64().unwrap() as f32),
        "f64" => Value::F64(v.as_f64().unwrap()),
        "bool" => Value::Bool(v.as_bool().unwrap()),
        "string" => Value::String(v.as_str().unwrap().to_string()),
        "array" => Value::Array(json_array(element.unwrap(), v)),
        other => panic!("type {other}"),
    }
}

fn json_array(element: &str, v: &Json) -> Array {
    let items = v.as_array().unwrap();
    let each = |ty: &str| items.iter().map(|x| json_value(ty, None, x)).collect::<Vec<_>>();
    macro_rules! typed {
        ($variant:ident, $ty:literal) => {
            Array::$variant(
                each($ty)
                    .into_iter()
                    .map(|x| if let Value::$variant(x) = x { x } else { unreachable!() })
                    .collect(),
            )
        };
    }
    match element {
        "u8" => typed!(U8, "u8"),
        "i8" => typed!(I8, "i8"),
        "u16" => typed!(U16, "u16"),
        "i16" => typed!(I16, "i16"),
        "u32" => typed!(U32, "u32"),
        "i32" => typed!(I32, "i32"),
        "u64" => typed!(U64, "u64"),
        "i64" => typed!(I64, "i64"),
        "f32" => typed!(F32, "f32"),
        "f64" => typed!(F64, "f64"),
        "bool" => typed!(Bool, "bool"),
        "string" => typed!(String, "string"),
        // gguf-py writes a nested list's inner lists with the type of their first element.
        "array" => Array::Array(
            items
                .iter()
                .map(|inner| {
                    let first = &inner.as_array().unwrap()[0];
                    json_array(if first.is_string() { "string" } else { "i32" }, inner)
                })
                .collect(),
        ),
        other => panic!("element type {other}"),
    }
}

#[test]
fn metadata_of_every_value_type_reads_as_written_in_file_order() {
    let file = GgufFile::open(fixture("tensors.gguf")).unwrap();
    let json: Json = serde_json::from_slice(&std::fs::read(fixture("metadata.json")).unwrap()).unwrap();
    let want = json.as_array().unwrap();
    let got: Vec<_> = file.metadata().iter().collect();
    assert_eq!(got.len(), want.len());
    for ((key, value), w) in got.into_iter().zip(want) {
        assert_eq!(key, w["key"].as_str().unwrap());
        let ty = w["type"].as_str().unwrap();
        assert_eq!(value.value_type().name(), ty, "{key}");
        assert_eq!(*value, json_value(ty, w["element_type"].as_str(), &w["value"]), "{key}");
    }
}

#[test]
fn typed_getters_accept_every_integer_type_that_fits() {
    let file = GgufFile::open(fixture("tensors.gguf")).unwrap();
    let md = file.metadata();
    assert_eq!(file.architecture().unwrap(), "llama");
    assert_eq!(md.get_u32("test.u8").unwrap(), 200);
    assert_eq!(md.get_u32("test.u16").unwrap(), 60000);
    assert_eq!(md.get_u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(md.get_u64("test.u64").unwrap(), (1 << 40) + 3);
    assert_eq!(md.get_i64("test.i8").unwrap(), -100);
    assert_eq!(md.get_i64("test.i64").unwrap(), -(1 << 40) - 5);
    assert_eq!(md.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(md.get_f32("test.f32").unwrap(), 0.15625);
    assert_eq!(md.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert!(md.get_bool("test.bool").unwrap());
    assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(md.get_str_array("tokenizer.ggml.tokens").unwrap(), ["<s>", "</s>", "a", "b", "ab"]);
    assert_eq!(md.get_f32_array("tokenizer.ggml.scores").unwrap(), [0.0, 0.0, -1.0, -2.0, -3.0]);
    assert_eq!(md.get_i32_array("tokenizer.ggml.token_type").unwrap(), [3, 3, 1, 1, 1]);

    assert_eq!(kind(md.get_u32("test.i8")), "WrongType"); // -100 does not fit
    assert_eq!(kind(md.get_u32("test.u64")), "WrongType"); // 2^40 + 3 does not fit
    assert_eq!(kind(md.get_u64("test.i64")), "WrongType");
    assert_eq!(kind(md.get_u32("test.f32")), "WrongType");
    assert_eq!(kind(md.get_str("test.u8")), "WrongType");
    assert_eq!(kind(md.get_f32_array("tokenizer.ggml.token_type")), "WrongType");
    assert_eq!(kind(md.get_str_array("test.string")), "WrongType");
    assert_eq!(kind(md.get_u32("llama.no_such_key")), "MissingKey");
    let e = md.get_u32("test.i8").unwrap_err().to_string();
    assert!(e.contains("test.i8") && e.contains("-100"), "{e}");
}

#[test]
fn raw_blocks_keep_the_codes_and_agree_with_dequantisation() {
    let file = GgufFile::open(fixture("tensors.gguf")).unwrap();
    let q8 = file.tensor("q8_0").unwrap();
    let blocks: Vec<BlockQ8_0> = file.blocks(q8).unwrap().collect();
    assert_eq!(blocks.len() as u64, q8.n_elements() / BlockQ8_0::VALUES as u64);
    let from_blocks: Vec<f32> =
        blocks.iter().flat_map(|b| b.qs.map(|q| f32::from(q) * b.d.to_f32())).collect();
    assert_bits_equal("q8_0 blocks", &from_blocks, &file.dequantize(q8).unwrap());

    let q4 = file.tensor("q4_0").unwrap();
    let from_codes: Vec<f32> = file
        .blocks::<BlockQ4_0>(q4)
        .unwrap()
        .flat_map(|b| b.codes().map(|q| b.d.to_f32() * (f32::from(q) - 8.0)))
        .collect();
    assert_bits_equal("q4_0 codes", &from_codes, &file.dequantize(q4).unwrap());

    let e = file.blocks::<BlockQ4_0>(q8).map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), "WrongTensorType", "{e}");
}

#[test]
fn missing_tensors_and_foreign_infos_are_refused() {
    let file = GgufFile::open(fixture("tensors.gguf")).unwrap();
    let e = file.tensor("output.weight").unwrap_err();
    assert_eq!(e.kind(), "MissingTensor");
    assert_eq!(e.to_string(), "the file has no tensor named \"output.weight\"");
    // An info from another file is not read at its (meaningless) range in this one.
    let other = GgufFile::open(fixture("aligned64.gguf")).unwrap();
    let foreign = other.tensor("a").unwrap();
    assert_eq!(file.tensor_bytes(foreign).unwrap_err().kind(), "MissingTensor");
    assert_eq!(file.dequantize(foreign).unwrap_err().kind(), "MissingTensor");
}

#[test]
fn bytes_by_type_sum_every_tensor() {
    let file = GgufFile::open(fixture("tensors.gguf")).unwrap();
    let by = file.bytes_by_type();
    assert_eq!(by.len(), 9);
    let total: u64 = by.iter().map(|(_, b)| b).sum();
    assert_eq!(total, file.tensors().iter().map(|t| t.n_bytes() as u64).sum::<u64>());
    assert_eq!(by[0], (GgmlType::Q6_K, 840)); // 4 blocks of 210 bytes
}
