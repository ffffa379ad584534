//! tract's fused int8 quantisation (runtime/src/backend/tract/fuse.rs) replaces the exporter's
//! per-token quantise/dequantise subgraphs with two ops of ferrite's own. These tests hold it to
//! its promise: every subgraph of a ferrite int8 export is fused (one pair per `MatMulInteger`),
//! and the outputs are bit-identical to tract running the file's standard nodes, on a GPT decode
//! (prefill + steps) with 8-bit activation codes, an LSTM and a BERT encoder with padding — and
//! within [`SIXTEEN_BIT_TOLERANCE`] on the shipped GPT, whose codes are 16-bit. In step graphs
//! (GPT, LSTM) every `MatMulInteger` also becomes `FerriteMatMulI8` (its own dot products, for
//! any number of activation rows): one-row steps and multi-row prefills are exercised here too. With the `ort`
//! feature, ONNX Runtime's fused custom operators (runtime/src/backend/ort/ops.rs) are held to
//! bit-identity with ONNX Runtime running the standard nodes.

mod common;

use std::path::{Path, PathBuf};

use ferrite_runtime::backend::tract::plan_for_profiling;
use ferrite_runtime::{Model, Options, Tensor};

fn fused(on: bool) -> Options {
    Options::default().tract_fused_int8(on)
}

fn file(rel: &str) -> PathBuf {
    common::root().join(rel).join("model.onnx")
}

/// Nodes of the planned model whose op is `name`.
fn count_ops(path: &Path, options: &Options, name: &str) -> usize {
    let plan = plan_for_profiling(path, options).unwrap();
    plan.model().nodes().iter().filter(|n| n.op().name() == name).count()
}

#[test]
fn every_int8_matmul_is_fused_and_nothing_else() {
    for rel in ["models/shakespeare-gpt/int8", "models/shakespeare-lstm/int8", "fuzz/fixtures/bert-int8"] {
        let path = file(rel);
        let matmuls = Model::open(&path).unwrap().info().ops.get("MatMulInteger").copied().unwrap_or(0);
        assert!(matmuls > 0, "{rel}: expected an int8 export");
        // One dequantisation per matmul; quantisations can be fewer, since tract merges the
        // identical ones of matmuls that read the same activation (BERT's Q, K and V).
        assert_eq!(count_ops(&path, &fused(true), "FerriteRowDequantize"), matmuls, "{rel}");
        assert!(count_ops(&path, &fused(true), "FerriteRowQuantizeU8") > 0, "{rel}");
        // No quantisation subgraph is left unfused: its `Round` nodes are gone.
        assert_eq!(count_ops(&path, &fused(true), "RoundHalfToEven"), 0, "{rel}: a Round survived");
        assert!(count_ops(&path, &fused(false), "RoundHalfToEven") > 0, "{rel}");
        // The few-row matmul only where generation steps: decoders and LSTMs, not BERT.
        let step_graph = !rel.contains("bert");
        let expected = if step_graph { matmuls } else { 0 };
        assert_eq!(count_ops(&path, &fused(true), "FerriteMatMulI8"), expected, "{rel}");
        for op in ["FerriteRowQuantizeU8", "FerriteRowDequantize", "FerriteMatMulI8"] {
            assert_eq!(count_ops(&path, &fused(false), op), 0, "{rel}: {op} without fusion");
        }
    }
    // Files without the pattern are left alone (the shipped q4 model: MatMulNBits).
    let q4 = file("models/shakespeare-gpt/q4");
    assert_eq!(count_ops(&q4, &fused(true), "FerriteRowQuantizeU8"), 0, "q4");
}

fn run_both(rel: &str, inputs: &[(&str, Tensor)]) -> Vec<(String, Tensor)> {
    run_both_within(rel, inputs, 0.0)
}

/// [`run_both`], with outputs allowed to differ by `tol` (0: bit-identical).
fn run_both_within(rel: &str, inputs: &[(&str, Tensor)], tol: f64) -> Vec<(String, Tensor)> {
    let path = file(rel);
    let model = Model::open(&path).unwrap();
    let views: Vec<_> = inputs.iter().map(|(n, t)| (*n, t.view())).collect();
    let mut a = model.prepare(&fused(true)).unwrap().session().unwrap();
    let mut b = model.prepare(&fused(false)).unwrap().session().unwrap();
    let got = a.run(&views).unwrap();
    let want = b.run(&views).unwrap();
    let mut out = Vec::new();
    for info in &model.info().outputs {
        let (g, w) = (got.get(&info.name).unwrap(), want.get(&info.name).unwrap());
        assert_eq!(g.shape(), w.shape(), "{rel} {}", info.name);
        let (gb, wb): (Vec<u64>, Vec<u64>) = (
            common::as_f64(g).iter().map(|v| v.to_bits()).collect(),
            common::as_f64(w).iter().map(|v| v.to_bits()).collect(),
        );
        let diff = common::max_abs_diff(&info.name, g, w);
        assert!(
            gb == wb || (tol > 0.0 && diff <= tol),
            "{rel} {}: fused differs from the standard nodes (max {diff})",
            info.name,
        );
        out.push((info.name.clone(), g.clone()));
    }
    out
}

