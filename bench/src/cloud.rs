//! The control plane under load, measured in the same run: the real release
//! `ferry-cloud` on loopback with 64 concurrent HTTP clients creating,
//! starting and ending sessions, against raw sled insert+flush (the storage
//! it commits every change to), and the memory of thousands of idle gateway
//! control connections.
//!
//! Then the storages and replica counts compared with every cloud process
//! capped at half a core (a cgroup CPU quota), so that the ratios show how
//! the cloud scales rather than how many cores the machine has: sled, one
//! replica on PostgreSQL, and two replicas on one PostgreSQL database
//! behind the same 64 clients (half of them on each replica), each on fresh
//! storage. PostgreSQL (Debian's, fsync on, its data beside the results) is
//! not capped: it is the database the replicas share, not a cloud process.
//!
//! `FERRY_BENCH_SECONDS` (default 10) sets each measured window, after a 2 s
//! warm-up; `FERRY_BENCH_GATEWAYS` (default 10,000) the idle connections;
//! `FERRY_BENCH_ROUNDS` (default 3) the rounds of the capped comparison,
//! whose rows are each the round with the median ratio (with an even count,
//! the upper of the two middle ones): the one replica of
//! `pg2_vs_pg1_session_rate` is the one of that row's round, which can be
//! another round than `pg1_vs_sled_session_rate`'s.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use ferry_control::{
    GatewayId, SigningKey, WgKey,
    client::{self, Channel},
    gateway::ToGateway,
};
use serde_json::{Value, json};

use crate::{
    cgroup::CpuQuota,
    report::{Better, Row},
};

const CLIENTS: usize = 64;
const WARM_UP: Duration = Duration::from_secs(2);
const DEFAULT_SECONDS: u64 = 10;
/// Rounds of the capped comparison (`FERRY_BENCH_ROUNDS`).
const DEFAULT_ROUNDS: u64 = 3;
const DEFAULT_GATEWAYS: usize = 10_000;
const SCOPES: [&str; 4] = ["sessions:read", "sessions:write", "gateways:read", "gateways:write"];
/// Each cloud process's CPU in the capped comparison, in cores.
const CAP_CORES: f64 = 0.5;

pub fn run(work_dir: &Path) -> Result<Vec<Row>> {
    let window = Duration::from_secs(env_number("FERRY_BENCH_SECONDS", DEFAULT_SECONDS)?.max(1));
    let gateways = env_number("FERRY_BENCH_GATEWAYS", DEFAULT_GATEWAYS as u64)? as usize;
    // Both ends of every idle connection live on this machine: the bench
    // holds one descriptor per connection and so does the cloud, which
    // inherits this limit.
    let nofile = raise_nofile(gateways as u64 + 4096)?;
    // Beside the results rather than in /tmp: a tmpfs would make every
    // flush free and the storage limit meaningless.
    std::fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let scratch = tempfile::Builder::new().prefix("cloud-").tempdir_in(work_dir)?;
    let cloud = Cloud::start(&scratch.path().join("data"), &scratch.path().join("ferry-cloud.log"), None)?;
    eprintln!("cloud bench: ferry-cloud on {} (pid {}), RLIMIT_NOFILE {nofile}", cloud.addr, cloud.pid());
    // The figures share the machine's cores with whatever else runs on it.
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("cloud bench: load average before: {}", load_average.trim());
    let token = cloud.api_token()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;

    let setup = ureq_agent(false);
    let (gateway_id, key) = create_and_enrol(&setup, &cloud, &token, "press 4")?;
    let channel = runtime.block_on(connect(cloud.addr, gateway_id, &key, true))?;
    // Every start and end pushes the gateway its desired state: read them
    // so they never back up, and answer nothing.
    let reader = runtime.spawn(held(channel));

    eprintln!("cloud bench: {CLIENTS} clients create, start and end sessions for {}s", window.as_secs());
    let load = session_load(&[&cloud], &token, gateway_id, window, None)?;
    reader.abort();
    // The gateway's connection closes with the task; it should not count
    // among the idle ones.
    std::thread::sleep(Duration::from_millis(500));

    let sled_dir = scratch.path().join("sled");
    eprintln!("cloud bench: raw sled insert+flush of {} bytes, 64 threads then 1", load.document_bytes);
    let sled_many = sled_baseline(&sled_dir.join("64"), CLIENTS, load.document_bytes, window)?;
    let sled_one = sled_baseline(&sled_dir.join("1"), 1, load.document_bytes, window)?;

    let idle = idle_gateways(&cloud, &token, &runtime, gateways)?;
    cloud.stop()?;
    for gateway in &idle.held {
        gateway.abort();
    }
    let capped = capped_comparison(scratch.path(), work_dir, window, &runtime)?;
    eprintln!(
        "cloud bench: {}",
        audit_verify(&["--data-dir".as_ref(), scratch.path().join("data").as_os_str()])?
    );
    if load.failures > 0 {
        eprintln!(
            "cloud bench: {} requests failed during the load; first: {}",
            load.failures,
            load.first_failure.as_deref().unwrap_or("?")
        );
    }

    let sled_many_name = "raw sled insert+flush, 64 threads";
    let mut rows = Vec::new();
    for (name, op) in [("create", &load.create), ("start", &load.start), ("end", &load.end)] {
        rows.push(Row::new(
            "cloud",
            &format!("session_{name}_per_s"),
            "ops/s",
            op.per_s,
            sled_many.per_s,
            sled_many_name,
            Better::Higher,
        ));
    }
    // Each create, start and end appends exactly one audit entry.
    let audited = load.create.per_s + load.start.per_s + load.end.per_s;
    rows.push(Row::new(
        "cloud",
        "audited_writes_per_s",
        "writes/s",
        audited,
        sled_many.per_s,
        sled_many_name,
        Better::Higher,
    ));
    rows.push(Row::new(
        "cloud",
        "audited_writes_vs_1_thread",
        "writes/s",
        audited,
        sled_one.per_s,
        "raw sled insert+flush, 1 thread",
        Better::Higher,
    ));
    for (name, op) in [("create", &load.create), ("start", &load.start), ("end", &load.end)] {
        rows.push(Row::new(
            "cloud",
            &format!("session_{name}_p50_ms"),
            "ms",
            op.p50_ms,
            sled_many.p50_ms,
            "raw sled insert+flush p50, 64 threads",
            Better::Lower,
        ));
        rows.push(Row::new(
            "cloud",
            &format!("session_{name}_p99_ms"),
            "ms",
            op.p99_ms,
            sled_many.p99_ms,
            "raw sled insert+flush p99, 64 threads",
            Better::Lower,
        ));
    }
    let goal = match &idle.first_failure {
        None => format!("goal: {gateways} idle gateways"),
        Some(why) => format!("goal: {gateways} idle gateways; {} failed, first: {why}", idle.failed),
    };
    rows.push(Row::new(
        "cloud",
        "idle_gateways_connected",
        "connections",
        idle.connected as f64,
        gateways as f64,
        &goal,
        Better::Higher,
    ));
    rows.push(Row::new(
        "cloud",
        "idle_gateways_in_metrics",
        "connections",
        idle.gauge,
        gateways as f64,
        "goal, against ferry_cloud_control_connections{channel=\"gateway\"}",
        Better::Higher,
    ));
    rows.push(Row::new(
        "cloud",
        "cloud_rss_idle_gateways",
        "MiB",
        idle.cloud_rss_after_kib / 1024.0,
        idle.cloud_rss_before_kib / 1024.0,
        "ferry-cloud RSS before they connected",
        Better::Lower,
    ));
    let per = |before: f64, after: f64| (after - before) / idle.connected.max(1) as f64;
    rows.push(Row::new(
        "cloud",
        "cloud_rss_per_connection",
        "KiB",
        per(idle.cloud_rss_before_kib, idle.cloud_rss_after_kib),
        per(idle.bench_rss_before_kib, idle.bench_rss_after_kib),
        "the client end (tokio-tungstenite) per connection, in the bench",
        Better::Lower,
    ));
    rows.extend(capped);
    Ok(rows)
}

