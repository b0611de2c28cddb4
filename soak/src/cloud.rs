//! The cloud's storage (sled, or PostgreSQL with two replicas) and the
//! fault that kills it: with sled, the one `ferry-cloud` SIGKILLed and
//! started again over the same folder; with PostgreSQL, one of the two
//! replicas (which one from a fifth stream of the seed), or, at some of
//! those steps, the database itself stopped and started again.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use ferry_lab::postgres::{Durability, Postgres};
use ferry_world::{CLOUD_PORT, http_get_path, metric_value, poll};
use serde_json::{Value, json};

use crate::{
    recovery::Carrying,
    soak::{Outcome, Soak},
};

/// Which replica a "kill cloud" takes, and whether the database restarts
/// instead: a fifth stream of the seed, so that the four others (and so
/// every seed's schedule of steps, faults, outages and client kinds) stay
/// as they were. Drawn only on PostgreSQL.
pub const REPLICA_STREAM: u64 = 0x5eed_2e91_1ca5;
/// The second replica's port at the cloud's address (the first's is
/// [`CLOUD_PORT`]).
pub const REPLICA_B: u16 = 7601;
/// Of the "kill cloud" steps on PostgreSQL, the share that restarts the
/// database instead, in percent.
const DATABASE_RESTART_PERCENT: u64 = 25;
/// After a replica's kill: the gateway and the relays on a running replica
/// (each moves when its channel breaks, or finds the restarted one).
const CHANNELS_BACK: Duration = Duration::from_secs(60);
/// After the database is back: every replica answers from it again within
/// this bound (it reconnects by itself).
const DATABASE_BACK: Duration = Duration::from_secs(30);

/// Where the cloud keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Storage {
    /// One `ferry-cloud` over sled in its data folder.
    Sled,
    /// Two `ferry-cloud` replicas on one PostgreSQL database that the soak
    /// starts in a temporary folder.
    Postgres,
}

impl Storage {
    /// The table's line.
    pub fn describe(self) -> String {
        match self {
            Storage::Sled => "the cloud on sled (one ferry-cloud)".to_string(),
            Storage::Postgres => {
                format!("the cloud on PostgreSQL, two replicas (:{CLOUD_PORT}, :{REPLICA_B})")
            }
        }
    }
}

/// The soak's own PostgreSQL server (lab's, as the tests start theirs: in a
/// temporary folder, on a Unix socket, removed when dropped) with an empty
/// database, and the URL the replicas are given.
pub fn start_database() -> Result<(Postgres, String), String> {
    let server = Postgres::start(Durability::Relaxed).map_err(|e| format!("PostgreSQL: {e}"))?;
    server.create_database("ferry").map_err(|e| format!("PostgreSQL: creating the database: {e}"))?;
    let url = server.url("ferry");
    Ok((server, url))
}

/// The name of replica `port` in the watch on memory and descriptors.
pub fn replica_name(port: u16) -> &'static str {
    if port == CLOUD_PORT { "ferry-cloud :7600" } else { "ferry-cloud :7601" }
}

