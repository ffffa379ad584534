//! The CLI contract: `inspect --json` keys, `infer` writing .npz, and one-line errors with a
//! non-zero exit code for every failure.

mod common;

use std::process::Command;

fn ferrite(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrite")).args(args).current_dir(common::root()).output().unwrap()
}

fn assert_fails_cleanly(args: &[&str], needle: &str) {
    let out = ferrite(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: one line expected, got:\n{stderr}");
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: `{needle}` not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

#[test]
fn inspect_json_has_the_public_keys() {
    let out = ferrite(&["inspect", "tests/models/external_data/model.onnx", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["inputs"][0]["name"], "x");
    assert_eq!(json["inputs"][0]["dtype"], "f32");
    assert_eq!(json["inputs"][0]["shape"], serde_json::json!([3, 32]));
    assert_eq!(json["outputs"][0]["name"], "y");
    assert_eq!(json["ops"]["MatMul"], 2);
    // 32*64 + 64 + 64*16 + 16 floats.
    assert_eq!(json["initializer_bytes"]["f32"], (32 * 64 + 64 + 64 * 16 + 16) * 4);
    assert_eq!(json["metadata"]["ferrite.case"], "external_data");
    assert_eq!(json["external_data"][0], "model.onnx.data");
}

#[test]
fn inspect_shows_symbolic_dims_by_name() {
    let out = ferrite(&["inspect", "tests/models/dynamic_batch/model.onnx", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["inputs"][0]["shape"], serde_json::json!(["batch", 32]));
}

#[test]
fn infer_writes_outputs_that_match_the_golden_file() {
    let out_path = std::env::temp_dir().join(format!("ferrite-cli-{}.npz", std::process::id()));
    let out = ferrite(&[
        "infer",
        "tests/models/lstm/model.onnx",
        "--input",
        "X=tests/models/lstm/input_X.npy",
        "--input",
        "initial_h=tests/models/lstm/input_initial_h.npy",
        "--input",
        "initial_c=tests/models/lstm/input_initial_c.npy",
        "--output",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = ferrite_runtime::npy::read_npz(&out_path).unwrap();
    let want = ferrite_runtime::npy::read_npz(common::test_models().join("lstm/expected.npz")).unwrap();
    assert_eq!(got.len(), 3);
    for (name, w) in &want {
        let g = &got.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(common::max_abs_diff(name, g, w) <= 1e-5, "{name}");
    }
}

#[test]
fn every_failure_is_one_line_and_non_zero() {
    let dir = std::env::temp_dir().join(format!("ferrite-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.onnx");
    std::fs::write(&empty, b"").unwrap();
    let empty = empty.to_str().unwrap();
    assert_fails_cleanly(&["inspect", "no/such/model.onnx"], "no/such/model.onnx");
    assert_fails_cleanly(&["inspect", empty], "not an ONNX model");
    assert_fails_cleanly(
        &[
            "infer",
            "tests/models/unknown_op/model.onnx",
            "--input",
            "x=tests/models/matmul_integer/input_x.npy",
        ],
        "FerriteNoSuchOp",
    );
    assert_fails_cleanly(
        &[
            "infer",
            "tests/models/external_data/model.onnx",
            "--input",
            "x=tests/models/matmul_integer/input_x.npy",
        ],
        "expected shape [3, 32], got [2, 64]",
    );
    assert_fails_cleanly(
        &["infer", "tests/models/external_data/model.onnx", "--input", "x=tests/models/lstm/input_X.npy"],
        "expected shape",
    );
    assert_fails_cleanly(
        &[
            "infer",
            "models/tiny-lstm-lm/model.onnx",
            "--input",
            "input_ids=tests/models/matmul_integer/input_x.npy",
        ],
        "input `input_ids`: expected dtype i64, got f32",
    );
    assert_fails_cleanly(&["infer", "tests/models/lstm/model.onnx", "--input", "X"], "NAME=FILE.npy");
    assert_fails_cleanly(
        &["infer", "tests/models/lstm/model.onnx", "--input", "X=missing.npy"],
        "missing.npy",
    );
    assert_fails_cleanly(
        &["infer", "tests/models/lstm/model.onnx", "--input", "X=tests/models/lstm/model.onnx"],
        "not a .npy file",
    );
    if cfg!(feature = "ort") {
        assert_fails_cleanly(
            &[
                "infer",
                "tests/models/external_data/model.onnx",
                "--input",
                "x=tests/models/external_data/input_x.npy",
                "--backend",
                "ort",
                "--ort-library",
                "/nonexistent/libonnxruntime.so",
            ],
            "ort backend unavailable",
        );
    }
}

#[test]
fn inspect_describes_a_gguf_file() {
    // Written by llama.cpp's gguf package (scripts/make_gguf_fixtures.py).
    let out = ferrite(&["inspect", "gguf/tests/fixtures/tensors.gguf", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["format"], "gguf");
    assert_eq!(json["version"], 3);
    assert_eq!(json["alignment"], 32);
    assert_eq!(json["architecture"], "llama");
    assert_eq!(json["hyperparameters"]["llama.block_count"], 2);
    assert_eq!(json["hyperparameters"]["llama.attention.head_count_kv"], 2);
    assert_eq!(json["tensor_count"], 9);
    assert_eq!(json["bytes_by_type"]["Q6_K"], 840);
    assert_eq!(json["tensors"][0]["name"], "f32.3d");
    assert_eq!(json["tensors"][0]["dims"], serde_json::json!([4, 3, 2]));
    let tokens =
        json["metadata"].as_array().unwrap().iter().find(|e| e["key"] == "tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens["type"], "array");
    assert_eq!(tokens["value"]["element_type"], "string");
    assert_eq!(tokens["value"]["len"], 5);
    assert_eq!(tokens["value"]["first"][0], "<s>");

    let text = ferrite(&["inspect", "gguf/tests/fixtures/tensors.gguf"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("GGUF v3, alignment 32"), "{text}");
    assert!(text.contains("tokenizer.ggml.tokens") && text.contains("[string; 5]"), "{text}");

    let dir = std::env::temp_dir().join(format!("ferrite-cli-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(
        &cut,
        &std::fs::read(common::root().join("gguf/tests/fixtures/tensors.gguf")).unwrap()[..100],
    )
    .unwrap();
    assert_fails_cleanly(&["inspect", cut.to_str().unwrap()], "the file is truncated");
    let v1 = dir.join("v1.gguf");
    std::fs::write(&v1, b"GGUF\x01\0\0\0").unwrap();
    assert_fails_cleanly(&["inspect", v1.to_str().unwrap()], "GGUF version 1 is not supported");
    std::fs::remove_dir_all(&dir).unwrap();
}
