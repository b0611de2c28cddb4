//! Running a benchmark in the network lab.

use std::panic::AssertUnwindSafe;

use anyhow::{Result, anyhow};

use crate::report::Row;

/// Runs `measure`, turning a panic into an error of the bench `what`: the
/// lab's helpers panic with a clear message when a step fails (the lab's
/// Drop cleans up on the way).
pub fn catching_panics(what: &str, measure: impl FnOnce() -> Result<Vec<Row>>) -> Result<Vec<Row>> {
    match std::panic::catch_unwind(AssertUnwindSafe(measure)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            Err(anyhow!("{what}: {message}"))
        }
    }
}
