//! Helpers shared by the end-to-end tests.

pub mod cloud;
pub mod gateway_lab;
pub mod pcap;
pub mod relay_lab;
pub mod stand_in_gateway;
pub mod wg;

use std::{path::PathBuf, process::Command};

/// A command for one of the workspace's binaries.
pub fn bin(name: &str) -> Command {
    Command::new(bin_path(name))
}

pub fn bin_path(name: &str) -> PathBuf {
    ferry_lab::workspace_bin(name).unwrap_or_else(|e| panic!("{e}"))
}
