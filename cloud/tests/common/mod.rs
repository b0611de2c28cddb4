//! An in-process ferry-cloud on a loopback port, over a real sled folder
//! (or, with `FERRY_TEST_STORAGE=postgres`, a fresh PostgreSQL database of
//! the test binary's own server), with a clock the test moves; requests go
//! over real HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a step that fails should fail the test"
)]
#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc};

use ferry_cloud::{
    clock::ManualClock,
    http::{self, AppState},
    rights::Role,
    store::{Backend, PgOptions, PostgresBackend, SledBackend, Store},
    users,
};
use serde_json::{Value, json};

pub mod peers;
pub mod pg;

pub const START_MS: u64 = 1_800_000_000_000;
pub const PASSWORD: &str = "correct horse battery staple";

pub struct Api {
    pub base: String,
    pub addr: SocketAddr,
    pub clock: ManualClock,
    pub state: AppState,
    pub store: Store,
    agent: ureq::Agent,
    runtime: tokio::runtime::Runtime,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database, when the tests run over PostgreSQL.
    pub database: Option<String>,
}

/// A backend over the test's storage: sled in `dir`, or the PostgreSQL
/// database `database` (then also returned as such, to join its replicas).
pub fn open_backend(
    dir: &std::path::Path,
    database: Option<&str>,
) -> (Arc<dyn Backend>, Option<Arc<PostgresBackend>>) {
    match database {
        Some(url) => {
            let pg = Arc::new(PostgresBackend::connect(&PgOptions::parse(url, None).unwrap()).unwrap());
            (pg.clone(), Some(pg))
        }
        None => (Arc::new(SledBackend::open(&dir.join("db")).unwrap()), None),
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub retry_after: Option<String>,
    pub content_type: String,
}

impl Reply {
    /// The problem type's slug, for error replies.
    pub fn problem(&self) -> &str {
        self.body["type"].as_str().unwrap_or("").trim_start_matches("urn:ferry:problem:")
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

impl Api {
    pub fn start() -> Api {
        Api::over(tempfile::tempdir().unwrap(), ManualClock::new(START_MS), |sled| sled)
    }

    /// A cloud over the sled folder in `dir` (or a fresh PostgreSQL
    /// database, see above), with the backend that `wrap` makes around it.
    pub fn over(
        dir: tempfile::TempDir,
        clock: ManualClock,
        wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
    ) -> Api {
        let database = pg::selected().then(pg::fresh_database);
        Api::over_storage(dir, database, clock, wrap)
    }

    /// A cloud over sled in `dir`, or over PostgreSQL `database` if given.
    pub fn over_storage(
        dir: tempfile::TempDir,
        database: Option<String>,
        clock: ManualClock,
        wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>,
    ) -> Api {
        let (backend, postgres) = open_backend(dir.path(), database.as_deref());
        let store = Store::with_backend(wrap(backend)).unwrap();
        let state = AppState::with_clock(store.clone(), Arc::new(clock.clone())).unwrap();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        // Over PostgreSQL each cloud is a replica, as `ferry-cloud serve` is.
        if let Some(postgres) = postgres {
            let (cluster, incoming) =
                ferry_cloud::hub::postgres::PgCluster::join(postgres, "test replica").unwrap();
            let _entered = runtime.enter();
            ferry_cloud::hub::cluster::follow(&state, cluster, incoming);
        }
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = http::router(state.clone());
        runtime.spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        // A fresh connection per request: a refused request whose body the
        // server never read closes its connection, and ureq does not retry POSTs.
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build()
            .new_agent();
        Api { base: format!("http://{addr}"), addr, clock, state, store, agent, runtime, dir, database }
    }

    /// Stops this cloud as a crash would (every task and connection ends
    /// where it is) and starts another over the same folder, on a new
    /// port, with the backend that `wrap` makes.
    pub fn restart(self, wrap: impl FnOnce(Arc<dyn Backend>) -> Arc<dyn Backend>) -> Api {
        let Api { clock, state, store, runtime, dir, database, .. } = self;
        drop(runtime);
        drop((state, store));
        Api::over_storage(dir, database, clock, wrap)
    }

    /// Stops this cloud (as a crash would) and hands back its folder.
    pub fn stop(self) -> tempfile::TempDir {
        let Api { state, store, runtime, dir, .. } = self;
        drop(runtime);
        drop((state, store));
        dir
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// A user made directly in the store, with the test password.
    pub fn user(&self, name: &str, role: Role) -> u64 {
        users::create(&self.store, name, role, PASSWORD, START_MS).unwrap().id
    }

    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let url = format!("{}{path}", self.base);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let result = match body {
            Some(body) => self.agent.run(
                request
                    .header("Content-Type", "application/json")
                    .body(body.to_string().into_bytes())
                    .unwrap(),
            ),
            None => self.agent.run(request.body(Vec::new()).unwrap()),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let header =
            |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let retry_after = header("retry-after");
        let content_type = header("content-type").unwrap_or_default();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, body, text, retry_after, content_type }
    }

    pub fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), None)
    }

    pub fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("POST", path, Some(token), Some(body))
    }

    /// Opens a server-sent event stream. Each event's data arrives parsed as
    /// `Some(json)`, and `None` once the server has closed the stream. A
    /// refusal is the reply instead.
    pub fn events(&self, path: &str, token: &str) -> Result<std::sync::mpsc::Receiver<Option<Value>>, Reply> {
        use std::io::BufRead as _;
        let request = ureq::http::Request::builder()
            .method("GET")
            .uri(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .body(Vec::new())
            .unwrap();
        let mut response = self.agent.run(request).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            let body = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(Reply { status, body, text, retry_after: None, content_type: String::new() });
        }
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok());
        assert_eq!(content_type, Some("text/event-stream"));
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        let (sender, receiver) = std::sync::mpsc::channel();
        // Ends when the server closes the stream (or the test's runtime,
        // and with it the server, goes away).
        std::thread::spawn(move || {
            let mut data = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if let Some(part) = line.strip_prefix("data:") {
                    data.push_str(part.trim_start());
                } else if line.is_empty() && !data.is_empty() {
                    let event = serde_json::from_str(&data).unwrap_or(Value::Null);
                    data.clear();
                    if sender.send(Some(event)).is_err() {
                        return;
                    }
                }
            }
            let _ = sender.send(None);
        });
        Ok(receiver)
    }

    /// Logs in with the test password; returns (access, refresh).
    pub fn login(&self, name: &str) -> (String, String) {
        let reply =
            self.call("POST", "/api/v1/auth/login", None, Some(json!({"name": name, "password": PASSWORD})));
        assert_eq!(reply.status, 200, "login {name}: {reply:?}");
        (
            reply.body["access_token"].as_str().unwrap().to_string(),
            reply.body["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    /// The audit entries, oldest first, as the store has them.
    pub fn audit(&self) -> Vec<ferry_cloud::audit::Entry> {
        ferry_cloud::audit::entries(&self.store, 0, usize::MAX).unwrap()
    }
}
