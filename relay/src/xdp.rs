//! The XDP forwarder, from the daemon's side (filled in with ferry_ebpf::relay).

use std::sync::Arc;

use anyhow::{Result, bail};

use crate::{
    config::{Config, XdpMode},
    metrics::Metrics,
    runtime::BindingTable,
};

pub struct Forwarder;

impl Forwarder {
    pub fn table(&self) -> Arc<dyn BindingTable> {
        unreachable!()
    }

    pub fn stop(self) {}
}

pub fn start(_config: &Config, _mode: XdpMode, _max_bindings: u32, _metrics: &Metrics) -> Result<Forwarder> {
    bail!("XDP forwarding is not wired yet")
}
