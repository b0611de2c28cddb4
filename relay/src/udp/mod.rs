//! The userspace datagram path.

pub mod batch;
