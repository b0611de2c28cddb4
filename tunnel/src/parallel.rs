//! One direction's AEAD spread over the cores.
//!
//! The endpoint takes a batch of packets, does everything that needs the
//! device under its lock (routing, counters, replay checks: see
//! [`Device::prepare_packet`](crate::proto::Device::prepare_packet) and
//! [`Device::begin_datagram`](crate::proto::Device::begin_datagram)), and
//! hands the batch's seal or open jobs to [`CryptoPool::run`], which splits
//! them into contiguous runs, one per thread, and returns when all are done.
//! The batch is then sent, or finished under the lock, in the order it
//! arrived, so each peer's packets keep their order (the counters were taken
//! in that order) and nothing queues beyond the one batch in hand.

use std::{num::NonZeroUsize, sync::OnceLock, thread};

/// The most threads the endpoint uses for one batch: beyond four, a batch of
/// one TUN read (up to 64 KiB) is cut too fine for the hand-off to pay.
const MAX_THREADS: usize = 4;
/// Batches smaller than this run on the calling thread: for a few packets
/// the hand-off to another core costs more than their AEAD.
pub const MIN_PARALLEL_JOBS: usize = 8;

static SHARED: OnceLock<CryptoPool> = OnceLock::new();

/// A pool of crypto threads; the caller of [`CryptoPool::run`] is one of
/// them.
pub struct CryptoPool {
    /// None with one thread: everything runs on the caller.
    workers: Option<rayon::ThreadPool>,
    threads: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("starting the crypto threads: {0}")]
pub struct PoolError(#[from] rayon::ThreadPoolBuildError);

impl CryptoPool {
    /// A pool whose batches use `threads` threads, the caller's included.
    pub fn new(threads: NonZeroUsize) -> Result<CryptoPool, PoolError> {
        let threads = threads.get();
        let workers = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads - 1)
                    .thread_name(|i| format!("ferry-crypto-{i}"))
                    .build()?,
            )
        } else {
            None
        };
        Ok(CryptoPool { workers, threads })
    }

    /// The process's pool for its endpoints: as many threads as the machine
    /// has cores (at most [`MAX_THREADS`]). Both directions of every endpoint
    /// share it, so a process never starts more crypto threads than cores. If
    /// the threads cannot be started, the crypto runs on the callers.
    pub fn shared() -> &'static CryptoPool {
        SHARED.get_or_init(|| {
            let cores = thread::available_parallelism().map_or(1, NonZeroUsize::get).min(MAX_THREADS);
            CryptoPool::or_callers_only(NonZeroUsize::new(cores).unwrap_or(NonZeroUsize::MIN))
        })
    }

    /// Sets the threads of [`CryptoPool::shared`] before its first use (one:
    /// every batch on its packet thread). Returns false, changing nothing,
    /// once the pool exists.
    pub fn set_shared_threads(threads: NonZeroUsize) -> bool {
        let mut set = false;
        SHARED.get_or_init(|| {
            set = true;
            CryptoPool::or_callers_only(threads)
        });
        set
    }

    fn or_callers_only(threads: NonZeroUsize) -> CryptoPool {
        CryptoPool::new(threads).unwrap_or_else(|err| {
            tracing::warn!(error = %err, "crypto runs on the packet threads only");
            CryptoPool { workers: None, threads: 1 }
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on every item, spread over the pool's threads in
    /// contiguous runs; returns when all are done.
    pub fn run<T: Send>(&self, items: &mut [T], job: impl Fn(&mut T) + Sync) {
        let Some(workers) = self.workers.as_ref().filter(|_| items.len() >= MIN_PARALLEL_JOBS) else {
            items.iter_mut().for_each(job);
            return;
        };
        let per_thread = items.len().div_ceil(self.threads);
        let mut runs = items.chunks_mut(per_thread);
        let mine = runs.next();
        let job = &job;
        workers.in_place_scope(|scope| {
            for run in runs {
                scope.spawn(move |_| run.iter_mut().for_each(job));
            }
            // The caller takes the first run rather than waiting idle.
            if let Some(run) = mine {
                run.iter_mut().for_each(job);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_done_once_with_any_thread_count() {
        for threads in 1..=3 {
            let pool =
                CryptoPool::new(NonZeroUsize::new(threads).unwrap_or(NonZeroUsize::MIN)).expect("pool");
            for len in [0, 1, MIN_PARALLEL_JOBS - 1, MIN_PARALLEL_JOBS, 100, 257] {
                let mut items: Vec<(usize, u32)> = (0..len).map(|i| (i, 0)).collect();
                pool.run(&mut items, |(i, done)| {
                    *done += 1;
                    *i *= 2;
                });
                for (n, (i, done)) in items.iter().enumerate() {
                    assert_eq!((*i, *done), (2 * n, 1), "threads {threads}, len {len}");
                }
            }
        }
    }

    #[test]
    fn a_batch_uses_the_other_threads() {
        let pool = CryptoPool::new(NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN)).expect("pool");
        let mut items: Vec<Option<String>> = vec![None; 64];
        pool.run(&mut items, |name| *name = thread::current().name().map(str::to_owned));
        assert!(items.iter().any(|n| n.as_deref() == Some("ferry-crypto-0")), "{items:?}");
        assert!(items.iter().any(|n| n.as_deref() != Some("ferry-crypto-0")), "{items:?}");
    }
}
