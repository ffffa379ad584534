//! The memory budget: a model or bundle estimated over it fails with `ResourceLimit` before the
//! backend sees it, from Rust and from the CLI (`--memory-budget`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrite_runtime::{Bundle, BundleOptions, Error, Model, Options, Tensor, budget};

fn ferrite(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrite")).args(args).current_dir(common::root()).output().unwrap()
}

#[test]
fn a_model_over_budget_is_refused_before_the_backend_sees_it() {
    let model = Model::open(common::test_models().join("external_data/model.onnx")).unwrap();
    let need = budget::estimate(model.info(), &Options::default(), 1);
    // 16 KiB of external f32 weights: tract's copy counted, plus inputs/outputs and the allowance.
    assert_eq!(need.weights, (32 * 64 + 64 + 64 * 16 + 16) * 4);
    assert_eq!(need.loaded_weights, (need.weights as f64 * 2.4).ceil() as u64);
    for run in common::backends() {
        // Each backend has its own load factor (tract copies the weights, ONNX Runtime mostly not).
        let need = budget::estimate(model.info(), &run, 1);
        let err = model.prepare(&run.clone().memory_budget(need.total() - 1)).unwrap_err();
        assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
        let plan = model.prepare(&run.memory_budget(need.total())).unwrap();
        let x = Tensor::new(vec![3, 32], vec![0.5f32; 96]).unwrap();
        plan.session().unwrap().run(&[("x", x.view())]).unwrap();
    }
    // An operator no backend knows would fail in the backend; the budget fails first.
    let unknown = Model::open(common::test_models().join("unknown_op/model.onnx")).unwrap();
    let err = unknown.prepare(&Options::default().memory_budget(1)).unwrap_err();
    assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
}

#[test]
fn a_bundle_budget_counts_the_kv_cache_at_full_context() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = export_gpt2(tmp.path());
    let context = Bundle::open(&dir).unwrap().context_length().unwrap();
    let model = Model::open(dir.join("model.onnx")).unwrap();
    let at_context = budget::estimate(model.info(), &Options::default(), context);
    assert!(at_context.io > budget::estimate(model.info(), &Options::default(), 1).io);
    let refused = Bundle::open_with(&dir, &BundleOptions::default().memory_budget(at_context.total() - 1));
    assert!(matches!(refused, Err(Error::ResourceLimit(_))), "{refused:?}");
    Bundle::open_with(&dir, &BundleOptions::default().memory_budget(at_context.total())).unwrap();
}

#[test]
fn cli_memory_budget_flag() {
    let model = "tests/models/external_data/model.onnx";
    let input = "x=tests/models/external_data/input_x.npy";
    let o = ferrite(&["infer", model, "--input", input, "--memory-budget", "64K"]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("resource limit") && stderr.contains("memory budget of 0.1 MiB"), "{stderr}");
    let o = ferrite(&["infer", model, "--input", input, "--memory-budget", "320M"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ferrite(&["infer", model, "--input", input, "--memory-budget", "lots"]);
    assert!(!o.status.success());
}

fn export_gpt2(tmp: &Path) -> PathBuf {
    let src = common::root().join("exporter/tests/golden/gpt2");
    let out = tmp.join("gpt2");
    let o = ferrite(&["export", src.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "export failed: {}", String::from_utf8_lossy(&o.stderr));
    out
}

/// A caller that says how long its sequences are gets a budget for those, not the full context;
/// a generator checks its own prompt plus `max_tokens` before the prefill, from Rust and the CLI.
#[test]
fn a_budget_counts_the_positions_a_generation_reaches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = export_gpt2(tmp.path());
    let context = Bundle::open(&dir).unwrap().context_length().unwrap();
    let model = Model::open(dir.join("model.onnx")).unwrap();
    let at = |positions| budget::estimate(model.info(), &Options::default(), positions).total();
    let (short, long) = (6, 12);
    assert!(at(short) < at(long) && at(long) < at(context), "the estimate grows with positions");
    let budget = at(short);
    let full = Bundle::open_with(&dir, &BundleOptions::default().memory_budget(budget));
    assert!(matches!(full, Err(Error::ResourceLimit(_))), "{full:?}");
    let bundle =
        Bundle::open_with(&dir, &BundleOptions::default().memory_budget(budget).positions(short)).unwrap();
    assert_eq!(bundle.check_memory(short).unwrap().total(), budget);
    let mut generator = ferrite_runtime::Generator::new(&bundle).unwrap();
    let options = |max_tokens| ferrite_runtime::GenerateOptions { max_tokens, ..Default::default() };
    let fits = generator.generate(&[1, 2], &options(short - 2), &|_| None, &mut |_| {}).unwrap();
    assert_eq!(fits.ids.len(), short - 2);
    let over = generator.generate(&[1, 2], &options(long - 2), &|_| None, &mut |_| {});
    assert!(matches!(over, Err(Error::ResourceLimit(_))), "{:?}", over.map(|g| g.ids));

    let bytes = budget.to_string();
    let cli = |max_tokens: &str| {
        let args = ["generate", dir.to_str().unwrap(), "--ids", "1,2", "--max-tokens", max_tokens];
        ferrite(&[&args[..], &["--memory-budget", &bytes]].concat())
    };
    let o = cli("4");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Refused at open: --max-tokens + 1 positions are over the budget before any prompt.
    let o = cli("10");
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("resource limit") && stderr.contains("at 11 positions"), "{stderr}");
    // Opened (5 positions fit), refused by the generator: a 3-token prompt plus 4 is 7.
    let args = ["generate", dir.to_str().unwrap(), "--ids", "1,2,3", "--max-tokens", "4"];
    let o = ferrite(&[&args[..], &["--memory-budget", &bytes]].concat());
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("resource limit") && stderr.contains("at 7 positions"), "{stderr}");
}
