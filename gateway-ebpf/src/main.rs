//! Ferry's eBPF programs, compiled into one object for `bpfel-unknown-none`.
//!
//! `ferry-ebpf`'s build script compiles this crate with nightly and embeds the
//! object; userspace loads the programs it needs from it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod gateway;
#[cfg(target_arch = "bpf")]
mod guard;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod pass;
#[cfg(target_arch = "bpf")]
mod relay;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this only satisfies no_std.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("gateway-ebpf only builds for bpfel-unknown-none; use `cargo xtask build-ebpf`");
    std::process::exit(2);
}
