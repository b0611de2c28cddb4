//! A small Ferry world in network namespaces: a simulated internet with the
//! real cloud and a real relay, a customer site whose NAT router hides the
//! gateway, the machine network behind the gateway, and a technician whose
//! own home LAN uses the same addresses as the machine network. The
//! end-to-end tests build it (`ferry-tests`, where it is `GatewayLab`), and
//! so does `cargo xtask demo` (`ferry-demo`), so what the demo shows is what
//! the tests check.
//!
//! ```text
//!                               inet (router namespace, forwards)
//!     +-----------------+-------------------+-------------------+------------------+
//!     | 203.0.113.14/29 | 203.0.113.6/29    | 192.0.2.1/25      | 192.0.2.129/25   | 198.51.100.1/24
//!     |                 |                   |                   |                  |
//!  cloud              relay             technician            office            cust (NAT router)
//!  203.0.113.10       203.0.113.1       192.0.2.2             192.0.2.130       WAN 198.51.100.2
//!  ferry-cloud serve  ferry-relay run   (see below)           the admin's       MASQUERADE;
//!  :7600 http or      UDP 40000-40099                         API calls         tcp443_only: only
//!  https (cloud_tls)  STUN :3478                                                TCP to port 443
//!  (tcp 443 is        WS :443 ws or wss                                         leaves the site
//!   redirected to     (relay_tls)                                                  | LAN bridge
//!   7600)             /metrics 127.0.0.1:9478                                      | 10.20.0.1/24
//!                                                                               gw: uplink 10.20.0.2/24
//!                                                                               ferry-gateway run
//!                                                                               (tun, WireGuard, XDP)
//!                                                                                   | LAN 192.168.50.1/24
//!                                                                              lan (switch: a bridge)
//!                                                   +---------------------+-------------+
//!                                               target-a             target-b          probe
//!                                               192.168.50.10        192.168.50.11     192.168.50.20
//! ```
//!
//! With [`Options::second_relay`], a second relay hangs off the internet
//! router the same way, in a namespace of its own (`relay-2`,
//! [`RELAYS`]`[1]`): 203.0.113.17/29 (the router 203.0.113.22), UDP
//! 40100-40199, STUN :3478, WS :443, /metrics 127.0.0.1:9478 on its own
//! loopback, with a registration, token and state file of its own. The
//! cloud picks one of the two for each allocation; relay 0 is the one of
//! the picture and of the `relay*` fields, both are reached by index
//! ([`World::start_relay_at`], [`World::kill_relay_at`],
//! [`World::restart_relay_at`], [`World::relay_metrics_at`]).
//!
//! The technician, by [`Options::technician`]:
//! - [`Technician::Public`]: `tech` holds 192.0.2.2 itself, and its own home
//!   LAN (192.168.50.77/24) is a veth to `home` (192.168.50.10, a device at
//!   a machine's address: the overlap case).
//! - [`Technician::BehindNat`]: 192.0.2.2 is the WAN address of a home NAT
//!   router (`home-rt`, cone, symmetric or TCP-443-only) whose LAN bridge
//!   (192.168.50.1/24) holds the technician's laptop `tech` at .77 and the
//!   home device `home` at .10.
//!
//! - [`Technician::OnSiteLan`]: on the customer site's LAN beside the
//!   gateway (10.20.0.3/24), behind the same NAT; its home LAN as with
//!   `Public`.
//!
//! The gateway, by [`Options::site`]: behind the customer's NAT router
//! (the picture; [`Site::BehindNat`] with cone, symmetric or TCP-443-only
//! behaviour), or [`Site::Public`]: no `cust` router, the gateway's uplink
//! straight on the internet at 198.51.100.2.
//!
//! The machines run the tests' services when [`Options::lab_services`] is on
//! (target-a: HTTP :8080 `plc-web` and :8081 not whitelisted; target-b: echo
//! :7000 and :7001 not whitelisted; home: HTTP :8080); otherwise the caller
//! starts its own (the demo's PLC and HMI).
//!
//! Everything uses documentation ranges on the internet side and RFC 1918
//! inside the sites; nothing leaves the lab's namespaces. The veth ends of
//! every host, device, switch port and router have TX checksum offload off,
//! so every frame carries a full checksum as on a wire (the gateway's XDP
//! program updates checksums incrementally), and the ends facing the gateway
//! run an XDP pass program, so that XDP_TX and XDP_REDIRECT out of the
//! gateway's interfaces are delivered.
//!
//! The admin drives the cloud's HTTP API from the office namespace, the
//! technician from the technician namespace (`Netns::run_in`: the caller's
//! own sockets are made inside those namespaces).
//!
//! ```text
//! let mut world = World::new(Options::default());
//! world.start_cloud_and_login();             // one-time password -> ADMIN_PASSWORD
//! world.start_relay();                       // registered, online at the cloud
//! let gw = world.create_gateway("press");   // targets plc-web and echo, enrolment token
//! world.enroll(&gw.enrolment_token);         // ferry-gateway --config F enroll ...
//! world.start_gateway();                     // ferry-gateway --config F run, "ferry-gateway ready"
//! world.remote("on");
//! let mut tech = world.create_technician("tech1");
//! let id = world.create_session(gw.id, &["plc-web", "echo"], &[tech.id], 600, false);
//! world.start_session(&mut tech, id);
//! let tunnel = world.technician_tunnel(&mut tech, id);   // wg-quick -> wireguard-go
//! http_get(&world.tech_ns, tunnel.proxy("plc-web"), HTTP_PORT, timeout);
//! ```
//!
//! The binaries (`ferry-cloud`, `ferry-relay`, `ferry-gateway`) are found
//! beside the running executable (`ferry_lab::workspace_bin`): a test's in
//! target/debug, the demo's in target/release.

pub mod addresses;
pub mod api;
mod client;
mod cloud;
mod gateway;
mod relays;
pub mod services;
mod technician;
mod topology;
pub mod wg;

pub use addresses::*;
pub use client::{FerryClient, client_proxies, said};
pub use cloud::{GatewayRecord, User, problem_type};
pub use gateway::{PANEL_PORT, faketime_library, gateway_name, metric_value, panel_addr, switch_word};
pub use relays::{RelayNode, relay_name};
pub use services::{
    EchoLoop, Server, echo_round_trip, eventually, http_get, http_get_path, poll, tcp_exchange, wait_until,
};
pub use technician::{TechTunnel, parse_targets};
pub use topology::{Options, Site, SiteNode, SiteView, Technician, World};

use std::{
    path::PathBuf,
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

/// A command for one of the workspace's binaries, which reads no Ferry
/// configuration of the host's ([`ferry_lab::without_host_config`]).
pub fn bin(name: &str) -> Command {
    let mut cmd = Command::new(bin_path(name));
    ferry_lab::without_host_config(&mut cmd);
    cmd
}

/// The path of a workspace binary beside the running executable; panics
/// with what to build when it is missing.
pub fn bin_path(name: &str) -> PathBuf {
    ferry_lab::workspace_bin(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Milliseconds since the Unix epoch, the clock of `expires_ms`.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

fn strip_len(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}
