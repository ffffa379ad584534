//! Keras 3 `.keras` archives: fp32 exports equal Keras's own outputs (committed goldens from
//! `scripts/make_keras_golden.py`: two stacked LSTMs with non-zero initial state, which proves the
//! Keras (i,f,c,o) → ONNX (i,o,f,c) gate mapping; and a next-word model whose Dense has a softmax
//! and whose LSTM returns the last step only) on every backend; the bundles pass the ONNX checker
//! and run in ONNX Runtime; int8 stays close; broken archives are errors naming what is wrong.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::*;
use ferrite_exporter::arch::{self, ArchKind};
use ferrite_exporter::{ExportError, ExportOptions, QuantScheme, export};
use ferrite_runtime::Tensor;

fn archive(case: &str) -> PathBuf {
    golden(case).join("model.keras")
}

fn named_inputs(expected: &Path, names: &[&str]) -> Vec<(String, Tensor)> {
    names.iter().map(|n| (n.to_string(), npz(expected, n))).collect()
}

fn zeros_like(t: &Tensor) -> Tensor {
    Tensor::new(t.shape().to_vec(), vec![0f32; t.shape().iter().product()]).unwrap()
}

#[test]
fn fp32_matches_keras_on_every_backend() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, manifest) = export_to(&archive("keras"), tmp.path(), QuantScheme::Fp32);
    assert_eq!(manifest.architecture, ArchKind::Lstm, "a Keras source yields an lstm bundle");
    assert!(manifest.files.iter().any(|f| f.name == "vocab.json"), "vocab.json beside the archive copied");
    let expected = golden("keras").join("expected.npz");
    let with_state = named_inputs(&expected, &["input_ids", "h0", "c0"]);
    let h0 = npz(&expected, "h0");
    let zero_state = vec![
        ("input_ids".to_string(), npz(&expected, "input_ids")),
        ("h0".to_string(), zeros_like(&h0)),
        ("c0".to_string(), zeros_like(&h0)),
    ];
    for backend in backends() {
        let out = run(&bundle, &with_state, backend);
        for name in ["logits", "hN", "cN"] {
            let err = max_abs(output(&out, name), &npz(&expected, name));
            eprintln!("keras fp32 {backend:?} {name}: max abs error vs Keras {err:.2e}");
            assert!(err <= 1e-4, "{backend:?} {name}: {err}");
        }
        let out = run(&bundle, &zero_state, backend);
        let err = max_abs(output(&out, "logits"), &npz(&expected, "logits_zero_state"));
        eprintln!(
            "keras fp32 {backend:?} logits (zero state, = model(ids)): max abs error vs Keras {err:.2e}"
        );
        assert!(err <= 1e-4, "{backend:?} zero-state logits: {err}");
    }
    check_with_python(&bundle, Some(1e-4));
}

#[test]
fn softmax_next_word_model_exports_pre_softmax_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, manifest) = export_to(&archive("keras-next-word"), tmp.path(), QuantScheme::Fp32);
    assert!(!manifest.files.iter().any(|f| f.name == "vocab.json"), "no vocab.json beside this archive");
    let expected = golden("keras-next-word").join("expected.npz");
    let ids = npz(&expected, "input_ids");
    let batch = ids.shape()[0];
    let state = Tensor::new(vec![1, batch, 24], vec![0f32; batch * 24]).unwrap();
    let inputs = vec![("input_ids".to_string(), ids), ("h0".into(), state.clone()), ("c0".into(), state)];
    let probs = npz(&expected, "probs");
    let probs = probs.as_slice::<f32>().unwrap();
    for backend in backends() {
        let out = run(&bundle, &inputs, backend);
        let logits = output(&out, "logits");
        let err = max_abs(logits, &npz(&expected, "logits"));
        eprintln!("keras next-word fp32 {backend:?} logits: max abs error vs Keras {err:.2e}");
        assert!(err <= 1e-4, "{backend:?} logits: {err}");
        // softmax(last position) is what Keras's model() returns.
        let (s, v) = (logits.shape()[1], logits.shape()[2]);
        let data = logits.as_slice::<f32>().unwrap();
        let mut worst = 0f64;
        for b in 0..batch {
            let row = &data[(b * s + s - 1) * v..(b * s + s) * v];
            let max = row.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
            let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            for (j, &x) in row.iter().enumerate() {
                let p = (x as f64 - max).exp() / sum;
                worst = worst.max((p - probs[b * v + j] as f64).abs());
            }
        }
        eprintln!("keras next-word {backend:?}: softmax(last logits) vs Keras probs {worst:.2e}");
        assert!(worst <= 1e-5, "{backend:?} probabilities: {worst}");
    }
    check_with_python(&bundle, Some(1e-4));
}

