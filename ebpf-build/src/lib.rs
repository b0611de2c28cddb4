//! Builds Ferry's eBPF object, installing what that needs on a fresh machine.
//!
//! Both `ferry-ebpf`'s build script and `cargo xtask` call into this crate, so a
//! plain `cargo build` and the xtask commands share one recipe:
//!
//! 1. the `nightly` toolchain with `rust-src` (for `-Z build-std=core`);
//! 2. `bpf-linker`, built against nightly's own libLLVM, because Debian's LLVM
//!    is older than rustc's and bitcode does not travel backwards;
//! 3. `cargo +nightly build --target bpfel-unknown-none` of `gateway-ebpf`.
//!
//! We do not use `aya-build` because it can neither put a private bpf-linker on
//! the PATH nor run outside a build script, and xtask needs the same build.
//! Everything installed lives under one cache folder (see [`toolchain_dir`]) so
//! setup is idempotent and a second run costs a few `rustc -vV` calls.

mod build;
mod toolchain;

pub use build::{BPF_TARGET, OBJECT_NAME, build_object};
pub use toolchain::{BPF_LINKER_VERSION, Toolchain, ebpf_toolchain, ensure_toolchain, toolchain_dir};

use std::path::PathBuf;

/// Why the eBPF object could not be built. Every variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`rustup` was not found on PATH; install Rust with rustup (https://rustup.rs), then retry")]
    NoRustup,
    #[error(
        "the `nightly` toolchain is missing and `rustup toolchain install nightly` failed:\n{0}\n\
         Install a nightly toolchain with rust-src (rustup toolchain install nightly --component rust-src), then retry"
    )]
    NoNightly(String),
    #[error(
        "could not add rust-src to nightly:\n{0}\n\
         Run `rustup component add rust-src --toolchain nightly` by hand, then retry"
    )]
    NoRustSrc(String),
    #[error(
        "nightly uses LLVM {0}, which bpf-linker {BPF_LINKER_VERSION} cannot link against (it supports 21 to 23); \
         install a nightly whose `rustc +nightly -vV` shows one of those"
    )]
    UnsupportedLlvm(u32),
    #[error("nightly's libLLVM was not found in {0}; reinstall the nightly toolchain")]
    NoLibLlvm(PathBuf),
    #[error(
        "building bpf-linker failed:\n{0}\n\
         It needs network access to crates.io and a C++ toolchain (g++); fix that, then retry"
    )]
    BpfLinker(String),
    #[error("compiling gateway-ebpf failed:\n{0}")]
    Compile(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
