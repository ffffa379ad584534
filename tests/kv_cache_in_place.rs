//! The in-place KV caches: tract's (runtime/src/backend/tract/kv_cache.rs, the cache lives
//! in its attention ops' state) and ONNX Runtime's (runtime/src/backend/ort/cache.rs, ferrite's
//! attention operator over one IO-bound buffer per layer for past and present), instead of the
//! file's `Concat` that rebuilds the cache at every step. These tests hold carried steps on them
//! to the file's graph run with explicit caches, and check what a session promises around them:
//! a failed step loses nothing, a plain run leaves the carried cache alone, and the cache read
//! back is the file's `[B, H, T, D]` layout.

mod common;

use ferrite_runtime::backend::tract::plan_for_profiling;
use ferrite_runtime::{Model, Options, Session, Tensor};

const LAYERS: usize = 4;

fn bundle(rel: &str) -> std::path::PathBuf {
    common::root().join("models").join(rel).join("model.onnx")
}

fn session(rel: &str, options: &Options) -> Session {
    Model::open(bundle(rel)).unwrap().prepare(options).unwrap().session().unwrap()
}

fn cache_names() -> Vec<(String, String)> {
    (0..LAYERS)
        .flat_map(|l| ["key", "value"].map(|kv| (format!("past_{kv}.{l}"), format!("present_{kv}.{l}"))))
        .collect()
}

fn empty_cache(batch: usize) -> Tensor {
    Tensor::new(vec![batch, 4, 0, 32], Vec::<f32>::new()).unwrap()
}

fn carrying(rel: &str, options: &Options, batch: usize) -> Session {
    let mut s = session(rel, options);
    for (input, output) in cache_names() {
        s.carry(&input, &output, empty_cache(batch).view()).unwrap();
    }
    s
}

fn ids(batch: usize, v: &[i64]) -> Tensor {
    Tensor::new(vec![batch, v.len() / batch], v.to_vec()).unwrap()
}

fn step(s: &mut Session, batch: usize, v: &[i64]) -> Tensor {
    let t = ids(batch, v);
    s.step(&[("input_ids", t.view())]).unwrap().get("logits").unwrap().clone()
}

#[test]
fn decoder_plans_keep_the_cache_in_place() {
    for rel in ["shakespeare-gpt/int8", "shakespeare-gpt/q4"] {
        let count = |options: &Options, name: &str| {
            let plan = plan_for_profiling(&bundle(rel), options).unwrap();
            plan.model().nodes().iter().filter(|n| n.op().name() == name).count()
        };
        let (fused, unfused) = (Options::default(), Options::default().tract_fused_attention(false));
        assert_eq!(count(&fused, "FerriteCachedAttention"), LAYERS, "{rel}");
        // The 8 cache `Concat`s are gone (a q4 plan has 2 more of its own).
        assert_eq!(
            count(&fused, "Concat") + 2 * LAYERS,
            count(&unfused, "Concat"),
            "{rel}: no cache is rebuilt"
        );
        let plan = plan_for_profiling(&bundle(rel), &fused).unwrap();
        let inputs: Vec<&str> = plan
            .model()
            .input_outlets()
            .unwrap()
            .iter()
            .map(|o| plan.model().node(o.node).name.as_str())
            .collect();
        assert_eq!(inputs, ["input_ids", "ferrite.past_length"], "{rel}");
        assert_eq!(plan.model().output_outlets().unwrap().len(), 1, "{rel}: logits only");
    }
    // An LSTM (whose Scan keeps state of its own) and an encoder are left as they are.
    let lstm = plan_for_profiling(&bundle("shakespeare-lstm/int8"), &Options::default()).unwrap();
    assert_eq!(lstm.model().input_outlets().unwrap().len(), 3);
}

/// ONNX Runtime runs the rewritten graph (a refused rewrite would fall back to the file with
/// only a log line, and every other test would still pass).
#[cfg(feature = "ort")]
#[test]
fn onnx_runtime_keeps_the_cache_in_place() {
    use ferrite_runtime::BackendKind;
    use ferrite_runtime::backend::ort::rewrites_for_inspection;
    let ort = Options::default().backend(BackendKind::Ort);
    for rel in ["shakespeare-gpt/int8", "shakespeare-gpt/q4"] {
        let rewrites = rewrites_for_inspection(&bundle(rel), &ort).unwrap();
        assert_eq!(rewrites.in_place_layers, LAYERS, "{rel}");
        let off = rewrites_for_inspection(&bundle(rel), &ort.clone().ort_in_place_kv(false)).unwrap();
        assert_eq!(off.in_place_layers, 0, "{rel}");
    }
    let lstm = rewrites_for_inspection(&bundle("shakespeare-lstm/int8"), &ort).unwrap();
    assert_eq!(lstm.in_place_layers, 0);
}

/// Each backend with its in-place cache, and the same backend running the file as written.
fn in_place_and_file() -> Vec<(Options, Options)> {
    common::backends()
        .into_iter()
        .map(|o| {
            let file = o.clone().tract_fused_attention(false).ort_in_place_kv(false);
            (o, file)
        })
        .collect()
}

/// Carried steps (prefill, then many single tokens past the first capacity doublings, and a
/// three-token step on a non-empty cache) against the file's graph fed the caches explicitly,
/// batch 1 and 2, on every backend.
#[test]
fn carried_steps_match_the_unfused_graph() {
    for (options, file) in in_place_and_file() {
        carried_steps_match(&options, &file);
    }
}

