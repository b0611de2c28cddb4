//! The control channel and the durable event queue against a real cloud
//! (its router over sled, in this process) whose storage fails on demand.
//! Each side runs in a runtime of its own, so that dropping it ends every
//! task and connection of that side where they are, as a crash does; the
//! cloud's port stays bound across its restarts.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use ferry_cloud::{
    app::AppState,
    audit,
    gateways::{self, PortRange, Protocol, Target},
    sessions::{self, EndReason, GatewayView, Session, State},
    store::{
        Backend, SledBackend,
        failing::{FailingBackend, Failure, appends_audit, stores_event_seq},
    },
};
use ferry_control::{SessionId, gateway::GatewayEvent};
use tokio::sync::{Notify, mpsc, watch};

use super::{CloudLink, FromCloud, Inputs, run, session};
use crate::state::{Decision, Store};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// How long a step may take before the test gives up on it: a guard
/// against hanging, far beyond what a slow machine needs.
const HANG: Duration = Duration::from_secs(60);

/// Waits (up to [`HANG`]) until `done` holds.
fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + HANG;
    while std::time::Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("still waiting for {what}");
}

/// A running cloud over the sled folder in `dir`.
struct Cloud {
    runtime: tokio::runtime::Runtime,
    state: AppState,
    failing: Arc<FailingBackend>,
}

impl Cloud {
    fn start(dir: &Path, listener: &std::net::TcpListener) -> Cloud {
        Cloud::start_with_clock(dir, listener, Arc::new(ferry_cloud::clock::SystemClock))
    }

    fn start_with_clock(
        dir: &Path,
        listener: &std::net::TcpListener,
        clock: ferry_cloud::clock::SharedClock,
    ) -> Cloud {
        let sled = Arc::new(SledBackend::open(&dir.join("db")).unwrap());
        let failing = Arc::new(FailingBackend::new(sled));
        let backend: Arc<dyn Backend> = failing.clone();
        let store = ferry_cloud::store::Store::with_backend(backend).unwrap();
        let state = AppState::with_clock(store, clock).unwrap();
        let runtime = runtime();
        let (listener, app) = (listener.try_clone().unwrap(), ferry_cloud::http::router(state.clone()));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            ferry_cloud::server::serve(listener, app, None, std::future::pending()).await.unwrap();
        });
        Cloud { runtime, state, failing }
    }

    fn store(&self) -> &ferry_cloud::store::Store {
        &self.state.store
    }

    /// Ends every task and connection at once; whatever was not committed
    /// by then is lost.
    fn crash(self) {
        let Cloud { runtime, state, failing } = self;
        drop(runtime);
        drop((state, failing));
    }

    fn session(&self, id: u64) -> Session {
        sessions::get(self.store(), id).unwrap().unwrap()
    }

    /// What the gateway's events left in the audit log, oldest first (its
    /// connections and enrolment left out).
    fn audit_of(&self, gateway_id: u64) -> Vec<String> {
        let actor = format!("gateway:{gateway_id}");
        audit::entries(self.store(), 0, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|e| e.event.actor == actor)
            .filter(|e| !matches!(e.event.action.as_str(), "gateway.connect" | "gateway.disconnect"))
            .map(|e| {
                let session = e.event.session.unwrap_or_default();
                let detail = e.event.detail.unwrap_or_default();
                format!("{} {} {session} {detail}", e.event.action, e.event.allowed)
            })
            .collect()
    }
}

/// A running gateway: the control channel over the durable state in `dir`.
struct Gateway {
    runtime: tokio::runtime::Runtime,
    store: Store,
    events: Arc<Notify>,
}

impl Gateway {
    fn start(dir: &Path, link: &CloudLink) -> Gateway {
        let store = Store::open(dir).unwrap();
        let runtime = runtime();
        let events = Arc::new(Notify::new());
        let (switch_tx, switch_on) = watch::channel(store.switch_on());
        let (applied_tx, applied) = watch::channel(None);
        let inputs = Inputs { store: store.clone(), switch_on, applied, events: events.clone() };
        let (to_daemon, mut from_cloud) = mpsc::channel(16);
        runtime.spawn(run(link.clone(), inputs, to_daemon));
        // The daemon's part: take what the channel hands over.
        runtime.spawn(async move {
            let _keep = (switch_tx, applied_tx);
            while from_cloud.recv().await.is_some() {}
        });
        Gateway { runtime, store, events }
    }

    fn record(&self, event: GatewayEvent) -> u64 {
        let seq = self.store.enqueue(event, 0).unwrap();
        self.events.notify_one();
        seq
    }

