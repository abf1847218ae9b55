//! Progress bars for the store's long tasks (pulls, loads, saves), drawn on a
//! terminal only.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use layerstore::progress::{Observer, Progress};

/// Progress bars on a terminal (stderr); nothing otherwise.
pub fn terminal_progress() -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress::default();
    }
    Progress::new(Arc::new(Bars::default()))
}

/// Draws the store's progress reports with indicatif: one bar per task
/// (bytes of a known total), or a spinner with the byte count and rate. A
/// task gets drawn only once it has passed [`SHOW_AFTER`] bytes, so small
/// blobs do not flicker.
#[derive(Default)]
struct Bars(Mutex<Task>);

#[derive(Default)]
struct Task {
    what: String,
    total: Option<u64>,
    bar: Option<ProgressBar>,
}

const SHOW_AFTER: u64 = 1 << 20;

impl Bars {
    fn task(&self) -> std::sync::MutexGuard<'_, Task> {
        // A poisoned lock only means a panic elsewhere: the state is still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Task {
    fn bar(&self, done: u64) -> ProgressBar {
        let target = ProgressDrawTarget::stderr();
        let bar = match self.total {
            Some(n) => ProgressBar::with_draw_target(Some(n), target).with_style(
                ProgressStyle::with_template(
                    "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{spinner} {msg}: {binary_bytes} {binary_bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.with_message(self.what.clone()).with_position(done)
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Bars {
    fn start(&self, what: &str, total: Option<u64>) {
        let mut t = self.task();
        t.clear();
        t.what = what.to_string();
        t.total = total;
    }

    fn advance(&self, done: u64) {
        let mut t = self.task();
        if t.bar.is_none() && done >= SHOW_AFTER {
            t.bar = Some(t.bar(done));
        }
        if let Some(bar) = &t.bar {
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        self.task().clear();
    }
}

/// One bar per layer of a pull, drawn together (as podman draws them), on
/// a terminal only.
pub fn layer_bars() -> Option<Box<dyn registry::pull::Bars>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(Box::new(LayerBars(
        indicatif::MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
    )))
}

struct LayerBars(indicatif::MultiProgress);

struct LayerBar(ProgressBar);

impl registry::pull::Bars for LayerBars {
    fn add(&self, name: &str, total: u64) -> Box<dyn registry::pull::Bar> {
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let bar = self.0.add(bar.with_message(format!("blob {name}")));
        Box::new(LayerBar(bar))
    }
}

impl registry::pull::Bar for LayerBar {
    fn set(&self, done: u64) {
        self.0.set_position(done);
    }

    fn finish(&self, msg: &str) {
        self.0
            .finish_with_message(format!("{} {msg}", self.0.message()));
    }
}
