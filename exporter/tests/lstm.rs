//! LSTM language model: fp32 export equals PyTorch's nn.LSTM (committed goldens, non-zero
//! initial state, 2 layers — this is what proves the (i,f,g,o) → (i,o,f,c) gate mapping), on every
//! backend; every scheme's bundle passes the ONNX checker and runs in ONNX Runtime.

mod common;

use common::*;
use ferrite_exporter::QuantScheme;

#[test]
fn fp32_matches_pytorch_on_every_backend() {
    let src = golden("lstm");
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, manifest) = export_to(&src, tmp.path(), QuantScheme::Fp32);
    assert!(manifest.files.iter().any(|f| f.name == "vocab.json"), "vocab copied");
    let expected = src.join("expected.npz");
    let inputs: Vec<_> =
        ["input_ids", "h0", "c0"].iter().map(|n| (n.to_string(), npz(&expected, n))).collect();
    for backend in backends() {
        let out = run(&bundle, &inputs, backend);
        for name in ["logits", "hN", "cN"] {
            let err = max_abs(output(&out, name), &npz(&expected, name));
            eprintln!("lstm fp32 {backend:?} {name}: max abs error vs PyTorch {err:.2e}");
            assert!(err <= 1e-4, "{backend:?} {name}: {err}");
        }
    }
    check_with_python(&bundle, Some(1e-4));
}

#[test]
fn quantised_bundles_are_valid_and_close() {
    let src = golden("lstm");
    let tmp = tempfile::tempdir().unwrap();
    for quant in [QuantScheme::Fp16, QuantScheme::Int8, QuantScheme::Q4] {
        let (bundle, manifest) = export_to(&src, tmp.path(), quant);
        let acc = manifest.accuracy.as_ref().expect("quantised bundles carry an accuracy report");
        let logits = &acc.outputs["logits"];
        eprintln!("lstm {}: {logits:?}", quant.name());
        // Tiny random models have near-tied logits, so 4-bit rounding flips more argmaxes than
        // on a trained model: q4 gets a looser bound.
        let bound = if quant == QuantScheme::Q4 { 0.75 } else { 0.9 };
        assert!(logits.top1_agreement.unwrap() >= bound, "{}: {logits:?}", quant.name());
        check_with_python(&bundle, None);
    }
}
