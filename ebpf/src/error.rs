use aya::{EbpfError, maps::MapError, programs::ProgramError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("parsing the embedded eBPF object failed: {0}")]
    Object(#[source] EbpfError),
    #[error("the eBPF object has no program `{0}`; it was built from a different gateway-ebpf")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}`; it was built from a different gateway-ebpf")]
    MissingMap(&'static str),
    #[error("program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("interface `{0}` does not exist in this network namespace")]
    UnknownInterface(String),
    #[error("attaching XDP to `{iface}` in {mode} mode failed: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("BPF_PROG_RUN: {0}")]
    TestRun(String),
}
