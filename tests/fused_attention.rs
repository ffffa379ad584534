//! tract's fused decoder attention (runtime/src/backend/tract/attention.rs) replaces the
//! exporter's keys-major attention block of every GPT layer with one op of ferrite's own. These
//! tests hold it to the unfused graph: every layer's block is fused (decoders' keys-major blocks,
//! encoders' query-major ones; nothing in LSTMs), and a prefill followed by decode steps — batch 1 and batch 2 — gives the same logits
//! and KV cache (to rounding with float activations, to a quantisation step with int8 ones) and
//! the same next-token choices.

mod common;

use std::path::PathBuf;

use ferrite_runtime::backend::tract::plan_for_profiling;
use ferrite_runtime::{Model, Options, Tensor};

const LAYERS: usize = 4;

fn fused(on: bool) -> Options {
    Options::default().tract_fused_attention(on)
}

fn file(rel: &str) -> PathBuf {
    common::root().join(rel).join("model.onnx")
}

fn count_ops(rel: &str, options: &Options, name: &str) -> usize {
    let plan = plan_for_profiling(&file(rel), options).unwrap();
    plan.model().nodes().iter().filter(|n| n.op().name() == name).count()
}

#[test]
fn every_decoder_layer_is_fused_and_nothing_else() {
    for rel in ["models/shakespeare-gpt/int8", "models/shakespeare-gpt/q4"] {
        // Decoders keep their KV cache in place too (tests/kv_cache_in_place.rs).
        assert_eq!(count_ops(rel, &fused(true), "FerriteCachedAttention"), LAYERS, "{rel}");
        assert_eq!(count_ops(rel, &fused(true), "FerriteAttention"), 0, "{rel}");
        assert_eq!(count_ops(rel, &fused(false), "FerriteCachedAttention"), 0, "{rel}");
        assert_eq!(count_ops(rel, &fused(false), "FerriteAttention"), 0, "{rel}");
        // The attention's Softmax is gone, and the first layer's score product (kept in the
        // protobuf only to size the shared mask) was pruned: fewer nodes in all.
        assert_eq!(count_ops(rel, &fused(true), "Softmax"), 0, "{rel}");
        let nodes = |o: &Options| plan_for_profiling(&file(rel), o).unwrap().model().nodes().len();
        assert!(nodes(&fused(true)) + 6 * LAYERS <= nodes(&fused(false)), "{rel}");
    }
    // An encoder's (query-major) attention is fused too: the 2-layer test BERT.
    let bert = "fuzz/fixtures/bert-int8";
    assert_eq!(count_ops(bert, &fused(true), "FerriteAttention"), 2);
    assert_eq!(count_ops(bert, &fused(true), "Softmax"), 0);
    assert_eq!(count_ops("models/shakespeare-lstm/int8", &fused(true), "FerriteAttention"), 0);
}

#[test]
fn encoder_with_padding_matches_the_unfused_graph() {
    let rel = "fuzz/fixtures/bert-int8";
    let model = Model::open(file(rel)).unwrap();
    let t = |v: Vec<i64>| Tensor::new(vec![2, 6], v).unwrap();
    let inputs = [
        ("input_ids", t(vec![2, 17, 40, 63, 3, 0, 2, 9, 3, 0, 0, 0])),
        ("attention_mask", t(vec![1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0])),
        ("token_type_ids", t(vec![0; 12])),
    ];
    let views: Vec<_> = inputs.iter().map(|(n, t)| (*n, t.view())).collect();
    let got = model.prepare(&fused(true)).unwrap().session().unwrap().run(&views).unwrap();
    let want = model.prepare(&fused(false)).unwrap().session().unwrap().run(&views).unwrap();
    for info in &model.info().outputs {
        let (g, w) = (got.get(&info.name).unwrap(), want.get(&info.name).unwrap());
        let diff = common::max_abs_diff(&info.name, g, w);
        let scale = common::as_f64(w).iter().fold(1f64, |m, v| m.max(v.abs()));
        // int8 activations: a last-bit difference can move one quantisation step.
        assert!(diff <= 1e-2 * scale, "{rel} {}: fused differs by {diff} (values up to {scale})", info.name);
    }
}

