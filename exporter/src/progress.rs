//! Progress of an export's long stages (reading weights, calibration sampling, GPTQ layer by
//! layer, writing, verifying), so an export of a real model is never minutes of silence.
//!
//! Off by default: a library call prints nothing. The CLI turns it on with [`show`]. On a
//! terminal each stage is an `indicatif` bar with its rate and ETA; when stderr is not a terminal
//! (CI logs, pipes) a stage prints one plain line at most every [`PLAIN_EVERY`] and one when it
//! ends, instead of redrawing a bar.
//!
//! ```
//! let stage = ferrite_exporter::progress::Stage::new("GPTQ", 4, "layers");
//! for _ in 0..4 {
//!     stage.inc(1);
//! }
//! stage.finish();
//! ```

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static SHOW: AtomicBool = AtomicBool::new(false);

/// Seconds between two plain progress lines when stderr is not a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Turns stage progress on stderr on (`true`) or off for the rest of the process.
pub fn show(on: bool) {
    SHOW.store(on, Ordering::Relaxed);
}

/// How a stage reports.
enum Output {
    Hidden,
    Bar(ProgressBar),
    Plain { last: Mutex<Instant> },
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stage({}: {}/{} {})", self.label, self.done.load(Ordering::Relaxed), self.total, self.unit)
    }
}

/// One long stage of an export: `total` units of work, advanced with [`Stage::inc`].
pub struct Stage {
    label: &'static str,
    unit: &'static str,
    total: u64,
    done: std::sync::atomic::AtomicU64,
    started: Instant,
    output: Output,
}

impl Stage {
    /// Starts a stage of `total` `unit`s (shown only when [`show`] turned progress on).
    pub fn new(label: &'static str, total: u64, unit: &'static str) -> Stage {
        let output = if !SHOW.load(Ordering::Relaxed) {
            Output::Hidden
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix:>12} {bar:30.cyan/blue} {pos}/{len} {msg} {per_sec} [{elapsed_precise} < {eta_precise}]",
            ) {
                bar.set_style(style);
            }
            bar.set_prefix(label);
            bar.set_message(unit);
            Output::Bar(bar)
        } else {
            Output::Plain { last: Mutex::new(Instant::now()) }
        };
        Stage { label, unit, total, done: 0.into(), started: Instant::now(), output }
    }

    /// Records `n` more units done.
    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.output {
            Output::Hidden => {}
            Output::Bar(bar) => bar.inc(n),
            Output::Plain { last } => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= PLAIN_EVERY && done < self.total {
                    *last = Instant::now();
                    eprintln!("{}", self.line(done));
                }
            }
        }
    }

    /// Ends the stage: clears the bar, or prints the final plain line.
    pub fn finish(&self) {
        let done = self.done.load(Ordering::Relaxed).max(self.total);
        match &self.output {
            Output::Hidden => {}
            Output::Bar(bar) => {
                bar.finish_and_clear();
                eprintln!("{}", self.line(done));
            }
            Output::Plain { .. } => eprintln!("{}", self.line(done)),
        }
    }

    /// `GPTQ: 12/30 layers (2.1/s, 8.6 s left)` or, at the end, `GPTQ: 30 layers in 14.2 s`.
    fn line(&self, done: u64) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        if done >= self.total {
            return format!("{}: {done} {} in {secs:.1} s", self.label, self.unit);
        }
        let rate = done as f64 / secs.max(1e-9);
        let left = if rate > 0.0 { (self.total - done) as f64 / rate } else { f64::INFINITY };
        format!("{}: {done}/{} {} ({rate:.1}/s, {left:.0} s left)", self.label, self.total, self.unit)
    }
}