#[test]
fn int8_bundle_is_valid_and_close() {
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, manifest) = export_to(&archive("keras"), tmp.path(), QuantScheme::Int8);
    let acc = manifest.accuracy.as_ref().expect("quantised bundles carry an accuracy report");
    let logits = &acc.outputs["logits"];
    eprintln!("keras int8: {logits:?}");
    assert!(logits.top1_agreement.unwrap() >= 0.9, "{logits:?}");
    let expected = golden("keras").join("expected.npz");
    let inputs = named_inputs(&expected, &["input_ids", "h0", "c0"]);
    for backend in backends() {
        let out = run(&bundle, &inputs, backend);
        let err = max_abs(output(&out, "logits"), &npz(&expected, "logits"));
        eprintln!("keras int8 {backend:?} logits: max abs error vs Keras {err:.2e}");
        assert!(err <= 0.05, "{backend:?} int8 logits drift {err}");
    }
    check_with_python(&bundle, None);
}

#[test]
fn detected_from_contents_and_forced_with_arch() {
    let tmp = tempfile::tempdir().unwrap();
    // Keras stores its entries uncompressed; a re-zipped (deflated) archive reads the same.
    let renamed = tmp.path().join("weights.zip");
    rewrite_as(&renamed, zip::CompressionMethod::Deflated, |_, bytes| Some(bytes));
    assert_eq!(arch::detect(&renamed).unwrap(), ArchKind::Keras, "a zip with config.json + model.weights.h5");
    assert_eq!(arch::detect(&archive("keras")).unwrap(), ArchKind::Keras);
    let opts = ExportOptions { arch: Some(ArchKind::Keras), ..Default::default() };
    let forced = tmp.path().join("forced");
    let manifest = export(&renamed, &forced, &opts).expect("--arch keras export");
    assert_eq!(manifest.architecture, ArchKind::Lstm);
    let expected = golden("keras").join("expected.npz");
    let out = run(&forced, &named_inputs(&expected, &["input_ids", "h0", "c0"]), backends()[0]);
    assert!(max_abs(output(&out, "logits"), &npz(&expected, "logits")) <= 1e-4);

    let not_keras = tmp.path().join("notes.txt");
    std::fs::write(&not_keras, "hello").unwrap();
    let err = arch::detect(&not_keras).unwrap_err();
    assert!(matches!(err, ExportError::UnknownArchitecture(_)), "{err}");
}

/// Copies the golden archive to `dst`, passing each entry through `edit` (`None` drops it).
fn rewrite(dst: &Path, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    rewrite_as(dst, zip::CompressionMethod::Stored, edit)
}

/// [`rewrite`] with entries stored as `method`.
fn rewrite_as(dst: &Path, method: zip::CompressionMethod, edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut src = zip::ZipArchive::new(std::fs::File::open(archive("keras")).unwrap()).unwrap();
    let names: Vec<String> = src.file_names().map(|n| n.unwrap().into_owned()).collect();
    let mut out = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for name in names {
        let mut bytes = Vec::new();
        src.by_name(&name).unwrap().read_to_end(&mut bytes).unwrap();
        if let Some(bytes) = edit(&name, bytes) {
            out.start_file(name.as_str(), opts).unwrap();
            out.write_all(&bytes).unwrap();
        }
    }
    out.finish().unwrap();
}

/// An edit of config.json's layer list.
type LayerEdit = fn(&mut Vec<serde_json::Value>);

/// Applies `change` to the layer list of the golden archive's config.json.
fn edit_layers(dst: &Path, change: impl Fn(&mut Vec<serde_json::Value>)) {
    rewrite(dst, |name, bytes| {
        if name != "config.json" {
            return Some(bytes);
        }
        let mut cfg: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        change(cfg.pointer_mut("/config/layers").unwrap().as_array_mut().unwrap());
        Some(serde_json::to_vec(&cfg).unwrap())
    });
}

/// Exports `src` expecting failure; checks that nothing was left at OUTDIR. Returns the message.
fn export_error(src: &Path) -> (ExportError, String) {
    let out = src.with_extension("bundle");
    let err = export(src, &out, &ExportOptions::default()).expect_err("export must fail");
    assert!(!out.exists(), "a failed export left {}", out.display());
    let msg = err.to_string();
    eprintln!("{}: {msg}", src.display());
    (err, msg)
}

