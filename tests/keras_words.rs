//! Keras next-word models with word vocabularies, text in and text out: the goldens of
//! `scripts/make_keras_golden.py` (trained with real Keras 3; vocabularies from a Keras 2
//! `Tokenizer`, a hand-built `{word: index}` map, and a `TextVectorization` layer) exported with
//! `--vocab` or the layer inside the archive. Checked against Keras: the fp32 logits of every
//! position on every backend, the tokenizer's ids for each prompt, greedy continuations (fp32
//! and int8), OOV handling; a branching Functional model is refused by name; and the CLI
//! (`ferrite export --vocab`, `ferrite generate --prompt`, `--json`) prints the words.
// The exporter is part of the build only with the `export` feature (default; boards leave it out).
#![cfg(feature = "export")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrite_exporter::{ExportError, ExportOptions, QuantScheme, export};
use ferrite_runtime::generate::{GenerateOptions, Generator};
use ferrite_runtime::{BackendKind, Bundle, BundleOptions, Tensor};

fn golden(case: &str) -> PathBuf {
    common::root().join("exporter/tests/golden").join(case)
}

/// Every backend compiled in (with `ort`, a missing ONNX Runtime library fails the test).
fn backends() -> Vec<BackendKind> {
    let mut out = vec![BackendKind::Tract];
    if cfg!(feature = "ort") {
        out.push(BackendKind::Ort);
    }
    out
}

/// A prompt and what Keras made of it.
struct Prompt {
    text: String,
    /// Keras's own tokenization.
    ids: Vec<u32>,
    /// Keras's greedy continuation, as ids and as words.
    greedy: Vec<u32>,
    words: Vec<String>,
}

/// What Keras computed, from the case's expected.json and expected.npz.
struct Expected {
    prompts: Vec<Prompt>,
    /// The OOV prompt and Keras's ids for it (`None`: Keras's own lookup fails on the word).
    oov: (String, Option<Vec<u32>>),
    input_ids: Tensor,
    logits: Tensor,
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn expected(case: &str) -> Expected {
    let text = std::fs::read_to_string(golden(case).join("expected.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let prompts = json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            text: p["text"].as_str().unwrap().to_string(),
            ids: ids_of(&p["ids"]),
            greedy: ids_of(&p["greedy_ids"]),
            words: p["greedy_words"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().into()).collect(),
        })
        .collect();
    let oov = (json["oov"]["text"].as_str().unwrap().to_string(), json["oov"].get("ids").map(ids_of));
    let npz = ferrite_runtime::npy::read_npz(golden(case).join("expected.npz")).unwrap();
    let get = |name: &str| npz.iter().find(|(n, _)| n == name).unwrap().1.clone();
    Expected { prompts, oov, input_ids: get("input_ids"), logits: get("logits") }
}

/// Exports `case`'s model.keras (with `--vocab FILE` when given) into `tmp`.
fn export_case(case: &str, vocab: Option<&str>, quant: QuantScheme, tmp: &Path) -> PathBuf {
    let out = tmp.join(format!("{case}-{}-{}", vocab.unwrap_or("archive"), quant.name()));
    let opts = ExportOptions { quant, vocab: vocab.map(|v| golden(case).join(v)), ..Default::default() };
    let manifest = export(&golden(case).join("model.keras"), &out, &opts)
        .unwrap_or_else(|e| panic!("export {case} ({vocab:?}, {}): {e}", quant.name()));
    assert!(manifest.files.iter().any(|f| f.name == "tokenizer.json"), "{case}: no tokenizer.json written");
    out
}

fn open(bundle: &Path, backend: BackendKind) -> Bundle {
    Bundle::open_with(bundle, &BundleOptions::default().backend(backend)).unwrap()
}

/// The bundle's logits for Keras's input ids (zero initial state), against Keras's.
fn check_logits(case: &str, bundle: &Path, exp: &Expected, tol: f32) {
    let ids = &exp.input_ids;
    // [layers, batch, hidden] from the sample state the exporter stored in the bundle's goldens.
    let goldens = ferrite_runtime::npy::read_npz(bundle.join("golden.npz")).unwrap();
    let h0 = &goldens.iter().find(|(n, _)| n == "h0").unwrap().1;
    let (layers, units) = (h0.shape()[0], h0.shape()[2]);
    let batch = ids.shape()[0];
    let state = Tensor::new(vec![layers, batch, units], vec![0f32; layers * batch * units]).unwrap();
    let inputs =
        vec![("input_ids".to_string(), ids.clone()), ("h0".into(), state.clone()), ("c0".into(), state)];
    for backend in backends() {
        let out = ferrite_exporter::bundle::run_model(bundle, &inputs, backend).unwrap();
        let logits = &out.iter().find(|(n, _)| n == "logits").unwrap().1;
        let err = common::max_abs_diff("logits", logits, &exp.logits);
        eprintln!("{case} {backend:?}: logits max abs error vs Keras {err:.2e}");
        assert!(err <= f64::from(tol), "{case} {backend:?}: {err}");
    }
}

/// Tokenises each prompt with the bundle's tokenizer (== Keras's ids) and generates greedily
/// on every backend: the words must be Keras's.
fn check_words(case: &str, bundle: &Path, exp: &Expected) {
    for backend in backends() {
        let b = open(bundle, backend);
        let tok = b.require_tokenizer().unwrap();
        let mut generator = Generator::new(&b).unwrap();
        for Prompt { text, ids, greedy, words } in &exp.prompts {
            assert_eq!(&tok.encode(text, false).unwrap(), ids, "{case}: ids of {text:?}");
            let opts = GenerateOptions { max_tokens: greedy.len(), ..GenerateOptions::default() };
            let mut streamed = String::new();
            let out = generator.generate_text(text, &opts, &mut |s| streamed.push_str(s)).unwrap();
            eprintln!("{case} {backend:?}: {text:?} ->{streamed:?}");
            assert_eq!(&out.ids, greedy, "{case} {backend:?}: greedy ids after {text:?}");
            // Streamed words continue the prompt: each one after a space.
            assert_eq!(streamed, format!(" {}", words.join(" ")), "{case} {backend:?}");
            assert_eq!(tok.decode(greedy).unwrap(), words.join(" "));
        }
    }
}

#[test]
fn functional_model_with_a_keras_tokenizer_matches_keras() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = expected("keras-words");
    let bundle = export_case("keras-words", Some("keras_tokenizer.json"), QuantScheme::Fp32, tmp.path());
    check_logits("keras-words", &bundle, &exp, 1e-5);
    check_words("keras-words", &bundle, &exp);
    // The Tokenizer has an OOV token: an unknown word becomes it, as texts_to_sequences does.
    let b = open(&bundle, BackendKind::Tract);
    let (text, ids) = &exp.oov;
    assert_eq!(&b.require_tokenizer().unwrap().encode(text, false).unwrap(), ids.as_ref().unwrap());
    // Lower-casing and the Tokenizer's filters apply as in Keras.
    let tok = b.require_tokenizer().unwrap();
    assert_eq!(tok.encode("The CAT, sat!", false).unwrap(), exp.prompts[0].ids);
}

