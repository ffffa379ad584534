//! Training records a person reads: `train_log.jsonl` (one JSON object per logged step) and
//! `loss.png` (train and validation loss against step). Labels are drawn with a TrueType font
//! found at a few usual system paths, loaded by pure-Rust `ab_glyph`; without one the curves are
//! still drawn, just unlabelled, so a machine without fonts never fails a training run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// File name of the JSON-lines training log inside the output directory.
pub const LOG_FILE: &str = "train_log.jsonl";
/// File name of the loss plot inside the output directory.
pub const PLOT_FILE: &str = "loss.png";

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Optimizer steps completed.
    pub step: u64,
    /// Mean training cross-entropy (nats/token) since the previous entry.
    pub train_loss: f64,
    /// Validation cross-entropy (nats/token), when measured at this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Validation perplexity, `exp(val_loss)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ppl: Option<f64>,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Training tokens per second since the previous entry.
    pub tokens_per_s: f64,
    /// Wall-clock seconds of training so far (across resumes).
    pub elapsed_s: f64,
}

/// Appends one entry to the log.
pub fn append_log(dir: &Path, entry: &LogEntry) -> Result<()> {
    let path = dir.join(LOG_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| TrainError::io(&path, e))?;
    let mut line = serde_json::to_string(entry).map_err(|e| TrainError::io(&path, e.into()))?;
    line.push('\n');
    file.write_all(line.as_bytes()).map_err(|e| TrainError::io(&path, e))
}

/// Reads the log (missing file = empty). Lines that do not parse are skipped: a crash can leave
/// a torn last line, which must not stop a resume.
pub fn read_log(dir: &Path) -> Result<Vec<LogEntry>> {
    let path = dir.join(LOG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(TrainError::io(path, e)),
    }
}

/// Rewrites the log keeping only entries up to `step` (a resume continues from a checkpoint,
/// so entries logged after it belong to steps that will be trained again).
pub fn truncate_log(dir: &Path, step: u64) -> Result<Vec<LogEntry>> {
    let kept: Vec<LogEntry> = read_log(dir)?.into_iter().filter(|e| e.step <= step).collect();
    let path = dir.join(LOG_FILE);
    let tmp = dir.join(format!(".{LOG_FILE}.tmp"));
    let mut text = String::new();
    for e in &kept {
        text.push_str(&serde_json::to_string(e).map_err(|e| TrainError::io(&path, e.into()))?);
        text.push('\n');
    }
    std::fs::write(&tmp, text).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))?;
    Ok(kept)
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers the first usable font once; `false` if none was found.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps a 'static reference: the font lives for the process, once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        log::warn!("no TrueType font found; loss.png is drawn without labels");
        false
    })
}

/// Draws `loss.png` from the log entries (train loss every entry, validation where measured).
pub fn plot_losses(path: &Path, entries: &[LogEntry]) -> Result<()> {
    let err = |e: String| TrainError::Plot { path: PathBuf::from(path), message: e };
    if entries.is_empty() {
        return Ok(());
    }
    let labels = font_available();
    let train: Vec<(f64, f64)> = entries.iter().map(|e| (e.step as f64, e.train_loss)).collect();
    let val: Vec<(f64, f64)> =
        entries.iter().filter_map(|e| e.val_loss.map(|v| (e.step as f64, v))).collect();
    let finite = train.iter().chain(&val).map(|p| p.1).filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let x_max = entries.last().map_or(1.0, |e| e.step as f64).max(1.0);

    let root = BitMapBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(15);
    if labels {
        builder
            .caption("training loss (nats/token)", ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(55);
    }
    let mut chart =
        builder.build_cartesian_2d(0.0..x_max, (lo - pad)..(hi + pad)).map_err(|e| err(e.to_string()))?;
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(WHITE.mix(0.0));
    if labels {
        mesh.x_desc("step").y_desc("loss");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| err(e.to_string()))?;
    let train_series =
        chart.draw_series(LineSeries::new(train, BLUE.stroke_width(2))).map_err(|e| err(e.to_string()))?;
    if labels {
        train_series
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    }
    if !val.is_empty() {
        chart
            .draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))
            .map_err(|e| err(e.to_string()))?;
        let val_series =
            chart.draw_series(LineSeries::new(val, RED.stroke_width(2))).map_err(|e| err(e.to_string()))?;
        if labels {
            val_series
                .label("validation")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