fn ids(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
    Tensor::new(shape, v).unwrap()
}

/// Runs the shipped GPT int8 through `chunks` (each `batch` sequences of equal length, row-major)
/// fused and unfused, carrying the cache; returns the cache length after each chunk.
fn gpt_steps_both(batch: usize, chunks: Vec<Vec<i64>>) -> Vec<usize> {
    gpt_bundle_steps_both("models/shakespeare-gpt/int8", batch, chunks, SIXTEEN_BIT_TOLERANCE)
}

/// How far fused and unfused tract may differ on a bundle with 16-bit activation codes (the
/// shipped GPT's): with 65,536 codes per row a 1-ulp difference upstream (tract's unfused plan
/// reassociates the digits' sum and the row scale) crosses a code boundary in most runs, each
/// crossing moving a value by 1/65535 of its row's range; logits then differ by ~3e-4, as ONNX
/// Runtime's do from tract's. 8-bit code boundaries are 256 times rarer: those bundles stay
/// bit-identical (the LSTM, BERT and an 8-bit GPT export below). The fused arithmetic itself is
/// checked element by element in the unit tests of runtime/src/backend/tract/fuse.rs.
const SIXTEEN_BIT_TOLERANCE: f64 = 1e-3;

/// [`gpt_steps_both`] for the shakespeare-gpt int8 bundle in `rel` (or an absolute path), outputs
/// within `tol`.
fn gpt_bundle_steps_both(rel: &str, batch: usize, chunks: Vec<Vec<i64>>, tol: f64) -> Vec<usize> {
    let names: Vec<String> =
        (0..4).flat_map(|l| [format!("past_key.{l}"), format!("past_value.{l}")]).collect();
    let empty = Tensor::new(vec![batch, 4, 0, 32], Vec::<f32>::new()).unwrap();
    let mut past: Vec<Tensor> = vec![empty; 8];
    let mut lengths = Vec::new();
    for chunk in chunks {
        let mut inputs = vec![("input_ids", ids(vec![batch, chunk.len() / batch], chunk))];
        inputs.extend(names.iter().map(String::as_str).zip(past.iter().cloned()));
        let out = run_both_within(rel, &inputs, tol);
        past = names
            .iter()
            .map(|n| out.iter().find(|(o, _)| *o == n.replace("past", "present")).unwrap().1.clone())
            .collect();
        lengths.push(past[0].shape()[2]);
    }
    lengths
}

/// `ferrite export --activation-bits 8`: the GPT with 8-bit activation codes (the shipped one
/// has 16-bit codes) is fused too, and a prefill, decode steps and a batch-2 chunk are
/// bit-identical to the standard nodes.
#[test]
fn eight_bit_gpt_is_fused_and_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gpt-int8-a8");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["export", "models/shakespeare-gpt", "--quant", "int8", "--activation-bits", "8", "-o"])
        .arg(&out)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let path = out.join("model.onnx");
    let matmuls = Model::open(&path).unwrap().info().ops.get("MatMulInteger").copied().unwrap_or(0);
    assert_eq!(matmuls, 17);
    assert_eq!(count_ops(&path, &fused(true), "FerriteRowDequantize"), matmuls);
    assert_eq!(count_ops(&path, &fused(true), "FerriteRowQuantizeU8"), matmuls);
    assert_eq!(count_ops(&path, &fused(true), "FerriteMatMulI8"), matmuls);
    assert_eq!(count_ops(&path, &fused(true), "RoundHalfToEven"), 0);
    assert_eq!(count_ops(&path, &fused(true), "Floor"), 0, "a 16-bit pattern in an 8-bit export");
    let dir = out.to_str().unwrap();
    let chunks = vec![vec![5i64, 900, 17, 4000, 250, 3], vec![42], vec![1234]];
    assert_eq!(gpt_bundle_steps_both(dir, 1, chunks, 0.0), [6, 7, 8]);
    assert_eq!(gpt_bundle_steps_both(dir, 2, vec![vec![5, 900, 17, 4000], vec![42, 7]], 0.0), [2, 3]);
}

#[test]
fn gpt_prefill_and_decode_agree() {
    let chunks = vec![vec![5i64, 900, 17, 4000, 250, 3], vec![42], vec![1234], vec![7]];
    assert_eq!(gpt_steps_both(1, chunks), [6, 7, 8, 9]);
}

