//! Userspace side of Ferry's eBPF programs.
//!
//! The object built from `gateway-ebpf` is embedded in this crate ([`OBJECT`]),
//! so every binary that links it carries programs that match its map layouts.

pub(crate) mod attach;
pub mod counters;
mod error;
pub mod gateway;
pub mod generator;
pub mod guard;
pub mod pass;
pub mod preflight;
pub mod relay;
pub mod test_run;

pub use attach::{AttachMode, if_index};
pub use error::Error;
pub use ferry_ebpf_common as common;

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, Xdp},
};

/// The compiled eBPF object (ELF, bpfel), aligned for aya's parser.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferry.bpf.o"));

/// Name of the program that passes everything: the baseline of XDP benchmarks,
/// and what tests attach to a veth peer so XDP_TX frames are delivered.
pub const PASS_PROGRAM: &str = "xdp_pass";

/// The program that sends every frame back out (XDP_TX): with BPF_PROG_RUN's
/// live frames, the benchmarks' in-kernel traffic generator
/// ([`generator::FrameGenerator`]).
pub const TX_PROGRAM: &str = "xdp_tx";

/// The TC classifier that passes everything (TC_ACT_OK): the baseline of TC
/// benchmarks, since BPF_PROG_RUN runs a TC program on an skb it builds.
pub const TC_PASS_PROGRAM: &str = "tc_pass";

/// Programs that only copy a frame's first 64 bytes aside and back, as the
/// gateway's benchmark variants do around the real programs: XDP and TC.
pub const XDP_RESTORE_PROGRAM: &str = "bench_xdp_restore";
pub const TC_RESTORE_PROGRAM: &str = "bench_tc_restore";

/// Maps whose size is chosen at load time. aya creates every map of the
/// object, so each component that loads it creates the big maps of the others
/// too; they get one entry unless the caller sizes them.
const SIZED_MAPS: &[&str] = &[
    common::relay::BINDINGS_MAP,
    common::relay::BINDINGS6_MAP,
    common::relay::TRAFFIC_MAP,
    common::gateway::PEERS_MAP,
    common::gateway::TARGETS_MAP,
    common::gateway::CT_FORWARD_MAP,
    common::gateway::NAT_SLOTS_MAP,
    common::gateway::NAT_CLAIMS_MAP,
    common::gateway::FWD_HINTS_MAP,
    common::gateway::TRAFFIC_MAP,
    common::gateway::GENERATIONS_MAP,
    common::guard::INDICES_MAP,
    common::guard::PROBE_TAGS_MAP,
    common::guard::STUN_SERVERS_MAP,
];

/// Parses the embedded object and creates its maps, the sizable ones (see
/// [`load_object_sized`]) with a single entry. Programs are loaded into the
/// kernel one at a time by the components that need them.
pub fn load_object() -> Result<Ebpf, Error> {
    load_object_sized(&[])
}

/// Like [`load_object`], with `(map name, max entries)` for the maps the
/// caller uses.
pub fn load_object_sized(sizes: &[(&'static str, u32)]) -> Result<Ebpf, Error> {
    load_object_with(sizes, &[])
}

/// Like [`load_object_sized`], with `(name, value)` for `u32` load-time
/// globals (read-only data the verifier sees as constants).
pub(crate) fn load_object_with(
    sizes: &[(&'static str, u32)],
    globals: &[(&'static str, u32)],
) -> Result<Ebpf, Error> {
    raise_memlock_limit();
    let mut loader = EbpfLoader::new();
    for name in SIZED_MAPS {
        loader.map_max_entries(name, 1);
    }
    for &(name, entries) in sizes {
        loader.map_max_entries(name, entries);
    }
    for (name, value) in globals {
        loader.override_global(name, value, true);
    }
    loader.load(OBJECT).map_err(Error::Object)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK, whose default (64
/// KiB or 8 MiB) is too small for real maps. Newer kernels ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads a valid struct and has no other effect on memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

/// Loads one XDP program of `ebpf` into the kernel (it goes through the verifier
/// here) and returns it.
pub fn load_xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, Error> {
    let program = xdp_mut(ebpf, name)?;
    program.load().map_err(|source| Error::Program { name, source })?;
    Ok(program)
}

/// Loads one TC classifier of `ebpf` into the kernel without attaching it
/// (for BPF_PROG_RUN) and returns it.
pub fn load_tc<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, Error> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })?;
    program.load().map_err(|source| Error::Program { name, source })?;
    Ok(program)
}

/// The XDP program `name` of `ebpf`.
pub(crate) fn xdp<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a Xdp, Error> {
    ebpf.program(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

pub(crate) fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}