#[test]
fn seed_sequential_model_with_a_hand_built_vocabulary_matches_keras() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = expected("keras-words-seq");
    let bundle = export_case("keras-words-seq", Some("words.json"), QuantScheme::Fp32, tmp.path());
    check_logits("keras-words-seq", &bundle, &exp, 1e-5);
    check_words("keras-words-seq", &bundle, &exp);
    // No OOV token: an unknown word is an error naming it (Keras's own dict lookup fails too).
    let (text, ids) = &exp.oov;
    assert!(ids.is_none(), "Keras's lookup of {text:?} should have failed");
    let b = open(&bundle, BackendKind::Tract);
    let err = b.require_tokenizer().unwrap().encode(text, false).unwrap_err().to_string();
    assert!(err.contains("\"zebra\"") && err.contains("no OOV token"), "{err}");
    // A hand-built map splits on whitespace and does not change case.
    assert!(b.require_tokenizer().unwrap().encode("The cat", false).is_err());
}

#[test]
fn text_vectorization_inside_the_model_gives_the_vocabulary() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = expected("keras-textvec");
    let bundle = export_case("keras-textvec", None, QuantScheme::Fp32, tmp.path());
    check_logits("keras-textvec", &bundle, &exp, 1e-5);
    check_words("keras-textvec", &bundle, &exp);
    let b = open(&bundle, BackendKind::Tract);
    let tok = b.require_tokenizer().unwrap();
    // "[UNK]" for unknown words, lower-casing and punctuation stripping as the layer does.
    let (text, ids) = &exp.oov;
    assert_eq!(&tok.encode(text, false).unwrap(), ids.as_ref().unwrap());
    assert_eq!(tok.encode("The  Cat; sat.", false).unwrap(), exp.prompts[0].ids);
    // get_vocabulary() saved as a text file gives the same tokenizer.
    let from_file = export_case("keras-textvec", Some("vocabulary.txt"), QuantScheme::Fp32, tmp.path());
    let read = |d: &Path| std::fs::read(d.join("tokenizer.json")).unwrap();
    assert_eq!(read(&bundle), read(&from_file), "vocabulary.txt and the layer's own vocabulary differ");
}