#[test]
fn broken_archives_are_errors_naming_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();

    let truncated = tmp.path().join("truncated.keras");
    let bytes = std::fs::read(archive("keras")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (err, msg) = export_error(&truncated);
    assert!(matches!(err, ExportError::Archive { .. }) && msg.contains("truncated.keras"), "{msg}");

    // A whole zip whose HDF5 weights file is cut short.
    let cut = tmp.path().join("cut-weights.keras");
    rewrite(&cut, |name, bytes| {
        Some(if name == "model.weights.h5" { bytes[..bytes.len() / 3].to_vec() } else { bytes })
    });
    let (_, msg) = export_error(&cut);
    assert!(msg.contains("model.weights.h5"), "{msg}");

    let no_weights = tmp.path().join("no-weights.keras");
    rewrite(&no_weights, |name, bytes| (name != "model.weights.h5").then_some(bytes));
    let (_, msg) = export_error(&no_weights);
    assert!(msg.contains("model.weights.h5"), "{msg}");

    // A third LSTM in the config: its variables are not in the weights file.
    let extra = tmp.path().join("extra-lstm.keras");
    edit_layers(&extra, |layers| {
        let mut lstm = layers.iter().rfind(|l| l["class_name"] == "LSTM").unwrap().clone();
        lstm["config"]["name"] = "lstm_extra".into();
        let at = layers.len() - 1;
        layers.insert(at, lstm);
    });
    let (err, msg) = export_error(&extra);
    assert!(matches!(err, ExportError::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("layers/lstm_2/cell/vars/0") && msg.contains("lstm_extra.kernel"), "{msg}");

    // A wrong size in the config: the stored tensor's shape no longer matches.
    let wide = tmp.path().join("wide.keras");
    edit_layers(&wide, |layers| {
        for l in layers.iter_mut().filter(|l| l["class_name"] == "LSTM") {
            l["config"]["units"] = 20.into();
        }
    });
    let (err, msg) = export_error(&wide);
    assert!(
        matches!(err, ExportError::TensorShape { .. }) && msg.contains("layers/lstm/cell/vars/0"),
        "{msg}"
    );

    // Unsupported configurations name the layer.
    let cases: [(&str, LayerEdit, &[&str]); 4] = [
        (
            "backwards",
            |layers| {
                layers.iter_mut().filter(|l| l["class_name"] == "LSTM").last().unwrap()["config"]["go_backwards"] =
                    true.into()
            },
            &["layer `lstm_1` (LSTM)", "go_backwards"],
        ),
        (
            "relu",
            |layers| {
                layers.iter_mut().find(|l| l["class_name"] == "LSTM").unwrap()["config"]["activation"] =
                    "relu".into()
            },
            &["layer `lstm` (LSTM)", "activation `relu`"],
        ),
        (
            "gru",
            |layers| {
                layers.iter_mut().find(|l| l["class_name"] == "LSTM").unwrap()["class_name"] = "GRU".into()
            },
            &["layer `lstm` (GRU)", "not supported"],
        ),
        (
            "sigmoid-head",
            |layers| layers.last_mut().unwrap()["config"]["activation"] = "sigmoid".into(),
            &["layer `dense` (Dense)", "activation `sigmoid`"],
        ),
    ];
    for (case, change, needles) in cases {
        let path = tmp.path().join(format!("{case}.keras"));
        edit_layers(&path, change);
        let (err, msg) = export_error(&path);
        assert!(matches!(err, ExportError::Config { .. }), "{case}: {msg}");
        for needle in needles {
            assert!(msg.contains(needle), "{case}: `{needle}` not in {msg}");
        }
    }
}

/// Copies `case`'s archive to `dst` with its config.json passed through `change`.
fn edit_config(case: &str, dst: &Path, change: impl Fn(&mut serde_json::Value)) {
    let mut src = zip::ZipArchive::new(std::fs::File::open(archive(case)).unwrap()).unwrap();
    let names: Vec<String> = src.file_names().map(|n| n.unwrap().into_owned()).collect();
    let mut out = zip::ZipWriter::new(std::fs::File::create(dst).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for name in names {
        let mut bytes = Vec::new();
        src.by_name(&name).unwrap().read_to_end(&mut bytes).unwrap();
        if name == "config.json" {
            let mut cfg: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            change(&mut cfg);
            bytes = serde_json::to_vec(&cfg).unwrap();
        }
        out.start_file(name.as_str(), opts).unwrap();
        out.write_all(&bytes).unwrap();
    }
    out.finish().unwrap();
}

/// A Functional layer entry named `name` of class `class` called on `input`'s output.
fn functional_layer(class: &str, name: &str, input: &str, config: serde_json::Value) -> serde_json::Value {
    let mut config = config;
    config["name"] = name.into();
    serde_json::json!({
        "module": "keras.layers", "class_name": class, "config": config, "registered_name": null, "name": name,
        "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__",
            "config": {"shape": [null, 1], "dtype": "float32", "keras_history": [input, 0, 0]}}], "kwargs": {}}]
    })
}