/// Runs `steps` (prefill, then single tokens; each a `[batch, len]` chunk) fused and unfused,
/// comparing every output, and returns the largest logit difference.
fn decode_both(rel: &str, batch: usize, steps: &[Vec<i64>], tol: f64) -> f64 {
    let model = Model::open(file(rel)).unwrap();
    let mut a = model.prepare(&fused(true)).unwrap().session().unwrap();
    let mut b = model.prepare(&fused(false)).unwrap().session().unwrap();
    let names: Vec<String> =
        (0..LAYERS).flat_map(|l| [format!("past_key.{l}"), format!("past_value.{l}")]).collect();
    let mut past: Vec<Tensor> =
        names.iter().map(|_| Tensor::new(vec![batch, 4, 0, 32], Vec::<f32>::new()).unwrap()).collect();
    let mut worst = 0f64;
    for chunk in steps {
        let ids = Tensor::new(vec![batch, chunk.len() / batch], chunk.clone()).unwrap();
        let mut inputs = vec![("input_ids", ids.view())];
        inputs.extend(names.iter().map(String::as_str).zip(past.iter().map(Tensor::view)));
        let got = a.run(&inputs).unwrap();
        let want = b.run(&inputs).unwrap();
        for info in &model.info().outputs {
            let (g, w) = (got.get(&info.name).unwrap(), want.get(&info.name).unwrap());
            assert_eq!(g.shape(), w.shape(), "{rel} {}", info.name);
            let diff = common::max_abs_diff(&info.name, g, w);
            let scale = common::as_f64(w).iter().fold(1f64, |m, v| m.max(v.abs()));
            assert!(
                diff <= tol * scale,
                "{rel} {}: fused differs by {diff} (values up to {scale})",
                info.name
            );
            if info.name == "logits" {
                worst = worst.max(diff);
                // The last position's best token, per sequence, is the same.
                let (gv, wv) = (common::as_f64(g), common::as_f64(w));
                let (len, vocab) = (g.shape()[1], g.shape()[2]);
                for row in (0..batch).map(|b| b * len + len - 1) {
                    let argmax = |v: &[f64]| {
                        let row = &v[row * vocab..(row + 1) * vocab];
                        (0..vocab).fold(0, |best, i| if row[i] > row[best] { i } else { best })
                    };
                    assert_eq!(argmax(&gv), argmax(&wv), "{rel}: next token differs in row {row}");
                }
            }
        }
        past = names.iter().map(|n| got.get(&n.replace("past", "present")).unwrap().clone()).collect();
    }
    assert_eq!(past[0].shape()[2], steps.iter().map(|c| c.len() / batch).sum::<usize>());
    worst
}

/// How far (relative to the largest logit) q4 outputs may move with the attention fused: the
/// 16-bit activation codes of tract's fused 4-bit matmul (runtime/src/kernels/matmul_q4.rs)
/// turn rounding-level differences into steps of 1/65534 of a block's range (measured: up to
/// 9e-5 of the largest logit on the shipped GPT).
const Q4_TOLERANCE: f64 = 2e-4;

#[test]
fn prefill_and_decode_match_the_unfused_graph() {
    // Both quantise activations on tract, so a last-bit difference in the attention output can
    // move a value across a code boundary of the next layer's quantisation: q4's fused matmul
    // codes each block of 32 in 16 bits (one step is 1/65534 of the block's range: close),
    // int8 each row in 8 (looser). The chosen tokens must agree.
    for (rel, tol) in [("models/shakespeare-gpt/q4", Q4_TOLERANCE), ("models/shakespeare-gpt/int8", 1e-2)] {
        let steps = [vec![5i64, 900, 17, 4000, 250, 3, 77, 1021, 9], vec![42], vec![1234], vec![7]];
        decode_both(rel, 1, &steps, tol);
        // Two sequences at once: the mask and the cache are per batch row.
        let steps = [vec![5i64, 900, 17, 4000, 11, 12, 13, 14], vec![42, 43], vec![1234, 1]];
        decode_both(rel, 2, &steps, tol);
    }
}

#[test]
fn a_long_cache_matches_too() {
    // 200 positions: the decode step reads a long cache with the loop path.
    let prompt: Vec<i64> = (0..199).map(|i| (i * 37 % 4000) as i64).collect();
    let worst =
        decode_both("models/shakespeare-gpt/q4", 1, &[prompt.clone(), vec![42], vec![9]], Q4_TOLERANCE);
    assert!(worst.is_finite());
    decode_both("models/shakespeare-gpt/int8", 1, &[prompt, vec![42], vec![9]], 1e-2);
}
