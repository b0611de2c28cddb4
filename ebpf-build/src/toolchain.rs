//! Finding or installing nightly, rust-src and bpf-linker.

use std::{
    env,
    fs::{self, File},
    path::{Path, PathBuf},
    process::Command,
};

use crate::Error;

/// The bpf-linker release we build; 0.13 links against LLVM 21, 22 or 23.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const SUPPORTED_LLVM: [u32; 3] = [21, 22, 23];

/// The rustup toolchain that compiles the eBPF crate: `$FERRY_EBPF_TOOLCHAIN`,
/// else `nightly`. A dated nightly (`nightly-2026-05-19`) pins it where
/// rustup can install that one.
pub fn ebpf_toolchain() -> String {
    env::var("FERRY_EBPF_TOOLCHAIN").ok().filter(|t| !t.is_empty()).unwrap_or_else(|| "nightly".to_string())
}

/// What the eBPF build needs, once it is in place.
#[derive(Clone, Debug)]
pub struct Toolchain {
    /// The folder that holds `bpf-linker`; prepend it to PATH.
    pub bin_dir: PathBuf,
    /// Nightly's LLVM major version.
    pub llvm_major: u32,
}

/// Where the private toolchain lives: `$FERRY_TOOLCHAIN_DIR`, else
/// `$XDG_CACHE_HOME/ferry/toolchain`, else `~/.cache/ferry/toolchain`.
pub fn toolchain_dir() -> PathBuf {
    if let Some(dir) = env::var_os("FERRY_TOOLCHAIN_DIR") {
        return PathBuf::from(dir);
    }
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    cache.join("ferry").join("toolchain")
}

/// Makes sure nightly with rust-src and a matching bpf-linker exist, installing
/// what is missing. `progress` receives one line per step that does real work.
pub fn ensure_toolchain(progress: &mut dyn FnMut(&str)) -> Result<Toolchain, Error> {
    let nightly = nightly(progress)?;
    ensure_rust_src(&nightly, progress)?;
    if !SUPPORTED_LLVM.contains(&nightly.llvm_major) {
        return Err(Error::UnsupportedLlvm(nightly.llvm_major));
    }
    let dir = toolchain_dir();
    let bin_dir = dir.join("bin");
    let linker = bin_dir.join("bpf-linker");
    let libllvm = find_libllvm(&nightly.sysroot)?;
    let stamp =
        format!("bpf-linker {BPF_LINKER_VERSION} llvm-{} {}\n", nightly.llvm_major, libllvm.display());
    let stamp_path = dir.join("bpf-linker.stamp");
    if is_current(&linker, &stamp_path, &stamp) {
        return Ok(Toolchain { bin_dir, llvm_major: nightly.llvm_major });
    }

    fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    // Two builds (say the debug and release build scripts) may get here at once.
    let lock_path = dir.join(".lock");
    let lock = File::create(&lock_path).map_err(Error::io(format!("creating {}", lock_path.display())))?;
    lock.lock().map_err(Error::io(format!("locking {}", lock_path.display())))?;
    if is_current(&linker, &stamp_path, &stamp) {
        return Ok(Toolchain { bin_dir, llvm_major: nightly.llvm_major });
    }

    progress(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {} (about 3 minutes, once)",
        nightly.llvm_major
    ));
    // bpf-linker's build looks for lib/libLLVM.so under LLVM_PREFIX and records
    // that folder as its rpath, so the prefix stays beside the binary.
    let prefix = dir.join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib).map_err(Error::io(format!("creating {}", prefix_lib.display())))?;
    // Link it under the build-time name (libLLVM.so) and under its soname, which
    // the dynamic loader looks up through the rpath at run time.
    let soname = libllvm.file_name().expect("find_libllvm returns a file").to_owned();
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname.as_os_str()] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link).map_err(Error::io(format!(
            "linking {} to {}",
            link.display(),
            libllvm.display()
        )))?;
    }

    let mut install = Command::new("rustup");
    install
        .args(["run", "stable", "cargo", "install", "--locked", "--force", "--root"])
        .arg(&dir)
        .args(["bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{}", nightly.llvm_major))
        .env("LLVM_PREFIX", &prefix);
    scrub_cargo_env(&mut install);
    let output = install.output().map_err(Error::io("running rustup run stable cargo install bpf-linker"))?;
    if !output.status.success() {
        return Err(Error::BpfLinker(tail(&output.stderr, 40)));
    }
    if !runs(&linker) {
        return Err(Error::BpfLinker(format!("{} was installed but does not run", linker.display())));
    }
    fs::write(&stamp_path, &stamp).map_err(Error::io(format!("writing {}", stamp_path.display())))?;
    Ok(Toolchain { bin_dir, llvm_major: nightly.llvm_major })
}

struct Nightly {
    sysroot: PathBuf,
    llvm_major: u32,
}

fn nightly(progress: &mut dyn FnMut(&str)) -> Result<Nightly, Error> {
    if Command::new("rustup").arg("--version").output().is_err() {
        return Err(Error::NoRustup);
    }
    let mut version = rustc_nightly(&["-vV"]);
    if version.is_err() {
        progress("installing the nightly toolchain");
        let output = Command::new("rustup")
            .args([
                "toolchain",
                "install",
                &ebpf_toolchain(),
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ])
            .output()
            .map_err(Error::io("running rustup toolchain install"))?;
        if !output.status.success() {
            return Err(Error::NoNightly(tail(&output.stderr, 20)));
        }
        version = rustc_nightly(&["-vV"]);
    }
    let version = version.map_err(Error::NoNightly)?;
    let llvm_major = llvm_major(&version)
        .ok_or_else(|| Error::NoNightly(format!("no LLVM version in `rustc +nightly -vV`:\n{version}")))?;
    let sysroot = rustc_nightly(&["--print", "sysroot"]).map_err(Error::NoNightly)?;
    Ok(Nightly { sysroot: PathBuf::from(sysroot.trim()), llvm_major })
}

