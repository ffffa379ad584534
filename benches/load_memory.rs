//! Peak resident memory while loading the benchmark model, divided by its weight bytes, per
//! backend and layout. Each configuration runs in a fresh child process (peak RSS is per process).
//! Prints one JSON object per configuration; scripts/bench-foundation.sh turns them into a table.

#[path = "common.rs"]
mod common;

use std::process::Command;

use ferrite_runtime::{BackendKind, Model, Options, npy};

/// (VmHWM, VmRSS, RssAnon, RssFile) in bytes, from /proc/self/status.
fn memory() -> [u64; 4] {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    [field("VmHWM:"), field("VmRSS:"), field("RssAnon:"), field("RssFile:")]
}

fn child(label: &str) {
    let dir = common::bench_model_dir();
    let (_, options, layout) = common::configs().into_iter().find(|(l, _, _)| *l == label).unwrap();
    if options.backend == BackendKind::Ort {
        // Load the ONNX Runtime library first, so its own pages are not counted as model memory.
        let warm = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/models/lstm/model.onnx")).unwrap();
        drop(warm.prepare(&options).unwrap());
    }
    let x = npy::read_npy(dir.join("input_x.npy")).unwrap();
    let before = memory();
    let model = Model::open(dir.join(layout).join("model.onnx")).unwrap();
    let weights = model.info().weight_bytes();
    let plan = model.prepare(&options).unwrap();
    let mut session = plan.session().unwrap();
    session.run(&[("x", x.view())]).unwrap();
    let after = memory();
    println!(
        "{{\"config\":\"{label}\",\"weight_bytes\":{weights},\"peak_rss_delta\":{},\"rss_delta\":{},\"anon_delta\":{},\"file_delta\":{}}}",
        after[0].saturating_sub(before[1]),
        after[1].saturating_sub(before[1]),
        after[2].saturating_sub(before[2]),
        after[3].saturating_sub(before[3]),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        child(&args[pos + 1]);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    for (label, _, _) in common::configs() {
        let out = Command::new(&exe).args(["--child", label]).output().unwrap();
        assert!(out.status.success(), "{label}: {}", String::from_utf8_lossy(&out.stderr));
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let _ = Options::default();
}
