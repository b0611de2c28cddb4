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

    /// Writes the gateway's configuration file.
    pub fn write_gateway_config(&self) {
        let text = format!(
            "data_dir = {:?}\ncontrol_socket = {:?}\n\n[uplink]\ninterface = {:?}\nwireguard_port = {GATEWAY_WG_PORT}\n\n\
             [lan]\ninterface = {:?}\n\n[tunnel]\ninterface = {:?}\ntransport = \"auto\"\n\n[metrics]\nlisten = \"127.0.0.1:{GATEWAY_METRICS_PORT}\"\n",
            self.gateway_data.to_str().unwrap(),
            self.gateway_socket.to_str().unwrap(),
            self.gw_uplink_if,
            self.gw_lan_if,
            self.gw_tun_if,
        );
        std::fs::write(&self.gateway_config, text).unwrap();
    }

    /// Runs `ferry-gateway --config <file> <args>` in the gateway namespace
    /// to completion.
    pub fn gateway_cmd(&self, args: &[&str]) -> Output {
        let mut cmd = self.gw_ns.command(bin_path("ferry-gateway"));
        cmd.arg("--config").arg(&self.gateway_config).args(args);
        cmd.output().unwrap()
    }

    /// The same; a failure panics with its output. Returns stdout.
    pub fn gateway_ok(&self, args: &[&str]) -> String {
        let out = self.gateway_cmd(args);
        assert!(
            out.status.success(),
            "ferry-gateway {args:?} failed ({}):\n{}\n{}",
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
        let urls = self.cloud_urls();
        let mut args = vec!["enroll"];
        for url in &urls {
            args.extend(["--cloud", url]);
        }
        args.extend(["--token", token]);
        if let Some(pin) = &self.cloud_pin {
            args.extend(["--pin", pin]);
        }
        self.gateway_ok(&args)
    }

    /// Starts `ferry-gateway run` and waits for "ferry-gateway ready".
    pub fn start_gateway(&mut self) {
        assert!(self.gateway.is_none(), "the gateway runs already");
        let mut cmd = self.gw_ns.command(bin_path("ferry-gateway"));
        cmd.arg("--config").arg(&self.gateway_config).args(["--log", "debug", "run"]);
        if self.options.gateway_faketime {
            self.faketime(&mut cmd);
        }
        let mut gateway = self.gw_ns.spawn(cmd).unwrap();
        gateway.wait_for_output("ferry-gateway ready", Duration::from_secs(30)).unwrap();
        self.gateway = Some(gateway);
    }

    /// Runs `cmd` under libfaketime, its wall clock offset by what the
    /// world's timestamp file says (kept as it is: a restarted gateway
    /// finds its clock as the machine would, still stepped).
    fn faketime(&self, cmd: &mut std::process::Command) {
        let library = faketime_library();
        assert!(
            library.exists(),
            "{} is missing: install libfaketime (cargo xtask setup)",
            library.display()
        );
        if !self.gateway_clock_file.exists() {
            std::fs::write(&self.gateway_clock_file, "+0\n").unwrap();
        }
        // Offsets ("+0", "-3600") rather than absolute times: libfaketime
        // applies them to the real clock, which goes on running. Re-read at
        // every call (no cache), so a step takes effect at once; the
        // monotonic clocks stay real, as under a real step of the clock.
        cmd.env("LD_PRELOAD", &library)
            .env("FAKETIME_TIMESTAMP_FILE", &self.gateway_clock_file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }

    /// Steps the gateway's wall clock to `offset_s` seconds from the real
    /// time (0: right again), at once, as `date -s` would; only with
    /// [`Options::gateway_faketime`](crate::Options::gateway_faketime). Its
    /// monotonic clocks and every other process's clock do not move.
    pub fn step_gateway_clock(&self, offset_s: i64) {
        assert!(self.options.gateway_faketime, "the gateway does not run under libfaketime");
        let text = format!("{offset_s:+}\n");
        let temporary = self.gateway_clock_file.with_extension("tmp");
        std::fs::write(&temporary, text).unwrap();
        // Renamed over, so that libfaketime never reads a half-written file.
        std::fs::rename(&temporary, &self.gateway_clock_file).unwrap();
    }

    /// The gateway's Prometheus text from `/metrics`.
    pub fn gateway_metrics(&self) -> String {
        http_get_path(&self.gw_ns, "127.0.0.1", GATEWAY_METRICS_PORT, "/metrics", Duration::from_secs(5))
            .expect("the gateway's /metrics")
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
        let mut gateway = self.gateway.take().expect("the gateway is not running");
        gateway.signal(Signal::SIGKILL).unwrap();
        gateway.wait_timeout(Duration::from_secs(10)).unwrap();
    }

    /// What the running gateway logged so far.
    pub fn gateway_log(&self) -> String {
        self.gateway.as_ref().map(|g| format!("{}{}", g.stdout(), g.stderr())).unwrap_or_default()
    }

    /// `remote on|off|status`; returns stdout.
    pub fn remote(&self, what: &str) -> String {
        self.gateway_ok(&["remote", what])
    }

    /// The switch position `remote status` reports: the one word `on` or
    /// `off` (case-insensitive) in its output.
    pub fn switch_status(&self) -> bool {
        let out = self.remote("status");
        switch_word(&out).unwrap_or_else(|| panic!("`remote status` names neither on nor off: {out:?}"))
    }

    /// `sessions --json`.
    pub fn gateway_sessions(&self) -> Value {
        let out = self.gateway_ok(&["sessions", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("`sessions --json` is not JSON ({e}): {out:?}"))
    }
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