/// The write rows alone (`ferry-bench cloud-writes`): the uncapped session
/// load and raw sled with 64 threads then 1, for work on the write path,
/// without the idle connections and the capped comparison.
pub fn run_writes(work_dir: &Path) -> Result<Vec<Row>> {
    let window = Duration::from_secs(env_number("FERRY_BENCH_SECONDS", DEFAULT_SECONDS)?.max(1));
    std::fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let scratch = tempfile::Builder::new().prefix("cloud-").tempdir_in(work_dir)?;
    let cloud = Cloud::start(&scratch.path().join("data"), &scratch.path().join("ferry-cloud.log"), None)?;
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("cloud bench: load average before: {}", load_average.trim());
    let token = cloud.api_token()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (gateway_id, key) = create_and_enrol(&ureq_agent(false), &cloud, &token, "press 4")?;
    let channel = runtime.block_on(connect(cloud.addr, gateway_id, &key, true))?;
    let reader = runtime.spawn(held(channel));
    let load = session_load(&[&cloud], &token, gateway_id, window, None)?;
    reader.abort();
    cloud.stop()?;
    let sled_dir = scratch.path().join("sled");
    let sled_many = sled_baseline(&sled_dir.join("64"), CLIENTS, load.document_bytes, window)?;
    let sled_one = sled_baseline(&sled_dir.join("1"), 1, load.document_bytes, window)?;
    if load.failures > 0 {
        eprintln!(
            "cloud bench: {} requests failed during the load; first: {}",
            load.failures,
            load.first_failure.as_deref().unwrap_or("?")
        );
    }
    let audited = load.create.per_s + load.start.per_s + load.end.per_s;
    let mut rows = vec![
        Row::new(
            "cloud",
            "audited_writes_per_s",
            "writes/s",
            audited,
            sled_many.per_s,
            "raw sled insert+flush, 64 threads",
            Better::Higher,
        ),
        Row::new(
            "cloud",
            "audited_writes_vs_1_thread",
            "writes/s",
            audited,
            sled_one.per_s,
            "raw sled insert+flush, 1 thread",
            Better::Higher,
        ),
    ];
    for (name, op) in [("create", &load.create), ("start", &load.start), ("end", &load.end)] {
        rows.push(Row::new(
            "cloud",
            &format!("session_{name}_p99_ms"),
            "ms",
            op.p99_ms,
            sled_many.p99_ms,
            "raw sled insert+flush p99, 64 threads",
            Better::Lower,
        ));
    }
    Ok(rows)
}