    fn crash(self) {
        let Gateway { runtime, store, events } = self;
        drop(runtime);
        drop((store, events));
    }
}

/// A cloud with one enrolled gateway and two sessions waiting for the
/// customer's approval, and that gateway, on folders that outlive both.
struct Site {
    cloud_dir: tempfile::TempDir,
    gateway_dir: tempfile::TempDir,
    listener: std::net::TcpListener,
    link: CloudLink,
    /// None while it is down.
    cloud: Option<Cloud>,
    a: u64,
    b: u64,
}

impl Site {
    fn new() -> Site {
        let cloud_dir = tempfile::tempdir().unwrap();
        let gateway_dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let cloud = Cloud::start(cloud_dir.path(), &listener);
        let store = cloud.store();
        let plc = Target {
            name: "plc".into(),
            address: "192.168.0.10".parse().unwrap(),
            protocol: Protocol::Tcp,
            ports: vec![PortRange { first: 502, last: 502 }],
        };
        let gateway = gateways::create(store, "press-3", "plant", vec![plc], 0, |_| None).unwrap();
        let identity = ferry_control::SigningKey::from_bytes(&[3; 32]);
        let token = gateways::enrolment_token(store, gateway.id, 60_000, 0).unwrap();
        let identity_hex = hex::encode(identity.verifying_key().to_bytes());
        gateways::enrol(store, &token, &identity_hex, 0, |g| audit::Event {
            actor: "admin".into(),
            action: "gateway.enrol".into(),
            allowed: true,
            source: None,
            session: None,
            gateway: Some(g.id.to_string()),
            detail: None,
        })
        .unwrap();
        let session = |approval| {
            let new = Session::new(
                0,
                "service".into(),
                gateway.id,
                vec!["plc".into()],
                vec![],
                3600,
                approval,
                "admin".into(),
                0,
            );
            let id = sessions::create(store, new).unwrap().id;
            let on = GatewayView { online: true, switch_on: true };
            cloud.state.change_session(id, |s| Ok(s.start("admin", cloud.state.now_ms(), on)?)).unwrap();
            id
        };
        let (a, b) = (session(true), session(true));
        let link = CloudLink {
            urls: vec![format!("ws://{addr}{}", ferry_control::gateway::PATH)],
            pin: None,
            gateway_id: gateway.id,
            identity,
            wg_public_key: ferry_control::WgKey([3; 32]),
        };
        // The customer has switched remote maintenance on: the first
        // event, and the switch position of every hello.
        Store::open(gateway_dir.path()).unwrap().set_switch(true, 0).unwrap();
        Site { cloud_dir, gateway_dir, listener, link, cloud: Some(cloud), a, b }
    }

    fn cloud(&self) -> &Cloud {
        self.cloud.as_ref().expect("the cloud is up")
    }

    fn gateway(&self) -> Gateway {
        Gateway::start(self.gateway_dir.path(), &self.link)
    }

    fn crash_cloud(&mut self) {
        self.cloud.take().expect("the cloud is up").crash();
    }

    fn start_cloud(&mut self) {
        assert!(self.cloud.is_none());
        self.cloud = Some(Cloud::start(self.cloud_dir.path(), &self.listener));
    }

    /// The gateway's durable state while its daemon is down, as the
    /// command line uses it.
    fn offline_gateway(&self) -> Store {
        Store::open(self.gateway_dir.path()).unwrap()
    }

    /// Waits until the gateway's queue is empty: the cloud acknowledged
    /// every event.
    fn until_delivered(&self, gateway: &Gateway) {
        until("every event acknowledged", || gateway.store.pending_len() == 0);
    }

    fn last_event_seq(&self) -> u64 {
        gateways::get(self.cloud().store(), self.link.gateway_id).unwrap().unwrap().last_event_seq
    }

    fn audit(&self) -> Vec<String> {
        self.cloud().audit_of(self.link.gateway_id)
    }

    fn check_chain(&self) {
        audit::verify(self.cloud().store()).unwrap().expect("the audit chain verifies");
    }
}

fn bytes(session: u64, rx: u64) -> GatewayEvent {
    GatewayEvent::Bytes { session_id: SessionId(session), target: None, rx, tx: rx / 1000 }
}

fn counted(session: &Session) -> (u64, u64) {
    (session.bytes_rx, session.bytes_tx)
}

fn bytes_entry(session: u64, rx: u64) -> String {
    format!("session.bytes true {session} target all: rx {rx} tx {} bytes", rx / 1000)
}

const SWITCHED_ON: &str = "gateway.switch true  on";

