//! Helpers shared by the end-to-end tests.

pub mod browser;
pub mod client_lab;
pub mod cloud;
pub mod control_gateway;
pub mod gateway_lab;
pub mod panel;
pub mod path_lab;
pub mod pcap;
pub mod relay_lab;
pub mod stand_in_gateway;
pub mod technician;

pub use ferry_world::{bin, bin_path, wg};
