//! The two relays: which one each session's configuration uses, the fault
//! that kills one of them (drawn from a stream of its own), and what every
//! check of "the relay" reads of both (running, online, connected, empty
//! at the end).

use std::time::{Duration, Instant};

use ferry_world::metric_value;

use crate::{
    recovery::Carrying,
    soak::{Outcome, Soak},
};

/// Which relay a "kill relay" fault kills: a stream of its own, so that the
/// others, and so every seed's schedule of steps and faults (seed 2's
/// among them), stay as they were before there were two relays.
pub const RELAY_STREAM: u64 = 0x5eed_2e1a_7002;

/// The relays as the table and the watch on memory and descriptors call
/// them, by index.
pub const RELAY_DAEMONS: [&str; 2] = ["ferry-relay-1", "ferry-relay-2"];

impl Soak {
    /// The relay of a wg-quick file: its peer's `Endpoint`, when that is one
    /// of the relays' addresses (otherwise the gateway's public mapping: no
    /// relay).
    pub fn relay_of_wg_quick(&self, wg_quick: &str) -> Option<usize> {
        let endpoint = wg_quick.lines().find_map(|l| {
            l.trim().strip_prefix("Endpoint").map(|rest| rest.trim_start_matches([' ', '=']).trim())
        })?;
        let ip = endpoint.rsplit_once(':').map_or(endpoint, |(ip, _)| ip);
        self.world.relay_index_of_ip(ip)
    }

    /// The relay of configuration `config_id` of session `id`, as the cloud
    /// shows it (the `ferry` client's status names the relay only while its
    /// path goes through it).
    pub fn relay_of_config(&self, id: u64, config_id: u64) -> Option<usize> {
        let session = self.world.session(id);
        let config = session["configs"].as_array()?.iter().find(|c| c["id"] == config_id)?.clone();
        self.world.relay_index_of(config["relay"]["relay_id"].as_u64()?)
    }

    /// "relay 1", "relay 2", or "no relay", for the log.
    pub fn relay_label(relay: Option<usize>) -> String {
        relay.map_or_else(|| "no relay".to_string(), |index| format!("relay {}", index + 1))
    }

    /// Counts a tunnel's configuration by relay.
    pub fn count_relay(&mut self, relay: Option<usize>) {
        *self.stats.configs_by_relay.entry(relay).or_default() += 1;
    }

    /// SIGKILL of one relay (which one from [`RELAY_STREAM`]) and its
    /// restart with the same registration, token and state file. The
    /// sessions through it must carry traffic again within the recovery
    /// bound; those through the other one must not notice: an echo through
    /// each right after the kill.
    pub fn kill_one_relay(&mut self) -> Outcome {
        let index = self.relay_pick.below(self.world.relay_count() as u64) as usize;
        *self.stats.relay_kills.entry(index).or_default() += 1;
        let carrying = self.carrying();
        if !carrying.is_empty() {
            // Idle peers, as the soak found them: a gateway with data just
            // sent would re-initiate a handshake on its own and hide a relay
            // that forgot its bindings.
            std::thread::sleep(Duration::from_secs(3));
        }
        let (through, others): (Vec<Carrying>, Vec<Carrying>) =
            carrying.into_iter().partition(|c| c.relay == Some(index));
        self.event(format!(
            "fault: SIGKILL relay {} ({} sessions carrying traffic on its configurations, {} on others')",
            index + 1,
            through.len(),
            others.len()
        ));
        self.world.kill_relay_at(index);
        let killed = Instant::now();
        let down = Duration::from_millis(self.rng.between(100, 3000));
        // A session with a live path keeps working through a fault that
        // does not touch its path: checked before the relay starts again.
        self.check_untouched(
            &others,
            &format!("while relay {}, not its configuration's, was down", index + 1),
        )?;
        self.stats.relay_untouched += others.len() as u64;
        std::thread::sleep(down.saturating_sub(killed.elapsed()));
        self.world.restart_relay_at(index);
        let running_again = Instant::now();
        self.event(format!("fault: relay {} restarted", index + 1));
        self.check_relay_recovery(&through, running_again)
    }

    /// Each relay's process, by the table's name, for the checks that
    /// every daemon runs and for the samples of memory and descriptors.
    pub fn relay_processes(&mut self) -> Vec<(&'static str, &mut Option<ferry_lab::Process>)> {
        let world = &mut self.world;
        let mut all = Vec::new();
        let (first, rest) = (&mut world.relay, &mut world.extra_relays);
        all.push((RELAY_DAEMONS[0], first));
        for (name, node) in RELAY_DAEMONS[1..].iter().zip(rest.iter_mut()) {
            all.push((*name, &mut node.process));
        }
        all
    }

    /// Whether the cloud shows every relay online; what it shows of each.
    pub fn relays_online(&self) -> (bool, String) {
        let mut all = true;
        let mut seen = Vec::new();
        for index in 0..self.world.relay_count() {
            let id = self.world.relay_id_at(index).expect("every relay is registered");
            // Through either replica, never a panic (the database may be
            // restarting).
            let health = crate::soak::relay_health(&self.world, id);
            all &= health["online"] == true;
            seen.push(format!("relay {}'s health: {health}", index + 1));
        }
        (all, seen.join("; "))
    }

    /// Each relay's `ferry_relay_control_connected`: whether all are 1, and
    /// the values.
    pub fn relays_connected(&self) -> (bool, String) {
        let mut all = true;
        let mut seen = Vec::new();
        for index in 0..self.world.relay_count() {
            let metrics = self.world.relay_metrics_at(index).unwrap_or_default();
            let connected = metric_value(&metrics, "ferry_relay_control_connected");
            all &= connected == 1.0;
            seen.push(format!("relay {} control_connected {connected}", index + 1));
        }
        (all, seen.join(", "))
    }

    /// Each relay's allocations and bindings, for the leak check at the end
    /// (a relay whose `/metrics` does not answer counts as one left).
    pub fn relay_leak_values(&self) -> Vec<(String, f64)> {
        let mut values = Vec::new();
        for index in 0..self.world.relay_count() {
            match self.world.relay_metrics_at(index) {
                Ok(metrics) => {
                    for (what, metric) in
                        [("allocations", "ferry_relay_allocations"), ("bindings", "ferry_relay_bindings")]
                    {
                        values.push((format!("relay {} {what}", index + 1), metric_value(&metrics, metric)));
                    }
                }
                Err(e) => values.push((format!("relay {} /metrics unreadable ({e})", index + 1), 1.0)),
            }
        }
        values
    }
}
