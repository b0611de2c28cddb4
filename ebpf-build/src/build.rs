//! Compiling gateway-ebpf for the kernel.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    Error, Toolchain,
    toolchain::{scrub_cargo_env, tail},
};

pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// The file name of the compiled object (the eBPF crate's binary).
pub const OBJECT_NAME: &str = "gateway-ebpf";

/// Compiles `gateway-ebpf` (found in `workspace`) into `target_dir` and returns
/// the object's path. Cargo's own fingerprinting makes a repeat build cheap.
pub fn build_object(toolchain: &Toolchain, workspace: &Path, target_dir: &Path) -> Result<PathBuf, Error> {
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![toolchain.bin_dir.clone()];
    paths.extend(env::split_paths(&path));
    let path = env::join_paths(paths).map_err(|e| Error::Compile(format!("bad PATH: {e}")))?;

    // bpf_target_arch tells aya-ebpf which pt_regs layout to use; -Cdebuginfo
    // and --btf keep BTF in the object so the loader can relocate and show it.
    let mut rustflags = OsString::new();
    for (i, flag) in [
        format!("--cfg=bpf_target_arch=\"{}\"", env::consts::ARCH),
        "-Cdebuginfo=2".to_string(),
        "-Clink-arg=--btf".to_string(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            rustflags.push("\x1f");
        }
        rustflags.push(flag);
    }

    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        &crate::toolchain::ebpf_toolchain(),
        "cargo",
        "build",
        "--release",
        "--package",
        "gateway-ebpf",
    ])
    .arg("--bins")
    .args(["--target", BPF_TARGET, "-Z", "build-std=core", "--target-dir"])
    .arg(target_dir)
    .current_dir(workspace);
    scrub_cargo_env(&mut cmd);
    cmd.env("PATH", path).env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    let output = cmd
        .output()
        .map_err(|e| Error::Compile(format!("could not run rustup run nightly cargo build: {e}")))?;
    if !output.status.success() {
        return Err(Error::Compile(tail(&output.stderr, 60)));
    }
    let object = target_dir.join(BPF_TARGET).join("release").join(OBJECT_NAME);
    if !object.exists() {
        return Err(Error::Compile(format!("cargo succeeded but {} is missing", object.display())));
    }
    Ok(object)
}