/// Batch 2: prefills of 2 and 3 tokens (4 and 6 rows: one full group of four rows for the
/// AVX-VNNI path, then a group and a remainder), then one-token steps (2 rows).
#[test]
fn gpt_batched_few_row_steps_agree() {
    for prompt in [vec![5i64, 900, 17, 4000], vec![5i64, 900, 17, 4000, 250, 3]] {
        let first = prompt.len() / 2;
        let lengths = gpt_steps_both(2, vec![prompt, vec![42, 7], vec![1234, 99]]);
        assert_eq!(lengths, [first, first + 1, first + 2]);
    }
}

/// 8 tokens from zero states for the shipped LSTM.
fn lstm_inputs() -> Vec<(&'static str, Tensor)> {
    let shape = common::shipped_lstm_state_shape();
    let zeros = Tensor::new(shape.clone(), vec![0f32; shape[0] * shape[2]]).unwrap();
    vec![
        ("input_ids", ids(vec![1, 8], vec![1, 20, 33, 40, 2, 0, 37, 11])),
        ("h0", zeros.clone()),
        ("c0", zeros),
    ]
}

/// Two padded sentences for the BERT fixture.
fn bert_inputs() -> Vec<(&'static str, Tensor)> {
    vec![
        ("input_ids", ids(vec![2, 6], vec![2, 17, 40, 63, 3, 0, 2, 9, 3, 0, 0, 0])),
        ("attention_mask", ids(vec![2, 6], vec![1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0])),
        ("token_type_ids", ids(vec![2, 6], vec![0; 12])),
    ]
}

#[test]
fn lstm_is_bit_identical() {
    run_both("models/shakespeare-lstm/int8", &lstm_inputs());
}

#[test]
fn bert_with_padding_is_bit_identical() {
    run_both("fuzz/fixtures/bert-int8", &bert_inputs());
}

/// ONNX Runtime with ferrite's fused int8 custom operators against ONNX Runtime running the
/// file's standard nodes: bit-identical (the same f32 operations in the same order) on the
/// shipped GPT (16-bit codes, prefill then a step through the returned cache), the LSTM and BERT.
#[cfg(feature = "ort")]
#[test]
fn onnx_runtime_fused_operators_are_bit_identical() {
    use ferrite_runtime::BackendKind;
    let ort = |on: bool| Options::default().backend(BackendKind::Ort).ort_fused_int8(on);
    let both = |rel: &str, inputs: &[(&str, Tensor)]| -> Vec<(String, Tensor)> {
        // The operators really run (a refused rewrite would fall back to the file silently).
        let rewrites =
            ferrite_runtime::backend::ort::rewrites_for_inspection(&file(rel), &ort(true)).unwrap();
        let matmuls = Model::open(file(rel)).unwrap().info().ops.get("MatMulInteger").copied().unwrap_or(0);
        assert_eq!(rewrites.fused_dequantize, matmuls, "{rel}");
        assert!(rewrites.fused_quantize > 0, "{rel}");
        let model = Model::open(file(rel)).unwrap();
        let views: Vec<_> = inputs.iter().map(|(n, t)| (*n, t.view())).collect();
        let got = model.prepare(&ort(true)).unwrap().session().unwrap().run(&views).unwrap();
        let want = model.prepare(&ort(false)).unwrap().session().unwrap().run(&views).unwrap();
        let mut out = Vec::new();
        for info in &model.info().outputs {
            let (g, w) = (got.get(&info.name).unwrap(), want.get(&info.name).unwrap());
            let bits = |t: &Tensor| common::as_f64(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert!(
                g.shape() == w.shape() && bits(g) == bits(w),
                "{rel} {}: fused operators differ from the standard nodes (max {})",
                info.name,
                common::max_abs_diff(&info.name, g, w)
            );
            out.push((info.name.clone(), g.clone()));
        }
        out
    };
    let names: Vec<String> =
        (0..4).flat_map(|l| [format!("past_key.{l}"), format!("past_value.{l}")]).collect();
    let empty = Tensor::new(vec![1, 4, 0, 32], Vec::<f32>::new()).unwrap();
    let mut inputs = vec![("input_ids", ids(vec![1, 6], vec![5, 900, 17, 4000, 250, 3]))];
    inputs.extend(names.iter().map(|n| (n.as_str(), empty.clone())));
    let out = both("models/shakespeare-gpt/int8", &inputs);
    let mut step = vec![("input_ids", ids(vec![1, 1], vec![42]))];
    for n in &names {
        let present = n.replace("past", "present");
        step.push((n.as_str(), out.iter().find(|(o, _)| *o == present).unwrap().1.clone()));
    }
    both("models/shakespeare-gpt/int8", &step);

    both("models/shakespeare-lstm/int8", &lstm_inputs());
    both("fuzz/fixtures/bert-int8", &bert_inputs());
}
