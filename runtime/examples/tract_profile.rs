//! Per-node profile of an ONNX file on tract, the way ferrite's tract backend prepares it.
//!
//! ```text
//! cargo run --release -p ferrite-runtime --example tract_profile -- \
//!     models/shakespeare-gpt/int8/model.onnx input_ids=1x1:i64 'past_*=1x4x200x32' --repeat 200
//! ```
//!
//! Every graph input needs a `NAME=DIMS[:i64|:f32]` spec (a trailing `*` in NAME matches a
//! prefix); floats are filled with a fixed pseudo-random pattern in [-1, 1], integers with 0.
//! A decoder whose KV cache ferrite keeps in place (the default) has no `past_*` inputs: give
//! `ferrite.past_length=200` instead (the caches are filled by a prefill of that many tokens,
//! and cut back to it before every timed run); `past_*` specs are then ignored.
//! Prints the time per operator type and the slowest nodes (median over `--repeat` runs of the
//! whole plan; each node's time is its own `eval`). A developer tool: docs/tract.md
//! ("Profiling") explains how to read it.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::SimpleState;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().context("usage: tract_profile MODEL.onnx NAME=DIMS[:i64] ... [--repeat N]")?;
    let mut specs = Vec::new();
    let mut repeat = 100usize;
    let mut fuse = true;
    let mut in_place = true;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repeat" => repeat = args.next().context("--repeat N")?.parse()?,
            "--no-fuse" => fuse = false,
            "--kv-concat" => in_place = false,
            _ => specs.push(a),
        }
    }
    let options = ferrite_runtime::Options::default().tract_fused_int8(fuse).tract_in_place_kv(in_place);
    let plan = ferrite_runtime::backend::tract::plan_for_profiling(std::path::Path::new(&path), &options)?;
    let model = plan.model();
    let mut inputs: TVec<TValue> = tvec![];
    // A plan with ferrite's in-place KV cache takes the past length instead of the caches: the
    // spec `ferrite.past_length=N` fills them with N positions first.
    let mut past = None;
    for &outlet in model.input_outlets()? {
        let name = &model.node(outlet.node).name;
        if name == "ferrite.past_length" {
            let n: usize = specs
                .iter()
                .find_map(|s| s.strip_prefix("ferrite.past_length="))
                .context("this plan keeps its KV cache in place: give ferrite.past_length=N")?
                .parse()?;
            past = Some(n);
            inputs.push(Tensor::from(n as i64).into_tvalue());
            continue;
        }
        let spec = specs
            .iter()
            .find_map(|s| {
                let (pat, rest) = s.split_once('=')?;
                let hit = match pat.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == pat,
                };
                hit.then_some(rest)
            })
            .with_context(|| format!("no spec for input {name}"))?;
        let (dims, dt) = spec.split_once(':').unwrap_or((spec, "f32"));
        let shape: Vec<usize> = dims.split('x').map(str::parse).collect::<Result<_, _>>()?;
        let n: usize = shape.iter().product();
        let t = match dt {
            "i64" => Tensor::from_shape(&shape, &vec![0i64; n])?,
            "f32" => {
                let mut state = 0x2545_f491u32;
                let data: Vec<f32> = (0..n)
                    .map(|_| {
                        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
                    })
                    .collect();
                Tensor::from_shape(&shape, &data)?
            }
            other => bail!("unknown dtype {other}"),
        };
        inputs.push(t.into_tvalue());
    }
    let mut state = SimpleState::new(&plan)?;
    if let Some(n) = past {
        // Fill the caches: one prefill of n tokens from position 0.
        let ids = Tensor::from_shape(&[1, n], &vec![0i64; n])?.into_tvalue();
        state.run(tvec![ids, Tensor::from(0i64).into_tvalue()])?;
    }
    profile(&plan, state, inputs, repeat, past)
}

fn profile(
    plan: &std::sync::Arc<TypedSimplePlan>,
    mut state: TypedSimpleState,
    inputs: TVec<TValue>,
    repeat: usize,
    past: Option<usize>,
) -> Result<()> {
    let mut per_node: HashMap<usize, Vec<f64>> = HashMap::new();
    let mut totals = Vec::new();
    for _ in 0..repeat.max(1) {
        if let Some(n) = past {
            ferrite_runtime::backend::tract::truncate_kv_caches(&mut state, n);
        }
        let start = Instant::now();
        state.run_plan_with_eval(inputs.clone(), |ctx, st, node, inp| {
            let t = Instant::now();
            let out = tract_onnx::tract_core::plan::eval(ctx, st, node, inp);
            per_node.entry(node.id).or_default().push(t.elapsed().as_secs_f64() * 1e6);
            out
        })?;
        totals.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let model = plan.model();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut by_op: HashMap<String, (f64, usize)> = HashMap::new();
    let mut nodes: Vec<(f64, usize)> = Vec::new();
    for (id, times) in per_node.iter_mut() {
        let t = median(times);
        let e = by_op.entry(model.node(*id).op().name().to_string()).or_default();
        e.0 += t;
        e.1 += 1;
        nodes.push((t, *id));
    }
    let node_sum: f64 = nodes.iter().map(|n| n.0).sum();
    println!(
        "plan: {:.1} µs median per run ({} nodes, node sum {:.1} µs)",
        median(&mut totals),
        nodes.len(),
        node_sum
    );
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    println!("{:>10} {:>6}  op", "µs", "nodes");
    for (op, (t, n)) in ops {
        println!("{t:>10.1} {n:>6}  {op}");
    }
    nodes.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("\nslowest nodes:");
    for (t, id) in nodes.iter().take(std::env::var("TOP").ok().and_then(|v| v.parse().ok()).unwrap_or(25)) {
        let node = model.node(*id);
        let info = node.op().info().unwrap_or_default().join("; ");
        let shape = node.outputs.first().map(|o| format!("{:?}", o.fact.shape)).unwrap_or_default();
        println!("{t:>10.1}  {} ({}) -> {shape}  {info}", node.name, node.op().name());
    }
    Ok(())
}
