//! The bundle contract: atomic writes (a failure injected at every stage leaves nothing behind,
//! and a failed `--force` keeps the old bundle), `--force` semantics, manifest hashes, the CLI
//! arguments, and errors that name the offending tensor.

mod common;

use std::path::Path;

use clap::Parser;
use common::*;
use ferrite_exporter::cli::{ExportArgs, run as run_cli};
use ferrite_exporter::{ExportError, ExportOptions, QuantScheme, export};
use sha2::{Digest, Sha256};

/// Writes a tiny LSTM checkpoint (fixed-seed values) into `dir`, letting `edit` tamper with it.
/// Checkpoint tensors before serialisation: (name, shape, values).
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;
/// A tampering step applied to a checkpoint before it is written.
type Edit = Box<dyn Fn(&mut Tensors)>;

fn tiny_lstm(dir: &Path, edit: impl Fn(&mut Tensors)) {
    let (v, e, h) = (10usize, 4usize, 8usize);
    let mut seed = 7u32;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let mut tensors = vec![
        ("embedding.weight".to_string(), vec![v, e], rand(v * e)),
        ("lstm.weight_ih_l0".to_string(), vec![4 * h, e], rand(4 * h * e)),
        ("lstm.weight_hh_l0".to_string(), vec![4 * h, h], rand(4 * h * h)),
        ("lstm.bias_ih_l0".to_string(), vec![4 * h], rand(4 * h)),
        ("lstm.bias_hh_l0".to_string(), vec![4 * h], rand(4 * h)),
        ("head.weight".to_string(), vec![v, h], rand(v * h)),
        ("head.bias".to_string(), vec![v], rand(v)),
    ];
    edit(&mut tensors);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        format!(r#"{{"arch":"lstm","vocab_size":{v},"embed_dim":{e},"hidden_size":{h},"num_layers":1}}"#),
    )
    .unwrap();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, d)| (n, s, d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn injected_failures_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tiny_lstm(&src, |_| {});
    let outs = tmp.path().join("outs");
    std::fs::create_dir(&outs).unwrap();
    for stage in ["model", "golden", "manifest", "rename"] {
        for quant in [QuantScheme::Fp32, QuantScheme::Int8] {
            let out = outs.join("bundle");
            let opts = ExportOptions { quant, fail_at: Some(stage), ..Default::default() };
            let err = export(&src, &out, &opts).unwrap_err();
            assert!(matches!(err, ExportError::Injected(s) if s == stage), "{err}");
            assert!(entries(&outs).is_empty(), "stage {stage}: left behind {:?}", entries(&outs));
        }
    }
}

#[test]
fn existing_outdir_needs_force_and_a_failed_force_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tiny_lstm(&src, |_| {});
    let out = tmp.path().join("bundle");
    export(&src, &out, &ExportOptions::default()).unwrap();
    let before = std::fs::read(out.join("ferrite.json")).unwrap();

    let err = export(&src, &out, &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, ExportError::OutputExists { .. }), "{err}");

    let failing = ExportOptions {
        force: true,
        quant: QuantScheme::Int8,
        fail_at: Some("rename"),
        ..Default::default()
    };
    export(&src, &out, &failing).unwrap_err();
    assert_eq!(std::fs::read(out.join("ferrite.json")).unwrap(), before, "old bundle restored");
    assert_eq!(entries(tmp.path()), ["bundle", "src"]);

    let forced = ExportOptions { force: true, quant: QuantScheme::Int8, ..Default::default() };
    let manifest = export(&src, &out, &forced).unwrap();
    assert_eq!(manifest.quantisation, QuantScheme::Int8);
    assert_eq!(entries(tmp.path()), ["bundle", "src"]);
}

#[test]
fn manifest_hashes_every_file_and_bundle_runs_in_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tiny_lstm(&src, |_| {});
    std::fs::write(src.join("tokenizer.json"), "{}").unwrap();
    let (bundle, manifest) = export_to(&src, tmp.path(), QuantScheme::Fp32);
    let mut names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["golden.npz", "model.onnx", "model.onnx.data", "tokenizer.json"]);
    for f in &manifest.files {
        let bytes = std::fs::read(bundle.join(&f.name)).unwrap();
        let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, f.sha256, "{}", f.name);
        assert_eq!(bytes.len() as u64, f.bytes);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("ferrite.json")).unwrap()).unwrap();
    assert_eq!(json["architecture"], "lstm");
    assert_eq!(json["inputs"][1]["name"], "h0");
    check_with_python(&bundle, Some(1e-4));
}

#[test]
fn errors_name_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("missing", Box::new(|t| t.retain(|(n, _, _)| n != "head.bias")), "head.bias"),
        (
            "misshaped",
            Box::new(|t| {
                t[5].1 = vec![8, 10];
            }),
            "head.weight",
        ),
        (
            "nan",
            Box::new(|t| {
                t[2].2[3] = f32::NAN;
                t[2].2[4] = f32::INFINITY;
            }),
            "lstm.weight_hh_l0",
        ),
    ];
    for (case, edit, tensor) in cases {
        let src = tmp.path().join(case);
        tiny_lstm(&src, edit);
        let out = tmp.path().join(format!("{case}-out"));
        let err = export(&src, &out, &ExportOptions::default()).unwrap_err();
        let msg = err.to_string();
        eprintln!("{case}: {msg}");
        assert!(msg.contains(&format!("`{tensor}`")), "{case}: {msg}");
        assert!(!out.exists());
    }
    let src = tmp.path().join("unknown");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("config.json"), r#"{"model_type":"mamba"}"#).unwrap();
    let err = export(&src, &tmp.path().join("u-out"), &ExportOptions::default()).unwrap_err();
    assert!(matches!(err, ExportError::UnknownArchitecture(_)), "{err}");
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    export: ExportArgs,
}

#[test]
fn cli_arguments_parse_and_run() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tiny_lstm(&src, |_| {});
    let out = tmp.path().join("out");
    let args = Cli::try_parse_from([
        "export",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--quant",
        "int8",
        "--json",
    ])
    .unwrap()
    .export;
    assert_eq!(args.quant, QuantScheme::Int8);
    assert!(args.json && !args.force && args.arch.is_none());
    run_cli(args.clone()).unwrap();
    assert!(run_cli(args.clone()).is_err(), "second run without --force");
    let forced = Cli::try_parse_from([
        "export",
        src.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--force",
        "--arch",
        "lstm",
        "--quant",
        "q4",
    ])
    .unwrap()
    .export;
    run_cli(forced).unwrap();
    assert!(Cli::try_parse_from(["export", "x", "-o", "y", "--quant", "int4"]).is_err());
}
