//! What the long jobs (`encrypt-existing`, `rotate`) share: progress on standard error, and
//! Ctrl-C finishing the current batch.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};
use jarvis_db::jobs::Progress;

/// A flag set by Ctrl-C: jobs stop before their next batch.
pub(crate) fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: finishing the current batch, then stopping (rerun to resume)");
            flag.store(true, Ordering::SeqCst);
        }
    });
    stop
}

/// Shows a job's progress on standard error: a progress bar (rows done, rate, ETA) on a
/// terminal, a plain line per batch otherwise (logs, CI).
pub(crate) struct ProgressView {
    bar: Option<ProgressBar>,
    job: &'static str,
    started: std::time::Instant,
}

impl ProgressView {
    pub(crate) fn new(job: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:40}] {pos}/{len} rows, {per_sec}, ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(job);
            bar
        });
        ProgressView {
            bar,
            job,
            started: std::time::Instant::now(),
        }
    }

    pub(crate) fn update(&self, p: Progress) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.total.max(p.rows_done));
                bar.set_position(p.rows_done);
            }
            None => {
                let rate = p.rows_done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                let left = p.total.saturating_sub(p.rows_done) as f64;
                eprintln!(
                    "{}: {}/{} rows ({} batches), {:.0} rows/s, ETA {:.0} s",
                    self.job,
                    p.rows_done,
                    p.total,
                    p.batches,
                    rate,
                    left / rate.max(1e-9)
                );
            }
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