/// The LLVM major version in `rustc -vV` output ("LLVM version: 22.1.4").
fn llvm_major(version: &str) -> Option<u32> {
    version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

fn rustc_nightly(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &ebpf_toolchain(), "rustc"]).args(args);
    scrub_cargo_env(&mut cmd);
    let output = cmd.output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(tail(&output.stderr, 20));
    }
    String::from_utf8(output.stdout).map_err(|e| e.to_string())
}

fn ensure_rust_src(nightly: &Nightly, progress: &mut dyn FnMut(&str)) -> Result<(), Error> {
    let core_src = nightly.sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if core_src.exists() {
        return Ok(());
    }
    progress("adding rust-src to the nightly toolchain");
    let output = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", &ebpf_toolchain()])
        .output()
        .map_err(Error::io("running rustup component add"))?;
    if !output.status.success() || !core_src.exists() {
        return Err(Error::NoRustSrc(tail(&output.stderr, 20)));
    }
    Ok(())
}

fn find_libllvm(sysroot: &Path) -> Result<PathBuf, Error> {
    // The real shared object is libLLVM.so.<version>; libLLVM-<major>-*.so
    // beside it is a linker script that lld cannot follow from another folder.
    let lib = sysroot.join("lib");
    let entries = fs::read_dir(&lib).map_err(Error::io(format!("reading {}", lib.display())))?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .collect();
    candidates.sort();
    candidates.into_iter().next().ok_or(Error::NoLibLlvm(lib))
}

fn is_current(linker: &Path, stamp_path: &Path, stamp: &str) -> bool {
    fs::read_to_string(stamp_path).is_ok_and(|s| s == stamp) && runs(linker)
}

fn runs(program: &Path) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Removes what an enclosing cargo (a build script's) sets, so that a nested
/// cargo picks its own toolchain, flags and target folder.
pub(crate) fn scrub_cargo_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let inherited = key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
            || key == "OUT_DIR"
            || key == "TARGET"
            || key == "HOST"
            || key == "OPT_LEVEL"
            || key == "PROFILE"
            || key == "DEBUG"
            || key == "NUM_JOBS";
        // CARGO_HOME and CARGO_REGISTRIES_* point at where crates live; keep them.
        let keep = key == "CARGO_HOME"
            || key.starts_with("CARGO_REGISTRIES_")
            || key.starts_with("CARGO_NET_")
            || key.starts_with("CARGO_HTTP_");
        if inherited && !keep {
            cmd.env_remove(key);
        }
    }
}

pub(crate) fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_is_read_from_rustc_version_output() {
        let output = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(output), Some(22));
        assert_eq!(llvm_major("rustc 1.0.0\n"), None);
        assert_eq!(llvm_major("LLVM version: x.1\n"), None);
    }

    #[test]
    fn the_real_libllvm_is_chosen_over_its_linker_script() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("lib");
        fs::create_dir(&lib).unwrap();
        assert!(matches!(find_libllvm(dir.path()), Err(Error::NoLibLlvm(_))));
        // rustup ships both; the first sorts earlier but is a linker script.
        fs::write(
            lib.join("libLLVM-22-rust-1.97.0-nightly.so"),
            "INPUT(libLLVM.so.22.1-rust-1.97.0-nightly)",
        )
        .unwrap();
        fs::write(lib.join("libLLVM.so.22.1-rust-1.97.0-nightly"), "\x7fELF").unwrap();
        assert_eq!(find_libllvm(dir.path()).unwrap(), lib.join("libLLVM.so.22.1-rust-1.97.0-nightly"));
    }

    #[test]
    fn a_stale_stamp_or_missing_linker_is_not_current() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = dir.path().join("stamp");
        let linker = Path::new("/bin/true");
        assert!(!is_current(linker, &stamp, "v1\n"));
        fs::write(&stamp, "v1\n").unwrap();
        assert!(is_current(linker, &stamp, "v1\n"));
        assert!(!is_current(linker, &stamp, "v2\n"));
        assert!(!is_current(&dir.path().join("absent"), &stamp, "v1\n"));
    }

    #[test]
    fn nested_cargo_does_not_inherit_the_build_scripts_toolchain() {
        let mut cmd = Command::new("true");
        // SAFETY: tests in this module do not read these variables concurrently.
        unsafe {
            env::set_var("RUSTC", "/stable/rustc");
            env::set_var("CARGO_ENCODED_RUSTFLAGS", "-Cfoo");
            env::set_var("CARGO_HOME", "/keep");
        }
        scrub_cargo_env(&mut cmd);
        let removed: Vec<_> =
            cmd.get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k.to_owned()).collect();
        assert!(removed.iter().any(|k| k == "RUSTC"));
        assert!(removed.iter().any(|k| k == "CARGO_ENCODED_RUSTFLAGS"));
        assert!(!removed.iter().any(|k| k == "CARGO_HOME"));
    }
}
