//! tract's fused 4-bit matmul (runtime/src/backend/tract/matmul_q4.rs) replaces each exporter
//! `MatMulNBits` — and, for blocks kept from a GGUF Q4_1 tensor, the six nodes that add their
//! offsets — with one op that reads the codes in place. These tests hold it to that: every q4
//! layer of the shipped GPT and of a Q4_1 GGUF export is fused (offsets absorbed where present),
//! and a prefill plus decode steps agree with tract running the file's own nodes to within
//! the 16-bit activation codes' rounding, with the same greedy token at every step. The kernel's
//! arithmetic is checked element by element in runtime/src/kernels/matmul_q4.rs.

mod common;

use std::path::{Path, PathBuf};

use ferrite_runtime::backend::tract::plan_for_profiling;
use ferrite_runtime::model::Dim;
use ferrite_runtime::{Model, Options, Tensor};

fn fused(on: bool) -> Options {
    Options::default().tract_fused_int8(on)
}

/// (number of `FerriteMatMulQ4` nodes, how many absorbed Q4_1 offsets) in the plan of `path`.
fn fused_q4_nodes(path: &Path, options: &Options) -> (usize, usize) {
    let plan = plan_for_profiling(path, options).unwrap();
    let nodes: Vec<_> = plan.model().nodes().iter().filter(|n| n.op().name() == "FerriteMatMulQ4").collect();
    let offsets = nodes.iter().filter(|n| format!("{:?}", n.op()).contains("offsets: true")).count();
    (nodes.len(), offsets)
}

/// Runs `ids` as a prefill then one token at a time on both plans, carrying the KV caches;
/// returns the largest logit difference. Asserts the same argmax at every position.
fn decode_both(path: &Path, prompt: &[i64], steps: &[i64]) -> f64 {
    let model = Model::open(path).unwrap();
    let info = model.info();
    let mut a = model.prepare(&fused(true)).unwrap().session().unwrap();
    let mut b = model.prepare(&fused(false)).unwrap().session().unwrap();
    let past: Vec<(String, Vec<usize>)> = info
        .inputs
        .iter()
        .filter(|i| i.name.starts_with("past_"))
        .map(|i| {
            let dims = i.shape.as_ref().unwrap();
            // [batch, kv heads, positions, head size]: batch 1, no positions yet.
            let shape = dims
                .iter()
                .enumerate()
                .map(|(d, dim)| match (d, dim) {
                    (0, _) => 1,
                    (_, Dim::Fixed(n)) => *n,
                    _ => 0,
                })
                .collect();
            (i.name.clone(), shape)
        })
        .collect();
    let mut caches: Vec<Tensor> =
        past.iter().map(|(_, s)| Tensor::new(s.clone(), vec![0f32; 0]).unwrap()).collect();
    let mut worst = 0f64;
    let chunks = std::iter::once(prompt.to_vec()).chain(steps.iter().map(|&t| vec![t]));
    for chunk in chunks {
        let ids = Tensor::new(vec![1, chunk.len()], chunk.clone()).unwrap();
        let mut inputs = vec![("input_ids", ids.view())];
        inputs.extend(past.iter().map(|(n, _)| n.as_str()).zip(caches.iter().map(Tensor::view)));
        let got = a.run(&inputs).unwrap();
        let want = b.run(&inputs).unwrap();
        let (g, w) = (got.get("logits").unwrap(), want.get("logits").unwrap());
        worst = worst.max(common::max_abs_diff("logits", g, w));
        let (g, w) = (common::as_f64(g), common::as_f64(w));
        let vocab = g.len() / chunk.len();
        for (pos, (gr, wr)) in g.chunks(vocab).zip(w.chunks(vocab)).enumerate() {
            let argmax = |r: &[f64]| r.iter().enumerate().fold(0, |m, (i, v)| if *v > r[m] { i } else { m });
            assert_eq!(argmax(gr), argmax(wr), "{}: argmax at position {pos}", path.display());
        }
        // Carry the unfused plan's caches: both sides then start every step from the same state.
        caches = past.iter().map(|(n, _)| want.get(&n.replace("past", "present")).unwrap().clone()).collect();
    }
    worst
}

/// The shipped GPT q4: every `MatMulNBits` fused (symmetric blocks, no offsets), nothing when
/// fusion is off, and decoding agrees with tract's own kernels.
#[test]
fn shipped_gpt_q4_is_fused_and_agrees() {
    let path = common::root().join("models/shakespeare-gpt/q4/model.onnx");
    let nbits = Model::open(&path).unwrap().info().ops.get("com.microsoft.MatMulNBits").copied().unwrap_or(0);
    assert!(nbits > 0, "expected a q4 export");
    assert_eq!(fused_q4_nodes(&path, &fused(true)), (nbits, 0));
    assert_eq!(fused_q4_nodes(&path, &fused(false)), (0, 0));
    let worst = decode_both(&path, &[5, 900, 17, 4000, 250, 3], &[42, 1234, 7]);
    eprintln!("shipped GPT q4, fused vs tract's kernels: max logit difference {worst:.2e}");
    assert!(worst <= 2e-3, "max logit difference {worst}");
}

/// A tiny Llama GGUF whose matrices are Q4_1 blocks, exported to q4: every 4-bit layer is fused
/// with its offsets absorbed (the token table, Q4_1 too, is the embedding's and the tied head's),
/// and decoding agrees with tract running the file's nodes.
#[test]
fn q4_1_offsets_are_absorbed_and_agree() {
    let src = common::root().join("exporter/tests/golden/llama3/model-q4_1.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let out: PathBuf = tmp.path().join("q4");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(["export", "--quant", "q4", "--quiet", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let path = out.join("model.onnx");
    let nbits = Model::open(&path).unwrap().info().ops.get("com.microsoft.MatMulNBits").copied().unwrap_or(0);
    assert!(nbits > 0, "expected 4-bit layers");
    assert_eq!(fused_q4_nodes(&path, &fused(true)), (nbits, nbits), "every layer with its offsets");
    let worst = decode_both(&path, &[1, 17, 42, 99, 5], &[3, 64, 21]);
    eprintln!("Q4_1 GGUF q4, fused vs tract's kernels: max logit difference {worst:.2e}");
    assert!(worst <= 2e-3, "max logit difference {worst}");
}
