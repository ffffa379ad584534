//! Every class of malformed file ends in its own typed error, and never in a panic or in an
//! allocation sized by a number the file made up (a count of 2^64 - 1 is refused in microseconds
//! and without memory: were it allocated first, these tests would abort).

mod common;

use common::{file, fixture, info, kv, kv_u32, one_f32, string};
use ferrite_gguf::{GgufFile, MAX_DEPTH};

fn kind(bytes: Vec<u8>) -> &'static str {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => "Ok",
        Err(e) => {
            // Every message is one line a user can read.
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
            e.kind()
        }
    }
}

fn error(bytes: Vec<u8>) -> String {
    GgufFile::from_bytes(bytes).unwrap_err().to_string()
}

#[test]
fn the_builder_makes_valid_files() {
    let f = GgufFile::from_bytes(one_f32(8)).unwrap();
    assert_eq!(f.dequantize(f.tensor("t").unwrap()).unwrap(), [1.0; 8]);
}

#[test]
fn truncation_at_every_byte_is_refused() {
    for name in ["tensors.gguf", "aligned64.gguf"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let full = GgufFile::from_bytes(bytes.clone()).unwrap();
        let data_end = full.tensors().iter().map(|t| t.byte_range().end).max().unwrap();
        let infos_end = full.data_offset() as usize - full.alignment() as usize + 1;
        for cut in 0..bytes.len() {
            let k = kind(bytes[..cut].to_vec());
            if cut >= data_end {
                // Only the padding after the last tensor is missing.
                assert_eq!(k, "Ok", "{name} cut at {cut}");
            } else if cut < infos_end {
                assert_eq!(k, "Truncated", "{name} cut at {cut}");
            } else {
                assert!(k == "Truncated" || k == "OutOfBounds", "{name} cut at {cut}: {k}");
            }
        }
    }
}

#[test]
fn wrong_magic_and_versions() {
    let good = one_f32(4);
    let with = |at: usize, b: &[u8]| {
        let mut v = good.clone();
        v[at..at + b.len()].copy_from_slice(b);
        v
    };
    assert_eq!(kind(with(0, b"GGUG")), "BadMagic");
    assert_eq!(kind(with(0, b"\x08\x01\x12\x00")), "BadMagic"); // an ONNX file's first bytes
    assert_eq!(kind(b"\x00".to_vec()), "BadMagic");
    assert_eq!(kind(b"GG".to_vec()), "Truncated");
    assert_eq!(kind(Vec::new()), "Truncated");
    assert_eq!(
        error(with(0, b"PK\x03\x04")),
        "not a GGUF file: it starts with \"PK\\x03\\x04\", not \"GGUF\""
    );
    for v in [0u32, 1, 4, u32::MAX] {
        assert_eq!(kind(with(4, &v.to_le_bytes())), "UnsupportedVersion", "version {v}");
    }
    assert_eq!(
        error(with(4, &1u32.to_le_bytes())),
        "GGUF version 1 is not supported (ferrite reads versions 2 and 3)"
    );
    assert_eq!(kind(with(4, &2u32.to_le_bytes())), "Ok");
}

#[test]
fn counts_past_the_end_are_refused_before_allocating() {
    // One entry and one empty tensor, nothing after them (alignment 1: no padding), so any
    // larger count runs past the end.
    let good = file(&[kv_u32("general.alignment", 1)], &[info(b"t", &[0], 0, 0)], 1, &[]);
    assert_eq!(kind(good.clone()), "Ok");
    let with = |at: usize, v: u64| {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        b
    };
    for n in [2, 1 << 20, 1 << 40, u64::MAX] {
        assert_eq!(kind(with(8, n)), "Truncated", "tensor count {n}");
        assert_eq!(kind(with(16, n)), "Truncated", "metadata count {n}");
    }
    // Arrays: a count the rest of the file cannot hold, of every element size.
    for (elem, n) in [(0u32, u64::MAX), (0, 1 << 40), (4, 1 << 62), (8, u64::MAX / 8), (9, 1 << 40), (12, 3)]
    {
        let mut value = elem.to_le_bytes().to_vec();
        value.extend_from_slice(&n.to_le_bytes());
        let bytes = file(&[kv(b"arr", 9, &value)], &[], 32, &[]);
        assert_eq!(kind(bytes), "Truncated", "array of type {elem}, count {n}");
    }
    // Nested: the inner count is bounded too.
    let mut value = 9u32.to_le_bytes().to_vec();
    value.extend_from_slice(&1u64.to_le_bytes());
    value.extend_from_slice(&0u32.to_le_bytes());
    value.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(kind(file(&[kv(b"arr", 9, &value)], &[], 32, &[])), "Truncated");
}