/// The capped comparison alone (`ferry-bench cloud-capped`): for work on
/// the storages, without the uncapped load, raw sled and idle connections.
pub fn run_capped(work_dir: &Path) -> Result<Vec<Row>> {
    let window = Duration::from_secs(env_number("FERRY_BENCH_SECONDS", DEFAULT_SECONDS)?.max(1));
    std::fs::create_dir_all(work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
    let scratch = tempfile::Builder::new().prefix("cloud-").tempdir_in(work_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("cloud bench: load average before: {}", load_average.trim());
    capped_comparison(scratch.path(), work_dir, window, &runtime)
}

/// The capped comparison (see the module's docs): rows of PostgreSQL with
/// one replica against sled, and of two replicas against one.
fn capped_comparison(
    scratch: &Path,
    work_dir: &Path,
    window: Duration,
    runtime: &tokio::runtime::Runtime,
) -> Result<Vec<Row>> {
    ensure!(
        ferry_lab::postgres::available(),
        "PostgreSQL is not installed, which the cloud bench compares with sled: run `cargo xtask setup`"
    );
    // Beside the results, on disk: the scratch folder is private to root,
    // and the server runs as an unprivileged account that removes its own
    // folder at the end, so its parent is open to all and sticky, as /tmp.
    let parent = work_dir.join("postgres");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    std::fs::set_permissions(&parent, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .with_context(|| format!("opening {} to PostgreSQL's account", parent.display()))?;
    let server = ferry_lab::postgres::Postgres::start_in(&parent, ferry_lab::postgres::Durability::Full)?;
    let rounds = env_number("FERRY_BENCH_ROUNDS", DEFAULT_ROUNDS)?.max(1) as usize;
    // Rounds of the three, one after another: on a shared machine the load
    // of other work drifts, and a ratio of two phases minutes apart would
    // measure the drift. Each ratio is taken within a round; the row is the
    // round with the median ratio.
    let (mut sleds, mut pg1s, mut pg2s) = (Vec::new(), Vec::new(), Vec::new());
    let database_pid = server.pid()?;
    for round in 0..rounds {
        eprintln!("cloud bench: capped round {} of {rounds}", round + 1);
        // Each round starts with another of the three, so that a drift
        // within a round (the database's own background work after a run)
        // does not always fall on the same one.
        for phase in (0..3).map(|i| (i + round) % 3) {
            if phase == 0 {
                sleds.push(capped_load(&format!("sled-{round}"), scratch, None, 1, window, runtime, None)?);
                continue;
            }
            let (label, replicas, loads) =
                if phase == 1 { ("pg1", 1, &mut pg1s) } else { ("pg2", 2, &mut pg2s) };
            let database = format!("{label}_{round}");
            server.create_database(&database)?;
            // What the runs before left to write goes to disk now, not in
            // this run's window.
            server.sql(&database, "CHECKPOINT")?;
            let url = server.url(&database);
            loads.push(capped_load(
                &format!("{label}-{round}"),
                scratch,
                Some(&url),
                replicas,
                window,
                runtime,
                Some(database_pid),
            )?);
        }
        eprintln!(
            "cloud bench: round {}: sessions/s sled {:.0}, pg1 {:.0}, pg2 {:.0}: pg1/sled {:.2}, pg2/pg1 {:.2}",
            round + 1,
            sleds[round].end.per_s,
            pg1s[round].end.per_s,
            pg2s[round].end.per_s,
            pg1s[round].end.per_s / sleds[round].end.per_s,
            pg2s[round].end.per_s / pg1s[round].end.per_s,
        );
    }
    let median_round = |ratio: &dyn Fn(usize) -> f64| {
        let mut order: Vec<usize> = (0..rounds).collect();
        order.sort_by(|&a, &b| ratio(a).total_cmp(&ratio(b)));
        order[rounds / 2]
    };
    let pg1_round = median_round(&|r| pg1s[r].end.per_s / sleds[r].end.per_s);
    let pg2_round = median_round(&|r| pg2s[r].end.per_s / pg1s[r].end.per_s);
    let (sled, pg1) = (&sleds[pg1_round], &pg1s[pg1_round]);
    let (pg1_of_pg2, pg2) = (&pg1s[pg2_round], &pg2s[pg2_round]);
    let cap = format!("each cloud process capped at {CAP_CORES} core");
    let sled_name = format!("sled, 1 replica ({cap})");
    let pg1_name = format!("PostgreSQL, 1 replica ({cap})");
    let mut rows = Vec::new();
    // A session's rate: those taken through create, start and end, per second.
    rows.push(Row::new(
        "cloud",
        "pg1_vs_sled_session_rate",
        "sessions/s",
        pg1.end.per_s,
        sled.end.per_s,
        &format!("{sled_name}; goal: PostgreSQL within 2x (ratio >= 0.5)"),
        Better::Higher,
    ));
    rows.push(Row::new(
        "cloud",
        "pg2_vs_pg1_session_rate",
        "sessions/s",
        pg2.end.per_s,
        pg1_of_pg2.end.per_s,
        &format!("{pg1_name}; goal: ratio >= 1.6"),
        Better::Higher,
    ));
    rows.extend(versus("pg1", pg1, sled, &sled_name));
    rows.extend(versus("pg2", pg2, pg1_of_pg2, &pg1_name));
    Ok(rows)
}

/// The session rows of `ferry` (named with `prefix`) against `baseline`.
fn versus(prefix: &str, ferry: &Load, baseline: &Load, baseline_name: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let steps = |load: &Load| [("create", load.create), ("start", load.start), ("end", load.end)];
    for ((name, op), (_, base)) in steps(ferry).into_iter().zip(steps(baseline)) {
        let metric = |what: &str| format!("{prefix}_session_{name}_{what}");
        rows.push(Row::new(
            "cloud",
            &metric("per_s"),
            "ops/s",
            op.per_s,
            base.per_s,
            baseline_name,
            Better::Higher,
        ));
        rows.push(Row::new(
            "cloud",
            &metric("p50_ms"),
            "ms",
            op.p50_ms,
            base.p50_ms,
            baseline_name,
            Better::Lower,
        ));
        rows.push(Row::new(
            "cloud",
            &metric("p99_ms"),
            "ms",
            op.p99_ms,
            base.p99_ms,
            baseline_name,
            Better::Lower,
        ));
    }
    let audited = |load: &Load| load.create.per_s + load.start.per_s + load.end.per_s;
    rows.push(Row::new(
        "cloud",
        &format!("{prefix}_audited_writes_per_s"),
        "writes/s",
        audited(ferry),
        audited(baseline),
        baseline_name,
        Better::Higher,
    ));
    rows
}

/// The session load on fresh storage (`storage`, else sled) served by
/// `replicas` capped cloud processes; the 64 clients are spread over them
/// and the gateway is connected to the first.
fn capped_load(
    label: &str,
    scratch: &Path,
    storage: Option<&str>,
    replicas: usize,
    window: Duration,
    runtime: &tokio::runtime::Runtime,
    database_pid: Option<u32>,
) -> Result<Load> {
    let mut clouds = Vec::new();
    for replica in 0..replicas {
        let dir = scratch.join(format!("{label}-{replica}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cloud = Cloud::start(&dir.join("data"), &dir.join("ferry-cloud.log"), storage)?;
        cloud.cap(&format!("ferry-bench-{}-{label}-{replica}", std::process::id()))?;
        clouds.push(cloud);
    }
    let first = clouds.first().context("no replica")?;
    let token = first.api_token()?;
    let (gateway_id, key) = create_and_enrol(&ureq_agent(false), first, &token, "press 4")?;
    let channel = runtime.block_on(connect(first.addr, gateway_id, &key, true))?;
    let reader = runtime.spawn(held(channel));
    eprintln!(
        "cloud bench: {label}: {replicas} replica(s) capped at {CAP_CORES} core each; {CLIENTS} clients create, \
         start and end sessions for {}s",
        window.as_secs()
    );
    let load = session_load(&clouds.iter().collect::<Vec<_>>(), &token, gateway_id, window, database_pid);
    reader.abort();
    let load = load?;
    if load.failures > 0 {
        eprintln!(
            "cloud bench: {label}: {} requests failed; first: {}",
            load.failures,
            load.first_failure.as_deref().unwrap_or("?")
        );
    }
    for cloud in clouds {
        cloud.stop()?;
    }
    let verified = match storage {
        Some(url) => audit_verify(&["--storage", url])?,
        None => audit_verify(&[
            "--data-dir".as_ref(),
            scratch.join(format!("{label}-0")).join("data").as_os_str(),
        ])?,
    };
    eprintln!("cloud bench: {label}: {verified}");
    Ok(load)
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().with_context(|| format!("{name}={text:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// Raises the open-file limit to at least `wanted` where the hard limit
/// allows (as root it can be raised too); returns the soft limit in force.
fn raise_nofile(wanted: u64) -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= wanted {
        return Ok(soft);
    }
    if hard < wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return Ok(wanted);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(hard)
}

/// The real `ferry-cloud serve`, on plain HTTP on a free loopback port.
struct Cloud {
    child: Child,
    addr: SocketAddr,
    base: String,
    /// None for a replica that joined a database another one set up.
    one_time_password: Option<String>,
    /// Dropped after the process ends (see `Drop`).
    quota: Option<CpuQuota>,
}

impl Cloud {
    /// Over sled in `data_dir`, or over the PostgreSQL database `storage`.
    fn start(data_dir: &Path, log: &Path, storage: Option<&str>) -> Result<Cloud> {
        let binary = ferry_lab::workspace_bin("ferry-cloud")?;
        let mut command = Command::new(&binary);
        command.args(["serve", "--no-tls", "--listen", "127.0.0.1:0", "--data-dir"]).arg(data_dir);
        if let Some(url) = storage {
            command.args(["--storage", url]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (lines, announced) = mpsc::channel();
        // Keeps draining after the announcement, so the child never blocks
        // on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut password = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = announced.recv_timeout(left) else {
                let _ = child.kill();
                bail!("ferry-cloud did not announce its address; see {}", log.display());
            };
            if let Some(rest) = line.split("one-time password: ").nth(1) {
                password = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("ferry-cloud listening on http://") {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                break addr.parse::<SocketAddr>().with_context(|| format!("no address in {line:?}"))?;
            }
        };
        Ok(Cloud { child, addr, base: format!("http://{addr}"), one_time_password: password, quota: None })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Caps the process at [`CAP_CORES`] in a cgroup `name` of its own.
    fn cap(&mut self, name: &str) -> Result<()> {
        let quota = CpuQuota::new(name, CAP_CORES)?;
        quota.add(self.pid())?;
        self.quota = Some(quota);
        Ok(())
    }

    /// Logs in with the one-time password, sets a new one, logs in again and
    /// makes an API token, which unlike an access token does not expire
    /// during the run.
    fn api_token(&self) -> Result<String> {
        let one_time =
            self.one_time_password.as_deref().context("ferry-cloud printed no one-time password")?;
        let agent = ureq_agent(false);
        let login = |password: &str| -> Result<String> {
            let reply = call(
                &agent,
                self,
                "POST",
                "/api/v1/auth/login",
                None,
                Some(&json!({"name": "admin", "password": password})),
            )?;
            ensure!(reply.status == 200, "login: {reply:?}");
            reply.body["access_token"].as_str().map(str::to_string).context("no access_token")
        };
        let first = login(one_time)?;
        let password = format!("bench {}", hex::encode(rand_bytes()));
        let changed = call(
            &agent,
            self,
            "POST",
            "/api/v1/me/password",
            Some(&first),
            Some(&json!({"current_password": one_time, "new_password": password})),
        )?;
        ensure!(changed.status == 204, "changing the one-time password: {changed:?}");
        let access = login(&password)?;
        let made = call(
            &agent,
            self,
            "POST",
            "/api/v1/tokens",
            Some(&access),
            Some(&json!({"name": "bench", "scopes": SCOPES})),
        )?;
        ensure!(made.status == 201, "making the API token: {made:?}");
        made.body["secret"].as_str().map(str::to_string).context("no token secret")
    }

    /// SIGTERM, then SIGKILL if it has not exited within 30 s.
    fn stop(mut self) -> Result<()> {
        use nix::{sys::signal, unistd::Pid};
        signal::kill(Pid::from_raw(self.child.id() as i32), signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!("cloud bench: ferry-cloud ignored SIGTERM for 30 s; killing it");
                self.child.kill()?;
                self.child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rand_bytes() -> [u8; 16] {
    use rand_core::RngCore;
    let mut bytes = [0; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// `ferry-cloud audit verify <storage args>` on the stopped cloud's data:
/// the chain that 64 concurrent writers appended to is checked whole.
fn audit_verify<S: AsRef<std::ffi::OsStr>>(storage: &[S]) -> Result<String> {
    let output = Command::new(ferry_lab::workspace_bin("ferry-cloud")?)
        .args(["audit", "verify"])
        .args(storage)
        .output()?;
    let text = String::from_utf8_lossy(if output.status.success() { &output.stdout } else { &output.stderr });
    Ok(text.trim().to_string())
}

/// A keep-alive agent holds one connection per thread that uses it; without
/// keep-alive every request opens its own (for one-off calls, where a
/// pooled connection could have been closed by the server meanwhile).
fn ureq_agent(keep_alive: bool) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)));
    if !keep_alive {
        config = config.max_idle_connections(0).max_idle_connections_per_host(0);
    }
    config.build().new_agent()
}

struct Reply {
    status: u16,
    body: Value,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.body)
    }
}

fn call(
    agent: &ureq::Agent,
    cloud: &Cloud,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<Reply> {
    let url = format!("{}{path}", cloud.base);
    let bearer = token.map(|t| format!("Bearer {t}"));
    let result = match method {
        "GET" => {
            let mut request = agent.get(&url);
            if let Some(bearer) = &bearer {
                request = request.header("Authorization", bearer);
            }
            request.call()
        }
        "POST" => {
            let mut request = agent.post(&url);
            if let Some(bearer) = &bearer {
                request = request.header("Authorization", bearer);
            }
            match body {
                Some(body) => request.send_json(body),
                None => request.send_empty(),
            }
        }
        other => bail!("no {other} here"),
    };
    let mut response = result.with_context(|| format!("{method} {path}"))?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().with_context(|| format!("{method} {path}: body"))?;
    Ok(Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
}

/// Adds a gateway with the target the sessions name, and enrols it with a
/// new Ed25519 identity key.
fn create_and_enrol(
    agent: &ureq::Agent,
    cloud: &Cloud,
    token: &str,
    name: &str,
) -> Result<(u64, SigningKey)> {
    let body = json!({"name": name, "site": "bench", "targets": [
        {"name": "plc", "address": "192.168.0.10", "protocol": "tcp", "ports": [{"first": 502, "last": 502}]}
    ]});
    let created = call(agent, cloud, "POST", "/api/v1/gateways", Some(token), Some(&body))?;
    ensure!(created.status == 201, "creating gateway {name}: {created:?}");
    let id = created.body["gateway"]["id"].as_u64().context("no gateway id")?;
    let enrolment = created.body["enrolment"]["token"].as_str().context("no enrolment token")?;
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let body = json!({"token": enrolment, "identity_key": hex::encode(key.verifying_key().to_bytes())});
    let enrolled = call(agent, cloud, "POST", "/api/v1/enrol", None, Some(&body))?;
    ensure!(enrolled.status == 200, "enrolling gateway {name}: {enrolled:?}");
    Ok((id, key))
}

async fn connect(addr: SocketAddr, id: u64, key: &SigningKey, switch_on: bool) -> Result<Channel> {
    let ws = client::connect(&format!("ws://{addr}/api/v1/control/gateway"), None).await?;
    let mut channel = Channel::new(ws);
    let wg = WgKey(key.verifying_key().to_bytes());
    client::gateway_handshake(&mut channel, key, GatewayId(id), "ferry-bench", switch_on, wg, None).await?;
    Ok(channel)
}

/// When the measured window is, and the signal to stop.
struct Window {
    from: Instant,
    until: Instant,
    stop: AtomicBool,
}

impl Window {
    /// A window of `length` after the warm-up, from now.
    fn after_warm_up(length: Duration) -> Window {
        let from = Instant::now() + WARM_UP;
        Window { from, until: from + length, stop: AtomicBool::new(false) }
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// Whether an operation that ran from `began` to `ended` counts.
    fn counts(&self, began: Instant, ended: Instant) -> bool {
        began >= self.from && ended <= self.until
    }

    /// Sleeps through the warm-up and the window, then signals the stop.
    /// Returns the CPU that each of `pids` used during the window, in
    /// cores, then the database server's (`database_pid`'s and its
    /// children's; 0 without one), and last the whole machine's busy cores.
    fn measure(&self, pids: &[u32], database_pid: Option<u32>) -> Vec<f64> {
        let sample = || -> Vec<f64> {
            pids.iter()
                .map(|&pid| cpu_seconds(pid))
                .chain([database_seconds(database_pid), machine_busy_seconds()])
                .collect()
        };
        std::thread::sleep(self.from.saturating_duration_since(Instant::now()));
        let before = sample();
        std::thread::sleep(self.until.saturating_duration_since(Instant::now()));
        let after = sample();
        self.stop.store(true, Ordering::Relaxed);
        let seconds = (self.until - self.from).as_secs_f64();
        before.iter().zip(&after).map(|(b, a)| (a - b) / seconds).collect()
    }
}

/// Runs `work` on `threads` threads through the warm-up and the window;
/// each loops while the window is running and returns what it recorded.
/// Also returns what [`Window::measure`] does.
fn in_window<T: Send>(
    threads: usize,
    window: Duration,
    pids: &[u32],
    database_pid: Option<u32>,
    work: impl Fn(usize, &Window) -> T + Sync,
) -> (Vec<T>, Vec<f64>) {
    let window = Window::after_warm_up(window);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                scope.spawn({
                    let (work, window) = (&work, &window);
                    move || work(i, window)
                })
            })
            .collect();
        let cores = window.measure(pids, database_pid);
        (handles.into_iter().map(|h| h.join().expect("a measuring thread panicked")).collect(), cores)
    })
}

/// The CPU time so far of a PostgreSQL server: its postmaster's own and
/// that of its children it has reaped (a backend or worker that ended
/// meanwhile), and that of its children still running. 0 without a server.
fn database_seconds(postmaster: Option<u32>) -> f64 {
    let Some(postmaster) = postmaster else { return 0.0 };
    let children: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(postmaster))
        .map(cpu_seconds)
        .filter(|s| s.is_finite())
        .sum();
    // utime, stime, cutime, cstime: fields 14 to 17 of the whole line.
    let own: f64 = stat_fields(postmaster).map_or(f64::NAN, |f| {
        f.get(11..15).map_or(f64::NAN, |t| t.iter().filter_map(|t| t.parse::<f64>().ok()).sum())
    });
    own / clock_ticks() + children
}

/// The fields of /proc/PID/stat after the command name (the state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    Some(stat.rsplit(')').next()?.split_whitespace().map(str::to_string).collect())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// The machine's busy CPU time so far, all cores (NaN if unreadable): what
/// the database and everything else besides the measured processes used is
/// the rest of it.
fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return f64::NAN };
    let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else { return f64::NAN };
    let ticks: Vec<f64> = cpu.split_whitespace().filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal guest...: busy is user
    // to softirq but idle and iowait (steal is another guest's; guest time
    // is counted in user already).
    let busy: f64 =
        ticks.iter().take(7).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    busy / clock_ticks()
}

/// User and system CPU time of a process so far (NaN if unreadable).
fn cpu_seconds(pid: u32) -> f64 {
    // utime and stime: fields 14 and 15 of the whole line.
    let ticks = stat_fields(pid).map_or(f64::NAN, |f| {
        f.get(11..13).map_or(f64::NAN, |t| t.iter().filter_map(|t| t.parse::<f64>().ok()).sum())
    });
    ticks / clock_ticks()
}

#[derive(Clone, Copy, Debug, Default)]
struct Stat {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn stat(mut samples: Vec<Duration>, window: Duration) -> Stat {
    samples.sort_unstable();
    // Nearest rank: the smallest sample at or above the fraction.
    let at = |fraction: f64| {
        let rank = ((fraction * samples.len() as f64).ceil() as usize).clamp(1, samples.len().max(1));
        samples.get(rank - 1).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Stat { per_s: samples.len() as f64 / window.as_secs_f64(), p50_ms: at(0.50), p99_ms: at(0.99) }
}

struct Load {
    create: Stat,
    start: Stat,
    end: Stat,
    /// The size of a session document as the API returns it.
    document_bytes: usize,
    failures: u64,
    first_failure: Option<String>,
}

#[derive(Default)]
struct ClientRecord {
    create: Vec<Duration>,
    start: Vec<Duration>,
    end: Vec<Duration>,
    document_bytes: usize,
    failures: u64,
    first_failure: Option<String>,
}

impl ClientRecord {
    fn failed(&mut self, what: String) {
        self.failures += 1;
        self.first_failure.get_or_insert(what);
    }
}

/// The load of [`CLIENTS`] clients, client `i` on `clouds[i % len]`.
///
/// Each client is a keep-alive HTTP/1.1 connection of its own, looping
/// create, start, end, one request at a time; the clients are tasks on one
/// thread of the bench (a current-thread tokio runtime with hyper's client).
/// On a machine of 2 cores the clients share it with the cloud they load,
/// and 64 threads of a blocking client cost as much CPU as the cloud
/// itself (see docs/cloud-performance.md): the raw sled baseline has no
/// such load beside it.
fn session_load(
    clouds: &[&Cloud],
    token: &str,
    gateway_id: u64,
    window: Duration,
    database_pid: Option<u32>,
) -> Result<Load> {
    let mut pids: Vec<u32> = clouds.iter().map(|c| c.pid()).collect();
    pids.push(std::process::id());
    let length = window;
    let window = Arc::new(Window::after_warm_up(length));
    let bearer = hyper::header::HeaderValue::try_from(format!("Bearer {token}"))
        .context("the API token is not a header value")?;
    let addrs: Vec<SocketAddr> = clouds.iter().map(|c| c.addr).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (records, cores) = std::thread::scope(|scope| {
        let clients = scope.spawn(|| {
            runtime.block_on(async {
                let tasks: Vec<_> = (0..CLIENTS)
                    .map(|client| {
                        let (addr, bearer) = (addrs[client % addrs.len()], bearer.clone());
                        tokio::spawn(session_client(client, addr, bearer, gateway_id, window.clone()))
                    })
                    .collect();
                let mut records = Vec::new();
                for task in tasks {
                    records.push(task.await.unwrap_or_else(|e| {
                        let mut record = ClientRecord::default();
                        record.failed(format!("client task: {e}"));
                        record
                    }));
                }
                records
            })
        });
        let cores = window.measure(&pids, database_pid);
        (clients.join(), cores)
    });
    let records = records.map_err(|_| anyhow::anyhow!("the clients' thread panicked"))?;
    let mut all = ClientRecord::default();
    for r in records {
        all.create.extend(r.create);
        all.start.extend(r.start);
        all.end.extend(r.end);
        all.document_bytes = all.document_bytes.max(r.document_bytes);
        all.failures += r.failures;
        if all.first_failure.is_none() {
            all.first_failure = r.first_failure;
        }
    }
    ensure!(all.document_bytes > 0, "no session was created: {}", all.first_failure.unwrap_or_default());
    let (machine, processes) = cores.split_last().context("no CPU figures")?;
    let (database, processes) = processes.split_last().context("no CPU figures")?;
    let (bench, clouds) = processes.split_last().context("no CPU figures")?;
    let rest = machine - bench - database - clouds.iter().sum::<f64>();
    let clouds: Vec<String> = clouds.iter().map(|c| format!("{c:.2}")).collect();
    eprintln!(
        "cloud bench: CPU in the window: ferry-cloud {} cores, the {CLIENTS} clients {bench:.2}, PostgreSQL \
         {database:.2}, everything else {rest:.2}; the machine busy {machine:.2} of {}",
        clouds.join(" + "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(Load {
        create: stat(all.create, length),
        start: stat(all.start, length),
        end: stat(all.end, length),
        document_bytes: all.document_bytes,
        failures: all.failures,
        first_failure: all.first_failure,
    })
}

/// One client of [`session_load`]: create, start, end while the window runs.
async fn session_client(
    client: usize,
    addr: SocketAddr,
    bearer: hyper::header::HeaderValue,
    gateway_id: u64,
    w: Arc<Window>,
) -> ClientRecord {
    let mut connection = Connection { addr, bearer, sender: None };
    let mut record = ClientRecord::default();
    let mut n = 0u64;
    while w.running() {
        n += 1;
        let body = json!({"name": format!("bench {client} {n}"), "gateway_id": gateway_id,
            "targets": ["plc"], "max_duration_s": 600});
        let began = Instant::now();
        let id = match connection.post("/api/v1/sessions", Some(body.to_string())).await {
            Ok((201, body)) => {
                let ended = Instant::now();
                if w.counts(began, ended) {
                    record.create.push(ended - began);
                }
                record.document_bytes = body.len();
                match serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["id"].as_u64()) {
                    Some(id) => id,
                    None => {
                        record.failed(format!("create: no id in {}", String::from_utf8_lossy(&body)));
                        continue;
                    }
                }
            }
            other => {
                record.failed(format!("create: {}", Connection::describe(&other)));
                continue;
            }
        };
        for (step, samples) in [("start", &mut record.start), ("end", &mut record.end)] {
            let began = Instant::now();
            match connection.post(&format!("/api/v1/sessions/{id}/{step}"), None).await {
                Ok((200, _)) => {
                    let ended = Instant::now();
                    if w.counts(began, ended) {
                        samples.push(ended - began);
                    }
                }
                other => {
                    let what = format!("{step}: {}", Connection::describe(&other));
                    record.failures += 1;
                    record.first_failure.get_or_insert(what);
                    break;
                }
            }
        }
    }
    record
}

/// A keep-alive HTTP/1.1 connection to the cloud, opened again once closed.
struct Connection {
    addr: SocketAddr,
    bearer: hyper::header::HeaderValue,
    sender: Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>,
}

impl Connection {
    /// As ureq's agent for the one-off calls: a request gets 60 s.
    const TIMEOUT: Duration = Duration::from_secs(60);

    /// POSTs `json` (or an empty body) to `path` with the token; returns the
    /// status and the whole answer.
    async fn post(&mut self, path: &str, json: Option<String>) -> Result<(u16, bytes::Bytes)> {
        let result = tokio::time::timeout(Self::TIMEOUT, self.exchange(path, json)).await;
        let result = result.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {:?}", Self::TIMEOUT)));
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, path: &str, json: Option<String>) -> Result<(u16, bytes::Bytes)> {
        use http_body_util::BodyExt as _;
        use hyper::header;
        // A connection that the cloud closed (or that failed) is opened
        // again before the request is sent, as a pooling client would.
        let open = match &mut self.sender {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !open {
            self.sender = None;
            let mut sender = Self::open(self.addr).await?;
            sender.ready().await.context("the new connection closed")?;
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().context("no connection")?;
        let mut request = hyper::Request::post(path)
            .header(header::HOST, self.addr.to_string())
            .header(header::AUTHORIZATION, self.bearer.clone());
        let body = match json {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                bytes::Bytes::from(json)
            }
            None => bytes::Bytes::new(),
        };
        let response = sender.send_request(request.body(http_body_util::Full::new(body))?).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    async fn open(
        addr: SocketAddr,
    ) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>> {
        let tcp =
            tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        // A request is written whole at once; nothing is gained by waiting.
        tcp.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            // Its end (the cloud stopped, or an error) shows in the next
            // request, which opens another.
            let _ = connection.await;
        });
        Ok(sender)
    }

    fn describe(outcome: &Result<(u16, bytes::Bytes)>) -> String {
        match outcome {
            Ok((status, body)) => format!("{status} {}", String::from_utf8_lossy(body)),
            Err(e) => format!("{e:#}"),
        }
    }
}

/// The storage limit: sled's insert then flush (what every commit of the
/// cloud ends with) of session-sized values, from `threads` threads.
fn sled_baseline(dir: &Path, threads: usize, value_bytes: usize, window: Duration) -> Result<Stat> {
    let db = sled::open(dir).with_context(|| format!("opening sled in {}", dir.display()))?;
    let value = vec![0x5a_u8; value_bytes];
    let (results, _) =
        in_window(threads, window, &[], None, |thread, w| -> Result<Vec<Duration>, sled::Error> {
            let mut samples = Vec::new();
            let mut n = 0u64;
            while w.running() {
                n += 1;
                let key = (((thread as u64) << 40) | n).to_be_bytes();
                let began = Instant::now();
                db.insert(key, value.as_slice())?;
                db.flush()?;
                let ended = Instant::now();
                if w.counts(began, ended) {
                    samples.push(ended - began);
                }
            }
            Ok(samples)
        });
    let mut samples = Vec::new();
    for r in results {
        samples.extend(r?);
    }
    Ok(stat(samples, window))
}

struct Idle {
    /// Each connected gateway's task ([`held`]).
    held: Vec<tokio::task::JoinHandle<()>>,
    connected: usize,
    failed: usize,
    first_failure: Option<String>,
    gauge: f64,
    cloud_rss_before_kib: f64,
    cloud_rss_after_kib: f64,
    bench_rss_before_kib: f64,
    bench_rss_after_kib: f64,
}

fn idle_gateways(
    cloud: &Cloud,
    token: &str,
    runtime: &tokio::runtime::Runtime,
    count: usize,
) -> Result<Idle> {
    eprintln!("cloud bench: creating and enrolling {count} gateways with {CLIENTS} clients");
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let made = Mutex::new(Vec::with_capacity(count));
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let agent = ureq_agent(true);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok(());
                        }
                        let gateway = create_and_enrol(&agent, cloud, token, &format!("idle {i}"))?;
                        let mut made = made.lock().expect("no panics while held");
                        made.push(gateway);
                        if made.len() % 1000 == 0 {
                            let rate = made.len() as f64 / started.elapsed().as_secs_f64();
                            eprintln!("cloud bench: {} gateways enrolled ({rate:.0}/s)", made.len());
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("a creating thread panicked")?;
        }
        Ok(())
    })?;
    let made = made.into_inner().expect("no panics while held");
    eprintln!("cloud bench: {} gateways enrolled in {:.1}s", made.len(), started.elapsed().as_secs_f64());

    // Let the last writes and the allocator settle before the first reading.
    std::thread::sleep(Duration::from_secs(2));
    let cloud_rss_before_kib = rss_kib(cloud.pid())?;
    let bench_rss_before_kib = rss_kib(std::process::id())?;
    eprintln!("cloud bench: connecting {count} gateways, 64 at a time");
    let started = Instant::now();
    let addr = cloud.addr;
    let limit = Arc::new(tokio::sync::Semaphore::new(CLIENTS));
    let results: Vec<Result<tokio::task::JoinHandle<()>, String>> = runtime.block_on(async {
        let tasks: Vec<_> = made
            .into_iter()
            .map(|(id, key)| {
                let limit = limit.clone();
                tokio::spawn(async move {
                    let _permit = limit.acquire_owned().await.expect("never closed");
                    let channel = connect(addr, id, &key, false).await.map_err(|e| format!("{e:#}"))?;
                    Ok(tokio::spawn(held(channel)))
                })
            })
            .collect();
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        results
    });
    let mut held = Vec::with_capacity(results.len());
    let mut first_failure = None;
    let mut failed = 0;
    for result in results {
        match result {
            Ok(gateway) => held.push(gateway),
            Err(why) => {
                failed += 1;
                first_failure.get_or_insert(why);
            }
        }
    }
    eprintln!(
        "cloud bench: {} connected, {failed} failed in {:.1}s",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(why) = &first_failure {
        eprintln!("cloud bench: first failure: {why}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let cloud_rss_after_kib = rss_kib(cloud.pid())?;
    let bench_rss_after_kib = rss_kib(std::process::id())?;
    let gauge = gateway_gauge(cloud)?;
    Ok(Idle {
        connected: held.len(),
        held,
        failed,
        first_failure,
        gauge,
        cloud_rss_before_kib,
        cloud_rss_after_kib,
        bench_rss_before_kib,
        bench_rss_after_kib,
    })
}

/// A gateway's channel held as the real gateway holds it: what the cloud
/// sends is read (desired states, never answered) so that nothing backs
/// up, and a ping goes every 10 s, since the cloud closes a channel silent
/// for a minute. Ends when the channel does.
async fn held(mut channel: Channel) {
    let mut keepalive = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            message = channel.recv::<ToGateway>() => if !matches!(message, Ok(Some(_))) {
                return;
            },
            _ = keepalive.tick() => if channel.ping().await.is_err() {
                return;
            },
        }
    }
}

/// `ferry_cloud_control_connections{channel="gateway"}` from /metrics.
fn gateway_gauge(cloud: &Cloud) -> Result<f64> {
    let text =
        ureq_agent(false).get(format!("{}/metrics", cloud.base)).call()?.body_mut().read_to_string()?;
    text.lines()
        .find_map(|line| line.strip_prefix("ferry_cloud_control_connections{channel=\"gateway\"} "))
        .map_or(Ok(0.0), |value| value.trim().parse().context("unreadable gauge"))
}

fn rss_kib(pid: u32) -> Result<f64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The load against the real cloud (`target/<profile>/ferry-cloud`):
    /// every step of every client is answered as it should be, and the audit
    /// chain that the clients appended to verifies.
    #[test]
    fn the_session_load_takes_sessions_through_and_the_chain_verifies() {
        let scratch = tempfile::tempdir().unwrap();
        let data = scratch.path().join("data");
        let cloud = Cloud::start(&data, &scratch.path().join("ferry-cloud.log"), None).unwrap();
        let token = cloud.api_token().unwrap();
        let (gateway_id, key) = create_and_enrol(&ureq_agent(false), &cloud, &token, "test").unwrap();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let channel = runtime.block_on(connect(cloud.addr, gateway_id, &key, true)).unwrap();
        let reader = runtime.spawn(held(channel));
        let load = session_load(&[&cloud], &token, gateway_id, Duration::from_secs(1), None).unwrap();
        reader.abort();
        assert_eq!(load.failures, 0, "first failure: {:?}", load.first_failure);
        for (step, stat) in [("create", load.create), ("start", load.start), ("end", load.end)] {
            assert!(stat.per_s > 0.0, "no {step} in the window");
        }
        cloud.stop().unwrap();
        let verified = audit_verify(&["--data-dir".as_ref(), data.as_os_str()]).unwrap();
        assert!(verified.contains("intact"), "{verified}");
    }

    /// A server that answers every request on a connection of its own
    /// (`Connection: close`): each request still gets its answer, on a new
    /// connection, none is lost to a closed one.
    #[tokio::test]
    async fn a_closed_connection_is_opened_again_before_the_next_request() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn({
            let accepted = accepted.clone();
            async move {
                loop {
                    let (mut tcp, _) = listener.accept().await.unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        if tcp.read(&mut byte).await.unwrap() == 0 {
                            break;
                        }
                        head.push(byte[0]);
                    }
                    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                    tcp.write_all(answer.as_bytes()).await.unwrap();
                }
            }
        });
        let bearer = hyper::header::HeaderValue::from_static("Bearer test");
        let mut connection = Connection { addr, bearer, sender: None };
        for _ in 0..3 {
            let (status, body) = connection.post("/api/v1/sessions/1/end", None).await.unwrap();
            assert_eq!((status, &body[..]), (200, &b"ok"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        server.abort();
    }
}
