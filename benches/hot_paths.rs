//! The per-token hot pieces on their own (issue 8): one decode step of the shipped GPT (int8,
//! tract and — with `--features ort` — ONNX Runtime) after a 10-token prompt, the sampler over
//! its 4096 logits (greedy, and temperature + top-k + top-p + repetition penalty), and the
//! tokenizers (the shipped GPT's byte-level BPE, the LSTM's characters) on a paragraph.
//! Whole-run numbers against peers are `ferrite bench` / `scripts/bench-peers` (BENCHMARKS.md).
//!
//! `cargo bench --bench hot_paths`

use std::path::PathBuf;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ferrite_runtime::{BackendKind, Bundle, BundleOptions, Generator, Options, Sampler, SamplingParams};

const TEXT: &str = "KING HENRY V: Once more unto the breach, dear friends, once more; \
Or close the wall up with our English dead. In peace there's nothing so becomes a man \
As modest stillness and humility: But when the blast of war blows in our ears, \
Then imitate the action of the tiger; Stiffen the sinews, summon up the blood.";

fn bundle(rel: &str, backend: BackendKind) -> Bundle {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(rel);
    let run = Options::default().backend(backend);
    Bundle::open_with(&dir, &BundleOptions::default().run_options(run)).unwrap()
}

fn decode_step(c: &mut Criterion) {
    let mut backends = vec![("tract", BackendKind::Tract)];
    if cfg!(feature = "ort") {
        backends.push(("ort", BackendKind::Ort));
    }
    let prompt: Vec<u32> = (0..10).map(|i| (i * 37 % 4000) as u32).collect();
    let mut group = c.benchmark_group("gpt_int8_decode_step_at_position_10");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    for (label, backend) in backends {
        let gpt = bundle("shakespeare-gpt/int8", backend);
        group.bench_function(label, |b| {
            b.iter_batched_ref(
                || {
                    let mut g = Generator::new(&gpt).unwrap();
                    g.feed(&prompt).unwrap();
                    g
                },
                |g| g.feed_last(&[42]).unwrap()[0],
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn sampler(c: &mut Criterion) {
    let vocab = 4096;
    // Logits shaped like a language model's: a few likely tokens over a flat tail.
    let logits: Vec<f32> = (0..vocab).map(|i| ((i * 7919 % 4093) as f32 / 4093.0) * 8.0 - 4.0).collect();
    let history: Vec<u32> = (0..64).map(|i| i * 61 % 4096).collect();
    let mut group = c.benchmark_group("sampler_4096_logits");
    let settings = [
        ("greedy", SamplingParams::greedy()),
        (
            "temperature 0.8, top-k 40, top-p 0.95, repetition 1.1",
            SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, repetition_penalty: 1.1, seed: 1 },
        ),
    ];
    for (label, params) in settings {
        let mut s = Sampler::new(params, vocab).unwrap();
        group.bench_function(label, |b| {
            b.iter_batched_ref(|| logits.clone(), |l| s.sample(l, &history), BatchSize::SmallInput)
        });
    }
    group.finish();
}

fn tokenizers(c: &mut Criterion) {
    let mut group = c.benchmark_group("tokenize_paragraph");
    for (label, rel) in
        [("gpt byte-level BPE", "shakespeare-gpt/int8"), ("lstm chars", "shakespeare-lstm/int8")]
    {
        let b = bundle(rel, BackendKind::Tract);
        let tok = b.require_tokenizer().unwrap();
        let ids = tok.encode(TEXT, false).unwrap();
        group.bench_function(format!("{label}: encode"), |bench| {
            bench.iter(|| tok.encode(TEXT, false).unwrap())
        });
        group.bench_function(format!("{label}: decode"), |bench| bench.iter(|| tok.decode(&ids).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, decode_step, sampler, tokenizers);
criterion_main!(benches);