#[test]
fn int8_bundles_generate_the_same_words_as_keras() {
    let tmp = tempfile::tempdir().unwrap();
    for (case, vocab) in [
        ("keras-words", Some("keras_tokenizer.json")),
        ("keras-words-seq", Some("words.json")),
        ("keras-textvec", None),
    ] {
        let bundle = export_case(case, vocab, QuantScheme::Int8, tmp.path());
        check_words(case, &bundle, &expected(case));
    }
}

#[test]
fn a_branching_functional_model_is_refused_naming_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    let err =
        export(&golden("keras-branching").join("model.keras"), &out, &ExportOptions::default()).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, ExportError::Config { .. }), "{msg}");
    assert!(msg.contains("layer `join` (Concatenate)") && msg.contains("branching"), "{msg}");
    assert!(!out.exists());
}

#[test]
fn vocabulary_files_that_do_not_fit_are_errors_naming_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let src = golden("keras-words-seq").join("model.keras");
    let vocab = tmp.path().join("big.json");
    std::fs::write(&vocab, r#"{"the": 1, "cat": 2, "elephant": 500}"#).unwrap();
    let opts = ExportOptions { vocab: Some(vocab), ..Default::default() };
    let err = export(&src, &tmp.path().join("out"), &opts).unwrap_err().to_string();
    assert!(err.contains("\"elephant\"") && err.contains("index 500"), "{err}");
    let vocab = tmp.path().join("broken.json");
    std::fs::write(&vocab, r#"{"the": 1, "cat": "two"}"#).unwrap();
    let opts = ExportOptions { vocab: Some(vocab), ..Default::default() };
    let err = export(&src, &tmp.path().join("out"), &opts).unwrap_err().to_string();
    assert!(err.contains("broken.json") && err.contains("\"cat\""), "{err}");
    assert!(!tmp.path().join("out").exists());
}

fn ferrite(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrite")).args(args).current_dir(common::root()).output().unwrap()
}

#[test]
fn cli_exports_with_vocab_and_generates_words() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    let (model, vocab) =
        (golden("keras-words").join("model.keras"), golden("keras-words").join("keras_tokenizer.json"));
    let run = ferrite(&[
        "export",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--vocab",
        vocab.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let exp = expected("keras-words");
    let Prompt { text, greedy, words, .. } = &exp.prompts[0];
    assert_eq!(text, "the cat sat");
    let mut flags: Vec<Vec<&str>> = vec![vec![]];
    if cfg!(feature = "ort") {
        flags.push(vec!["--backend", "ort"]);
    }
    for extra in flags {
        let mut args = vec!["generate", out.to_str().unwrap(), "--prompt", text, "--max-tokens", "5"];
        args.extend(&extra);
        let run = ferrite(&args);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let stdout = String::from_utf8(run.stdout).unwrap();
        eprintln!("ferrite generate {extra:?}: {stdout:?}");
        assert_eq!(stdout, format!(" {}\n", words.join(" ")), "{extra:?}");

        args.push("--json");
        let run = ferrite(&args);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let json: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        assert_eq!(json["text"], format!(" {}", words.join(" ")));
        assert_eq!(ids_of(&json["ids"]), *greedy);
        assert_eq!(json["prompt_tokens"], 3);
        assert_eq!(json["generated_tokens"], 5);
    }
    // A word the vocabulary lacks maps to the OOV token here, so generation goes on.
    let run = ferrite(&["generate", out.to_str().unwrap(), "--prompt", "the zebra sat", "--max-tokens", "2"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn cli_names_an_unknown_word_when_the_vocabulary_has_no_oov_token() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    let (model, vocab) =
        (golden("keras-words-seq").join("model.keras"), golden("keras-words-seq").join("words.json"));
    let run = ferrite(&[
        "export",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--vocab",
        vocab.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let run = ferrite(&["generate", out.to_str().unwrap(), "--prompt", "the zebra sat", "--max-tokens", "5"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("\"zebra\"") && !stderr.contains("panicked"), "{stderr}");
}
