//! `ferrite bench BUNDLE [--backend tract|ort] [--threads N] [--prompt-tokens P] [--gen-tokens G]
//! [--seq-len S] [--repeat R] [--json]`, in the spirit of llama-bench.
//!
//! Language models (LSTM, GPT-2): load time, time to first output (prefill of P tokens), prefill
//! tokens/s, decode tokens/s over G greedy steps, and the decode-step latency at chosen positions
//! (`--at-position`, to show that the KV cache keeps a step's cost flat). Encoders (BERT):
//! sentences/s per sequence length. Every figure is a median over `--repeat` runs with its spread
//! (min, max), after one warm-up run; peak RSS is the process's high-water mark (Linux
//! `/proc/self/status`). Token ids are synthetic (a fixed pseudo-random sequence over the
//! vocabulary): the cost of a step does not depend on which ids it sees. It measures; it never
//! asserts a speed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrite_runtime::generate::Generator;
use ferrite_runtime::{Architecture, Bundle, Tensor};
use serde_json::json;

use super::BundleFlags;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The bundle directory (`ferrite export` output).
    pub bundle: PathBuf,
    /// Prompt length for language models (prefill).
    #[arg(long, default_value_t = 32)]
    pub prompt_tokens: usize,
    /// Greedy decode steps for language models.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Sequence lengths for encoders (comma-separated or repeated).
    #[arg(long, value_delimiter = ',', default_value = "128")]
    pub seq_len: Vec<usize>,
    /// Batch size for encoders.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Measured runs (after one warm-up run); medians and spread are over these.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Report the decode-step latency at these positions (tokens already in the context).
    #[arg(long, value_delimiter = ',')]
    pub at_position: Vec<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub flags: BundleFlags,
}

/// Median, min and max of some durations, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(samples: &[f64]) -> Spread {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Spread {
            median,
            min: s.first().copied().unwrap_or(f64::NAN),
            max: s.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn json(self) -> serde_json::Value {
        json!({ "median": self.median, "min": self.min, "max": self.max })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The process's peak resident set size in bytes (VmHWM), where the OS reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A fixed pseudo-random id sequence in `0..vocab` (a 64-bit LCG; no dependency on the tokenizer).
fn synthetic_ids(n: usize, vocab: usize) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let started = Instant::now();
    let bundle = args.flags.open_for(&args.bundle, args.prompt_tokens.saturating_add(args.gen_tokens))?;
    let load = started.elapsed();
    let quant = bundle
        .manifest()
        .quantisation
        .get("scheme")
        .cloned()
        .unwrap_or(bundle.manifest().quantisation.clone());
    let mut report = json!({
        "bundle": args.bundle.display().to_string(),
        "architecture": bundle.manifest().architecture,
        "quantisation": quant,
        "backend": args.flags.run.backend.name(),
        "threads": args.flags.run.threads,
        "repeat": args.repeat,
        "load_ms": ms(load),
    });
    let lines = match bundle.architecture() {
        Architecture::Bert => bench_encoder(&bundle, &args, &mut report)?,
        Architecture::Lstm | Architecture::Gpt2 | Architecture::Llama => {
            bench_lm(&bundle, &args, &mut report)?
        }
    };
    report["peak_rss_bytes"] = json!(peak_rss_bytes());
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} ({}, {}, {} thread(s)): load {:.1} ms",
            args.bundle.display(),
            report["architecture"].as_str().unwrap_or("?"),
            args.flags.run.backend.name(),
            args.flags.run.threads,
            ms(load)
        );
        for l in lines {
            println!("  {l}");
        }
        if let Some(rss) = peak_rss_bytes() {
            println!("  peak RSS {:.1} MiB", rss as f64 / (1024.0 * 1024.0));
        }
    }
    Ok(())
}

