//! The batch loop that every job shares: several workers, each taking one batch at a time
//! until nothing is pending, the stop flag is set, or a worker fails.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::ModelError;

/// Reported to the progress callback after each committed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Rows done by this run so far (all workers).
    pub rows_done: u64,
    /// Rows pending when the run started (rows written meanwhile can make `rows_done`
    /// exceed it; other processes' work makes it stop short).
    pub total: u64,
    /// Batches committed by this run so far (all workers).
    pub batches: u64,
    /// Rows of the batch just committed.
    pub batch_rows: u64,
    /// The worker that committed it (`0..workers`).
    pub worker: usize,
}

/// The state the workers of one run share.
pub(crate) struct Batches<'a> {
    stop: Option<&'a AtomicBool>,
    progress: &'a (dyn Fn(Progress) + Sync),
    /// Rows done before this loop (earlier tables of the same run).
    offset: u64,
    total: u64,
    rows_done: AtomicU64,
    batches: AtomicU64,
    /// A worker failed: the others stop before their next batch.
    failed: AtomicBool,
    /// A worker saw the stop flag.
    stopped: AtomicBool,
}

impl<'a> Batches<'a> {
    /// A loop reporting `offset + rows done` of `total` to `progress`.
    pub(crate) fn new(
        stop: Option<&'a Arc<AtomicBool>>,
        progress: &'a (dyn Fn(Progress) + Sync),
        offset: u64,
        total: u64,
    ) -> Self {
        Batches {
            stop: stop.map(|s| &**s),
            progress,
            offset,
            total,
            rows_done: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    /// Runs `workers` batch loops concurrently on the calling task; `batch(worker)` does one
    /// batch and returns its row count (0: nothing pending for this worker). Returns the error
    /// of the first failed batch, after the other workers have finished their current batch.
    pub(crate) async fn run<F, Fut>(&self, workers: usize, batch: F) -> Result<(), ModelError>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<u64, ModelError>>,
    {
        let results =
            futures::future::join_all((0..workers).map(|worker| self.worker(worker, &batch))).await;
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    async fn worker<F, Fut>(&self, worker: usize, batch: &F) -> Result<(), ModelError>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<u64, ModelError>>,
    {
        loop {
            if self.failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            if self.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                self.stopped.store(true, Ordering::SeqCst);
                return Ok(());
            }
            let rows = match batch(worker).await {
                Ok(rows) => rows,
                Err(error) => {
                    self.failed.store(true, Ordering::SeqCst);
                    return Err(error);
                }
            };
            if rows == 0 {
                return Ok(());
            }
            let rows_done = self.rows_done.fetch_add(rows, Ordering::SeqCst) + rows;
            let batches = self.batches.fetch_add(1, Ordering::SeqCst) + 1;
            (self.progress)(Progress {
                rows_done: self.offset + rows_done,
                total: self.total,
                batches,
                batch_rows: rows,
                worker,
            });
        }
    }

    /// Rows committed by this loop.
    pub(crate) fn rows_done(&self) -> u64 {
        self.rows_done.load(Ordering::SeqCst)
    }

    /// Batches committed by this loop.
    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(Ordering::SeqCst)
    }

    /// Whether a worker stopped because of the stop flag.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}
