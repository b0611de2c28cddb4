//! One direction's AEAD spread over the cores.
//!
//! The endpoint takes a batch of packets, does everything that needs the
//! device under its lock (routing, counters, replay checks: see
//! [`Device::prepare_packet`](crate::proto::Device::prepare_packet) and
//! [`Device::begin_datagram`](crate::proto::Device::begin_datagram)), and
//! hands the batch's seal or open jobs to [`CryptoPool::run`], which spreads
//! them over its threads a few at a time and returns when all are done.
//! The batch is then sent, or finished under the lock, in the order it
//! arrived, so each peer's packets keep their order (the counters were taken
//! in that order) and nothing queues beyond the one batch in hand.

use std::{
    num::NonZeroUsize,
    sync::{
        Mutex, OnceLock, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// The most threads the endpoint uses for one batch: beyond four, a batch of
/// one TUN read (up to 64 KiB) is cut too fine for the hand-off to pay.
const MAX_THREADS: usize = 4;
/// Batches smaller than this run on the calling thread: for a few packets
/// the hand-off to another core costs more than their AEAD.
pub const MIN_PARALLEL_JOBS: usize = 8;
/// Items a thread takes at a time: a few microseconds of AEAD for packets of
/// an MTU, so the threads' shares even out within a batch of one TUN read
/// (about 46 packets), and the caller's final wait is short.
const ITEMS_PER_TAKE: usize = 4;
/// How long the caller spins on the other threads' last takes before it
/// yields its core between looks: a few takes' work.
const SPIN_BEFORE_YIELD: Duration = Duration::from_micros(50);

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

    /// Runs `job` on every item, spread over the pool's threads; returns
    /// when all are done.
    ///
    /// The items are taken a few at a time by whichever thread is free, not
    /// cut into one fixed run per thread: a worker that wakes late (tens of
    /// microseconds on a virtual machine, a third of a batch's seal) then
    /// leaves the items it did not take to the caller, which starts at once.
    /// At the end the caller spins on the others' last items, a few
    /// microseconds' work, rather than going straight to sleep on rayon's
    /// scope. The scope's join still waits for each spawned worker to have
    /// run and returned, and may sleep if one has not yet (the worker's few
    /// instructions after its last item, or a worker that has not woken).
    pub fn run<T: Send>(&self, items: &mut [T], job: impl Fn(&mut T) + Sync) {
        let Some(workers) = self.workers.as_ref().filter(|_| items.len() >= MIN_PARALLEL_JOBS) else {
            items.iter_mut().for_each(job);
            return;
        };
        let chunks: Vec<Mutex<&mut [T]>> = items.chunks_mut(ITEMS_PER_TAKE).map(Mutex::new).collect();
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let take = || {
            while let Some(chunk) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                // Counted even if the job panics, so the caller's wait ends
                // and the scope passes the panic on.
                let _count = Counted(&done);
                chunk.lock().unwrap_or_else(PoisonError::into_inner).iter_mut().for_each(&job);
            }
        };
        workers.in_place_scope(|scope| {
            for _ in 1..self.threads {
                scope.spawn(|_| take());
            }
            take();
            let waiting = Instant::now();
            while done.load(Ordering::Acquire) < chunks.len() {
                // A worker the scheduler took off its core mid-take would
                // keep a caller spinning for a time slice: after a while,
                // give the core away between looks.
                if waiting.elapsed() < SPIN_BEFORE_YIELD {
                    std::hint::spin_loop();
                } else {
                    thread::yield_now();
                }
            }
        });
    }
}

/// Counts one finished take when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
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
        // The caller's items wait until the worker has done one: a batch the
        // caller could finish alone must still be shared.
        let worked = (Mutex::new(false), std::sync::Condvar::new());
        // One limit for the whole batch, so a worker that never runs fails
        // the test in 30 s, not 30 s per item.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut items: Vec<Option<String>> = vec![None; 64];
        pool.run(&mut items, |name| {
            let me = thread::current().name().map(str::to_owned);
            let (flag, changed) = &worked;
            let mut flag = flag.lock().unwrap_or_else(PoisonError::into_inner);
            if me.as_deref() == Some("ferry-crypto-0") {
                *flag = true;
                changed.notify_all();
            } else {
                while !*flag && Instant::now() < deadline {
                    flag = changed
                        .wait_timeout(flag, std::time::Duration::from_millis(100))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            *name = me;
        });
        assert!(items.iter().any(|n| n.as_deref() == Some("ferry-crypto-0")), "{items:?}");
        assert!(items.iter().any(|n| n.as_deref() != Some("ferry-crypto-0")), "{items:?}");
    }

    #[test]
    fn a_panicking_job_is_passed_on_not_waited_for() {
        let pool = CryptoPool::new(NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN)).expect("pool");
        let mut items: Vec<usize> = (0..64).collect();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&mut items, |i| {
                if *i == 40 {
                    panic!("job {i}");
                }
            })
        }));
        assert!(caught.is_err(), "the panic was lost");
        // The pool still works afterwards.
        let mut items: Vec<usize> = vec![1; 64];
        pool.run(&mut items, |i| *i += 1);
        assert!(items.iter().all(|&i| i == 2));
    }
}
