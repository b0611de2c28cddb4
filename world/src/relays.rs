//! The world's relays by index: 0 is the relay every world has (the
//! `relay*` fields of [`World`], which the tests use by name), 1 the second
//! one of [`crate::Options::second_relay`]. Each has its own namespace on
//! the internet, public address, port range, registration, token and state
//! file ([`crate::RELAYS`]).

use std::time::Duration;

use ferry_lab::{Netns, Process};
use nix::sys::signal::Signal;

use crate::{RELAYS, World, bin_path, services::http_get_path, services::wait_until};

/// A relay after the first: where it runs and, once started, its process
/// and registration.
pub struct RelayNode {
    pub ns: Netns,
    /// Its interface toward the internet.
    pub ifname: String,
    pub process: Option<Process>,
    pub id: Option<u64>,
    /// With `relay_tls`: the fingerprint of its certificate.
    pub pin: Option<String>,
    /// `ferry-relay`'s arguments, for a restart with the same identity.
    pub(crate) args: Vec<String>,
}

impl RelayNode {
    pub(crate) fn new(ns: Netns, ifname: String) -> RelayNode {
        RelayNode { ns, ifname, process: None, id: None, pin: None, args: Vec::new() }
    }
}

/// How logs and reports name relay `index`: `ferry-relay` for the first
/// (as before there was a second), `ferry-relay-2` for the second.
pub fn relay_name(index: usize) -> String {
    if index == 0 { "ferry-relay".to_string() } else { format!("ferry-relay-{}", index + 1) }
}

impl World {
    /// How many relays the world has (started or not): 1, or 2 with
    /// [`crate::Options::second_relay`].
    pub fn relay_count(&self) -> usize {
        1 + self.extra_relays.len()
    }

    fn extra(&self, index: usize) -> &RelayNode {
        self.extra_relays
            .get(index.wrapping_sub(1))
            .unwrap_or_else(|| panic!("the world has no relay {index}"))
    }

    fn extra_mut(&mut self, index: usize) -> &mut RelayNode {
        self.extra_relays
            .get_mut(index.wrapping_sub(1))
            .unwrap_or_else(|| panic!("the world has no relay {index}"))
    }

    /// Relay `index`'s namespace.
    pub fn relay_ns_at(&self, index: usize) -> &Netns {
        if index == 0 { &self.relay_ns } else { &self.extra(index).ns }
    }

    /// Relay `index`'s interface toward the internet.
    pub fn relay_if_at(&self, index: usize) -> &str {
        if index == 0 { &self.relay_if } else { &self.extra(index).ifname }
    }

    /// Relay `index`'s process, while it runs.
    pub fn relay_process_at(&self, index: usize) -> Option<&Process> {
        if index == 0 { self.relay.as_ref() } else { self.extra(index).process.as_ref() }
    }

    /// The same, to poll or signal it.
    pub fn relay_process_mut_at(&mut self, index: usize) -> &mut Option<Process> {
        if index == 0 { &mut self.relay } else { &mut self.extra_mut(index).process }
    }

    /// Relay `index`'s id at the cloud, once registered.
    pub fn relay_id_at(&self, index: usize) -> Option<u64> {
        if index == 0 { self.relay_id } else { self.extra(index).id }
    }

    /// The index of the relay registered as `id`.
    pub fn relay_index_of(&self, id: u64) -> Option<usize> {
        (0..self.relay_count()).find(|&index| self.relay_id_at(index) == Some(id))
    }

    /// The index of the relay whose public address is `ip`.
    pub fn relay_index_of_ip(&self, ip: &str) -> Option<usize> {
        (0..self.relay_count()).find(|&index| RELAYS[index].ip == ip)
    }

    /// With `relay_tls`: the fingerprint of relay `index`'s certificate.
    pub fn relay_pin_at(&self, index: usize) -> Option<&str> {
        if index == 0 { self.relay_pin.as_deref() } else { self.extra(index).pin.as_deref() }
    }

    pub(crate) fn set_relay_identity(
        &mut self,
        index: usize,
        id: u64,
        args: Vec<String>,
        pin: Option<String>,
    ) {
        if index == 0 {
            (self.relay_id, self.relay_args) = (Some(id), args);
            if pin.is_some() {
                self.relay_pin = pin;
            }
        } else {
            let node = self.extra_mut(index);
            (node.id, node.args) = (Some(id), args);
            if pin.is_some() {
                node.pin = pin;
            }
        }
    }

    /// Starts relay `index`'s `ferry-relay run` with the arguments of
    /// [`World::start_relay_at`] (the same registration and token) and
    /// waits until the cloud shows it online.
    pub(crate) fn run_relay_at(&mut self, index: usize) {
        assert!(self.relay_process_at(index).is_none(), "relay {index} runs already");
        let args = if index == 0 { self.relay_args.clone() } else { self.extra(index).args.clone() };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut relay = self.relay_ns_at(index).spawn_program(bin_path("ferry-relay"), &args).unwrap();
        relay.wait_for_output("ferry-relay ready", Duration::from_secs(20)).unwrap();
        *self.relay_process_mut_at(index) = Some(relay);
        let id = self.relay_id_at(index).expect("the relay is registered");
        wait_until(Duration::from_secs(30), "the relay to be online at the cloud", || {
            self.relay_health(id)["online"] == true
        });
    }

    /// SIGKILL of relay `index`, as a crash or power cut ends it.
    pub fn kill_relay_at(&mut self, index: usize) {
        let mut relay = self.relay_process_mut_at(index).take().expect("the relay is not running");
        relay.signal(Signal::SIGKILL).unwrap();
        relay.wait_timeout(Duration::from_secs(10)).unwrap();
    }

    /// Starts relay `index` again after [`World::kill_relay_at`], with the
    /// same registration, token and state file, and waits until the cloud
    /// shows it online.
    pub fn restart_relay_at(&mut self, index: usize) {
        self.run_relay_at(index);
    }

    /// Relay `index`'s `/metrics` text, from its own namespace.
    pub fn relay_metrics_at(&self, index: usize) -> Result<String, String> {
        let (ip, port) = RELAYS[index].metrics.rsplit_once(':').expect("an address with a port");
        let port = port.parse().expect("a port");
        http_get_path(self.relay_ns_at(index), ip, port, "/metrics", Duration::from_secs(5))
            .map_err(|e| e.to_string())
    }
}
