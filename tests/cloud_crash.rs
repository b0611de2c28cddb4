//! Crash durability of `ferry-cloud`: SIGKILL it repeatedly in the middle of
//! a stream of writes, restart it on the same folder, and check that every
//! write it acknowledged is there, with its audit entry, and that the audit
//! chain verifies, through the API and through `ferry-cloud audit verify`.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ferry_tests::{
    bin,
    cloud::{call, start, try_call, wait_for_sled_to_let_go},
};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const ROUNDS: usize = 6;
const WRITERS: usize = 4;

fn login(addr: SocketAddr, password: &str) -> String {
    let (status, body) =
        call(addr, "POST", "/api/v1/auth/login", None, json!({"name": "admin", "password": password}));
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// What one writer got a 201 for.
#[derive(Default)]
struct Acked {
    tokens: Vec<String>,
    users: Vec<String>,
}

/// Creates API tokens and users, alternately, as fast as the server answers,
/// until the server is gone. A request cut off by the kill has no answer and
/// so does not count.
fn write_until_killed(addr: SocketAddr, token: &str, writer: usize, round: usize) -> Acked {
    let mut acked = Acked::default();
    // Bounded even if the kill never came.
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        assert!(Instant::now() < deadline, "the server was not killed");
        let (path, name, body) = if n % 2 == 0 {
            let name = format!("w{writer}-r{round}-{n}");
            let body = json!({"name": name, "scopes": ["sessions:read"]});
            ("/api/v1/tokens", name, body)
        } else {
            let name = format!("u{writer}-r{round}-{n}");
            let body = json!({"name": name, "role": "remote_connect_user", "password": PASSWORD});
            ("/api/v1/users", name, body)
        };
        match try_call(addr, "POST", path, Some(token), body) {
            Ok((201, _)) if n % 2 == 0 => acked.tokens.push(name),
            Ok((201, _)) => acked.users.push(name),
            Ok((status, body)) => panic!("POST {path} {name}: {status} {body}"),
            Err(_) => return acked,
        }
    }
    unreachable!()
}

/// The names that allowed `action` entries (`token.create`, `user.create`)
/// begin their detail with, through the API's pages.
fn audited_names(addr: SocketAddr, token: &str, action: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    let mut after = String::new();
    loop {
        let path = format!("/api/v1/audit?action={action}&allowed=true&limit=1000{after}");
        let (status, page) = call(addr, "GET", &path, Some(token), Value::Null);
        assert_eq!(status, 200, "{page}");
        for entry in page["entries"].as_array().unwrap() {
            let detail = entry["detail"].as_str().unwrap_or_default();
            names.insert(detail.split(' ').next().unwrap_or_default().to_string());
        }
        match page["next"].as_u64() {
            Some(next) => after = format!("&after={next}"),
            None => return names,
        }
    }
}

fn missing<'a>(wanted: &'a [String], present: &HashSet<String>) -> Vec<&'a String> {
    wanted.iter().filter(|n| !present.contains(*n)).collect()
}

fn names(addr: SocketAddr, token: &str, path: &str) -> HashSet<String> {
    let (status, list) = call(addr, "GET", path, Some(token), Value::Null);
    assert_eq!(status, 200, "{list}");
    list.as_array().unwrap().iter().map(|item| item["name"].as_str().unwrap().to_string()).collect()
}

fn cli_verify(data_dir: &Path) -> String {
    wait_for_sled_to_let_go(data_dir);
    let output = bin("ferry-cloud").args(["audit", "verify", "--data-dir"]).arg(data_dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("audit log intact"), "{stdout}");
    stdout
}

/// A little xorshift, so the kill moments differ from run to run without a
/// dependency; the seed is printed to repeat a run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn acknowledged_writes_and_the_audit_chain_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let seed = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    eprintln!("kill moments from seed {seed} (FERRY_CRASH_SEED to repeat)");
    let mut rng = Rng(seed);

    let mut cloud = Some(start(data));
    let started = cloud.as_ref().unwrap();
    let secret = started.one_time_password().expect("the first start prints a one-time password");
    let first = login(started.addr, &secret);
    let change = json!({"current_password": secret, "new_password": PASSWORD});
    let (status, body) = call(started.addr, "POST", "/api/v1/me/password", Some(&first), change);
    assert_eq!(status, 204, "{body}");

    let mut acked_tokens: Vec<String> = Vec::new();
    let mut acked_users: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        let running = cloud.take().expect("started before each round");
        let addr = running.addr;
        let token = login(addr, PASSWORD);
        let kill_after = Duration::from_millis(100 + rng.below(501));
        let acked: Vec<Acked> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..WRITERS)
                .map(|w| {
                    let token = token.as_str();
                    scope.spawn(move || write_until_killed(addr, token, w, round))
                })
                .collect();
            std::thread::sleep(kill_after);
            running.kill_9();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let tokens: Vec<String> = acked.iter().flat_map(|a| a.tokens.iter().cloned()).collect();
        let users: Vec<String> = acked.iter().flat_map(|a| a.users.iter().cloned()).collect();
        eprintln!(
            "round {round}: killed after {} ms; acknowledged {} tokens and {} users",
            kill_after.as_millis(),
            tokens.len(),
            users.len()
        );
        acked_tokens.extend(tokens);
        acked_users.extend(users);

        // With the server down, the command line checks the chain on disk.
        cli_verify(data);

        let restarted = start(data);
        let addr = restarted.addr;
        cloud = Some(restarted);
        let token = login(addr, PASSWORD);
        let stored_tokens = names(addr, &token, "/api/v1/tokens");
        let stored_users = names(addr, &token, "/api/v1/users");
        assert_eq!(missing(&acked_tokens, &stored_tokens), Vec::<&String>::new(), "acknowledged tokens lost");
        assert_eq!(missing(&acked_users, &stored_users), Vec::<&String>::new(), "acknowledged users lost");

        // Each acknowledged write has its audit entry: the handlers append
        // before they answer.
        let token_entries = audited_names(addr, &token, "token.create");
        let user_entries = audited_names(addr, &token, "user.create");
        assert_eq!(
            missing(&acked_tokens, &token_entries),
            Vec::<&String>::new(),
            "tokens without audit entries"
        );
        assert_eq!(
            missing(&acked_users, &user_entries),
            Vec::<&String>::new(),
            "users without audit entries"
        );
        // Also the writes whose answer the kill cut off: a write and its
        // audit entry are one commit, so nothing is stored unaudited.
        let silent: Vec<&String> = stored_tokens
            .iter()
            .filter(|n| n.starts_with('w') && !token_entries.contains(*n))
            .chain(stored_users.iter().filter(|n| n.starts_with('u') && !user_entries.contains(*n)))
            .collect();
        assert_eq!(silent, Vec::<&String>::new(), "stored without an audit entry");
        eprintln!(
            "round {round}: {} tokens and {} users stored in all, each with its audit entry",
            stored_tokens.len(),
            stored_users.len() - 1
        );

        let (status, report) = call(addr, "GET", "/api/v1/audit/verify", Some(&token), Value::Null);
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["intact"], true, "{report}");
    }
    cloud.expect("running after the last round").terminate();
    eprintln!("{}", cli_verify(data).trim());
    eprintln!("in all: {} tokens and {} users acknowledged", acked_tokens.len(), acked_users.len());
}
