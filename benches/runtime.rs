//! Load-to-first-output and steady run time per backend on the ≥ 20 MB benchmark model.
//! Run through scripts/bench-foundation.sh, which generates the model and writes BENCHMARKS.md.

#[path = "common.rs"]
mod common;

use criterion::{Criterion, criterion_group, criterion_main};
use ferrite_runtime::{Model, npy};

fn bench(c: &mut Criterion) {
    let dir = common::bench_model_dir();
    let x = npy::read_npy(dir.join("input_x.npy")).unwrap();
    let mut load = c.benchmark_group("load_to_first_output");
    load.sample_size(10);
    for (label, options, layout) in common::configs() {
        let path = dir.join(layout).join("model.onnx");
        load.bench_function(label, |b| {
            b.iter(|| {
                let model = Model::open(&path).unwrap();
                let mut session = model.prepare(&options).unwrap().session().unwrap();
                session.run(&[("x", x.view())]).unwrap()
            })
        });
    }
    load.finish();
    let mut run = c.benchmark_group("steady_run");
    for (label, options, layout) in common::configs() {
        if layout != "external" {
            continue; // the plan is the same whichever way the weights were stored
        }
        let model = Model::open(dir.join(layout).join("model.onnx")).unwrap();
        let plan = model.prepare(&options).unwrap();
        let mut session = plan.session().unwrap();
        run.bench_function(label, |b| b.iter(|| session.run(&[("x", x.view())]).unwrap()));
    }
    run.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