impl Soak {
    /// The fault "kill cloud". Draws one number from the first stream (how
    /// long the cloud stays down), as it always did.
    /// The sessions of `carrying` must carry traffic while the cloud is
    /// down: the data plane needs no cloud.
    pub fn kill_cloud(&mut self, carrying: &[Carrying]) -> Outcome {
        let down = Duration::from_millis(self.rng.between(100, 3000));
        if self.database.is_none() {
            self.acked_write(self.world.cloud_addr(), "just before the kill")?;
            self.event(format!("fault: SIGKILL the cloud ({} sessions carrying traffic)", carrying.len()));
            self.world.kill_cloud();
            let killed = Instant::now();
            self.check_untouched(carrying, "while the cloud is down")?;
            std::thread::sleep(down.saturating_sub(killed.elapsed()));
            self.world.start_cloud();
            self.event("fault: the cloud restarted".into());
            return Ok(());
        }
        if self.replica_rng.chance(DATABASE_RESTART_PERCENT) {
            let immediate = self.replica_rng.chance(50);
            return self.restart_database(down, immediate, carrying);
        }
        let port = if self.replica_rng.chance(50) { CLOUD_PORT } else { REPLICA_B };
        let other = if port == CLOUD_PORT { REPLICA_B } else { CLOUD_PORT };
        *self.stats.cloud_kills.entry(replica_name(port)).or_default() += 1;
        let ip = self.world.cloud_addr().ip();
        self.acked_write(SocketAddr::new(ip, port), "just before the kill")?;
        // The soak's own calls go to the other replica from now on (and
        // any that finds its replica down moves on by itself).
        self.world.use_cloud_replica(other);
        self.event(format!("fault: SIGKILL the cloud's replica :{port} (the soak's calls go to :{other})"));
        if port == CLOUD_PORT {
            self.world.kill_cloud();
        } else {
            self.world.kill_cloud_replica(port);
        }
        // Meanwhile the other replica takes writes: the cloud is still there.
        let killed = Instant::now();
        self.check_untouched(carrying, &format!("while the replica :{port} is down"))?;
        self.acked_write(SocketAddr::new(ip, other), &format!("with :{port} down"))?;
        std::thread::sleep(down.saturating_sub(killed.elapsed()));
        if port == CLOUD_PORT {
            self.world.start_cloud();
        } else {
            self.world.start_cloud_replica(port);
        }
        self.event(format!("fault: the replica :{port} restarted"));
        self.check_channels_on_replicas()
    }

