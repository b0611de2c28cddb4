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
    #[error(
        "`{iface}` is not an Ethernet interface (link type {link_type}); the uplink guard parses Ethernet \
         frames and would filter nothing on a raw-IP link such as ppp, wwan or tun"
    )]
    NotEthernet { iface: String, link_type: u16 },
    #[error(transparent)]
    Io(std::io::Error),
    #[error("BPF_PROG_RUN: {0}")]
    TestRun(String),
}
