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

/// int8 decoders: GPTQ weights calibrated on the model's own samples (the default) and 16-bit
/// activations as two uint8 digits (`--activation-bits 16`). Every variant passes the ONNX checker
/// and runs in ONNX Runtime (Python); the 16-bit graph gives the same logits on every backend; GPTQ
/// changes the codes, not the graph's interface; and 16-bit activations bring the logits closer
/// to fp32 than 8-bit ones with the same weights.
#[test]
fn int8_gptq_and_sixteen_bit_activations() {
    use ferrite_exporter::{ExportOptions, export};
    let src = golden("gpt2");
    let tmp = tempfile::tempdir().unwrap();
    let variant = |name: &str, gptq: bool, activation_bits: u8| {
        let out = tmp.path().join(name);
        let opts = ExportOptions {
            quant: QuantScheme::Int8,
            gptq,
            activation_bits: Some(activation_bits),
            ..Default::default()
        };
        let manifest = export(&src, &out, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_with_python(&out, None);
        (out, manifest)
    };
    let (rtn, rtn_m) = variant("rtn", false, 8);
    let (gptq, gptq_m) = variant("gptq", true, 8);
    let (digits, digits_m) = variant("digits", true, 16);

    assert!(rtn_m.calibration.is_none());
    let cal = gptq_m.calibration.as_ref().expect("GPTQ calibration in the manifest");
    // 2 blocks × (c_attn, attn.c_proj, c_fc, mlp.c_proj) + the tied head.
    assert_eq!(cal.layers, 9, "{cal:?}");
    assert_eq!(cal.tokens_per_sequence, 32);
    assert_eq!(digits_m.activation_bits, Some(16));
    let data = |b: &std::path::Path| std::fs::read(b.join("model.onnx.data")).unwrap();
    assert_ne!(data(&rtn), data(&gptq), "GPTQ left every code as rounding to nearest does");
    assert_eq!(data(&gptq), data(&digits), "activation bits changed the weights");

    let error = |m: &ferrite_exporter::Manifest| m.accuracy.as_ref().unwrap().outputs["logits"].max_abs_error;
    eprintln!(
        "max abs logit error: rtn {} gptq {} gptq+16-bit {}",
        error(&rtn_m),
        error(&gptq_m),
        error(&digits_m)
    );
    assert!(error(&digits_m) < error(&gptq_m), "16-bit activations no closer to fp32");

    let inputs: Vec<(String, Tensor)> = {
        let golden = digits.join("golden.npz");
        let mut v = vec![("input_ids".to_string(), npz(&golden, "input_ids"))];
        v.extend(empty_cache(2, 2, 16, 2));
        v
    };
    let reference = run(&digits, &inputs, ferrite_runtime::BackendKind::Tract);
    let reference = output(&reference, "logits").as_slice::<f32>().unwrap().to_vec();
    for backend in backends() {
        let got = run(&digits, &inputs, backend);
        let got = output(&got, "logits").as_slice::<f32>().unwrap();
        let diff = got.iter().zip(&reference).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-4, "{backend:?}: 16-bit bundle differs from tract by {diff}");
    }
}
