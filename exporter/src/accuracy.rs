//! The export-time accuracy report: the quantised graph against the fp32 graph on the same
//! sample inputs, output by output.
//!
//! Logits get max abs error and top-1 agreement (the argmax over the last axis, per position);
//! embeddings get cosine similarity per row; every output gets max abs error. It measures the
//! exported graphs as a runtime runs them, not the source framework (the goldens test does that).

use std::collections::BTreeMap;

use ferrite_runtime::Tensor;

use crate::arch::{IoRole, OutputKind};
use crate::error::Result;

/// How one output of the quantised graph deviates from fp32.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutputAccuracy {
    /// Largest absolute difference over all elements.
    pub max_abs_error: f64,
    /// Fraction of positions whose argmax (last axis) agrees, for logits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top1_agreement: Option<f64>,
    /// Smallest row cosine similarity, for embeddings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_cosine: Option<f64>,
    /// Mean row cosine similarity, for embeddings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_cosine: Option<f64>,
}

/// The quantised graph against fp32, on the bundle's sample inputs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccuracyReport {
    /// The reference the numbers are relative to.
    pub reference: &'static str,
    /// The backend both graphs ran on.
    pub backend: &'static str,
    /// Per output name.
    pub outputs: BTreeMap<String, OutputAccuracy>,
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
        .0
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 { if na == nb { 1.0 } else { 0.0 } } else { dot / (na * nb) }
}

/// Compares one output of the quantised graph (`got`) with fp32 (`want`).
pub fn compare(kind: OutputKind, want: &Tensor, got: &Tensor) -> Result<OutputAccuracy> {
    let (w, g) = (want.as_slice::<f32>()?, got.as_slice::<f32>()?);
    let max_abs_error = w.iter().zip(g).fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    let last = want.shape().last().copied().unwrap_or(1).max(1);
    let rows = || w.chunks_exact(last).zip(g.chunks_exact(last));
    let mut acc = OutputAccuracy { max_abs_error, top1_agreement: None, min_cosine: None, mean_cosine: None };
    match kind {
        OutputKind::Logits => {
            let (n, agree) = rows()
                .fold((0usize, 0usize), |(n, a), (x, y)| (n + 1, a + (argmax(x) == argmax(y)) as usize));
            acc.top1_agreement = Some(agree as f64 / n.max(1) as f64);
        }
        OutputKind::Embedding => {
            let cos: Vec<f64> = rows().map(|(x, y)| cosine(x, y)).collect();
            acc.min_cosine = Some(cos.iter().copied().fold(1.0, f64::min));
            acc.mean_cosine = Some(cos.iter().sum::<f64>() / cos.len().max(1) as f64);
        }
        OutputKind::State => {}
    }
    Ok(acc)
}

/// Builds the report from both graphs' outputs on the same inputs.
pub fn report(
    outputs: &[IoRole],
    fp32: &[(String, Tensor)],
    quantised: &[(String, Tensor)],
    backend: &'static str,
) -> Result<AccuracyReport> {
    let mut per_output = BTreeMap::new();
    for role in outputs {
        let want = fp32.iter().find(|(n, _)| *n == role.name);
        let got = quantised.iter().find(|(n, _)| *n == role.name);
        if let (Some((_, w)), Some((_, g))) = (want, got) {
            per_output.insert(role.name.clone(), compare(role.kind, w, g)?);
        }
    }
    Ok(AccuracyReport { reference: "fp32 export", backend, outputs: per_output })
}