#[test]
fn an_event_the_cloud_fails_to_store_stays_queued_and_lands_once() {
    let site = Site::new();
    let (a, b) = (site.a, site.b);
    // Storing the second byte count fails, once.
    site.cloud()
        .failing
        .fail_commit(Failure::Once, |batch| appends_audit(batch, "session.bytes", None, "rx 2000 "));
    let gateway = site.gateway();
    gateway.record(bytes(a, 1000));
    gateway.store.decide(SessionId(a), Decision::Approved, 0).unwrap();
    gateway.record(bytes(a, 2000));
    gateway.store.decide(SessionId(b), Decision::Denied, 0).unwrap();
    let last = gateway.record(bytes(a, 4000));
    site.until_delivered(&gateway);

    assert_eq!(site.cloud().failing.failures(), 1);
    let (sa, sb) = (site.cloud().session(a), site.cloud().session(b));
    assert_eq!((sa.state, counted(&sa)), (State::Active, (7000, 7)), "every count once");
    assert_eq!((sb.state, sb.end_reason), (State::Ended, Some(EndReason::Denied)));
    assert_eq!(
        site.audit(),
        [
            SWITCHED_ON.to_string(),
            bytes_entry(a, 1000),
            format!("session.approve true {a} "),
            bytes_entry(a, 2000),
            format!("session.deny true {b} "),
            bytes_entry(a, 4000),
        ]
    );
    assert_eq!(site.last_event_seq(), last);
    site.check_chain();
}

#[test]
fn a_cloud_crash_inside_an_event_and_restarts_of_both_sides_apply_every_event_once() {
    let mut site = Site::new();
    let (a, b) = (site.a, site.b);
    let gateway = site.gateway();
    site.until_delivered(&gateway);
    // The cloud dies as it stores the next event as the newest: whatever
    // of that event is stored by then is what a crash there leaves.
    let next = site.last_event_seq() + 1;
    site.cloud().failing.fail_commit(Failure::Crash, move |batch| stores_event_seq(batch, next));
    assert_eq!(gateway.record(bytes(a, 1000)), next);
    gateway.record(bytes(a, 2000));
    until("the crash", || site.cloud().failing.failures() > 0);
    site.crash_cloud();
    // The gateway goes down too, and the customer switches off at it while
    // both are away.
    gateway.crash();
    let offline = site.offline_gateway();
    offline.set_switch(false, 0).unwrap();
    let last = offline.pending(usize::MAX).unwrap().last().unwrap().seq;
    drop(offline);

    let gateway = site.gateway();
    site.start_cloud();
    site.until_delivered(&gateway);
    let (sa, sb) = (site.cloud().session(a), site.cloud().session(b));
    assert_eq!(counted(&sa), (3000, 3), "every count once");
    for s in [&sa, &sb] {
        assert_eq!(
            (s.state, &s.end_reason),
            (State::Ended, &Some(EndReason::Customer { session_only: false })),
            "{}",
            s.id
        );
    }
    let ended = |id| format!("session.end true {id} ended by the customer (switch off)");
    assert_eq!(
        site.audit(),
        [
            SWITCHED_ON.to_string(),
            // The hello after the restart says the switch is off: the
            // sessions end at once, before the queued events arrive.
            ended(a),
            ended(b),
            bytes_entry(a, 1000),
            bytes_entry(a, 2000),
            "gateway.switch true  off".to_string(),
        ]
    );
    assert_eq!(site.last_event_seq(), last);
    site.check_chain();
}

#[test]
fn events_queued_across_a_gateway_restart_land_once_when_the_first_fails() {
    let site = Site::new();
    let (a, b) = (site.a, site.b);
    let gateway = site.gateway();
    site.until_delivered(&gateway);
    gateway.crash();
    // While the daemon is down the customer decides at the command line.
    let offline = site.offline_gateway();
    offline.decide(SessionId(a), Decision::Approved, 0).unwrap();
    offline.enqueue(bytes(a, 1000), 0).unwrap();
    offline.decide(SessionId(b), Decision::Denied, 0).unwrap();
    drop(offline);
    // The approval, first in the queue, fails to store once.
    site.cloud()
        .failing
        .fail_commit(Failure::Once, move |batch| appends_audit(batch, "session.approve", Some(a), ""));

    let gateway = site.gateway();
    site.until_delivered(&gateway);
    assert_eq!(site.cloud().failing.failures(), 1);
    let (sa, sb) = (site.cloud().session(a), site.cloud().session(b));
    assert_eq!((sa.state, counted(&sa)), (State::Active, (1000, 1)));
    assert_eq!((sb.state, sb.end_reason), (State::Ended, Some(EndReason::Denied)));
    assert_eq!(
        site.audit(),
        [
            SWITCHED_ON.to_string(),
            format!("session.approve true {a} "),
            bytes_entry(a, 1000),
            format!("session.deny true {b} "),
        ]
    );
    site.check_chain();
    drop(gateway);
}

