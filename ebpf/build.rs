//! Compiles gateway-ebpf with nightly and leaves the object in OUT_DIR for
//! `include_bytes!`. Installs the toolchain first if this machine lacks it.

#![allow(clippy::expect_used, clippy::panic, reason = "a build script reports failure by panicking")]

use std::{env, path::PathBuf};

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().expect("ferry-ebpf sits in the workspace").to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    for dir in ["gateway-ebpf", "ebpf-common"] {
        println!("cargo::rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo::rerun-if-env-changed=FERRY_TOOLCHAIN_DIR");
    println!("cargo::rerun-if-env-changed=FERRY_EBPF_TOOLCHAIN");

    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out. The eBPF build gets
    // one folder beside the profiles, so debug and release builds share it.
    let target_dir =
        out_dir.ancestors().nth(4).map(|target| target.join("bpf")).unwrap_or_else(|| out_dir.join("bpf"));

    let result = ferry_ebpf_build::ensure_toolchain(&mut |step| println!("cargo::warning={step}"))
        .and_then(|toolchain| ferry_ebpf_build::build_object(&toolchain, &workspace, &target_dir));
    let object = match result {
        Ok(object) => object,
        Err(err) => {
            eprintln!("\nerror: cannot build Ferry's eBPF object\n\n{err}\n");
            eprintln!("`cargo xtask build-ebpf` runs the same steps and prints their progress.");
            std::process::exit(1);
        }
    };
    let embedded = out_dir.join("ferry.bpf.o");
    std::fs::copy(&object, &embedded)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", object.display(), embedded.display()));
}
