//! Short soaks (see docs/soak.md): `ferry-soak` for 90 seconds of workload
//! with a fixed seed (the cloud on sled, two gateways), and for 60 seconds
//! with a random one (the cloud on PostgreSQL with two replicas, three
//! gateways; the seed printed first,
//! and in any failure, to replay it with `cargo xtask soak --seed N`), pass
//! every invariant, run sessions and faults, and leave nothing behind. The
//! two run one after the other, not side by side on a small machine. The
//! long soak is `cargo xtask soak`.
//!
//! Run as root after `cargo build --bins`: `cargo test -p ferry-tests --test soak`.

use std::process::{Command, Stdio};

use ferry_tests::bin_path;

/// The seed of this short run: its schedule kills a gateway around an
/// approval and takes a site's link down (with two gateways, the
/// symmetric NAT's), which found the dead control channel behind a NAT
/// (see docs/soak.md).
const SEED: u64 = 2;

/// One soak at a time: each is a whole world of daemons.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A number in the table row that starts with `name`.
fn row(stdout: &str, name: &str) -> u64 {
    stdout
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no row {name:?} in the table:\n{stdout}"))
}

/// Runs `ferry-soak` with `seed` for `seconds` and checks its table and
/// what it left behind; the table.
fn soak(seed: u64, seconds: u64, extra: &[&str]) -> String {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let more = extra.join(" ");
    eprintln!(
        "ferry-soak --seed {seed} --seconds {seconds} {more} (replay: cargo xtask soak --seed {seed} {more})"
    );
    let mut soak = Command::new(bin_path("ferry-soak"));
    ferry_lab::without_host_config(&mut soak);
    let child = soak
        .args(["--seconds", &seconds.to_string(), "--seed", &seed.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let breach: Vec<&str> = stderr.lines().filter(|l| !l.contains("DEBUG")).collect();
    assert!(
        output.status.success(),
        "ferry-soak --seed {seed} failed ({}):\n{stdout}\n{}",
        output.status,
        breach[breach.len().saturating_sub(200)..].join("\n")
    );
    assert!(stdout.contains(&format!("seed {seed}")), "the seed is printed:\n{stdout}");
    assert!(stdout.contains("ferry-soak: passed"), "seed {seed}: {stdout}");
    assert!(row(&stdout, "sessions run") >= 1, "seed {seed}: {stdout}");
    assert!(row(&stdout, "uses (whitelisted traffic) ok") >= 1, "seed {seed}: {stdout}");
    assert!(row(&stdout, "invariant checks made") >= 10, "seed {seed}: {stdout}");
    // The machine network's capture saw the uses' traffic: its check cannot
    // pass by seeing nothing.
    assert!(row(&stdout, "  to machines: whitelisted, session live") >= 1, "seed {seed}: {stdout}");
    assert!(row(&stdout, "  from machines: answers to those") >= 1, "seed {seed}: {stdout}");
    // The end's check at least: every acknowledged write read back.
    assert!(row(&stdout, "acknowledged writes checked") >= 1, "seed {seed}: {stdout}");
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&format!("fy-{pid}-")))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "seed {seed}: the soak left namespaces behind");
    stdout.into_owned()
}

