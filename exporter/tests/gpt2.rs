//! GPT-2: fp32 export equals transformers' GPT2LMHeadModel for a prefill and for a decode step fed
//! the prefill's cache (P > 0 exercises the causal mask and positions), on every backend; the
//! checkpoint without the `transformer.` prefix exports the same graph; quantised bundles are
//! valid and close.

mod common;

use common::*;
use ferrite_exporter::QuantScheme;
use ferrite_runtime::Tensor;

fn empty_cache(layers: usize, heads: usize, head_dim: usize, batch: usize) -> Vec<(String, Tensor)> {
    let mut v = Vec::new();
    for l in 0..layers {
        for kv in ["key", "value"] {
            v.push((
                format!("past_{kv}.{l}"),
                Tensor::new(vec![batch, heads, 0, head_dim], Vec::<f32>::new()).unwrap(),
            ));
        }
    }
    v
}

#[test]
fn fp32_prefill_and_decode_match_transformers() {
    let src = golden("gpt2");
    let tmp = tempfile::tempdir().unwrap();
    let (bundle, manifest) = export_to(&src, tmp.path(), QuantScheme::Fp32);
    assert_eq!(manifest.context_length, Some(32));
    let expected = src.join("expected.npz");
    for backend in backends() {
        let mut inputs = vec![("input_ids".to_string(), npz(&expected, "prefill_input_ids"))];
        inputs.extend(empty_cache(2, 2, 16, 2));
        let out = run(&bundle, &inputs, backend);
        let err = max_abs(output(&out, "logits"), &npz(&expected, "prefill_logits"));
        eprintln!("gpt2 fp32 {backend:?} prefill logits: max abs error vs transformers {err:.2e}");
        assert!(err <= 1e-4, "{backend:?} prefill: {err}");
        assert_eq!(output(&out, "present_key.1").shape(), &[2, 2, 6, 16]);

        let mut step = vec![("input_ids".to_string(), npz(&expected, "decode_input_ids"))];
        for l in 0..2 {
            for kv in ["key", "value"] {
                step.push((format!("past_{kv}.{l}"), output(&out, &format!("present_{kv}.{l}")).clone()));
            }
        }
        let out = run(&bundle, &step, backend);
        let err = max_abs(output(&out, "logits"), &npz(&expected, "decode_logits"));
        eprintln!("gpt2 fp32 {backend:?} decode logits: max abs error vs transformers {err:.2e}");
        assert!(err <= 1e-4, "{backend:?} decode: {err}");
    }
    check_with_python(&bundle, Some(1e-4));
}

#[test]
fn checkpoint_without_transformer_prefix_exports_the_same() {
    let src = golden("gpt2");
    let tmp = tempfile::tempdir().unwrap();
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    std::fs::copy(src.join("config.json"), bare.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n.trim_start_matches("transformer.").to_string(), t))
        .collect();
    safetensors::serialize_to_file(renamed, None, &bare.join("model.safetensors")).unwrap();
    let (a, _) = export_to(&src, &tmp.path().join("a"), QuantScheme::Fp32);
    let (b, _) = export_to(&bare, &tmp.path().join("b"), QuantScheme::Fp32);
    assert_eq!(
        std::fs::read(a.join("model.onnx.data")).unwrap(),
        std::fs::read(b.join("model.onnx.data")).unwrap()
    );
}

#[test]
fn quantised_bundles_are_valid_and_close() {
    let src = golden("gpt2");
    let tmp = tempfile::tempdir().unwrap();
    for quant in [QuantScheme::Fp16, QuantScheme::Int8, QuantScheme::Q4] {
        let (bundle, manifest) = export_to(&src, tmp.path(), quant);
        let logits = &manifest.accuracy.as_ref().unwrap().outputs["logits"];
        eprintln!("gpt2 {}: {logits:?}", quant.name());
        // Tiny random models have near-tied logits, so 4-bit rounding flips more argmaxes than
        // on a trained model: q4 gets a looser bound.
        let bound = if quant == QuantScheme::Q4 { 0.75 } else { 0.9 };
        assert!(logits.top1_agreement.unwrap() >= bound, "{}: {logits:?}", quant.name());
        check_with_python(&bundle, None);
    }
}

#[test]
fn a_tied_head_shares_the_token_table() {
    // GPT-2's lm_head is wte: every scheme stores the table once, in the head's layout (no
    // `lm_head.*` initializer), and the embedding gathers from it. Numerics: the tests above.
    use prost::Message;
    let src = golden("gpt2");
    let tmp = tempfile::tempdir().unwrap();
    let (vocab, d) = (64, 32);
    for quant in [QuantScheme::Fp32, QuantScheme::Fp16, QuantScheme::Int8, QuantScheme::Q4] {
        let (bundle, _) = export_to(&src, tmp.path(), quant);
        let bytes = std::fs::read(bundle.join("model.onnx")).unwrap();
        let model = tract_onnx::pb::ModelProto::decode(&*bytes).unwrap();
        let inits = &model.graph.as_ref().unwrap().initializer;
        let names: Vec<&str> = inits.iter().map(|t| t.name.as_str()).collect();
        assert!(!names.iter().any(|n| n.starts_with("lm_head")), "{}: {names:?}", quant.name());
        // The table's codes/values: exactly vocab × d elements (packed two per byte under q4).
        let table: i64 = inits
            .iter()
            .filter(|t| {
                t.name.starts_with("wte.weight") && t.dims.iter().product::<i64>() >= (vocab * d / 2) as i64
            })
            .map(|t| t.dims.iter().product::<i64>())
            .sum();
        let expected = if quant == QuantScheme::Q4 { vocab * d / 2 } else { vocab * d };
        assert_eq!(table, expected as i64, "{}: {names:?}", quant.name());
    }
}