    /// Each gateway and each relay hold one control channel to a
    /// running replica (`ferry_cloud_control_connections{channel}` summed
    /// over both), within [`CHANNELS_BACK`]: the cloud's view of them
    /// online (the settle after the fault) is the database's, which a
    /// channel to the killed replica could outlive for a while.
    fn check_channels_on_replicas(&mut self) -> Outcome {
        let began = Instant::now();
        let addrs = self.world.cloud_replica_addrs();
        let world = &self.world;
        // One gateway channel per gateway, one relay channel per relay
        // (the soak runs two, crate::relays).
        let want = [self.gateways.len() as f64, world.relay_count() as f64];
        let mut seen = String::new();
        let on_replicas = poll(CHANNELS_BACK, || {
            let mut per = Vec::new();
            let mut sums = [0.0, 0.0];
            for addr in &addrs {
                let metrics = http_get_path(
                    &world.office_ns,
                    &addr.ip().to_string(),
                    addr.port(),
                    "/metrics",
                    Duration::from_secs(5),
                )
                .unwrap_or_default();
                let counts = ["gateway", "relay"].map(|channel| {
                    metric_value(
                        &metrics,
                        &format!("ferry_cloud_control_connections{{channel=\"{channel}\"}}"),
                    )
                });
                sums[0] += counts[0];
                sums[1] += counts[1];
                per.push(format!(":{} gateway {} relay {}", addr.port(), counts[0], counts[1]));
            }
            seen = per.join(", ");
            sums == want
        });
        self.stats.checks += 1;
        if !on_replicas {
            return Err(format!(
                "{CHANNELS_BACK:?} after a replica was killed, the gateways and the relays do not hold one channel \
                 each to the running replicas: {seen}"
            ));
        }
        self.event(format!(
            "the gateways' and the relays' channels on the replicas after {:.1}s: {seen}",
            began.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// An API token created through the replica at `addr` (an admin's
    /// write that must then survive the kill): a breach if it is refused.
    fn acked_write(&mut self, addr: SocketAddr, when: &str) -> Outcome {
        let name = self.acked.next_token_name();
        let body = json!({"name": name, "scopes": ["sessions:read"]});
        let mut answer = Err(String::new());
        for _ in 0..2 {
            let token = self.world.admin_token.lock().unwrap().clone();
            let (api, body) = (self.world.api().at(addr), body.clone());
            answer = self
                .world
                .office_ns
                .run_in(move || api.call("POST", "/api/v1/tokens", token.as_deref(), body))
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            if !matches!(answer, Ok((401, _))) {
                break;
            }
            // The admin's token expired: renewed by a call that logs in again.
            self.world.admin("GET", "/api/v1/tokens", Value::Null);
        }
        self.stats.checks += 1;
        match answer {
            Ok((201, _)) => {
                self.event(format!("API token {name} created through {addr} ({when})"));
                self.acked.token(name);
                Ok(())
            }
            other => Err(format!("{when}, creating an API token through {addr}: {other:?}")),
        }
    }

    /// PostgreSQL stopped (`immediate`: as a crash, with recovery at the
    /// next start; else a fast shutdown) for `down`, then started again.
    /// Meanwhile the replicas run on and answer 503 ("storage
    /// unavailable"); afterwards they serve again by themselves.
    fn restart_database(&mut self, down: Duration, immediate: bool, carrying: &[Carrying]) -> Outcome {
        *self.stats.cloud_kills.entry("database restarted").or_default() += 1;
        self.acked_write(self.world.cloud_addr(), "just before the database stopped")?;
        let how = if immediate { "immediate (as a crash)" } else { "fast" };
        // A fresh admin token: an expired one is refused before the database
        // is asked, with a 401 where the check below wants the 503.
        self.world.renew_admin_token();
        let database = self.database.as_ref().expect("on PostgreSQL");
        database.stop(immediate).map_err(|e| format!("stopping PostgreSQL: {e}"))?;
        let stopped = Instant::now();
        self.event(format!("fault: PostgreSQL stopped ({how} shutdown) for {:.1}s", down.as_secs_f64()));
        if let Err(breach) = self.check_untouched(carrying, "while the database is stopped") {
            let _ = self.database.as_ref().map(|d| d.resume());
            return Err(breach);
        }
        // A request that needs the database gets 503 from either replica,
        // not another error, and not a hang.
        let path = format!("/api/v1/gateways/{}", self.gateways[0].id);
        let token = self.world.admin_token.lock().unwrap().clone();
        for addr in self.world.cloud_replica_addrs() {
            let api = self.world.api().at(addr);
            let (path2, token) = (path.clone(), token.clone());
            let answer = self
                .world
                .office_ns
                .run_in(move || api.call("GET", &path2, token.as_deref(), Value::Null))
                .map_err(|e| e.to_string())?;
            self.stats.checks += 1;
            match answer {
                Ok((503, _)) => self.stats.database_503s += 1,
                Ok((status, body)) => {
                    let _ = self.database.as_ref().map(|d| d.resume());
                    return Err(format!(
                        "with PostgreSQL stopped, {addr} answered GET {path} with {status} {body}, not 503"
                    ));
                }
                Err(e) => {
                    let _ = self.database.as_ref().map(|d| d.resume());
                    return Err(format!("with PostgreSQL stopped, {addr} did not answer GET {path}: {e}"));
                }
            }
        }
        std::thread::sleep(down.saturating_sub(stopped.elapsed()));
        let database = self.database.as_ref().expect("on PostgreSQL");
        database.resume().map_err(|e| format!("starting PostgreSQL again: {e}"))?;
        let resumed = Instant::now();
        // Both replicas serve again by themselves.
        let addrs = self.world.cloud_replica_addrs();
        let world = &self.world;
        let mut last = String::new();
        let back = poll(DATABASE_BACK, || {
            let token = world.admin_token.lock().unwrap().clone();
            addrs.iter().all(|&addr| {
                let api = world.api().at(addr);
                let (path, token) = (path.clone(), token.clone());
                let answer =
                    world.office_ns.run_in(move || api.call("GET", &path, token.as_deref(), Value::Null));
                match answer {
                    Ok(Ok((200 | 401, _))) => true,
                    other => {
                        last = format!("{addr}: {other:?}");
                        false
                    }
                }
            })
        });
        self.stats.checks += 1;
        if !back {
            return Err(format!(
                "{DATABASE_BACK:?} after PostgreSQL started again, a replica does not serve: {last}"
            ));
        }
        self.event(format!(
            "fault: PostgreSQL running again; both replicas serve {:.1}s later",
            resumed.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}
