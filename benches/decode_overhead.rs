//! ferrite's overhead over the raw backend (issue 8: ≤ 3 %): greedy decoding of the shipped
//! GPT bundle (models/shakespeare-gpt/q4: the smallest steps, so the harshest case for a fixed
//! per-step cost) through ferrite's `Generator` against a hand-written loop over tract's own
//! API — the same model file prepared the same way (`with_ignore_value_info`, optimised,
//! single-threaded), the KV cache carried as tract values, argmax by hand. Each iteration:
//! prefill 8 tokens, then 64 single-token steps.
//!
//! `cargo bench --bench decode_overhead` (BENCHMARKS.md, "Decoder" section, records the ratio).

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

/// The raw loop: tract's plan, inputs as tract tensors, present_* fed back as past_*.
fn raw_tract(plan: &std::sync::Arc<TypedRunnableModel>, layers: usize) -> Vec<u32> {
    let empty: TValue = Tensor::zero::<f32>(&[1, 4, 0, 32]).unwrap().into();
    let mut past: Vec<TValue> = vec![empty; 2 * layers];
    let mut ids = Vec::with_capacity(STEPS);
    let mut feed: Vec<i64> = PROMPT.iter().map(|&i| i64::from(i)).collect();
    for _ in 0..STEPS {
        let input = Tensor::from_shape(&[1, feed.len()], &feed).unwrap();
        let mut inputs: TVec<TValue> = tvec![input.into()];
        inputs.extend(past.iter().cloned());
        let mut outputs = plan.spawn().unwrap().run(inputs).unwrap();
        let logits = outputs.remove(0);
        let logits = logits.try_as_plain_ram().unwrap();
        let all = logits.as_slice::<f32>().unwrap();
        let id = argmax(&all[all.len() - 4096..]);
        ids.push(id);
        past = outputs.into_iter().collect();
        feed = vec![i64::from(id)];
    }
    ids
}

fn bench(c: &mut Criterion) {
    let dir = bundle_dir();
    let bundle = Bundle::open_with(&dir, &BundleOptions::default()).unwrap();
    let layers = 4;
    let plan = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .model_for_path(dir.join("model.onnx"))
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let opts = GenerateOptions { max_tokens: STEPS, ..GenerateOptions::default() };
    let mut generator = Generator::new(&bundle).unwrap();
    let ferrite_ids = generator.generate(&PROMPT, &opts, &|_| None, &mut |_| {}).unwrap().ids;
    assert_eq!(ferrite_ids, raw_tract(&plan, layers), "both loops decode the same tokens");

    let mut group = c.benchmark_group("gpt_q4_prefill8_decode64");
    group.sample_size(30);
    group.bench_function("raw tract loop", |b| b.iter(|| raw_tract(&plan, layers)));
    group.bench_function("ferrite Generator (tract)", |b| {
        b.iter(|| generator.generate(&PROMPT, &opts, &|_| None, &mut |_| {}).unwrap().ids)
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