#[test]
fn a_connection_closed_at_its_first_event_keeps_the_backoff_growing() {
    let site = Site::new();
    // The queue holds the switch-on; the cloud cannot store it, once.
    site.cloud()
        .failing
        .fail_commit(Failure::Once, |batch| appends_audit(batch, "gateway.switch", None, "on"));
    let store = Store::open(site.gateway_dir.path()).unwrap();
    let (_switch, switch_on) = watch::channel(true);
    let (_applied, applied) = watch::channel(None);
    let mut inputs = Inputs { store: store.clone(), switch_on, applied, events: Arc::new(Notify::new()) };
    let (to_daemon, mut from_cloud) = mpsc::channel(16);
    let runtime = runtime();
    runtime.spawn(async move { while from_cloud.recv().await.is_some() {} });
    let mut backoff = ferry_control::Backoff::default();
    for _ in 0..3 {
        backoff.next_delay(&mut rand_core::OsRng);
    }

    let closed = runtime
        .block_on(async {
            let (mut connected, mut on_probation) = (false, false);
            let url = &site.link.urls[0];
            let session = session(
                &site.link,
                url,
                &mut inputs,
                &to_daemon,
                &mut backoff,
                &mut connected,
                &mut on_probation,
            );
            tokio::time::timeout(HANG, session).await
        })
        .expect("the cloud closes the channel at the event it cannot store");
    let error = format!("{:#}", closed.unwrap_err());
    assert!(error.contains("internal"), "{error}");
    assert_eq!(backoff.attempt(), 3, "a connection that stored nothing is no success");
    assert_eq!(store.pending_len(), 1);

    // The next connection stores it: from its acknowledgement on, the
    // backoff starts over.
    runtime.block_on(async {
        let delivered = async {
            while store.pending_len() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let (mut connected, mut on_probation) = (false, false);
        let url = &site.link.urls[0];
        tokio::select! {
            ended = session(&site.link, url, &mut inputs, &to_daemon, &mut backoff, &mut connected, &mut on_probation) => {
                panic!("the channel ended: {ended:?}")
            }
            () = delivered => {}
            () = tokio::time::sleep(HANG) => panic!("the event was never delivered"),
        }
    });
    assert_eq!(backoff.attempt(), 0);
    assert_eq!(site.audit(), [SWITCHED_ON]);
}

/// The channel hands the daemon the cloud's time from each connection's
/// hello, with the gateway's monotonic clock at that moment, before the
/// first desired state (whose end times are on that clock): here the
/// cloud's clock is days from this machine's, and the cloud's it is.
#[test]
fn the_channel_hands_over_the_clouds_time_before_the_first_desired_state() {
    let mut site = Site::new();
    site.crash_cloud();
    const CLOUD_MS: u64 = 1_000_000_000_000;
    let clock = ferry_cloud::clock::ManualClock::new(CLOUD_MS);
    site.cloud = Some(Cloud::start_with_clock(site.cloud_dir.path(), &site.listener, Arc::new(clock)));
    let store = Store::open(site.gateway_dir.path()).unwrap();
    let runtime = runtime();
    let (_switch_tx, switch_on) = watch::channel(true);
    let (_applied_tx, applied) = watch::channel(None);
    let inputs = Inputs { store, switch_on, applied, events: Arc::new(Notify::new()) };
    let (to_daemon, mut from_cloud) = mpsc::channel(16);
    let before = crate::cmd::monotonic_ms();
    runtime.spawn(run(site.link.clone(), inputs, to_daemon));
    let mut seen = Vec::new();
    runtime.block_on(async {
        while seen.len() < 3 {
            let message = tokio::time::timeout(HANG, from_cloud.recv()).await.unwrap().unwrap();
            seen.push(message);
        }
    });
    let after = crate::cmd::monotonic_ms();
    match &seen[..] {
        [FromCloud::Connected(true), FromCloud::Time { cloud_ms, boot_ms }, FromCloud::Desired(_)] => {
            assert_eq!(*cloud_ms, CLOUD_MS, "the cloud's clock, not this machine's");
            assert!((before..=after).contains(boot_ms), "{before} <= {boot_ms} <= {after}");
        }
        other => panic!("not connected, the cloud's time, then the desired state: {other:?}"),
    }
}
