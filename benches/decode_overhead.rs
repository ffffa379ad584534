//! ferrite's overhead over the raw backend (issue 8: ≤ 3 %): greedy decoding of the shipped
//! GPT bundle (models/shakespeare-gpt/q4: the smallest steps, so the harshest case for a fixed
//! per-step cost) through ferrite's `Generator` against a hand-written loop over the backend's
//! own API — the same model file prepared the same way, the KV cache carried as the backend's
//! values, argmax by hand. tract: the runnable plan ferrite's backend builds (its fused ops and
//! in-place KV cache included, `backend::tract::plan_for_profiling`), single-threaded. ONNX
//! Runtime (with `--features ort`): an `ort` session with ferrite's settings (optimisation level
//! 3, one intra-op thread, prepacking on), `present_*` outputs fed back as `past_*` inputs. Each
//! iteration: prefill 8 tokens, then 64 single-token steps.
//!
//! `cargo bench --features ort --bench decode_overhead` (BENCHMARKS.md, "Decoder" section,
//! records the ratios).

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use ferrite_runtime::generate::{GenerateOptions, Generator};
use ferrite_runtime::{Bundle, BundleOptions};
use tract_onnx::prelude::*;

const PROMPT: [u32; 8] = [199, 41, 457, 293, 12, 324, 14, 7];
const STEPS: usize = 64;

fn bundle_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/shakespeare-gpt/q4")
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// The raw loop: tract's plan, inputs as tract tensors. ferrite's plan for this decoder keeps
/// the KV cache inside its attention ops (runtime/src/backend/tract/kv_cache.rs): one state
/// for the whole sequence, fed the token ids and the past length.
fn raw_tract(plan: &std::sync::Arc<TypedRunnableModel>) -> Vec<u32> {
    let mut state = plan.spawn().unwrap();
    let mut ids = Vec::with_capacity(STEPS);
    let mut feed: Vec<i64> = PROMPT.iter().map(|&i| i64::from(i)).collect();
    let mut past = 0i64;
    for _ in 0..STEPS {
        let input = Tensor::from_shape(&[1, feed.len()], &feed).unwrap();
        let inputs: TVec<TValue> = tvec![input.into(), Tensor::from(past).into()];
        let logits = state.run(inputs).unwrap().remove(0);
        let logits = logits.try_as_plain_ram().unwrap();
        let all = logits.as_slice::<f32>().unwrap();
        let id = argmax(&all[all.len() - 4096..]);
        ids.push(id);
        past += feed.len() as i64;
        feed = vec![i64::from(id)];
    }
    ids
}

fn bench(c: &mut Criterion) {
    let dir = bundle_dir();
    let bundle = Bundle::open_with(&dir, &BundleOptions::default()).unwrap();
    // The plan ferrite's tract backend runs (with its fused ops), driven by hand: the comparison
    // is of the loop around the plan, not of two different plans.
    let plan =
        ferrite_runtime::backend::tract::plan_for_profiling(&dir.join("model.onnx"), &Default::default())
            .unwrap();
    let opts = GenerateOptions { max_tokens: STEPS, ..GenerateOptions::default() };
    let mut generator = Generator::new(&bundle).unwrap();
    let ferrite_ids = generator.generate(&PROMPT, &opts, &|_| None, &mut |_| {}).unwrap().ids;
    assert_eq!(ferrite_ids, raw_tract(&plan), "both loops decode the same tokens");

    let mut group = c.benchmark_group("gpt_q4_prefill8_decode64");
    group.sample_size(30);
    group.bench_function("raw tract loop", |b| b.iter(|| raw_tract(&plan)));
    group.bench_function("ferrite Generator (tract)", |b| {
        b.iter(|| generator.generate(&PROMPT, &opts, &|_| None, &mut |_| {}).unwrap().ids)
    });
    group.finish();
}

/// The raw ONNX Runtime loop: an `ort` session, `present_*` fed back as `past_*` by value.
#[cfg(feature = "ort")]
fn raw_ort(session: &mut ort::session::Session, layers: usize) -> Vec<u32> {
    use ort::session::SessionInputValue;
    use ort::value::{DynValue, Tensor as OrtTensor, TensorRef};
    let empty = || OrtTensor::from_array(([1i64, 4, 0, 32], Vec::<f32>::new())).unwrap().into_dyn();
    let mut past: Vec<DynValue> = (0..2 * layers).map(|_| empty()).collect();
    let names: Vec<String> =
        (0..layers).flat_map(|l| [format!("past_key.{l}"), format!("past_value.{l}")]).collect();
    let outputs_named: Vec<String> = names.iter().map(|n| n.replace("past", "present")).collect();
    let mut ids = Vec::with_capacity(STEPS);
    let mut feed: Vec<i64> = PROMPT.iter().map(|&i| i64::from(i)).collect();
    for _ in 0..STEPS {
        let shape = [1i64, feed.len() as i64];
        let mut values: Vec<(&str, SessionInputValue<'_>)> =
            vec![("input_ids", TensorRef::from_array_view((shape, feed.as_slice())).unwrap().into())];
        values.extend(names.iter().map(String::as_str).zip(past.iter().map(SessionInputValue::from)));
        let mut outputs = session.run(values).unwrap();
        let (_, all) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
        let id = argmax(&all[all.len() - 4096..]);
        ids.push(id);
        past = outputs_named.iter().map(|n| outputs.remove(n.as_str()).unwrap()).collect();
        drop(outputs);
        feed = vec![i64::from(id)];
    }
    ids
}

#[cfg(feature = "ort")]
fn bench_ort(c: &mut Criterion) {
    use ferrite_runtime::BackendKind;
    use ort::session::builder::GraphOptimizationLevel;
    let dir = bundle_dir();
    // The raw loop runs the file as written (its cache `Concat`s): so does ferrite here, without
    // its in-place cache rewrite, so that the difference is ferrite's own overhead.
    let mut options = BundleOptions::default().backend(BackendKind::Ort);
    options.run = options.run.ort_in_place_kv(false);
    let bundle = Bundle::open_with(&dir, &options).unwrap();
    let env = ferrite_runtime::backend::ort::shared_environment(None).unwrap();
    let mut session = ort::session::Session::builder(env)
        .unwrap()
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .with_inter_threads(1)
        .unwrap()
        .commit_from_file(dir.join("model.onnx"))
        .unwrap();
    let opts = GenerateOptions { max_tokens: STEPS, ..GenerateOptions::default() };
    let mut generator = Generator::new(&bundle).unwrap();
    let ferrite_ids = generator.generate(&PROMPT, &opts, &|_| None, &mut |_| {}).unwrap().ids;
    assert_eq!(ferrite_ids, raw_ort(&mut session, 4), "both loops decode the same tokens");

    let mut group = c.benchmark_group("gpt_q4_prefill8_decode64_ort");
    group.sample_size(30);
    group.bench_function("raw ort loop", |b| b.iter(|| raw_ort(&mut session, 4)));
    group.bench_function("ferrite Generator (ort)", |b| {
        b.iter(|| generator.generate(&PROMPT, &opts, &|_| None, &mut |_| {}).unwrap().ids)
    });
    group.finish();
}

#[cfg(not(feature = "ort"))]
fn bench_ort(_: &mut Criterion) {}

criterion_group!(benches, bench, bench_ort);
criterion_main!(benches);
