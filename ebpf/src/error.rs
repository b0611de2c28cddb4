use aya::{EbpfError, maps::MapError, programs::ProgramError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the gateway's eBPF programs read the NAT slots under a sequence lock that relies on the CPU \
         keeping loads and stores in order, as x86-64 does; this host is {0}, where a reply could be \
         translated with two connections' fields, so the gateway refuses to run here (docs/gateway.md)"
    )]
    UnsupportedArch(&'static str),
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
        "`{iface}` is not an Ethernet interface (link type {link_type}); Ferry's XDP programs parse \
         Ethernet frames and would misread every frame on a raw-IP link such as ppp, wwan or tun"
    )]
    NotEthernet { iface: String, link_type: u16 },
    /// A map refused a new entry because it holds as many as it was created
    /// for. Callers that add entries on demand (relay allocations) refuse the
    /// request instead of failing silently.
    #[error("map `{name}` is full ({capacity} entries); load it with a larger size")]
    MapFull { name: &'static str, capacity: u32 },
    #[error("adding the clsact qdisc to `{iface}` or attaching TC there failed: {source}")]
    Tc {
        iface: String,
        #[source]
        source: aya::programs::tc::TcError,
    },
    #[error("attaching the TC program to `{iface}` failed: {source}")]
    TcAttach {
        iface: String,
        #[source]
        source: ProgramError,
    },
    /// A forwarding table the gateway programs cannot apply; nothing was
    /// changed.
    #[error("invalid forwarding table: {0}")]
    InvalidTable(#[from] crate::gateway::TableError),
    #[error(transparent)]
    Io(std::io::Error),
    #[error("BPF_PROG_RUN: {0}")]
    TestRun(String),
}
