//! Helpers shared by the end-to-end tests.

pub mod browser;
pub mod cloud;
pub mod control_gateway;
pub mod forward;
pub mod gateway_lab;
pub mod panel;
pub mod pcap;
pub mod relay_lab;
pub mod stand_in_gateway;
pub mod wg;

use std::{path::PathBuf, process::Command};

/// A command for one of the workspace's binaries, which reads no Ferry
/// configuration of the host's ([`ferry_lab::without_host_config`]).
pub fn bin(name: &str) -> Command {
    let mut cmd = Command::new(bin_path(name));
    ferry_lab::without_host_config(&mut cmd);
    cmd
}

pub fn bin_path(name: &str) -> PathBuf {
    ferry_lab::workspace_bin(name).unwrap_or_else(|e| panic!("{e}"))
}
