//! The bridge between the synchronous [`Backend`](crate::store::Backend)
//! trait and the asynchronous PostgreSQL client.
//!
//! The trait stays synchronous: every typed collection, the audit chain and
//! each of their callers (HTTP handlers, control channels, the command line)
//! call it directly, as they do sled, and making it async would touch all of
//! them. Instead the PostgreSQL backend owns a small tokio runtime of its own
//! that drives the connections of its pool; a call hands its future to that
//! runtime and waits for the answer. A caller on the server's multi-threaded
//! runtime waits inside `block_in_place`, so the worker's other tasks move to
//! another thread meanwhile (as sled's fsync does), instead of queueing
//! behind a database round trip.

use std::future::Future;

use crate::store::BackendError;

pub struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    pub fn new(threads: usize) -> Result<Bridge, BackendError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("ferry-postgres")
            .enable_all()
            .build()
            .map_err(|e| BackendError::Io(format!("starting the database runtime: {e}")))?;
        Ok(Bridge { runtime: Some(runtime) })
    }

    pub fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.as_ref().map(tokio::runtime::Runtime::handle)
    }

    /// Runs `work` on the database runtime and waits for its result.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, BackendError>> + Send + 'static,
    ) -> Result<T, BackendError> {
        let Some(runtime) = &self.runtime else {
            return Err(BackendError::Unavailable("the database connection is closed".into()));
        };
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = sender.send(work.await);
        });
        let wait = || {
            receiver
                .recv()
                .unwrap_or_else(|_| Err(BackendError::Io("a database call failed unexpectedly".into())))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another
        // runtime; its tasks are only connection drivers and pending calls.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