#[test]
fn a_short_soak_with_a_fixed_seed_passes_every_invariant() {
    // Two technicians: the schedule the notes about seed 2 describe. Two
    // gateways (behind a cone and a symmetric NAT): the gateways' stream
    // says where each session and site fault goes, and a switch-off or a
    // fault then touches that gateway's sessions only, so later draws
    // differ from seed 2's with one gateway; a replay with the same
    // `--gateways` is the same schedule (apart from timing drift).
    let table = soak(SEED, 90, &["--technicians", "2", "--gateways", "2"]);
    assert_eq!(row(&table, "gateways"), 2, "{table}");
    // Sessions ran on both, and each machine network's capture checked
    // traffic: each gateway's rows have their own labels.
    for (n, site) in [(1, "cone NAT"), (2, "symmetric NAT")] {
        assert!(row(&table, &format!("  gateway {n} ({site}): sessions")) >= 1, "gateway {n}: {table}");
        assert!(
            row(&table, &format!("    gateway {n}: machine-network packets checked")) >= 1,
            "gateway {n}: {table}"
        );
    }
    // The cross-site live-path check: seed 2's site faults (gateway 1
    // killed, gateway 2 killed twice, gateway 2's link down) all come while
    // no session on the other gateway carries traffic (the table's "none
    // elsewhere" row), but gateway 1's switch goes off while gateway 2's
    // wireguard-go session does: its echo is checked then (the check's own
    // rows, not the shared live-path row).
    assert!(row(&table, "  site faults (or switch-offs), sessions elsewhere") >= 1, "{table}");
    assert!(row(&table, "  live-path echoes on other gateways during a site fault") >= 1, "{table}");
    // Not exercised here: the symmetric-to-symmetric path check (both
    // technicians are on public addresses); the random run below.
    let tunnels = |path: &str| {
        (1..=2).map(|n| row(&table, &format!("    gateway {n}: tunnels used, {path}"))).sum::<u64>()
    };
    // Both kinds of path: seed 2's ferry client goes direct from a public
    // address, its wireguard-go through a relay.
    assert!(tunnels("direct") >= 1 && tunnels("relayed") >= 1, "{table}");
    assert!(table.contains("storage: the cloud on sled"), "{table}");
    assert!(row(&table, "sessions run") >= 2, "{table}");
    assert!(row(&table, "faults injected") >= 2, "{table}");
    // Seed 2's first sessions draw the ferry client, the ferry client and
    // wireguard-go (the client stream; docs/soak.md).
    assert!(row(&table, "  with the ferry client") >= 1, "{table}");
    assert!(row(&table, "  with wireguard-go") >= 1, "{table}");
    // And the client's tunnels carry traffic, not only come up.
    assert!(row(&table, "  ok through the ferry client") >= 1, "{table}");
    // Its third fault step steps the gateway's clock (the clock's stream;
    // libfaketime, which `cargo xtask setup` installs).
    assert!(row(&table, "  gateway clock step (1 min to 2 h)") >= 1, "{table}");
    // And sessions carried traffic across those steps: the check saw some.
    assert!(row(&table, "sessions carrying on after a clock step") >= 1, "{table}");
    // The world has two relays, and the tunnels' configurations name one
    // of them (which one is the cloud's choice, by free room).
    assert!(row(&table, "  with relay 1") + row(&table, "  with relay 2") >= 1, "{table}");
}

/// A new schedule on every run, so that CI explores beyond seed 2, with
/// the cloud on PostgreSQL: two replicas on the soak's own server (Debian's
/// PostgreSQL 15, found where `tests/cloud_replicas.rs` finds it; `cargo
/// xtask setup` installs it), a kill of the cloud taking one of them or
/// restarting the database, and every fault, the cloud's outage included
/// (left out until December 2026 after a one-off failure after an outage
/// on code since changed; docs/soak.md, "What it found").
#[test]
fn a_short_soak_with_a_random_seed_passes_every_invariant() {
    assert!(
        ferry_lab::postgres::available(),
        "PostgreSQL 15 is not installed ({}/initdb): run `cargo xtask setup`",
        ferry_lab::postgres::BIN_DIR
    );
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; a 32-bit seed is easy to copy.
    let seed = std::collections::hash_map::RandomState::new().build_hasher().finish() >> 32;
    // One step in four is a fault: a 60 s schedule can draw a single one
    // (seed 3246706090 did), and a session of a full minute whose expiry is
    // waited for can be the only one (seed 2374652189 passed every
    // invariant so), so only seed 2's run above counts them.
    let table = soak(seed, 60, &["--storage", "postgres"]);
    assert!(table.contains("storage: the cloud on PostgreSQL, two replicas"), "{table}");
    // The default three gateways and four technicians (the third behind a
    // symmetric NAT): whether a random schedule has that technician use a
    // tunnel to gateway 2 (behind a symmetric NAT), or a site fault while
    // another gateway's sessions carry traffic, is the seed's. Where the
    // table says a check ran, it counted what it checked; where it says
    // it did not, that is said here, not passed over.
    let checked = row(&table, "  symmetric NAT to symmetric NAT, checked");
    if checked == 0 {
        eprintln!("seed {seed}: no symmetric NAT to symmetric NAT tunnel, that check did not run");
    }
    assert_eq!(row(&table, "    found relayed"), checked, "seed {seed}: {table}");
    if row(&table, "  site faults (or switch-offs), sessions elsewhere") >= 1 {
        assert!(
            row(&table, "  live-path echoes on other gateways during a site fault") >= 1,
            "seed {seed}: {table}"
        );
    } else {
        eprintln!("seed {seed}: no site fault while another gateway's sessions carried traffic");
    }
}