#[test]
fn string_lengths_past_the_end_are_refused() {
    let long = |len: u64| {
        let mut s = len.to_le_bytes().to_vec();
        s.extend_from_slice(b"abc");
        s
    };
    for len in [4, 1 << 32, u64::MAX] {
        // A key, a string value, an element of a string array, a tensor name.
        let mut key = file(&[], &[], 1, &[]);
        key[16..24].copy_from_slice(&1u64.to_le_bytes());
        key.extend_from_slice(&long(len));
        assert_eq!(kind(key), "Truncated", "key length {len}");
        assert_eq!(kind(file(&[kv(b"s", 8, &long(len))], &[], 1, &[])), "Truncated", "value length {len}");
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend_from_slice(&1u64.to_le_bytes());
        arr.extend_from_slice(&long(len));
        assert_eq!(kind(file(&[kv(b"a", 9, &arr)], &[], 1, &[])), "Truncated", "element length {len}");
        let mut name = file(&[], &[], 1, &[]);
        name[8..16].copy_from_slice(&1u64.to_le_bytes());
        name.extend_from_slice(&long(len));
        assert_eq!(kind(name), "Truncated", "tensor name length {len}");
    }
    let msg = error(file(&[kv(b"general.name", 8, &long(1 << 32))], &[], 1, &[]));
    assert!(
        msg.starts_with(
            "the file is truncated: the value of metadata \"general.name\" needs 4294967296 bytes"
        ),
        "{msg}"
    );
}

#[test]
fn strings_that_are_not_utf8_are_refused() {
    assert_eq!(kind(file(&[kv(b"k\xff", 4, &1u32.to_le_bytes())], &[], 32, &[])), "BadString");
    assert_eq!(kind(file(&[kv(b"k", 8, &string(b"\xc3("))], &[], 32, &[])), "BadString");
    assert_eq!(kind(file(&[], &[info(b"t\x80", &[1], 0, 0)], 32, &[0; 4])), "BadString");
}

