//! The gateway daemon in the world: its configuration, enrolment, the
//! process, the customer's local commands and its metrics.

use std::{
    io::Write as _,
    net::SocketAddr,
    process::{Output, Stdio},
    time::Duration,
};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{World, addresses::*, bin_path, services::http_get_path};

/// Debian's libfaketime (package `libfaketime`), the multi-threaded build
/// (the gateway runs many threads), in the machine's multiarch folder.
pub fn faketime_library() -> std::path::PathBuf {
    format!("/usr/lib/{}-linux-gnu/faketime/libfaketimeMT.so.1", std::env::consts::ARCH).into()
}

/// The gateway's local panel's port unless configured otherwise.
pub const PANEL_PORT: u16 = 8443;

/// Where the world's gateway serves its local panel: its LAN address, on the
/// machine network's side only.
pub fn panel_addr() -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(GW_LAN_IP.parse().unwrap()), PANEL_PORT)
}

impl World {
    /// `ferry-gateway panel password --stdin`, as root on the gateway.
    pub fn set_panel_password(&self, password: &str) {
        let mut cmd = self.gw_ns.command(bin_path("ferry-gateway"));
        cmd.arg("--config").arg(&self.gateway_config).args(["panel", "password", "--stdin"]);
        let mut child =
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "panel password: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The panel certificate's fingerprint, as `ferry-gateway panel status`
    /// shows it.
    pub fn panel_pin(&self) -> String {
        let status = self.gateway_ok(&["panel", "status"]);
        status
            .lines()
            .find_map(|l| l.strip_prefix("certificate sha256 "))
            .unwrap_or_else(|| panic!("no fingerprint in `panel status`:\n{status}"))
            .trim()
            .to_string()
    }

    /// Writes site `index`'s gateway's configuration file.
    pub(crate) fn write_gateway_config_at(&self, index: usize) {
        let site = self.site(index);
        let text = format!(
            "data_dir = {:?}\ncontrol_socket = {:?}\n\n[uplink]\ninterface = {:?}\nwireguard_port = {GATEWAY_WG_PORT}\n\n\
             [lan]\ninterface = {:?}\n\n[tunnel]\ninterface = {:?}\ntransport = \"auto\"\n\n[metrics]\nlisten = \"127.0.0.1:{GATEWAY_METRICS_PORT}\"\n",
            site.gateway_data.to_str().unwrap(),
            site.gateway_socket.to_str().unwrap(),
            site.gw_uplink_if,
            site.gw_lan_if,
            site.gw_tun_if,
        );
        std::fs::write(site.gateway_config, text).unwrap();
    }

    /// Writes the gateway's configuration file.
    pub fn write_gateway_config(&self) {
        self.write_gateway_config_at(0);
    }

    /// Runs `ferry-gateway --config <file> <args>` in the gateway namespace
    /// to completion.
    pub fn gateway_cmd(&self, args: &[&str]) -> Output {
        self.gateway_cmd_at(0, args)
    }

    /// The same for site `index`'s gateway.
    pub fn gateway_cmd_at(&self, index: usize, args: &[&str]) -> Output {
        let site = self.site(index);
        let mut cmd = site.gw_ns.command(bin_path("ferry-gateway"));
        cmd.arg("--config").arg(site.gateway_config).args(args);
        cmd.output().unwrap()
    }

    /// The same; a failure panics with its output. Returns stdout.
    pub fn gateway_ok(&self, args: &[&str]) -> String {
        self.gateway_ok_at(0, args)
    }

    /// The same for site `index`'s gateway.
    pub fn gateway_ok_at(&self, index: usize, args: &[&str]) -> String {
        let out = self.gateway_cmd_at(index, args);
        assert!(
            out.status.success(),
            "{} {args:?} failed ({}):\n{}\n{}",
            gateway_name(index),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ferry-gateway enroll --cloud <url> --token <token>` (and `--pin`
    /// with the cloud's fingerprint over HTTPS), with a `--cloud` for each
    /// replica of the cloud.
    pub fn enroll(&self, token: &str) -> String {
        self.enroll_at(0, token)
    }

    /// The same for site `index`'s gateway.
    pub fn enroll_at(&self, index: usize, token: &str) -> String {
        let urls = self.cloud_urls();
        let mut args = vec!["enroll"];
        for url in &urls {
            args.extend(["--cloud", url]);
        }
        args.extend(["--token", token]);
        if let Some(pin) = &self.cloud_pin {
            args.extend(["--pin", pin]);
        }
        self.gateway_ok_at(index, &args)
    }

    /// Starts `ferry-gateway run` and waits for "ferry-gateway ready".
    pub fn start_gateway(&mut self) {
        self.start_gateway_at(0);
    }

    /// The same for site `index`'s gateway (each under libfaketime with a
    /// timestamp file of its own, with
    /// [`Options::gateway_faketime`](crate::Options::gateway_faketime)).
    pub fn start_gateway_at(&mut self, index: usize) {
        assert!(self.gateway_process_at(index).is_none(), "{} runs already", gateway_name(index));
        let site = self.site(index);
        let mut cmd = site.gw_ns.command(bin_path("ferry-gateway"));
        cmd.arg("--config").arg(site.gateway_config).args(["--log", "debug", "run"]);
        if self.options.gateway_faketime {
            faketime(&mut cmd, site.gateway_clock_file);
        }
        let mut gateway = site.gw_ns.spawn(cmd).unwrap();
        gateway.wait_for_output("ferry-gateway ready", Duration::from_secs(30)).unwrap();
        *self.gateway_process_mut_at(index) = Some(gateway);
    }

    /// Steps the gateway's wall clock to `offset_s` seconds from the real
    /// time (0: right again), at once, as `date -s` would; only with
    /// [`Options::gateway_faketime`](crate::Options::gateway_faketime). Its
    /// monotonic clocks and every other process's clock do not move.
    pub fn step_gateway_clock(&self, offset_s: i64) {
        self.step_gateway_clock_at(0, offset_s);
    }

    /// The same for site `index`'s gateway alone.
    pub fn step_gateway_clock_at(&self, index: usize, offset_s: i64) {
        assert!(self.options.gateway_faketime, "the gateway does not run under libfaketime");
        let clock_file = self.site(index).gateway_clock_file;
        let text = format!("{offset_s:+}\n");
        let temporary = clock_file.with_extension("tmp");
        std::fs::write(&temporary, text).unwrap();
        // Renamed over, so that libfaketime never reads a half-written file.
        std::fs::rename(&temporary, clock_file).unwrap();
    }

    /// The gateway's Prometheus text from `/metrics`.
    pub fn gateway_metrics(&self) -> String {
        self.gateway_metrics_at(0)
    }

    /// Site `index`'s gateway's Prometheus text, from its own namespace.
    pub fn gateway_metrics_at(&self, index: usize) -> String {
        self.try_gateway_metrics_at(index).expect("the gateway's /metrics")
    }

    /// The same, or why not.
    pub fn try_gateway_metrics_at(&self, index: usize) -> Result<String, String> {
        http_get_path(
            self.site(index).gw_ns,
            "127.0.0.1",
            GATEWAY_METRICS_PORT,
            "/metrics",
            Duration::from_secs(5),
        )
    }

    /// One sample of the gateway's metrics, by its name with labels exactly
    /// as exposed (`ferry_gateway_guard_indices`,
    /// `ferry_gateway_guard_packets_total{outcome="allow_transport"}`); 0 if
    /// absent.
    pub fn gateway_metric(&self, sample: &str) -> f64 {
        metric_value(&self.gateway_metrics(), sample)
    }

    /// SIGTERM and a clean exit within 10 s.
    pub fn stop_gateway(&mut self) {
        let mut gateway = self.gateway.take().expect("the gateway is not running");
        gateway.signal(Signal::SIGTERM).unwrap();
        let status = gateway.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "ferry-gateway after SIGTERM: {status}\n{}", gateway.stderr());
    }

    /// SIGKILL, as a crash or power cut ends it.
    pub fn kill_gateway(&mut self) {
        self.kill_gateway_at(0);
    }

    /// The same for site `index`'s gateway.
    pub fn kill_gateway_at(&mut self, index: usize) {
        let mut gateway = self.gateway_process_mut_at(index).take().expect("the gateway is not running");
        gateway.signal(Signal::SIGKILL).unwrap();
        gateway.wait_timeout(Duration::from_secs(10)).unwrap();
    }

    /// What the running gateway logged so far.
    pub fn gateway_log(&self) -> String {
        self.gateway_log_at(0)
    }

    /// What site `index`'s running gateway logged so far.
    pub fn gateway_log_at(&self, index: usize) -> String {
        self.gateway_process_at(index).map(|g| format!("{}{}", g.stdout(), g.stderr())).unwrap_or_default()
    }

    /// `remote on|off|status`; returns stdout.
    pub fn remote(&self, what: &str) -> String {
        self.remote_at(0, what)
    }

    /// The same at site `index`'s gateway.
    pub fn remote_at(&self, index: usize, what: &str) -> String {
        self.gateway_ok_at(index, &["remote", what])
    }

    /// The switch position `remote status` reports: the one word `on` or
    /// `off` (case-insensitive) in its output.
    pub fn switch_status(&self) -> bool {
        let out = self.remote("status");
        switch_word(&out).unwrap_or_else(|| panic!("`remote status` names neither on nor off: {out:?}"))
    }

    /// `sessions --json`.
    pub fn gateway_sessions(&self) -> Value {
        self.gateway_sessions_at(0)
    }

    /// `sessions --json` at site `index`'s gateway.
    pub fn gateway_sessions_at(&self, index: usize) -> Value {
        let out = self.gateway_ok_at(index, &["sessions", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("`sessions --json` is not JSON ({e}): {out:?}"))
    }
}

/// Runs `cmd` under libfaketime, its wall clock offset by what the
/// timestamp file `clock_file` says (kept as it is: a restarted gateway
/// finds its clock as the machine would, still stepped).
fn faketime(cmd: &mut std::process::Command, clock_file: &std::path::Path) {
    let library = faketime_library();
    assert!(library.exists(), "{} is missing: install libfaketime (cargo xtask setup)", library.display());
    if !clock_file.exists() {
        std::fs::write(clock_file, "+0\n").unwrap();
    }
    // Offsets ("+0", "-3600") rather than absolute times: libfaketime
    // applies them to the real clock, which goes on running. Re-read at
    // every call (no cache), so a step takes effect at once; the
    // monotonic clocks stay real, as under a real step of the clock.
    cmd.env("LD_PRELOAD", &library)
        .env("FAKETIME_TIMESTAMP_FILE", clock_file)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
}

/// How logs and reports name site `index`'s gateway: `ferry-gateway` for
/// the first (as before there were others), `ferry-gateway-2` for the
/// second.
pub fn gateway_name(index: usize) -> String {
    if index == 0 { "ferry-gateway".to_string() } else { format!("ferry-gateway-{}", index + 1) }
}

/// The value of `sample` in Prometheus text, 0 if absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `on`/`off` as the only such word in `text`.
pub fn switch_word(text: &str) -> Option<bool> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_lowercase)
        .filter(|w| w == "on" || w == "off")
        .collect();
    match (words.iter().any(|w| w == "on"), words.iter().any(|w| w == "off")) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}