fn carried_steps_match(options: &Options, file: &Options) {
    // Relative to the largest logit. q4 on tract codes each activation block in 16 bits
    // (runtime/src/kernels/matmul_q4.rs), so rounding-level differences of the in-place cache
    // can move a value one step, 1/65534 of its block's range; int8 codes rows in 8 bits.
    for (rel, tol) in [("shakespeare-gpt/q4", 2e-4), ("shakespeare-gpt/int8", 5e-2)] {
        for batch in [1usize, 2] {
            let mut cached = carrying(rel, options, batch);
            let mut plain = session(rel, file);
            let names = cache_names();
            let mut past: Vec<Tensor> = names.iter().map(|_| empty_cache(batch)).collect();
            let prompt: Vec<i64> = (0..9 * batch as i64).map(|i| (i * 311 + 5) % 4000).collect();
            let mut chunks = vec![prompt];
            chunks.extend((0..70).map(|i| (0..batch as i64).map(|b| (i * 53 + b * 7 + 1) % 4000).collect()));
            chunks.insert(30, (0..3 * batch as i64).map(|i| (i * 97 + 11) % 4000).collect());
            for (n, chunk) in chunks.iter().enumerate() {
                let got = step(&mut cached, batch, chunk);
                let t = ids(batch, chunk);
                let mut inputs = vec![("input_ids", t.view())];
                inputs.extend(names.iter().map(|(p, _)| p.as_str()).zip(past.iter().map(Tensor::view)));
                let out = plain.run(&inputs).unwrap();
                let want = out.get("logits").unwrap();
                let diff = common::max_abs_diff("logits", &got, want);
                let scale = common::as_f64(want).iter().fold(1f64, |m, v| m.max(v.abs()));
                let backend = options.backend;
                assert!(
                    diff <= tol * scale,
                    "{backend:?} {rel} batch {batch} step {n}: logits differ by {diff}"
                );
                past = names.iter().map(|(_, o)| out.get(o).unwrap().clone()).collect();
            }
            // The cache read back is the file's layout and equals the unfused graph's.
            for ((input, _), want) in names.iter().zip(&past) {
                let held = cached.carried(input).unwrap();
                assert_eq!(held.shape(), want.shape(), "{:?} {rel} {input}", options.backend);
                let diff = common::max_abs_diff(input, &held, want);
                assert!(
                    diff <= tol * 10.0,
                    "{:?} {rel} batch {batch} {input}: differs by {diff}",
                    options.backend
                );
            }
        }
    }
}

/// A step that fails inside the backend (a token id past the embedding table passes the
/// session's shape and dtype checks) leaves the carried cache as it was, on every backend.
#[test]
fn a_failed_step_loses_nothing() {
    for options in common::backends() {
        let rel = "shakespeare-gpt/q4";
        let mut s = carrying(rel, &options, 1);
        step(&mut s, 1, &[3, 17, 42, 7, 29]);
        let before = s.carried("past_value.3").unwrap();
        let bad = ids(1, &[1_000_000]);
        assert!(s.step(&[("input_ids", bad.view())]).is_err(), "{:?}", options.backend);
        let after = s.carried("past_value.3").unwrap();
        assert_eq!(after.shape(), &[1, 4, 5, 32], "{:?}", options.backend);
        assert_eq!(common::max_abs_diff("cache", &after, &before), 0.0, "{:?}", options.backend);
        let got = step(&mut s, 1, &[11]);
        let mut fresh = carrying(rel, &options, 1);
        step(&mut fresh, 1, &[3, 17, 42, 7, 29]);
        let want = step(&mut fresh, 1, &[11]);
        assert_eq!(common::max_abs_diff("logits", &got, &want), 0.0, "{:?}", options.backend);
    }
}

/// `Session::run` neither reads nor changes the carried cache, and `set_carried` restarts it.
#[test]
fn plain_runs_and_resets_leave_the_carried_cache_alone() {
    for (options, file) in in_place_and_file() {
        plain_runs_and_resets(&options, &file);
    }
}

fn plain_runs_and_resets(options: &Options, file: &Options) {
    let rel = "shakespeare-gpt/int8";
    let options = options.clone();
    let mut s = carrying(rel, &options, 1);
    let mut reference = carrying(rel, &options, 1);
    step(&mut s, 1, &[5, 6, 7]);
    step(&mut reference, 1, &[5, 6, 7]);
    let t = ids(1, &[9, 10]);
    let zero = empty_cache(1);
    let mut inputs = vec![("input_ids", t.view())];
    let names = cache_names();
    inputs.extend(names.iter().map(|(p, _)| (p.as_str(), zero.view())));
    let out = s.run(&inputs).unwrap();
    assert_eq!(out.get("present_key.0").unwrap().shape(), &[1, 4, 2, 32]);
    assert_eq!(s.carried("past_key.0").unwrap().shape(), &[1, 4, 3, 32]);
    let got = step(&mut s, 1, &[12]);
    let want = step(&mut reference, 1, &[12]);
    assert_eq!(common::max_abs_diff("logits", &got, &want), 0.0);
    // Starting over from a given (non-empty) cache: the unfused graph's present values.
    let prefix = ids(1, &[5, 6, 7, 12]);
    let mut inputs = vec![("input_ids", prefix.view())];
    inputs.extend(names.iter().map(|(p, _)| (p.as_str(), zero.view())));
    let out = session(rel, file).run(&inputs).unwrap();
    let mut restarted = carrying(rel, &options, 1);
    for (input, output) in &names {
        restarted.set_carried(input, out.get(output).unwrap().view()).unwrap();
    }
    let got = step(&mut restarted, 1, &[40]);
    let want = step(&mut s, 1, &[40]);
    let diff = common::max_abs_diff("logits", &got, &want);
    assert!(
        diff <= 5e-2,
        "{:?}: a cache loaded with set_carried gives the same next step: {diff}",
        options.backend
    );
}