fn bench_lm(bundle: &Bundle, args: &BenchArgs, report: &mut serde_json::Value) -> Result<Vec<String>> {
    let (p, g) = (args.prompt_tokens, args.gen_tokens);
    if p == 0 {
        bail!("--prompt-tokens must be at least 1");
    }
    if let Some(ctx) = bundle.context_length()
        && bundle.architecture().is_kv_decoder()
        && p + g > ctx
    {
        bail!("--prompt-tokens {p} + --gen-tokens {g} exceed the model's context length {ctx}");
    }
    for &pos in &args.at_position {
        if pos < p || pos >= p + g {
            bail!("--at-position {pos} is not a decode step: decode positions are {p}..{}", p + g);
        }
    }
    let mut generator = Generator::new(bundle)?;
    let prompt = synthetic_ids(p, generator.vocab_size());
    let mut first = Vec::with_capacity(args.repeat);
    let mut decode_total = Vec::with_capacity(args.repeat);
    // Per decode position (index = position - p): the step latencies of every measured run.
    let mut steps: Vec<Vec<f64>> = vec![Vec::with_capacity(args.repeat); g];
    for run in 0..=args.repeat {
        generator.reset()?;
        let t = Instant::now();
        let mut next = argmax(generator.feed_last(&prompt)?);
        let ttft = t.elapsed();
        let mut total = Duration::ZERO;
        for step in steps.iter_mut() {
            let t = Instant::now();
            next = argmax(generator.feed_last(&[next]).context("decode step")?);
            let d = t.elapsed();
            total += d;
            if run > 0 {
                step.push(ms(d));
            }
        }
        if run > 0 {
            first.push(ms(ttft));
            decode_total.push(total.as_secs_f64());
        }
    }
    let ttft = Spread::of(&first);
    let prefill_tps: Vec<f64> = first.iter().map(|t| p as f64 / (t / 1e3)).collect();
    let decode_tps: Vec<f64> =
        decode_total.iter().map(|s| if *s > 0.0 { g as f64 / s } else { 0.0 }).collect();
    let prefill = Spread::of(&prefill_tps);
    let decode = Spread::of(&decode_tps);
    report["prompt_tokens"] = json!(p);
    report["gen_tokens"] = json!(g);
    report["time_to_first_token_ms"] = ttft.json();
    report["prefill_tokens_per_s"] = prefill.json();
    report["decode_tokens_per_s"] = decode.json();
    let mut lines = vec![
        format!(
            "prefill {p} tokens: time to first token {:.2} ms (min {:.2}, max {:.2}), {:.0} tokens/s",
            ttft.median, ttft.min, ttft.max, prefill.median
        ),
        format!(
            "decode {g} tokens: {:.1} tokens/s (min {:.1}, max {:.1})",
            decode.median, decode.min, decode.max
        ),
    ];
    let mut at = serde_json::Map::new();
    for &pos in &args.at_position {
        let s = Spread::of(&steps[pos - p]);
        lines.push(format!(
            "decode step at position {pos}: {:.3} ms (min {:.3}, max {:.3})",
            s.median, s.min, s.max
        ));
        at.insert(pos.to_string(), s.json());
    }
    report["decode_step_ms_at_position"] = serde_json::Value::Object(at);
    // Median step latency for every decode position p..p+g (for plots of latency against position).
    let by_position: Vec<f64> = steps.iter().map(|s| Spread::of(s).median).collect();
    report["decode_step_ms_by_position"] = json!({ "first_position": p, "median_ms": by_position });
    Ok(lines)
}

fn bench_encoder(bundle: &Bundle, args: &BenchArgs, report: &mut serde_json::Value) -> Result<Vec<String>> {
    let vocab = bundle.vocab_size().or_else(|| bundle.tokenizer().map(|t| t.vocab_size())).unwrap_or(1000);
    let mut session = bundle.plan().session()?;
    let b = args.batch.max(1);
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for &s in &args.seq_len {
        if s == 0 {
            bail!("--seq-len must be at least 1");
        }
        if let Some(ctx) = bundle.context_length()
            && s > ctx
        {
            bail!("--seq-len {s} exceeds the model's maximum sequence length {ctx}");
        }
        let ids: Vec<i64> = synthetic_ids(b * s, vocab).into_iter().map(i64::from).collect();
        let ids = Tensor::new(vec![b, s], ids)?;
        let mask = Tensor::new(vec![b, s], vec![1i64; b * s])?;
        let types = Tensor::new(vec![b, s], vec![0i64; b * s])?;
        let inputs =
            [("input_ids", ids.view()), ("attention_mask", mask.view()), ("token_type_ids", types.view())];
        let mut samples = Vec::with_capacity(args.repeat);
        for run in 0..=args.repeat {
            let t = Instant::now();
            session.run(&inputs)?;
            if run > 0 {
                samples.push(ms(t.elapsed()));
            }
        }
        let lat = Spread::of(&samples);
        let sps = b as f64 / (lat.median / 1e3);
        lines.push(format!(
            "seq {s} × batch {b}: {:.2} ms (min {:.2}, max {:.2}), {:.1} sentences/s",
            lat.median, lat.min, lat.max, sps
        ));
        rows.push(json!({ "seq_len": s, "batch": b, "latency_ms": lat.json(), "sentences_per_s": sps }));
    }
    report["encoder"] = json!(rows);
    Ok(lines)
}
