//! Types shared by the eBPF programs in `gateway-ebpf` and the userspace code
//! that loads them.
//!
//! Everything here is `#[repr(C)]` and `no_std`: the same bytes are read by the
//! kernel-side program and written by userspace through map syscalls. Network
//! fields stay in network byte order (`[u8; N]`) so neither side converts twice.
#![no_std]

pub mod gateway;
pub mod guard;
pub mod relay;