#[test]
fn names_from_the_file_are_escaped_in_messages() {
    let msg = error(file(&[kv(b"a\nb\x1b[2J", 99, &[])], &[], 32, &[]));
    assert_eq!(msg, r#"metadata "a\nb\u{1b}[2J" has unknown value type 99"#);
    assert_eq!(kind(file(&[], &[info(b"x\ny", &[1], 99, 0)], 32, &[0; 4])), "UnknownType");
}

#[test]
fn unknown_types_are_refused() {
    for ty in [4u32, 5, 31, 42, 99, u32::MAX] {
        assert_eq!(
            kind(file(&[], &[info(b"t", &[32], ty, 0)], 32, &[0; 4096])),
            "UnknownType",
            "ggml type {ty}"
        );
    }
    assert_eq!(
        error(file(&[], &[info(b"w", &[1], 99, 0)], 32, &[0; 4])),
        "tensor \"w\" has unknown ggml type 99"
    );
    for ty in [13u32, 255, u32::MAX] {
        assert_eq!(
            kind(file(&[kv(b"k", ty, &[0; 16])], &[], 32, &[])),
            "UnknownValueType",
            "value type {ty}"
        );
        let mut arr = ty.to_le_bytes().to_vec();
        arr.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(
            kind(file(&[kv(b"k", 9, &arr)], &[], 32, &[0; 16])),
            "UnknownValueType",
            "element type {ty}"
        );
    }
}

#[test]
fn dims_that_overflow_are_refused() {
    let t = |dims: &[u64], ty: u32| kind(file(&[], &[info(b"t", dims, ty, 0)], 32, &[0; 64]));
    assert_eq!(t(&[1 << 32, 1 << 32, 1 << 32, 1], 0), "Overflow");
    assert_eq!(t(&[u64::MAX], 0), "Overflow");
    assert_eq!(t(&[1 << 63], 0), "Overflow");
    assert_eq!(t(&[0, u64::MAX], 0), "Overflow"); // a zero must not hide a huge dimension
    assert_eq!(t(&[1 << 62], 0), "Overflow"); // 2^62 f32 values take 2^64 bytes
    assert_eq!(t(&[1 << 40], 0), "OutOfBounds");
    assert_eq!(t(&[1 << 20, 1 << 20], 2), "OutOfBounds");
    assert_eq!(t(&[0, 5], 0), "Ok"); // an empty tensor is fine
    assert_eq!(t(&[], 0), "Ok"); // a scalar
    assert_eq!(t(&[1, 1, 1, 1, 1], 0), "TooManyDims");
    let mut many = info(b"t", &[], 0, 0);
    many[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(kind(file(&[], &[many], 32, &[])), "TooManyDims");
}

#[test]
fn rows_must_be_whole_blocks() {
    // Q4_0 (code 2) blocks hold 32 values; Q4_K (12) blocks 256.
    assert_eq!(kind(file(&[], &[info(b"t", &[33, 2], 2, 0)], 32, &[0; 64])), "BadShape");
    assert_eq!(kind(file(&[], &[info(b"t", &[32, 2], 2, 0)], 32, &[0; 64])), "Ok");
    assert_eq!(kind(file(&[], &[info(b"t", &[128, 2], 12, 0)], 32, &[0; 1024])), "BadShape");
    assert_eq!(kind(file(&[], &[info(b"t", &[], 2, 0)], 32, &[0; 64])), "BadShape");
    let msg = error(file(&[], &[info(b"blk.0.w", &[33], 2, 0)], 32, &[0; 64]));
    assert_eq!(msg, "tensor \"blk.0.w\": its row length 33 is not a multiple of Q4_0's block size 32");
}

#[test]
fn offsets_past_the_end_are_refused() {
    let t = |offset: u64| kind(file(&[], &[info(b"t", &[4], 0, offset)], 32, &[0; 16]));
    assert_eq!(t(0), "Ok");
    assert_eq!(t(32), "OutOfBounds");
    assert_eq!(t(1 << 40), "OutOfBounds");
    assert_eq!(t(!31), "OutOfBounds"); // 2^64 - 32: the start overflows u64
    // The second tensor ends one byte past the file.
    let two = file(&[], &[info(b"a", &[4], 0, 0), info(b"b", &[9], 0, 32)], 32, &[0; 67]);
    let msg = error(two);
    assert!(msg.starts_with("tensor \"b\" lies outside the file"), "{msg}");
}

#[test]
fn misaligned_offsets_and_bad_alignments_are_refused() {
    let t = |kvs: &[Vec<u8>], offset: u64| kind(file(kvs, &[info(b"t", &[4], 0, offset)], 64, &[0; 256]));
    assert_eq!(t(&[], 1), "Misaligned");
    assert_eq!(t(&[], 16), "Misaligned");
    assert_eq!(t(&[], 32), "Ok");
    assert_eq!(t(&[kv_u32("general.alignment", 64)], 32), "Misaligned");
    assert_eq!(t(&[kv_u32("general.alignment", 64)], 64), "Ok");
    assert_eq!(t(&[kv_u32("general.alignment", 16)], 16), "Ok");
    assert_eq!(t(&[kv_u32("general.alignment", 0)], 0), "BadAlignment");
    assert_eq!(t(&[kv_u32("general.alignment", 3)], 0), "BadAlignment");
    assert_eq!(t(&[kv_u32("general.alignment", 1 << 31)], 0), "OutOfBounds"); // the data would start at 2 GiB
    assert_eq!(t(&[kv(b"general.alignment", 8, &string(b"32"))], 0), "WrongType");
    assert_eq!(t(&[kv(b"general.alignment", 10, &(1u64 << 40).to_le_bytes())], 0), "WrongType");
    assert_eq!(t(&[kv(b"general.alignment", 10, &64u64.to_le_bytes())], 64), "Ok"); // any integer type that fits
}

#[test]
fn duplicate_and_missing_names_are_refused() {
    let dup = file(&[], &[info(b"t", &[4], 0, 0), info(b"t", &[4], 0, 32)], 32, &[0; 64]);
    assert_eq!(kind(dup.clone()), "DuplicateTensor");
    assert_eq!(error(dup), "tensor \"t\" appears more than once");
    let keys = file(&[kv_u32("k", 1), kv_u32("k", 2)], &[], 32, &[]);
    assert_eq!(kind(keys), "DuplicateKey");
    let f = GgufFile::from_bytes(one_f32(4)).unwrap();
    assert_eq!(f.tensor("u").unwrap_err().kind(), "MissingTensor");
}

#[test]
fn nesting_is_capped() {
    let nested = |depth: usize| {
        // `depth` arrays, each holding one array, the innermost an empty u8 array.
        let mut v = Vec::new();
        for _ in 0..depth - 1 {
            v.extend_from_slice(&9u32.to_le_bytes());
            v.extend_from_slice(&1u64.to_le_bytes());
        }
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        file(&[kv(b"deep", 9, &v)], &[], 32, &[])
    };
    assert_eq!(kind(nested(MAX_DEPTH)), "Ok");
    assert_eq!(kind(nested(MAX_DEPTH + 1)), "TooDeep");
    assert_eq!(kind(nested(10_000)), "TooDeep");
}

#[test]
fn known_types_without_a_dequantiser_are_described_but_not_dequantised() {
    // Q5_0 (code 6): 22-byte blocks of 32 values.
    let f = GgufFile::from_bytes(file(&[], &[info(b"t", &[64], 6, 0)], 32, &[0; 44])).unwrap();
    let t = f.tensor("t").unwrap();
    assert_eq!(t.n_bytes(), 44);
    let e = f.dequantize(t).unwrap_err();
    assert_eq!(e.kind(), "Unsupported");
    assert!(e.to_string().starts_with("tensor \"t\" is Q5_0; ferrite dequantises only"), "{e}");
}

#[test]
fn open_reports_the_path() {
    let e = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
    assert_eq!(e.kind(), "Io");
    assert!(e.to_string().starts_with("cannot read /nonexistent/model.gguf: "), "{e}");
    assert_eq!(GgufFile::open(env!("CARGO_MANIFEST_DIR")).unwrap_err().kind(), "Io");
    let empty = std::env::temp_dir().join(format!("ferrite-gguf-empty-{}.gguf", std::process::id()));
    std::fs::write(&empty, b"").unwrap();
    let r = GgufFile::open(&empty);
    std::fs::remove_file(&empty).unwrap();
    assert_eq!(r.unwrap_err().kind(), "Truncated");
}
