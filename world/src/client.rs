//! The technician's side with Ferry's own client: `ferry service` (what
//! `sudo ferry install` runs under systemd) in the technician's namespace,
//! and the `ferry` commands run against it, as root there. The client's
//! service routes the proxy addresses for the uid that connected, here 0,
//! so that the caller's own sockets in that namespace (and a person's `ip
//! netns exec`) go through the tunnel. Used by `cargo xtask demo` and by
//! the soak.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use ferry_lab::{Netns, Process};
use serde_json::Value;

/// The `ferry` client on one technician's laptop (a namespace): its
/// service, its socket, and the home that holds the login.
pub struct FerryClient {
    bin: PathBuf,
    ns: Netns,
    socket: PathBuf,
    home: PathBuf,
    service: Option<Process>,
}

impl FerryClient {
    /// A client of the binary `bin` in `ns`, its socket and home under
    /// `dir`; the service is not started yet.
    pub fn new(bin: PathBuf, ns: &Netns, dir: &Path) -> FerryClient {
        FerryClient {
            bin,
            ns: ns.clone(),
            socket: dir.join("run").join("client.sock"),
            home: dir.join("home"),
            service: None,
        }
    }

    /// Starts `ferry service` and waits until it is ready. A service that
    /// was killed left its rules, which this one sweeps at start.
    pub fn start_service(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.home).map_err(|e| format!("{}: {e}", self.home.display()))?;
        let mut cmd = self.ns.command(&self.bin);
        cmd.arg("service").arg("--socket").arg(&self.socket).args(["--group-id", "0"]);
        cmd.env("FERRY_LOG", "info");
        let mut service = self.ns.spawn(cmd).map_err(|e| e.to_string())?;
        service.wait_for_output("ferry service ready", Duration::from_secs(20)).map_err(|e| e.to_string())?;
        self.service = Some(service);
        Ok(())
    }

    /// SIGKILLs the service and reaps it; its TUN devices, and so its
    /// tunnels, go with it. Returns its pid.
    pub fn kill_service(&mut self) -> Option<u32> {
        let mut service = self.service.take()?;
        let pid = service.pid();
        service.kill();
        Some(pid)
    }

    /// The running service, to watch it.
    pub fn service(&mut self) -> Option<&mut Process> {
        self.service.as_mut()
    }

    /// What the service logged.
    pub fn service_log(&self) -> String {
        self.service.as_ref().map(|s| format!("{}{}", s.stdout(), s.stderr())).unwrap_or_default()
    }

    /// `ferry ARGS` as the technician, in their namespace, with `stdin`.
    pub fn run(&self, args: &[&str], stdin: &str) -> Result<Output, String> {
        let mut cmd = self.ns.command(&self.bin);
        cmd.args(args)
            .env("FERRY_SOCKET", &self.socket)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env_remove("FERRY_API_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("starting ferry: {e}"))?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).map_err(|e| format!("ferry's stdin: {e}"))?;
        }
        child.wait_with_output().map_err(|e| format!("ferry {}: {e}", args.join(" ")))
    }

    /// The same, failing with what it said unless it succeeded; its stdout.
    pub fn ok(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        let out = self.run(args, stdin)?;
        if !out.status.success() {
            return Err(format!("`ferry {}` failed ({}): {}", args.join(" "), out.status, said(&out)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ferry login` with the user's password (and the cloud's pin when it
    /// has one); what it said.
    pub fn login(
        &self,
        cloud_url: &str,
        pin: Option<&str>,
        name: &str,
        password: &str,
    ) -> Result<String, String> {
        self.login_replicas(&[cloud_url.to_string()], pin, name, password)
    }

    /// The same at a cloud of several replicas: a `--cloud` for each (the
    /// client moves to another when one fails).
    pub fn login_replicas(
        &self,
        cloud_urls: &[String],
        pin: Option<&str>,
        name: &str,
        password: &str,
    ) -> Result<String, String> {
        let mut args = vec!["login"];
        for url in cloud_urls {
            args.extend(["--cloud", url.as_str()]);
        }
        if let Some(pin) = pin {
            args.extend(["--pin", pin]);
        }
        args.extend(["--user", name, "--password-stdin"]);
        self.ok(&args, &format!("{password}\n"))
    }

    /// `ferry connect SESSION --json`, waiting up to `wait_s` for the first
    /// handshake: the tunnel as `ferry status --json` shows it.
    pub fn connect(&self, session: u64, wait_s: u64) -> Result<Value, String> {
        let text =
            self.ok(&["connect", &session.to_string(), "--wait", &wait_s.to_string(), "--json"], "")?;
        serde_json::from_str(&text).map_err(|e| format!("`ferry connect --json` is not JSON ({e}): {text}"))
    }

    /// `ferry status --json`: every tunnel, those that went down included.
    pub fn status(&self) -> Result<Vec<Value>, String> {
        let text = self.ok(&["status", "--json"], "")?;
        let status: Value = serde_json::from_str(&text)
            .map_err(|e| format!("`ferry status --json` is not JSON ({e}): {text}"))?;
        Ok(status.as_array().cloned().unwrap_or_default())
    }

    /// The tunnel to `session` that is up, if any.
    pub fn tunnel_up(&self, session: u64) -> Result<Option<Value>, String> {
        Ok(self
            .status()?
            .into_iter()
            .find(|t| t["session_id"].as_u64() == Some(session) && t["ended"].is_null()))
    }

    /// Why the tunnel to `session` went down (its `ended.reason`), if one
    /// did.
    pub fn tunnel_ended(&self, session: u64) -> Result<Option<String>, String> {
        Ok(self.status()?.into_iter().find_map(|t| {
            if t["session_id"].as_u64() != Some(session) || t["ended"].is_null() {
                return None;
            }
            Some(t["ended"]["reason"].as_str().unwrap_or("?").to_string())
        }))
    }

    /// The tunnel of configuration `config_id`, up or down, if listed.
    pub fn tunnel(&self, config_id: u64) -> Result<Option<Value>, String> {
        Ok(self.status()?.into_iter().find(|t| t["config_id"].as_u64() == Some(config_id)))
    }

    /// The command a person types to run `ferry ARGS` as the technician here.
    pub fn command_line(&self, args: &str) -> String {
        format!(
            "sudo ip netns exec {} env FERRY_SOCKET={} {} {args}",
            self.ns.name(),
            self.socket.display(),
            self.bin.display()
        )
    }
}

/// Target name -> proxy address of a tunnel as `ferry status --json` (or
/// `connect --json`) shows it.
pub fn client_proxies(tunnel: &Value) -> BTreeMap<String, String> {
    tunnel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["name"].as_str()?.to_string(), t["proxy_address"].as_str()?.to_string())))
        .collect()
}

/// What a command printed, stdout and stderr, trimmed.
pub fn said(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.trim_end().to_string()
}
