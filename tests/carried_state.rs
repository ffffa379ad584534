//! `Session::carry` / `Session::step`: recurrent state (LSTM h/c, a GPT-2 KV cache) kept inside
//! the backend between steps must give exactly what passing the state explicitly through
//! `Session::run` gives, on every backend, and misuse must be a typed error.

mod common;

use ferrite_runtime::{Error, Model, Options, Session, Tensor};

fn zeros(shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product();
    Tensor::new(shape, vec![0f32; n]).unwrap()
}

fn session(bundle: &str, options: &Options) -> Session {
    let path = common::root().join("models").join(bundle).join("model.onnx");
    Model::open(path).unwrap().prepare(options).unwrap().session().unwrap()
}

/// (input, output, initial shape) of every state pair of a shipped bundle.
fn state_pairs(bundle: &str) -> Vec<(String, String, Vec<usize>)> {
    if bundle.contains("lstm") {
        let shape = common::shipped_lstm_state_shape();
        vec![("h0".into(), "hN".into(), shape.clone()), ("c0".into(), "cN".into(), shape)]
    } else {
        (0..4)
            .flat_map(|l| {
                ["key", "value"]
                    .map(|kv| (format!("past_{kv}.{l}"), format!("present_{kv}.{l}"), vec![1, 4, 0, 32]))
            })
            .collect()
    }
}

/// Prefill 5 tokens, then 6 single-token steps: carried (`step`) against explicit (`run`).
fn carried_equals_explicit(bundle: &str, options: &Options) {
    let pairs = state_pairs(bundle);
    let mut carried = session(bundle, options);
    let mut explicit = session(bundle, options);
    let mut state: Vec<Tensor> = pairs.iter().map(|(_, _, s)| zeros(s.clone())).collect();
    for (input, output, shape) in &pairs {
        carried.carry(input, output, zeros(shape.clone()).view()).unwrap();
    }
    let chunks: [&[i64]; 7] = [&[3, 17, 42, 7, 29], &[5], &[31], &[2], &[38], &[13], &[40]];
    for (step, ids) in chunks.iter().enumerate() {
        let ids = Tensor::new(vec![1, ids.len()], ids.to_vec()).unwrap();
        let got = carried.step(&[("input_ids", ids.view())]).unwrap();
        assert_eq!(got.len(), 1, "{bundle}: carried outputs are not returned");
        let mut inputs = vec![("input_ids", ids.view())];
        inputs.extend(pairs.iter().zip(&state).map(|((n, _, _), t)| (n.as_str(), t.view())));
        let want = explicit.run(&inputs).unwrap();
        let diff = common::max_abs_diff("logits", got.get("logits").unwrap(), want.get("logits").unwrap());
        assert_eq!(diff, 0.0, "{bundle} {:?} step {step}: logits differ by {diff}", options.backend);
        state = pairs.iter().map(|(_, out, _)| want.get(out).unwrap().clone()).collect();
        for ((input, _, _), t) in pairs.iter().zip(&state) {
            let held = carried.carried(input).unwrap();
            assert_eq!(common::max_abs_diff(input, &held, t), 0.0, "{bundle} step {step}: carried {input}");
        }
    }
    if !bundle.contains("lstm") {
        assert_eq!(
            carried.carried("past_key.0").unwrap().shape(),
            &[1, 4, 11, 32],
            "the cache grew to 11 positions"
        );
    }
}

#[test]
fn carried_lstm_state_equals_explicit_state_on_every_backend() {
    for options in common::backends() {
        carried_equals_explicit("shakespeare-lstm/int8", &options);
    }
}

#[test]
fn carried_kv_cache_equals_explicit_cache_on_every_backend() {
    for options in common::backends() {
        carried_equals_explicit("shakespeare-gpt/q4", &options);
    }
}

#[test]
fn resetting_the_carried_state_starts_over() {
    for options in common::backends() {
        let mut s = session("shakespeare-gpt/q4", &options);
        for (input, output, shape) in state_pairs("shakespeare-gpt/q4") {
            s.carry(&input, &output, zeros(shape).view()).unwrap();
        }
        let ids = Tensor::new(vec![1, 3], vec![9i64, 8, 7]).unwrap();
        let first = s.step(&[("input_ids", ids.view())]).unwrap();
        for (input, _, shape) in state_pairs("shakespeare-gpt/q4") {
            s.set_carried(&input, zeros(shape).view()).unwrap();
        }
        let again = s.step(&[("input_ids", ids.view())]).unwrap();
        let diff = common::max_abs_diff("logits", first.get("logits").unwrap(), again.get("logits").unwrap());
        assert_eq!(diff, 0.0, "{:?}: after a reset the same prompt gives the same logits", options.backend);
    }
}

#[test]
fn misuse_of_carried_state_is_a_typed_error() {
    let options = Options::default();
    let mut s = session("shakespeare-lstm/int8", &options);
    let shape = common::shipped_lstm_state_shape();
    let h = zeros(shape.clone());
    let ids = Tensor::new(vec![1, 1], vec![4i64]).unwrap();

    let err = s.carry("h1", "hN", h.view()).unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(m) if m.contains("no input `h1`")), "{err}");
    let err = s.carry("h0", "nope", h.view()).unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(m) if m.contains("no output `nope`")), "{err}");
    let err = s.carry("h0", "hN", zeros(vec![shape[0], 1, shape[2] - 1]).view()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    let wrong_dtype = Tensor::new(shape.clone(), vec![0i64; shape[0] * shape[2]]).unwrap();
    let err = s.carry("h0", "hN", wrong_dtype.view()).unwrap_err();
    assert!(matches!(err, Error::DTypeMismatch { .. }), "{err}");
    let err = s.set_carried("h0", h.view()).unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(m) if m.contains("not carried")), "{err}");
    let err = s.carried("h0").unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(m) if m.contains("not carried")), "{err}");

    s.carry("h0", "hN", h.view()).unwrap();
    let err = s.carry("c0", "hN", h.view()).unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(m) if m.contains("already carried")), "{err}");
    let err = s.carry("h0", "cN", h.view()).unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(m) if m.contains("already fed")), "{err}");
    // c0 is not carried yet: a step must be given it.
    let err = s.step(&[("input_ids", ids.view())]).unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(m) if m.contains("`c0` is missing")), "{err}");
    let err = s.step(&[("input_ids", ids.view()), ("h0", h.view()), ("c0", h.view())]).unwrap_err();
    assert!(matches!(&err, Error::InvalidInput(m) if m.contains("carried from the previous step")), "{err}");
    s.carry("c0", "cN", h.view()).unwrap();
    let out = s.step(&[("input_ids", ids.view())]).unwrap();
    assert!(out.get("logits").is_some() && out.get("hN").is_none());
    // A plain run ignores the carried values and returns every output.
    let all = s.run(&[("input_ids", ids.view()), ("h0", h.view()), ("c0", h.view())]).unwrap();
    assert_eq!(all.len(), 3);
}
