//! Bad input gets the matching typed error on every backend, never a panic.

mod common;

use ferrite_runtime::{Error, Model, Tensor, f16};
use prost::Message;
use tract_onnx::pb;

fn lstm_bytes() -> Vec<u8> {
    std::fs::read(common::test_models().join("lstm/model.onnx")).unwrap()
}

fn write_temp(tag: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferrite-bad-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.onnx");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn an_empty_file_is_not_onnx() {
    let err = Model::open(write_temp("empty", b"")).unwrap_err();
    assert!(matches!(err, Error::NotOnnx { .. }), "{err}");
}

#[test]
fn a_missing_file_is_an_io_error() {
    let err = Model::open("/nonexistent/ferrite/model.onnx").unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn random_bytes_are_not_onnx() {
    // A fixed xorshift stream: deterministic, but no structure an ONNX parser could accept.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    assert_ne!(bytes[0], 0x08, "the stream must not start like an ONNX file");
    let err = Model::open(write_temp("random", &bytes)).unwrap_err();
    assert!(matches!(err, Error::NotOnnx { .. }), "{err}");
}

#[test]
fn a_truncated_model_is_invalid_at_every_offset() {
    let bytes = lstm_bytes();
    let path = write_temp("truncated", &[]);
    let mut offsets: Vec<usize> = (1..bytes.len()).step_by(97).collect();
    offsets.extend([1, 2, bytes.len() / 2, bytes.len() - 1]);
    for cut in offsets {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        match Model::open(&path) {
            Err(Error::InvalidModel(_)) => {}
            other => panic!("cut at {cut}/{}: expected InvalidModel, got {other:?}", bytes.len()),
        }
    }
}

#[test]
fn an_unknown_op_is_unsupported_on_every_backend() {
    let model = Model::open(common::test_models().join("unknown_op/model.onnx")).unwrap();
    for options in common::backends() {
        match model.prepare(&options) {
            Err(Error::UnsupportedOp { op, .. }) => assert_eq!(op, "FerriteNoSuchOp"),
            other => panic!("{}: expected UnsupportedOp, got {other:?}", options.backend.name()),
        }
    }
}

#[test]
fn wrong_shapes_dtypes_and_names_are_refused_before_the_backend() {
    let model = Model::open(common::test_models().join("external_data/model.onnx")).unwrap();
    for options in common::backends() {
        let backend = options.backend.name();
        let mut session = model.prepare(&options).unwrap().session().unwrap();
        let good = Tensor::new(vec![3, 32], vec![0.5f32; 96]).unwrap();
        assert!(session.run(&[("x", good.view())]).is_ok(), "{backend}");

        let short = Tensor::new(vec![3, 31], vec![0.5f32; 93]).unwrap();
        let err = session.run(&[("x", short.view())]).unwrap_err();
        assert!(matches!(&err, Error::ShapeMismatch { input, .. } if input == "x"), "{backend}: {err}");

        let rank = Tensor::new(vec![96], vec![0.5f32; 96]).unwrap();
        let err = session.run(&[("x", rank.view())]).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{backend}: {err}");

        let half = Tensor::new(vec![3, 32], vec![f16::from_f32(0.5); 96]).unwrap();
        let err = session.run(&[("x", half.view())]).unwrap_err();
        assert!(
            matches!(&err, Error::DTypeMismatch { expected, got, .. } if expected == "f32" && got == "f16"),
            "{backend}: {err}"
        );

        let ids = Tensor::new(vec![3, 32], vec![1i64; 96]).unwrap();
        let err = session.run(&[("x", ids.view())]).unwrap_err();
        assert!(matches!(err, Error::DTypeMismatch { .. }), "{backend}: {err}");

        let err = session.run(&[]).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{backend}: {err}");
        let err = session.run(&[("x", good.view()), ("y", good.view())]).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{backend}: {err}");
        let err = session.run(&[("x", good.view()), ("x", good.view())]).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{backend}: {err}");
    }
}

#[test]
fn a_symbolic_dim_is_bound_per_run_not_per_session() {
    let model = Model::open(common::test_models().join("dynamic_batch/model.onnx")).unwrap();
    let mut session = model.prepare(&Default::default()).unwrap().session().unwrap();
    for batch in [2usize, 5] {
        let x = Tensor::new(vec![batch, 32], vec![0.0f32; batch * 32]).unwrap();
        assert_eq!(session.run(&[("x", x.view())]).unwrap().get("y").unwrap().shape()[0], batch);
    }
}

fn with_external_location(location: &str, tag: &str) -> std::path::PathBuf {
    let src = common::test_models().join("external_data");
    let dir = common::scratch_copy(&src, tag);
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let mut proto = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    for kv in &mut graph.initializer[0].external_data {
        if kv.key == "location" {
            kv.value = location.to_string();
        }
    }
    std::fs::write(dir.join("model.onnx"), proto.encode_to_vec()).unwrap();
    dir.join("model.onnx")
}

#[test]
fn external_data_may_not_leave_the_model_directory() {
    let outside = std::env::temp_dir().join(format!("ferrite-outside-{}.data", std::process::id()));
    std::fs::copy(common::test_models().join("external_data/model.onnx.data"), &outside).unwrap();
    let cases = [
        ("escape-dotdot", format!("../{}", outside.file_name().unwrap().to_str().unwrap())),
        ("escape-abs", outside.display().to_string()),
    ];
    for (tag, location) in cases {
        let err = Model::open(with_external_location(&location, tag)).unwrap_err();
        assert!(matches!(err, Error::InvalidModel(_)), "{location}: {err}");
    }
    // A symlink inside the directory that points outside it is refused too.
    let path = with_external_location("link.data", "escape-link");
    std::os::unix::fs::symlink(&outside, path.parent().unwrap().join("link.data")).unwrap();
    let err = Model::open(&path).unwrap_err();
    assert!(err.to_string().contains("leaves the model directory"), "{err}");
    // A location that does not exist is named in the error.
    let err = Model::open(with_external_location("missing.data", "missing")).unwrap_err();
    assert!(err.to_string().contains("missing.data"), "{err}");
}

#[test]
fn external_data_shorter_than_declared_is_refused() {
    let dir = common::scratch_copy(&common::test_models().join("external_data"), "short-data");
    let data = std::fs::read(dir.join("model.onnx.data")).unwrap();
    std::fs::write(dir.join("model.onnx.data"), &data[..data.len() / 2]).unwrap();
    let err = Model::open(dir.join("model.onnx")).unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");
}

#[test]
fn negative_and_overflowing_dims_are_refused() {
    let bytes = lstm_bytes();
    let mut proto = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    proto.graph.as_mut().unwrap().initializer[0].dims = vec![-1, 4];
    let err = Model::open(write_temp("negdim", &proto.encode_to_vec())).unwrap_err();
    assert!(matches!(err, Error::InvalidModel(_)), "{err}");
    proto.graph.as_mut().unwrap().initializer[0].dims = vec![i64::MAX, i64::MAX];
    let err = Model::open(write_temp("overflow", &proto.encode_to_vec())).unwrap_err();
    assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
    proto.graph.as_mut().unwrap().initializer[0].dims = vec![3, 3];
    let err = Model::open(write_temp("wrongsize", &proto.encode_to_vec())).unwrap_err();
    assert!(matches!(err, Error::InvalidModel(_)), "{err}");
}