#[test]
fn functional_models_export_as_chains_and_anything_else_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = |cfg: &mut serde_json::Value| -> Vec<serde_json::Value> {
        cfg.pointer("/config/layers").unwrap().as_array().unwrap().clone()
    };
    // The golden (Input, Embedding, LSTM, Dropout, LSTM, Dense softmax) exports; so does the same
    // chain with the softmax moved into an Activation layer after a linear Dense: same logits.
    let (plain, _) = export_to(&archive("keras-words"), tmp.path(), QuantScheme::Fp32);
    let moved = tmp.path().join("activation.keras");
    edit_config("keras-words", &moved, |cfg| {
        let mut list = layers(cfg);
        list.last_mut().unwrap()["config"]["activation"] = "linear".into();
        list.push(functional_layer(
            "Activation",
            "probs",
            "next_word",
            serde_json::json!({"activation": "softmax"}),
        ));
        cfg["config"]["layers"] = list.into();
        cfg["config"]["output_layers"] = serde_json::json!(["probs", 0, 0]);
    });
    let out = tmp.path().join("activation");
    export(&moved, &out, &ExportOptions::default()).expect("a final Activation layer is accepted");
    let ids = npz(&golden("keras-words").join("expected.npz"), "input_ids");
    let inputs: Vec<(String, Tensor)> = vec![("input_ids".into(), ids)];
    let with_state = |bundle: &Path| {
        let h0 = npz(&bundle.join("golden.npz"), "h0");
        let b = inputs[0].1.shape()[0];
        let (l, h) = (h0.shape()[0], h0.shape()[2]);
        let zero = Tensor::new(vec![l, b, h], vec![0f32; l * b * h]).unwrap();
        let mut all = inputs.clone();
        all.push(("h0".into(), zero.clone()));
        all.push(("c0".into(), zero));
        all
    };
    let a = run(&plain, &with_state(&plain), backends()[0]);
    let b = run(&out, &with_state(&out), backends()[0]);
    assert_eq!(max_abs(output(&a, "logits"), output(&b, "logits")), 0.0);

    type ConfigEdit = fn(&mut serde_json::Value);
    let cases: [(&str, ConfigEdit, &[&str]); 3] = [
        (
            "fan-out",
            |cfg| {
                let mut list = cfg.pointer("/config/layers").unwrap().as_array().unwrap().clone();
                list.push(functional_layer("Dense", "side", "lstm_b", serde_json::json!({"units": 3})));
                cfg["config"]["layers"] = list.into();
            },
            &["layer `lstm_b` (LSTM)", "feeds 2 layers", "branching"],
        ),
        (
            "shared",
            |cfg| {
                let list = cfg.pointer_mut("/config/layers").unwrap().as_array_mut().unwrap();
                let embed = list.iter_mut().find(|l| l["name"] == "embed").unwrap();
                let node = embed["inbound_nodes"][0].clone();
                embed["inbound_nodes"].as_array_mut().unwrap().push(node);
            },
            &["layer `embed` (Embedding)", "called 2 times"],
        ),
        (
            "two-outputs",
            |cfg| cfg["config"]["output_layers"] = serde_json::json!([["next_word", 0, 0], ["lstm_b", 0, 0]]),
            &["one input and one output"],
        ),
    ];
    for (case, change, needles) in cases {
        let path = tmp.path().join(format!("{case}.keras"));
        edit_config("keras-words", &path, change);
        let (err, msg) = export_error(&path);
        assert!(matches!(err, ExportError::Config { .. }), "{case}: {msg}");
        for needle in needles {
            assert!(msg.contains(needle), "{case}: `{needle}` not in {msg}");
        }
    }
}
